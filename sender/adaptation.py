"""Adapting N, the frames the edge predicts per group, to the edge's feedback.

Every ``Feedback`` (about once a second) says how many keypoint sets the edge received and lost
and how far off its predictor was at the sets that did arrive: before it observes a set, the
edge asks its predictor for that frame (:meth:`~kpvid.models.predictors.Predictor.forecast`)
and reports the mean distance. With ``predict`` N, a set arrives N + 1 frames after the last
one, so the reported error is that of an (N + 1)-step prediction: the error of the worst frame
of a gap one frame longer. That makes the rule simple:

- error below the target: one more predicted frame per group (its worst frame would still be
  within the target);
- the current gap's worst frame (error x N / (N + 1), prediction error grows about linearly
  over a few frames) above the target: as many fewer as that linear model says, at once;
- loss above ``loss_high``: one fewer (a lost set already lengthens the gap), and no increase
  while loss is above half of it.

Decreases are immediate, increases one step at a time. Positions are in keypoint units scaled
to pixels of a 256 x 256 frame (FOMM's coordinates span 2, so 1 unit = 128 px).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .schedule import Schedule

PX_PER_UNIT = 128.0  # keypoint coordinates span [-1, 1]: px of a 256 x 256 frame per unit
DEFAULT_TARGET_ERROR_PX = 2.0


@dataclass(frozen=True)
class AdaptationOptions:
    target_error_px: float = DEFAULT_TARGET_ERROR_PX  # worst predicted frame's error, px at 256
    min_predict: int = 0
    max_predict: int = 6
    loss_high: float = 0.1  # share of sent sets lost in a feedback interval

    def __post_init__(self) -> None:
        if not self.target_error_px > 0:
            raise ValueError(f"target error must be > 0 px, got {self.target_error_px}")
        if not 0 <= self.min_predict <= self.max_predict:
            raise ValueError(f"need 0 <= min predict <= max predict, got {self.min_predict} "
                             f"and {self.max_predict}")
        if not 0 < self.loss_high <= 1:
            raise ValueError(f"loss threshold must be in (0, 1], got {self.loss_high}")


class ScheduleController:
    """Turns the edge's feedback into the next schedule (see the module docstring)."""

    def __init__(self, schedule: Schedule, options: AdaptationOptions = AdaptationOptions()
                 ) -> None:
        self.options = options
        self.schedule = Schedule(schedule.observe, min(max(schedule.predict,
                                                           options.min_predict),
                                                       options.max_predict))
        self._counters: tuple[int, int] | None = None  # (received, lost) at the last feedback

    def on_feedback(self, received: int, lost: int, prediction_error: float | None
                    ) -> Schedule | None:
        """The edge's counters since its session started and its prediction error over the
        last interval (keypoint units, None when no set arrived after a gap). Returns the new
        schedule when it changes, else None."""
        previous, self._counters = self._counters, (received, lost)
        if previous is None or received < previous[0] or lost < previous[1]:
            return None  # first feedback, or the edge restarted its counters
        got, missed = received - previous[0], lost - previous[1]
        loss = missed / (got + missed) if got + missed else 0.0
        predict = self._next_predict(loss, prediction_error)
        if predict == self.schedule.predict:
            return None
        self.schedule = Schedule(self.schedule.observe, predict)
        return self.schedule

    def _next_predict(self, loss: float, error: float | None) -> int:
        options, n = self.options, self.schedule.predict
        if loss > options.loss_high:
            return max(options.min_predict, n - 1)
        if error is None:
            return n
        error_px = error * PX_PER_UNIT
        if error_px * n / (n + 1) > options.target_error_px:
            # error grows about linearly with the gap: the longest gap within the target
            fits = math.floor(options.target_error_px * (n + 1) / error_px)
            return max(options.min_predict, min(n - 1, fits))
        if error_px < options.target_error_px and loss <= options.loss_high / 2:
            return min(options.max_predict, n + 1)
        return n
