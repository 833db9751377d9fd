"""Per-frame cost of the receiver's model work (``kpvid-eval speed``): keypoint detection and
synthesis of one frame at a time with the :class:`~kpvid.models.Synthesizer`, source work done
once, as a live stream runs it. ``kpvid-bench speed`` times batches and compares methods."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from kpvid.models import Detector, OcclusionAwareGenerator, Synthesizer
from kpvid.synthetic import generate_video


@dataclass
class SpeedReport:
    """Median and p90 milliseconds per frame, and the frames per second they allow."""

    frame_size: int
    threads: int
    frames: int
    kp_detector_ms: float
    synthesis_ms: float
    total_ms: float
    total_p90_ms: float
    fps: float

    def to_json(self) -> dict:
        return asdict(self)


def face_frames(size: int, frames: int = 32) -> torch.Tensor:
    """A real-photo talking head (Grace Hopper's portrait, animated) as frames x 3 x size x size
    in [0, 1]: what speed figures are timed on, since a FaceMesh-driven detector does other
    work on a frame without a face."""
    clip = generate_video("photos", seed=0, size=size, frames=max(frames, 2), face="grace_hopper")
    return torch.from_numpy(clip[:frames]).permute(0, 3, 1, 2).float().div(255)


@torch.inference_mode()
def measure_speed(kp_detector: Detector, generator: OcclusionAwareGenerator, frame_size: int,
                  frames: int = 200, warmup: int = 20) -> SpeedReport:
    """Time keypoint detection and synthesis at batch size 1 on a real-photo talking head
    (:func:`face_frames`, its frames in turn)."""
    clip = face_frames(frame_size)
    synthesizer = Synthesizer(kp_detector, generator)
    synthesizer.set_source(clip[:1])
    kp_times, synth_times = [], []
    for i in range(warmup + frames):
        driving = clip[i % len(clip)][None]
        t0 = time.perf_counter()
        kp_driving = kp_detector(driving)
        t1 = time.perf_counter()
        synthesizer.render(kp_driving)
        t2 = time.perf_counter()
        if i >= warmup:
            kp_times.append(t1 - t0)
            synth_times.append(t2 - t1)
    total = np.array(kp_times) + np.array(synth_times)
    total_ms = float(np.median(total) * 1000)
    return SpeedReport(frame_size=frame_size, threads=torch.get_num_threads(), frames=frames,
                       kp_detector_ms=float(np.median(kp_times) * 1000),
                       synthesis_ms=float(np.median(synth_times) * 1000), total_ms=total_ms,
                       total_p90_ms=float(np.percentile(total, 90) * 1000),
                       fps=1000 / total_ms)


def format_speed(report: SpeedReport) -> str:
    """A small table of the figures."""
    rows = [("frame size", f"{report.frame_size}x{report.frame_size}"),
            ("CPU threads", str(report.threads)),
            ("frames timed", str(report.frames)),
            ("keypoint detector", f"{report.kp_detector_ms:.1f} ms"),
            ("synthesis (dense motion + generator)", f"{report.synthesis_ms:.1f} ms"),
            ("detection + synthesis, median", f"{report.total_ms:.1f} ms"),
            ("detection + synthesis, p90", f"{report.total_p90_ms:.1f} ms"),
            ("frames per second (median)", f"{report.fps:.0f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
