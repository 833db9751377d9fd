"""Reconstruction evaluation (``kpvid-eval reconstruct``): source = first frame, every frame
driven by its own detected keypoints; L1, PSNR, SSIM and keypoint distance per video."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

from kpvid.models import KPDetector, OcclusionAwareGenerator

from . import metrics
from .dataset import list_videos, read_video
from .visualize import draw_keypoints, to_uint8

log = logging.getLogger(__name__)


@dataclass
class VideoScores:
    """Mean reconstruction scores of one video."""

    name: str
    frames: int
    l1: float
    psnr: float
    ssim: float
    akd: float


@dataclass
class Report:
    """Scores of every video and their mean."""

    mean: dict[str, float]
    videos: list[VideoScores] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"mean": self.mean, "videos": [asdict(v) for v in self.videos],
                "skipped": self.skipped}


@torch.inference_mode()
def reconstruct_video(kp_detector: KPDetector, generator: OcclusionAwareGenerator,
                      frames: torch.Tensor, batch_size: int = 16
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rebuild T x 3 x H x W frames from the first one and each frame's keypoints.
    Returns the rebuilt frames and the driving keypoints."""
    source = frames[:1]
    kp_source = kp_detector(source)
    source_features = generator.encode_source(source)
    outputs, kp_values, kp_jacobians = [], [], []
    for start in range(0, frames.shape[0], batch_size):
        driving = frames[start:start + batch_size]
        n = driving.shape[0]
        kp_driving = kp_detector(driving)
        expand = {k: v.expand(n, *v.shape[1:]) for k, v in kp_source.items()}
        out = generator.decode(source_features.expand(n, -1, -1, -1),
                               source.expand(n, -1, -1, -1), kp_driving, expand)
        outputs.append(out["prediction"])
        kp_values.append(kp_driving["value"])
        if "jacobian" in kp_driving:
            kp_jacobians.append(kp_driving["jacobian"])
    kp = {"value": torch.cat(kp_values)}
    if kp_jacobians:
        kp["jacobian"] = torch.cat(kp_jacobians)
    return torch.cat(outputs), kp


@torch.inference_mode()
def score_video(kp_detector: KPDetector, generator: OcclusionAwareGenerator, name: str,
                frames: torch.Tensor) -> tuple[VideoScores, torch.Tensor, torch.Tensor]:
    """Scores of one video plus its rebuilt frames and driving keypoint positions."""
    rebuilt, kp_driving = reconstruct_video(kp_detector, generator, frames)
    kp_rebuilt = torch.cat([kp_detector(rebuilt[i:i + 16])["value"]
                            for i in range(0, rebuilt.shape[0], 16)])
    scores = VideoScores(
        name=name, frames=int(frames.shape[0]),
        l1=float(metrics.l1(rebuilt, frames).mean()),
        psnr=float(metrics.psnr(rebuilt, frames).mean()),
        ssim=float(metrics.ssim(rebuilt, frames).mean()),
        akd=float(metrics.keypoint_distance(kp_driving["value"], kp_rebuilt,
                                            frames.shape[-1]).mean()),
    )
    return scores, rebuilt, kp_driving["value"]


def write_side_by_side(path: Path, panels: list[np.ndarray], fps: float = 25) -> None:
    """mp4 of equally long T x H x W x 3 uint8 clips placed side by side."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.concatenate(panels, axis=2)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def evaluate_reconstruction(kp_detector: KPDetector, generator: OcclusionAwareGenerator,
                            data: str | Path, size: int | None = None,
                            max_videos: int | None = None,
                            save_videos: str | Path | None = None,
                            device: str | torch.device = "cpu", progress: bool = True) -> Report:
    """Reconstruct every test video under ``data`` (``data/test`` if it exists), its frames
    resized to ``size`` (the model's training frame size)."""
    root = Path(data)
    if (root / "test").is_dir():
        root = root / "test"
    videos = list_videos(root)[:max_videos]
    if not videos:
        raise ValueError(f"no videos found under {root}")
    report = Report(mean={})
    for path in tqdm(videos, desc="reconstruct", disable=not progress, dynamic_ncols=True):
        try:
            array = read_video(path, size=size)
        except ValueError as exc:
            log.warning("skipping %s", exc)
            report.skipped.append(path.name)
            continue
        frames = torch.from_numpy(array).permute(0, 3, 1, 2).float().div(255).to(device)
        scores, rebuilt, kp = score_video(kp_detector, generator, path.stem, frames)
        report.videos.append(scores)
        if save_videos:
            driving = [draw_keypoints(image, points)
                       for image, points in zip(to_uint8(frames), kp.cpu().numpy())]
            write_side_by_side(Path(save_videos) / f"{path.stem}.mp4",
                               [np.stack(driving), to_uint8(rebuilt)])
    if not report.videos:
        raise ValueError(f"none of the {len(videos)} videos under {root} could be read")
    report.mean = {key: float(np.mean([getattr(v, key) for v in report.videos]))
                   for key in ("l1", "psnr", "ssim", "akd")}
    return report


def format_table(report: Report) -> str:
    """Plain-text table of per-video scores and the mean."""
    lines = [f"{'video':<24}{'frames':>7}{'L1':>9}{'PSNR':>9}{'SSIM':>8}{'AKD px':>8}"]
    for v in report.videos:
        lines.append(f"{v.name[:24]:<24}{v.frames:>7}{v.l1:>9.4f}{v.psnr:>9.2f}{v.ssim:>8.3f}"
                     f"{v.akd:>8.2f}")
    m = report.mean
    lines.append(f"{'mean':<24}{sum(v.frames for v in report.videos):>7}{m['l1']:>9.4f}"
                 f"{m['psnr']:>9.2f}{m['ssim']:>8.3f}{m['akd']:>8.2f}")
    return "\n".join(lines)


def write_json(data: dict, path: str | Path) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
