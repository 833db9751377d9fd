"""Reconstruction evaluation (``kpvid-eval reconstruct``): source = first frame, every frame
driven by its own detected keypoints; L1, PSNR, SSIM, the model's own keypoint distance, the
PSNR gain over a frozen first frame and (with FaceMesh) landmark error and mouth correlation per
video."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from kpvid.models import KPDetector, OcclusionAwareGenerator, kp_dict_from_kp6, repeat_features
from kpvid.models.predictors import (
    DEFAULT_PREDICTOR,
    HoldLast,
    Predictor,
    predictor_factory,
)
from kpvid.protocol.schedule import Schedule
from kpvid.synthetic.writer import tracks_path

from . import metrics
from .dataset import list_test_videos, read_video, read_video_sizes
from .extract import detect_kp6
from .face_metrics import FaceScorer, mean_face_scores, psnr_gain_frozen
from .transmission import UNCODED, TransmittedClip, transmit
from .visualize import draw_keypoints, save_png, to_uint8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSettings:
    """How keypoints reach the generator: the sender's schedule and keypoint codec, and the
    edge's predictor for the frames the schedule skips. The default sends every frame's
    keypoints uncoded: the model's own reconstruction quality."""

    observe: int = 1
    predict: int = 0
    codec: str = UNCODED
    predictor: str = DEFAULT_PREDICTOR
    model_id: str | None = None  # whose shipped predictors to load (None: the default model's)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.observe, self.predict)

    def predictor_factory(self) -> Callable[[], Predictor]:
        """Makes the predictor (none is needed, or loaded, when every frame is sent); a learned
        one is the one shipped for ``model_id``, and refused if made for another model."""
        if not self.predict:
            return HoldLast
        return predictor_factory(self.predictor, model_id=self.model_id)


@dataclass
class VideoScores:
    """Mean reconstruction scores of one video."""

    name: str
    frames: int
    l1: float
    psnr: float
    ssim: float
    akd: float  # keypoints of the model's own detector, real against rebuilt frames, in pixels
    kp_bytes_per_frame: float | None  # Keypoints message bytes per frame (None: uncoded)
    psnr_gain_frozen: float | None  # dB over frame 0 held frozen (None: a single frame)
    # FaceMesh scores (None without FaceMesh), see face_metrics
    landmark_error: float | None = None  # inter-ocular distances
    landmark_missed: int | None = None  # frames where either face was not found
    mouth_correlation: float | None = None  # None also where the input's mouth does not move
    # the same two against the renderer's landmark tracks (photo talking heads), see face_metrics
    truth_landmark_error: float | None = None
    truth_mouth_correlation: float | None = None
    # where the model's keypoints sit: mean distance between them, how far each moves (std
    # over the clip), both px; share inside FaceMesh's face outline (None without FaceMesh)
    kp_spread: float = 0.0
    kp_motion: float = 0.0
    kp_on_face: float | None = None


@dataclass
class Report:
    """Scores of every video and their mean."""

    mean: dict[str, float | None]
    stream: StreamSettings = field(default_factory=StreamSettings)
    videos: list[VideoScores] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    scored_size: int | None = None  # the frame size the scores were taken at

    def to_json(self) -> dict:
        return {"mean": self.mean, "scored_size": self.scored_size,
                "schedule": {"observe": self.stream.observe, "predict": self.stream.predict},
                "codec": self.stream.codec,
                "predictor": self.stream.predictor if self.stream.predict else None,
                "videos": [asdict(v) for v in self.videos], "skipped": self.skipped}


@torch.inference_mode()
def reconstruct_video(kp_detector: KPDetector, generator: OcclusionAwareGenerator,
                      frames: torch.Tensor, stream: StreamSettings = StreamSettings(),
                      new_predictor: Callable[[], Predictor] | None = None, batch_size: int = 16
                      ) -> tuple[torch.Tensor, np.ndarray, TransmittedClip]:
    """Rebuild T x 3 x H x W frames from the first one and the keypoints the edge would play
    (:func:`~kpvid.training.transmission.transmit`). Returns the rebuilt frames, the detected
    keypoints (T, K, 6) and what was transmitted."""
    source = frames[:1]
    kp_source = kp_detector(source)
    source_features = generator.encode_source(source)
    kp6 = detect_kp6(kp_detector, frames, batch_size)
    sent = transmit(kp6, stream.schedule, stream.codec,
                    new_predictor or stream.predictor_factory())
    outputs = []
    for start in range(0, frames.shape[0], batch_size):
        kp_driving = kp_dict_from_kp6(sent.kp6[start:start + batch_size], frames.device)
        n = kp_driving["value"].shape[0]
        expand = {k: v.expand(n, *v.shape[1:]) for k, v in kp_source.items()}
        out = generator.decode(repeat_features(source_features, n),
                               source.expand(n, -1, -1, -1), kp_driving, expand)
        outputs.append(out["prediction"])
    return torch.cat(outputs), kp6, sent


@torch.inference_mode()
def score_video(kp_detector: KPDetector, generator: OcclusionAwareGenerator, name: str,
                frames: torch.Tensor, stream: StreamSettings = StreamSettings(),
                new_predictor: Callable[[], Predictor] | None = None,
                truth: torch.Tensor | None = None
                ) -> tuple[VideoScores, torch.Tensor, np.ndarray]:
    """Scores of one video plus its rebuilt frames and detected keypoint positions (T, K, 2);
    the FaceMesh scores are left None. ``truth``: the same frames at another size, to score
    against (the rebuilt frames are upscaled to it, bicubic, and returned at that size);
    default: ``frames``, at the model's size."""
    rebuilt, kp6, sent = reconstruct_video(kp_detector, generator, frames, stream,
                                           new_predictor)
    detected = torch.from_numpy(kp6[..., :2]).to(frames.device)
    kp_rebuilt = torch.cat([kp_detector(rebuilt[i:i + 16])["value"]
                            for i in range(0, rebuilt.shape[0], 16)])
    akd = metrics.keypoint_distance(detected, kp_rebuilt, frames.shape[-1]).mean()
    if truth is not None:
        rebuilt = F.interpolate(rebuilt, size=truth.shape[2:], mode="bicubic",
                                align_corners=False).clamp(0, 1)
    truth = frames if truth is None else truth
    scores = VideoScores(
        name=name, frames=int(frames.shape[0]),
        l1=float(metrics.l1(rebuilt, truth).mean()),
        psnr=float(metrics.psnr(rebuilt, truth).mean()),
        ssim=float(metrics.ssim(rebuilt, truth).mean()),
        akd=float(akd),
        kp_bytes_per_frame=(None if stream.codec == UNCODED
                            else float(sent.message_bytes.mean())),
        psnr_gain_frozen=psnr_gain_frozen(truth.permute(0, 2, 3, 1).cpu().numpy(),
                                          rebuilt.permute(0, 2, 3, 1).cpu().numpy()),
        **keypoint_placement(kp6[..., :2], frames.shape[-1]),
    )
    return scores, rebuilt, kp6[..., :2]


def keypoint_placement(kp: np.ndarray, size: int) -> dict[str, float]:
    """How the keypoints (T x K x 2 in [-1, 1]) of a size x size clip spread and move, px: the
    mean distance between two keypoints of a frame, and each keypoint's spread over the clip
    (root mean square distance from its mean position), averaged."""
    px = kp * (size - 1) / 2
    k = px.shape[1]
    pairwise = np.linalg.norm(px[:, :, None] - px[:, None], axis=-1).sum(axis=(1, 2))
    motion = np.sqrt(((px - px.mean(0)) ** 2).sum(-1).mean(0))
    return {"kp_spread": float(pairwise.mean() / (k * (k - 1))) if k > 1 else 0.0,
            "kp_motion": float(motion.mean())}


STRIP_TIMES = 5  # time points in a strip picture


def write_strip(path: Path, frames: np.ndarray, keypoints: np.ndarray,
                rebuilt: np.ndarray) -> None:
    """A PNG of three rows (input, input with the model's keypoints, output) at STRIP_TIMES
    evenly spaced frames."""
    times = np.linspace(0, len(frames) - 1, STRIP_TIMES).round().astype(int)
    rows = [np.concatenate(list(video[times]), axis=1) for video in (frames, keypoints, rebuilt)]
    save_png(path, np.concatenate(rows, axis=0))


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
                            save_strips: str | Path | None = None,
                            device: str | torch.device = "cpu", progress: bool = True,
                            stream: StreamSettings = StreamSettings(),
                            face_metrics: bool = False, output_size: int | None = None
                            ) -> Report:
    """Reconstruct every test video under ``data`` (``data/test`` if it exists), its frames
    resized to ``size`` (the model's training frame size), its keypoints sent as ``stream``
    says; ``face_metrics``: also score them with FaceMesh (it must be installed).
    ``output_size``: score at that size instead, the output upscaled to it (a model of another
    size measured on the same frames).
    ``save_videos``: side-by-side mp4s (keypoints on the input | output); ``save_strips``: PNG
    pictures of input, keypoints and output at a few time points."""
    root, videos = list_test_videos(data, max_videos)
    report = Report(mean={}, stream=stream)
    new_predictor = stream.predictor_factory()
    faces = FaceScorer() if face_metrics else None
    face_scores = []
    try:
        for path in tqdm(videos, desc="reconstruct", disable=not progress, dynamic_ncols=True):
            try:
                if output_size in (None, size):
                    array = shown = read_video(path, size=size)
                else:
                    array, shown = read_video_sizes(path, (size, output_size))
            except ValueError as exc:
                log.warning("skipping %s", exc)
                report.skipped.append(path.name)
                continue
            frames = to_tensor(array, device)
            scores, rebuilt, kp = score_video(kp_detector, generator, path.stem, frames, stream,
                                              new_predictor,
                                              None if shown is array else to_tensor(shown, device))
            array = shown
            report.scored_size = array.shape[1]
            if faces:
                tracks = _tracks_at(path, array.shape[1])
                face = faces.score(array, to_uint8(rebuilt), kp,
                                   *(tracks if tracks is not None else ()))
                face_scores.append(face)
                scores.landmark_error = face.landmark_error
                scores.landmark_missed = face.landmark_missed
                scores.mouth_correlation = face.mouth_correlation
                scores.kp_on_face = face.keypoints_on_face
                scores.truth_landmark_error = face.truth_landmark_error
                scores.truth_mouth_correlation = face.truth_mouth_correlation
            report.videos.append(scores)
            if save_videos or save_strips:
                driving = np.stack([draw_keypoints(image, points)
                                    for image, points in zip(array, kp)])
            if save_videos:
                write_side_by_side(Path(save_videos) / f"{path.stem}.mp4",
                                   [driving, to_uint8(rebuilt)])
            if save_strips:
                write_strip(Path(save_strips) / f"{path.stem}.png", array, driving,
                            to_uint8(rebuilt))
    finally:
        if faces:
            faces.close()
    if not report.videos:
        raise ValueError(f"none of the {len(videos)} videos under {root} could be read")
    report.mean = {key: float(np.mean([getattr(v, key) for v in report.videos]))
                   for key in ("l1", "psnr", "ssim", "akd", "kp_spread", "kp_motion")}
    on_face = [v.kp_on_face for v in report.videos if v.kp_on_face is not None]
    report.mean["kp_on_face"] = float(np.mean(on_face)) if on_face else None
    report.mean["kp_bytes_per_frame"] = (
        None if stream.codec == UNCODED else
        float(np.average([v.kp_bytes_per_frame for v in report.videos],
                         weights=[v.frames for v in report.videos])))
    gains = [v.psnr_gain_frozen for v in report.videos if v.psnr_gain_frozen is not None]
    report.mean["psnr_gain_frozen"] = float(np.mean(gains)) if gains else None
    report.mean.update(mean_face_scores(face_scores if faces else None))
    return report


def to_tensor(frames: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """T x H x W x 3 uint8 -> T x 3 x H x W float in [0, 1] on ``device``."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).to(device)


def _tracks_at(video: Path, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A photo talking head's landmark tracks (landmarks.npz) moved to frames of size x size,
    and the landmark ids they follow; None for a video without them."""
    path = tracks_path(video)
    if not path.is_file():
        return None
    with np.load(path) as data:
        points, ids = data["points"].astype(np.float64), data["landmarks"]
    made = read_video(video).shape[2]  # the size the clip was rendered (and tracked) at
    return (points + 0.5) * size / made - 0.5, ids


def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def format_table(report: Report) -> str:
    """Plain-text table of per-video scores and the mean ('-': not available)."""
    lines = [f"{'video':<24}{'frames':>7}{'L1':>9}{'PSNR':>9}{'SSIM':>8}{'AKD (own kp)':>14}"
             f"{'gain dB':>9}{'LM err':>8}{'missed':>7}{'mouth r':>9}"]
    for v in report.videos:
        lines.append(f"{v.name[:24]:<24}{v.frames:>7}{v.l1:>9.4f}{v.psnr:>9.2f}{v.ssim:>8.3f}"
                     f"{v.akd:>14.2f}{_cell(v.psnr_gain_frozen, 9, 2)}"
                     f"{_cell(v.landmark_error, 8, 3)}{_cell(v.landmark_missed, 7, 0)}"
                     f"{_cell(v.mouth_correlation, 9, 3)}")
    m = report.mean
    lines.append(f"{'mean':<24}{sum(v.frames for v in report.videos):>7}{m['l1']:>9.4f}"
                 f"{m['psnr']:>9.2f}{m['ssim']:>8.3f}{m['akd']:>14.2f}"
                 f"{_cell(m['psnr_gain_frozen'], 9, 2)}{_cell(m['landmark_error'], 8, 3)}"
                 f"{_cell(m['landmark_missed'], 7, 0)}{_cell(m['mouth_correlation'], 9, 3)}")
    if m["truth_landmark_error"] is not None:
        lines.append(f"against the renderer's landmark tracks: LM err "
                     f"{_cell(m['truth_landmark_error'], 0, 3)}, mouth r "
                     f"{_cell(m['truth_mouth_correlation'], 0, 3)} (pooled "
                     f"{_cell(m['truth_mouth_correlation_pooled'], 0, 3)}); FaceMesh on the "
                     f"input: {_cell(m['truth_input_landmark_error'], 0, 3)}, "
                     f"{_cell(m['truth_input_mouth_correlation'], 0, 3)}")
    if m["mouth_correlation_pooled"] is not None or m["mouth_correlation_undefined"]:
        lines.append(f"mouth r pooled over all videos: {_cell(m['mouth_correlation_pooled'], 0, 3)}"
                     f"; videos without a defined mouth r: {m['mouth_correlation_undefined']}")
    on_face = "-" if m["kp_on_face"] is None else f"{100 * m['kp_on_face']:.0f} %"
    lines.append(f"keypoints: {m['kp_spread']:.1f} px apart on average, each moving "
                 f"{m['kp_motion']:.2f} px (rms over the clip); on the face: {on_face}")
    lines.append("AKD (own kp): the model's own keypoint detector, px; gain dB: PSNR over a "
                 "frozen first frame")
    lines.append("LM err: FaceMesh landmark error, inter-ocular distances; missed: frames left "
                 "out; mouth r: mouth opening correlation")
    return "\n".join(lines)


def write_json(data: dict, path: str | Path) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
