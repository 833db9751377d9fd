"""Observe/predict schedule: the detector runs on M frames of every group of M + N."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OBSERVE = 1
DEFAULT_PREDICT = 1


@dataclass(frozen=True)
class Schedule:
    """Frames ``0 .. observe-1`` of each group of ``observe + predict`` are observed (keypoints
    detected and sent); the next ``predict`` are left to the receiver's predictor.

    The papers' M2 protocol is observe=1, predict=1 (every other frame). Groups start at frame
    ``start`` (a schedule adopted during a stream starts its first group there).
    """

    observe: int = DEFAULT_OBSERVE
    predict: int = DEFAULT_PREDICT
    start: int = 0

    def __post_init__(self) -> None:
        for name, value, low in (("observe", self.observe, 1), ("predict", self.predict, 0),
                                 ("start", self.start, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @property
    def period(self) -> int:
        """Frames per group (M + N)."""
        return self.observe + self.predict

    def position(self, frame_index: int) -> int:
        """Position of ``frame_index`` in its group, 0 .. period-1."""
        if frame_index < self.start:
            raise ValueError(f"frame index must be >= {self.start}, got {frame_index}")
        return (frame_index - self.start) % self.period

    def is_observed(self, frame_index: int) -> bool:
        """Whether the detector runs on this frame."""
        return self.position(frame_index) < self.observe

    def skip_after(self, frame_index: int) -> int:
        """Frames skipped after this observed one before the next: ``predict`` after a group's
        last observed frame, 0 before it (what a ``Keypoints`` message tells the edge)."""
        return self.predict if self.position(frame_index) == self.observe - 1 else 0


class ScheduleTimeline:
    """A stream's schedules over its frames: each one holds from its ``start`` until the next
    one's. The sender adds a schedule when it adapts N."""

    def __init__(self, first: Schedule, keep: int = 8) -> None:
        self._schedules = [first]
        self._keep = keep  # the most recent schedules remembered

    def at(self, frame_index: int) -> Schedule:
        """The schedule of ``frame_index`` (the first one for frames before every start)."""
        for schedule in reversed(self._schedules):
            if schedule.start <= frame_index:
                return schedule
        return self._schedules[0]

    def add(self, schedule: Schedule) -> None:
        """Adopt ``schedule`` from its start on; it replaces any schedule that starts later."""
        self._schedules = [s for s in self._schedules if s.start < schedule.start]
        self._schedules.append(schedule)
        del self._schedules[:-self._keep]
