"""What the edge reports about a stream: how it ended, where its frames came from, and its live
figures as ``/api/streams`` serves them (:class:`StreamStats`, read by the viewer page, the demo
and the benchmarks)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum


class EndReason(Enum):
    """Why a stream (or a sender's connection that never became one) ended."""

    SENDER_FINISHED = "sender finished"  # it said bye; its last frame was played
    SENDER_SILENT = "sender gone (no packets)"
    SENDER_SILENT_BEFORE_PLAYOUT = "sender gone before playout started"
    BYE_BEFORE_KEYPOINTS = "bye before any keypoints"
    CONNECTION_LOST = "connection lost"
    SYNTHESIS_STOPPED = "synthesis stopped"
    FAILED = "stream failed"  # a bug in one of its tasks (the edge's log has the traceback)
    REPLACED = "replaced by a new session of the same name"
    EDGE_SHUTDOWN = "edge shutting down"
    NOT_STARTED = "never started"  # a connection that never opened a stream


@dataclass(frozen=True)
class StreamEnd:
    """An :class:`EndReason` and what it says about this case (the sender's bye reason, the
    connection state, the task that failed)."""

    reason: EndReason
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}" if self.detail else self.reason.value


class FrameOrigin(Enum):
    """Where a played frame's keypoint set came from."""

    OBSERVED = "observed"  # the sender's, decoded in time
    PREDICTED = "predicted"  # the sender skipped it on purpose (its schedule): the predictor's
    LOST = "lost"  # the sender sent it and it did not come (or did not decode): the predictor's


class Undrawn(Enum):
    """Why a played frame was not rendered (its set still went to the predictor)."""

    DROPPED = "dropped"  # played more than max_lag past its deadline
    THINNED = "thinned"  # the overloaded edge renders only every k-th frame


@dataclass
class FrameCounts:
    """Every tick of the playout clock is observed, predicted, lost or late (where its set came
    from: a :class:`FrameOrigin`, except that a lost frame whose set came after its deadline
    counts as *late*), and either out (rendered), dropped (the edge ran too late and skipped
    rendering it) or thinned (an overloaded edge rendered only every k-th frame)."""

    observed: int = 0
    predicted: int = 0
    lost: int = 0
    late: int = 0  # the sender's set came after the frame was played from a prediction
    out: int = 0
    dropped: int = 0
    thinned: int = 0

    def add(self, kind: FrameOrigin | Undrawn) -> None:
        """Count one frame of ``kind`` (its value names the field)."""
        setattr(self, kind.value, getattr(self, kind.value) + 1)

    @property
    def ticks(self) -> int:
        return self.observed + self.predicted + self.lost + self.late


@dataclass
class IntraRequestCounts:
    """IntraRequests the edge sent, per channel."""

    kp: int = 0
    ctrl: int = 0


@dataclass(frozen=True)
class LatencySummary:
    """Capture on the sender to frame out of the edge, of every frame out (a frame without a
    set: its capture time estimated from the last set's), in ms (None: none yet)."""

    p50: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class StreamStats:
    """One stream's figures: the ``/api/streams`` schema (:meth:`to_json`)."""

    name: str
    fps: float
    frame_size: int
    observe: int
    predict: int  # the sender's N as of its newest keypoints
    codec: str
    predictor: str
    frames: FrameCounts
    packets: int
    undecodable: int
    intra_requests: IntraRequestCounts
    kbps: float  # keypoint messages over the last 2 s
    kbps_mean: float  # keypoint messages over the stream time played so far (every tick)
    fps_out: float
    latency_ms: LatencySummary
    # p50s in ms of observed frames: capture_to_arrival (the sender's detector and the
    # channel), wait (for the frame's turn), synthesis (prediction and rendering)
    stages_ms: dict[str, float | None]
    render_every: int  # the edge renders every k-th frame (1: all; more while overloaded)
    viewers: int
    recording: str | None
    ended: StreamEnd | None = field(default=None)  # None while the stream is live

    def to_json(self) -> dict:
        """A JSON-ready dict (``ended``: the end as text; absent while live)."""
        out = dataclasses.asdict(self)
        out["ended"] = str(self.ended) if self.ended is not None else None
        if self.ended is None:
            del out["ended"]
        return out
