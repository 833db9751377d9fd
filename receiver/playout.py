"""Which keypoint set each frame of a stream plays, and whether it is rendered (pure: no I/O, no
asyncio; times in seconds on a clock the caller chooses).

Decoded sets wait in a :class:`~kpvid.receiver.jitter.JitterBuffer`; frame ``i`` is due at
:meth:`PlayoutClock.due(i) <kpvid.receiver.jitter.PlayoutClock.due>`. When the caller ticks
frame ``i`` it plays the set that arrived for it (*observed*), or none, and then the predictor
fills it: *predicted* when the sender skipped it on purpose, *lost* when it sent one that did not
come or did not decode (:class:`~kpvid.receiver.skipped_frames.SkippedFrames`). A tick more than
``max_lag`` behind its due time is *late*: its set still goes to the predictor, but the frame is
not rendered, so that an edge too slow for its load skips frames instead of lagging further.
The edge's stream ticks on the event loop's clock; the offline evaluation on a simulated one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .jitter import JitterBuffer, PlayoutClock
from .keypoint_intake import DecodedSet
from .skipped_frames import SkippedFrames
from .stream_stats import FrameCounts, FrameOrigin


@dataclass(frozen=True)
class Tick:
    """One frame's turn: its set (None: the predictor's) and what becomes of it."""

    index: int
    kp6: np.ndarray | None
    capture_time: float | None  # the sender's capture time of an observed set
    origin: FrameOrigin
    late: bool  # more than max_lag behind: not rendered


class Playout:
    """One stream's playout: its clock, its jitter buffer and its frame counts."""

    def __init__(self, fps: float, delay: float, max_lag: float, skipped: SkippedFrames) -> None:
        self.clock = PlayoutClock(fps, delay)
        self.jitter: JitterBuffer[DecodedSet] = JitterBuffer()
        self.max_lag = max_lag
        self.skipped = skipped
        self.counts = FrameCounts()

    def put(self, decoded: DecodedSet, now: float) -> bool:
        """A set decoded at ``now``; False when it came too late (its frame was played), twice,
        or too far ahead."""
        if not self.jitter.put(decoded.frame_index, decoded):
            return False
        self.clock.on_packet(decoded.frame_index, now)
        return True

    def tick(self, index: int, now: float) -> Tick:
        """Play frame ``index`` at ``now`` (frames are ticked in order)."""
        entry = self.jitter.take(index)
        if entry is not None:
            origin = FrameOrigin.OBSERVED
        elif self.skipped.skipped(index):
            origin = FrameOrigin.PREDICTED
        else:
            origin = FrameOrigin.LOST
        self.counts.add(origin)
        late = now - self.clock.due(index) > self.max_lag
        if late:
            self.counts.dropped += 1
        return Tick(index, None if entry is None else entry.kp6,
                    None if entry is None else entry.capture_time, origin, late)
