"""Playout timing and reordering for one stream's keypoint packets (pure: no I/O, no asyncio).

The receiver plays frame ``i`` as soon as its set is in the :class:`JitterBuffer`, and at the
latest at ``PlayoutClock.due(i)``, with a prediction in its place. Times are seconds
on any monotonic clock the caller chooses (``time.monotonic()`` in the receiver, fake numbers in
tests).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class ArrivalJitter:
    """How far behind the least-delayed path a stream's sets arrive, and the wait it calls for.

    Each set's *offset* is its arrival time minus the time the least-delayed path would have
    brought it (:meth:`PlayoutClock.earliest`): detection, network and scheduling jitter
    together. The wait is a high ``quantile`` of the last ``window`` offsets plus ``margin``,
    at most ``max_delay``; ``max_delay`` until ``min_samples`` sets have been seen. A set later
    than that is not waited for: its frame is predicted (and the set, when it comes, corrects the
    predictor)."""

    def __init__(self, max_delay: float, window: int = 128, quantile: float = 0.98,
                 margin: float = 0.003, min_samples: int = 8) -> None:
        if not max_delay >= 0:
            raise ValueError(f"max delay must be >= 0, got {max_delay}")
        self.max_delay = float(max_delay)
        self.quantile = quantile
        self.margin = margin
        self.min_samples = min_samples
        self._offsets: deque[float] = deque(maxlen=window)
        self._delay = self.max_delay

    def add(self, offset: float) -> None:
        """One set's offset (seconds; negative ones count as 0)."""
        self._offsets.append(max(0.0, offset))
        if len(self._offsets) >= self.min_samples:
            wanted = float(np.quantile(np.fromiter(self._offsets, float), self.quantile))
            self._delay = min(self.max_delay, wanted + self.margin)

    @property
    def delay(self) -> float:
        """The wait for a set beyond its earliest arrival, in seconds."""
        return self._delay


class PlayoutClock:
    """Maps a stream frame index to local times: the earliest its set can arrive, and the
    deadline by which the receiver plays it, with or without its set.

    ``earliest(i) = anchor + (i - first_index) / fps`` and ``due(i) = earliest(i) + delay``.
    ``delay`` is fixed, or (``delay=None``) follows the stream's arrival jitter
    (:class:`ArrivalJitter`, at most ``max_delay``).

    Anchor rule: the first packet sets ``first_index`` to its frame index and ``anchor`` to its
    arrival time. A later packet that arrives earlier than the anchor predicts (``arrival <
    earliest(i)``) moves the anchor back towards ``arrival - (i - first_index) / fps``: the
    anchor follows the least-delayed packet seen, so a first packet that happened to be delayed
    (a cold detector, the source image sent before it) does not add latency to the whole
    session. The anchor never moves later.

    Until the clock is *locked* the anchor jumps there at once. It locks when the caller calls
    :meth:`lock` (do so when the first frame is played) or when a packet arrives at or after
    ``due(first_index)``. From then on it *slews*: each packet moves it at most ``slew`` frame
    periods, so playout runs at most ``1 + slew`` times faster for a while and never skips or
    replays a frame. Callers read ``due()`` afresh for each frame.
    """

    def __init__(self, fps: float, delay: float | None = None, max_delay: float = 0.1,
                 slew: float = 0.05) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if delay is not None and not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.fps = float(fps)
        self.jitter = None if delay is not None else ArrivalJitter(max_delay)
        self._fixed_delay = delay
        self.slew = float(slew)
        self.first_index: int | None = None
        self.anchor: float | None = None
        self.locked = False

    @property
    def delay(self) -> float:
        """The wait for a set beyond its earliest arrival, in seconds (now, if adaptive)."""
        return self.jitter.delay if self.jitter is not None else self._fixed_delay  # type: ignore

    @property
    def started(self) -> bool:
        """True once the first packet has been seen."""
        return self.first_index is not None

    def on_packet(self, frame_index: int, arrival: float) -> None:
        """Account for a packet of ``frame_index`` that arrived at ``arrival``."""
        if self.first_index is None or self.anchor is None:
            self.first_index = frame_index
            self.anchor = arrival
        else:
            if not self.locked and arrival >= self.due(self.first_index):
                self.locked = True
            candidate = arrival - (frame_index - self.first_index) / self.fps
            if candidate < self.anchor:
                step = self.anchor - candidate
                self.anchor -= min(step, self.slew / self.fps) if self.locked else step
        if self.jitter is not None:
            self.jitter.add(arrival - self.earliest(frame_index))

    def lock(self) -> None:
        """Fix the anchor from now on (call when the first frame is played)."""
        if not self.started:
            raise RuntimeError("cannot lock a playout clock before its first packet")
        self.locked = True

    def earliest(self, frame_index: int) -> float:
        """Local time at which the least-delayed path brings ``frame_index``'s set
        (RuntimeError before the first packet)."""
        if self.first_index is None or self.anchor is None:
            raise RuntimeError("playout clock has not seen a packet yet")
        return self.anchor + (frame_index - self.first_index) / self.fps

    def due(self, frame_index: int) -> float:
        """Local time by which ``frame_index`` is played, its set or not (RuntimeError before
        the first packet)."""
        return self.earliest(frame_index) + self.delay


class JitterBuffer(Generic[T]):
    """Keypoint sets (or anything) keyed by frame index, waiting for their playout.

    Before the first :meth:`take` the entries may span at most ``capacity`` consecutive indices;
    after it, the window is ``last_taken + 1 .. last_taken + capacity``. A :meth:`put` is
    refused (returns False) and counted in ``late`` (index already played, i.e.
    ``<= last_taken``), ``duplicates`` (index already held) or ``too_far`` (outside the window).
    Memory therefore stays bounded by ``capacity`` entries.
    """

    def __init__(self, capacity: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.last_taken: int | None = None
        self.late = 0
        self.duplicates = 0
        self.too_far = 0
        self._items: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, frame_index: int) -> bool:
        return frame_index in self._items

    def put(self, frame_index: int, item: T) -> bool:
        """Store ``item`` for ``frame_index``; False (and counted) when refused."""
        if self.last_taken is not None and frame_index <= self.last_taken:
            self.late += 1
            return False
        if frame_index in self._items:
            self.duplicates += 1
            return False
        if not self._in_window(frame_index):
            self.too_far += 1
            return False
        self._items[frame_index] = item
        return True

    def take(self, frame_index: int) -> T | None:
        """The item for ``frame_index`` if it arrived, else None; drops it and all older ones.

        ``frame_index`` then counts as played: later puts at or below it are ``late``."""
        item = self._items.pop(frame_index, None)
        for index in [i for i in self._items if i < frame_index]:
            del self._items[index]
        if self.last_taken is None or frame_index > self.last_taken:
            self.last_taken = frame_index
        return item

    def _in_window(self, frame_index: int) -> bool:
        if self.last_taken is not None:
            return frame_index <= self.last_taken + self.capacity
        if not self._items:
            return True
        low = min(frame_index, min(self._items))
        high = max(frame_index, max(self._items))
        return high - low < self.capacity
