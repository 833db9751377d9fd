"""Observe/predict schedule: the detector runs on M frames of every group of M + N."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OBSERVE = 1
DEFAULT_PREDICT = 1


@dataclass(frozen=True)
class Schedule:
    """Frames ``0 .. observe-1`` of each group of ``observe + predict`` are observed (keypoints
    detected and sent); the next ``predict`` are left to the receiver's predictor.

    The papers' M2 protocol is observe=1, predict=1 (every other frame).
    """

    observe: int = DEFAULT_OBSERVE
    predict: int = DEFAULT_PREDICT

    def __post_init__(self) -> None:
        for name, value, low in (("observe", self.observe, 1), ("predict", self.predict, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @property
    def period(self) -> int:
        """Frames per group (M + N)."""
        return self.observe + self.predict

    def position(self, frame_index: int) -> int:
        """Position of ``frame_index`` in its group, 0 .. period-1."""
        if frame_index < 0:
            raise ValueError(f"frame index must be >= 0, got {frame_index}")
        return frame_index % self.period

    def is_observed(self, frame_index: int) -> bool:
        """Whether the detector runs on this frame."""
        return self.position(frame_index) < self.observe
