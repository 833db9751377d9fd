"""Playout timing and reordering for one stream's keypoint packets (pure: no I/O, no asyncio).

The receiver never waits for packets: it plays frame ``i`` at ``PlayoutClock.due(i)`` with
whatever :class:`JitterBuffer` holds for ``i`` (a missing set is predicted). Times are seconds
on any monotonic clock the caller chooses (``time.monotonic()`` in the receiver, fake numbers in
tests).
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class PlayoutClock:
    """Maps a stream frame index to the local time it is due for playout.

    ``due(i) = anchor + (i - first_index) / fps + delay``.

    Anchor rule: the first packet sets ``first_index`` to its frame index and ``anchor`` to its
    arrival time. A later packet that arrives earlier than the anchor predicts (``arrival <
    anchor + (i - first_index) / fps``) moves the anchor back towards ``arrival - (i -
    first_index) / fps``: the anchor follows the least-delayed packet seen, so a first packet
    that happened to be delayed (a cold detector, the source image sent before it) does not add
    latency to the whole session. The anchor never moves later.

    Until the clock is *locked* the anchor jumps there at once. It locks when the caller calls
    :meth:`lock` (do so when the first frame is played) or when a packet arrives at or after
    ``due(first_index)``. From then on it *slews*: each packet moves it at most ``slew`` frame
    periods, so playout runs at most ``1 + slew`` times faster for a while and never skips or
    replays a frame. Callers read ``due()`` afresh for each frame.
    """

    def __init__(self, fps: float, delay: float, slew: float = 0.05) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        self.fps = float(fps)
        self.delay = float(delay)
        self.slew = float(slew)
        self.first_index: int | None = None
        self.anchor: float | None = None
        self.locked = False

    @property
    def started(self) -> bool:
        """True once the first packet has been seen."""
        return self.first_index is not None

    def on_packet(self, frame_index: int, arrival: float) -> None:
        """Account for a packet of ``frame_index`` that arrived at ``arrival``."""
        if self.first_index is None or self.anchor is None:
            self.first_index = frame_index
            self.anchor = arrival
            return
        if not self.locked and arrival >= self.due(self.first_index):
            self.locked = True
        candidate = arrival - (frame_index - self.first_index) / self.fps
        if candidate < self.anchor:
            step = self.anchor - candidate
            self.anchor -= min(step, self.slew / self.fps) if self.locked else step

    def lock(self) -> None:
        """Fix the anchor from now on (call when the first frame is played)."""
        if not self.started:
            raise RuntimeError("cannot lock a playout clock before its first packet")
        self.locked = True

    def due(self, frame_index: int) -> float:
        """Local time at which ``frame_index`` is played (RuntimeError before the first packet)."""
        if self.first_index is None or self.anchor is None:
            raise RuntimeError("playout clock has not seen a packet yet")
        return self.anchor + (frame_index - self.first_index) / self.fps + self.delay


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
