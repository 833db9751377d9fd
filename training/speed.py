"""Per-frame cost of the receiver's model work (``kpvid-eval speed``): keypoint detection and
synthesis of one frame at a time with the :class:`~kpvid.models.Synthesizer`, source work done
once, as a live stream runs it. ``kpvid-bench speed`` times batches and compares methods."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from kpvid.models import KPDetector, OcclusionAwareGenerator, Synthesizer


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


@torch.inference_mode()
def measure_speed(kp_detector: KPDetector, generator: OcclusionAwareGenerator, frame_size: int,
                  frames: int = 200, warmup: int = 20) -> SpeedReport:
    """Time keypoint detection and synthesis on random frames at batch size 1."""
    synthesizer = Synthesizer(kp_detector, generator)
    synthesizer.set_source(torch.rand(1, 3, frame_size, frame_size))
    kp_times, synth_times = [], []
    for i in range(warmup + frames):
        driving = torch.rand(1, 3, frame_size, frame_size)
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
