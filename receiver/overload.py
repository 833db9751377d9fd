"""Graceful overload: how many frames the edge renders, from how busy its synthesis is.

An edge that cannot render every frame in time (a busy CPU, too many streams) would fall behind
and then skip bursts of frames at ``--max-lag``. Instead, :class:`RenderRate` watches the share
of time the synthesis worker is busy over windows of ``window`` seconds, and how late the
streams play their frames (past their deadlines), and renders only every k-th frame (the others
are still predicted, so motion stays right): k goes up by one when the share is over ``high``
and a frame was played more than ``lag`` late in the window (a busy worker that keeps up is
not overloaded), and down by one when the share that k - 1 would give (``share * k /
(k - 1)``, rendering being most of the work) has been under ``low`` for ``calm_windows``
windows in a row, so that the two do not alternate. The streams render every k-th frame, tell
their senders (``Feedback.render_every``: a sender then predicts more and detects less) and
their viewers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class OverloadOptions:
    high: float = 0.9  # busy share over which fewer frames are rendered
    low: float = 0.85  # busy share that one step back must stay under...
    calm_windows: int = 4  # ...for this many windows in a row
    lag: float = 0.05  # seconds past its deadline a frame played, to count as falling behind
    window: float = 0.5  # seconds per decision
    max_every: int = 4  # render at least every 4th frame

    def __post_init__(self) -> None:
        if not 0 < self.low < self.high <= 1:
            raise ValueError(f"need 0 < low < high <= 1, got {self.low} and {self.high}")
        if self.max_every < 1 or self.calm_windows < 1 or not self.window > 0:
            raise ValueError("max_every and calm_windows must be >= 1 and window > 0")


class RenderRate:
    """Every how many frames the edge renders (1: all), from the synthesis worker's busy time
    (see the module docstring). ``update`` (the worker, after each job) and ``note_lag`` (the
    streams, at each frame) are called with a monotonic time and the worker's busy seconds so
    far (any clock; fake numbers in tests), from any thread."""

    def __init__(self, options: OverloadOptions = OverloadOptions()) -> None:
        self.options = options
        self.every = 1
        self.share: float | None = None  # the last window's busy share
        self._start: tuple[float, float] | None = None  # (time, busy seconds) at window start
        self._calm = 0  # windows in a row that one step back would have kept under low
        self._lag = 0.0  # the most a frame was played past its deadline in this window
        self._lock = threading.Lock()

    def note_lag(self, seconds: float, now: float, busy: float) -> int:
        """A stream played a frame ``seconds`` past its deadline (negative: before it). When
        it is more than ``lag`` late and the worker has been busy over ``high`` for at least
        half a window, step up at once rather than at the window's end (a new window starts).
        The render step to use from now."""
        with self._lock:
            self._lag = max(self._lag, seconds)
            if seconds <= self.options.lag or self._start is None \
                    or self.every >= self.options.max_every:
                return self.every
            elapsed = now - self._start[0]
            share = (busy - self._start[1]) / elapsed if elapsed > 0 else 0.0
            if elapsed >= self.options.window / 2 and share > self.options.high:
                self.every += 1
                self.share, self._start, self._lag, self._calm = share, (now, busy), 0.0, 0
            return self.every

    def update(self, now: float, busy: float) -> int:
        """Account for the time up to ``now``; the render step to use from now."""
        with self._lock:
            return self._update(now, busy)

    def _update(self, now: float, busy: float) -> int:
        if self._start is None:
            self._start = (now, busy)
            return self.every
        elapsed = now - self._start[0]
        if elapsed < self.options.window:
            return self.every
        share = (busy - self._start[1]) / elapsed
        behind, self._lag = self._lag > self.options.lag, 0.0
        self.share, self._start = share, (now, busy)
        calm = self.every > 1 and share * self.every / (self.every - 1) < self.options.low
        self._calm = self._calm + 1 if calm else 0
        if share > self.options.high and behind and self.every < self.options.max_every:
            self.every += 1
        elif self._calm >= self.options.calm_windows:
            self.every -= 1
            self._calm = 0
        return self.every
