"""Which keypoint set each frame of a stream plays, when, and whether it is rendered (pure: no
I/O, no asyncio; times in seconds on a clock the caller chooses).

Decoded sets wait in a :class:`~kpvid.receiver.jitter.JitterBuffer`. Frame ``i`` is played
(:meth:`Playout.due`) as soon as its set is in; a frame the sender skipped on purpose at the
time its set would have come by the least-delayed path
(:meth:`~kpvid.receiver.jitter.PlayoutClock.earliest`); a frame whose set has not come by its
deadline (:meth:`PlayoutClock.due <kpvid.receiver.jitter.PlayoutClock.due>`, which follows the
stream's arrival jitter) without it. The predictor fills a frame without a set: *predicted* when
the sender skipped it, *lost* when it sent one that had not come
(:class:`~kpvid.receiver.skipped_frames.SkippedFrames`). A lost frame's set that comes after all
is *late*: it is counted so and handed back to the caller, which corrects the predictor with it.

A frame is not rendered (its set still goes to the predictor) when the tick is more than
``max_lag`` behind the frame's deadline (*dropped*: an edge too slow for its load skips frames
instead of lagging further), or when the edge renders only every ``render_every``-th frame
(*thinned*: an overloaded edge lowers its frame rate evenly; :mod:`kpvid.receiver.overload`).
The edge's stream ticks on the event loop's clock; the offline evaluation on a simulated one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .jitter import JitterBuffer, PlayoutClock
from .keypoint_intake import DecodedSet
from .skipped_frames import SkippedFrames
from .stream_stats import FrameCounts, FrameOrigin, Undrawn

LATE_WINDOW = 64  # lost frames remembered for a set that may still come


class Placed(Enum):
    """What :meth:`Playout.put` did with a set."""

    QUEUED = "queued"  # waits for its frame
    LATE = "late"  # its frame was played without it (lost, now late): correct the predictor
    REFUSED = "refused"  # a duplicate, too far ahead, or a frame played long ago


@dataclass(frozen=True)
class Tick:
    """One frame's turn: its set (None: the predictor's) and what becomes of it."""

    index: int
    kp6: np.ndarray | None
    # the sender's capture time of the frame: its set's, or for a frame without one, estimated
    # from the last set's (None before any set carried one)
    capture_time: float | None
    arrival: float | None  # when its set was put (the caller's clock); None without a set
    origin: FrameOrigin
    lag: float  # seconds past the frame's deadline it was played (negative: before it)
    undrawn: Undrawn | None  # None: rendered

    @property
    def draw(self) -> bool:
        return self.undrawn is None


class Playout:
    """One stream's playout: its clock, its jitter buffer and its frame counts. ``delay`` None:
    the deadline follows the arrival jitter, at most ``max_delay`` (see
    :class:`~kpvid.receiver.jitter.PlayoutClock`)."""

    def __init__(self, fps: float, delay: float | None, max_lag: float,
                 skipped: SkippedFrames, max_delay: float = 0.1) -> None:
        self.clock = PlayoutClock(fps, delay, max_delay)
        self.jitter: JitterBuffer[tuple[DecodedSet, float]] = JitterBuffer()  # set, arrival
        self.max_lag = max_lag
        self.skipped = skipped
        self.counts = FrameCounts()
        self._lost: deque[int] = deque(maxlen=LATE_WINDOW)  # recent frames ticked lost
        self._capture_offset: float | None = None  # capture time - index / fps, last set's

    def put(self, decoded: DecodedSet, now: float) -> Placed:
        """A set decoded at ``now``."""
        if decoded.capture_time is not None:
            self._capture_offset = decoded.capture_time - decoded.frame_index / self.clock.fps
        index = decoded.frame_index
        if self.jitter.put(index, (decoded, now)):
            self.clock.on_packet(index, now)
            return Placed.QUEUED
        if index not in self._lost:
            return Placed.REFUSED
        self._lost.remove(index)
        self.clock.on_packet(index, now)  # its delay is the jitter the deadline must follow
        self.counts.lost -= 1
        self.counts.late += 1
        return Placed.LATE

    def due(self, index: int) -> float:
        """When frame ``index`` is played: now (-inf) if its set is in, else the time its set
        would have come by the fastest path if the sender skipped it, else its deadline."""
        if index in self.jitter:
            return -float("inf")
        if self.skipped.skipped(index):
            return self.clock.earliest(index)
        return self.clock.due(index)

    def tick(self, index: int, now: float, render_every: int = 1) -> Tick:
        """Play frame ``index`` at ``now`` (frames are ticked in order); with ``render_every``
        k > 1 only frames whose index is a multiple of k are rendered."""
        queued = self.jitter.take(index)
        entry, arrival = (None, None) if queued is None else queued
        if entry is not None:
            origin = FrameOrigin.OBSERVED
        elif self.skipped.skipped(index):
            origin = FrameOrigin.PREDICTED
        else:
            origin = FrameOrigin.LOST
            self._lost.append(index)
        self.counts.add(origin)
        lag = now - self.clock.due(index)
        undrawn = Undrawn.DROPPED if lag > self.max_lag else \
            Undrawn.THINNED if index % render_every else None
        if undrawn is not None:
            self.counts.add(undrawn)
        if entry is not None:
            capture_time = entry.capture_time
        elif self._capture_offset is not None:
            capture_time = self._capture_offset + index / self.clock.fps
        else:
            capture_time = None
        return Tick(index, None if entry is None else entry.kp6, capture_time, arrival, origin,
                    lag, undrawn)
