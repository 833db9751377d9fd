"""Adapting N, the frames the edge predicts per group, to the motion and the edge's feedback.

Quality per bit. A keypoint set costs about the same whatever the gap before it (mostly the
message's fixed part), and the edge's error over a gap grows with the keypoints' speed ``s``
and the frames since the last set: a group of ``G`` frames errs about ``c s (G - 1) / 2`` per
frame and costs ``1 / G`` sets per frame. For a given number of sets, the mean error is
smallest when every group's marginal gain is the same, which gives groups of
``G = pace / sqrt(s)`` frames: sets at a rate proportional to the square root of the speed.
Holding the error at a target instead (groups of ``target / s``) spends most sets on the
fastest motion; on the synthetic calls it loses to the fixed schedules (``kpvid-bench adapt``).

So the sender decides at every group start, from its own keypoints, without waiting:

- the speed is the mean keypoint distance from the last set it sent, per frame, in px of a
  256 x 256 frame; a rise counts at once, a fall slowly (the remembered speed decays by
  ``speed_decay`` per frame: a talking head pauses between syllables);
- N = ``pace / sqrt(speed)`` - 1 (``pace``: the group length at 1 px per frame), within
  ``min_predict .. max_predict`` and at most ``max_increase`` more than the last group's.

The edge's ``Feedback`` (about once a second) caps N. Its prediction error is measured at the
sets that end a gap (the edge's forecast for the set against the set), and the sender knows
what holding the previous set would have erred at the same sets: its distance to the set before.
An edge predictor that does worse than holding (its error over ``max_error_ratio`` times that)
is not worth longer gaps, nor is a link that loses more than ``loss_high`` of the sets: either
sets the cap one below the N in use; a feedback with neither lets it rise by one. Positions are
in keypoint units scaled to pixels of a 256 x 256 frame (FOMM's coordinates span 2, so 1 unit =
128 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kpvid.protocol.keypoint_set import PX_PER_UNIT
from kpvid.protocol.schedule import Schedule

DEFAULT_PACE = 3.0


@dataclass(frozen=True)
class AdaptationOptions:
    pace: float = DEFAULT_PACE  # frames per group at 1 px per frame of keypoint speed
    min_predict: int = 0
    max_predict: int = 6
    max_increase: int = 2  # the most N grows from one group to the next
    speed_decay: float = 0.9  # per frame: how slowly a falling speed is believed
    loss_high: float = 0.1  # share of sent sets lost in a feedback interval
    max_error_ratio: float = 1.5  # edge prediction error over holding the last set's

    def __post_init__(self) -> None:
        for name in ("pace", "max_error_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name.replace('_', ' ')} must be > 0, got "
                                 f"{getattr(self, name)}")
        if not 0 <= self.min_predict <= self.max_predict:
            raise ValueError(f"need 0 <= min predict <= max predict, got {self.min_predict} "
                             f"and {self.max_predict}")
        if self.max_increase < 1:
            raise ValueError(f"max increase must be >= 1, got {self.max_increase}")
        if not 0 <= self.speed_decay < 1:
            raise ValueError(f"speed decay must be in [0, 1), got {self.speed_decay}")
        if not 0 < self.loss_high <= 1:
            raise ValueError(f"loss threshold must be in (0, 1], got {self.loss_high}")


class ScheduleController:
    """Chooses each group's N from the sender's keypoints, within the cap the edge's feedback
    sets (see the module docstring)."""

    def __init__(self, schedule: Schedule, options: AdaptationOptions = AdaptationOptions()
                 ) -> None:
        self.options = options
        self.schedule = Schedule(schedule.observe, min(max(schedule.predict,
                                                           options.min_predict),
                                                       options.max_predict))
        self.cap = options.max_predict
        self.speed: float | None = None  # px at 256 per frame, as remembered
        self._last: tuple[int, np.ndarray] | None = None  # frame index and positions last sent
        self._hold_errors: list[float] = []  # distances of group starts after a gap, units
        self._counters: tuple[int, int] | None = None  # (received, lost) at the last feedback

    def on_group_start(self, frame_index: int, positions: np.ndarray) -> Schedule | None:
        """The first observed frame of a group and its keypoint positions ``(K, 2)``, keypoint
        units. Returns the schedule for the group that starts here when it changes, else
        None."""
        options = self.options
        positions = np.asarray(positions, dtype=np.float64)
        if self._last is not None and frame_index > self._last[0]:
            frames = frame_index - self._last[0]
            distance = float(np.linalg.norm(positions - self._last[1], axis=-1).mean())
            if frames > 1:
                self._hold_errors.append(distance)
            speed = distance * PX_PER_UNIT / frames
            self.speed = (speed if self.speed is None
                          else max(speed, self.speed * options.speed_decay ** frames))
        self._last = (frame_index, positions)
        if self.speed is None:
            return self._adopt(min(self.schedule.predict, self.cap))
        group = options.pace / math.sqrt(max(self.speed, 1e-6))
        predict = min(round(group) - 1, self.schedule.predict + options.max_increase, self.cap)
        return self._adopt(max(options.min_predict, min(options.max_predict, predict)))

    def on_feedback(self, received: int, lost: int, prediction_error: float | None) -> None:
        """The edge's counters since its session started and its prediction error over the
        last interval (keypoint units, None when no set arrived after a gap): moves the cap."""
        previous, self._counters = self._counters, (received, lost)
        hold_errors, self._hold_errors = self._hold_errors, []
        if previous is None or received < previous[0] or lost < previous[1]:
            return  # first feedback, or the edge restarted its counters
        got, missed = received - previous[0], lost - previous[1]
        loss = missed / (got + missed) if got + missed else 0.0
        options = self.options
        degraded = (prediction_error is not None and bool(hold_errors) and prediction_error
                    > options.max_error_ratio * float(np.mean(hold_errors)))
        if loss > options.loss_high or degraded:
            self.cap = max(options.min_predict, self.schedule.predict - 1)
        else:
            self.cap = min(options.max_predict, self.cap + 1)

    def _adopt(self, predict: int) -> Schedule | None:
        if predict == self.schedule.predict:
            return None
        self.schedule = Schedule(self.schedule.observe, predict)
        return self.schedule
