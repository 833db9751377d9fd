"""How well the edge's predictor fills the gaps, for the sender's adaptation.

Before the predictor observes a set that arrived, the edge asks it what it would have
predicted for that frame (:meth:`~kpvid.models.predictors.Predictor.forecast`); the distance
between the two, averaged over the keypoints, is the prediction error of a gap one frame longer
than the one just played. ``Feedback.prediction_error`` is its mean over a feedback interval.
"""

from __future__ import annotations

import numpy as np

from kpvid.protocol.keypoint_set import position_error


class PredictionErrorWindow:
    """Forecast errors since the last :meth:`take`. Sets that end a gap (the frame before was
    predicted or lost) are what the sender's schedule controls; when none did (every frame
    sent), the one-step errors of all sets stand in."""

    def __init__(self) -> None:
        self._after_gap: list[float] = []
        self._all: list[float] = []
        self._in_gap = False

    def gap(self) -> None:
        """A frame was predicted (skipped or lost)."""
        self._in_gap = True

    def add(self, forecast: np.ndarray, observed: np.ndarray) -> None:
        """A set arrived; ``forecast`` is what the predictor said for it beforehand."""
        error = position_error(forecast, observed)
        self._all.append(error)
        if self._in_gap:
            self._after_gap.append(error)
        self._in_gap = False

    def take(self) -> float | None:
        """The interval's mean error (None without any), and start a new interval."""
        errors = self._after_gap or self._all
        mean = float(np.mean(errors)) if errors else None
        self._after_gap, self._all = [], []
        return mean
