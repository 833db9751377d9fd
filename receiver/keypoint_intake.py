"""One stream's ``Keypoints`` messages in, apart from any transport.

Each message is decoded (a ``delta`` payload waits for its reference; a late reference unlocks
the ones waiting on it), each decoded set gets the sender's capture time, the message's
``skip_after`` says which frames the sender skipped on purpose (:class:`SkippedFrames`), and
while the newest payload waits for a lost reference the intake says when to ask the sender for
an intra payload: on ``kp`` at most every ``IntraRequestTiming.kp_interval`` seconds (a lost
request holds nothing up), and a copy on ``ctrl`` at most every ``ctrl_interval`` (for senders
that read only ``ctrl``; protocol/README.md, IntraRequest).

The edge's stream (:mod:`kpvid.receiver.stream`) feeds it a data channel's messages; the offline
evaluation (:mod:`kpvid.training.transmission`) a simulated channel's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kpvid.protocol import Hello, KeypointDecoder, Keypoints, ProtocolError
from kpvid.protocol.keypoint_set import to_kp6
from kpvid.protocol.keypoint_stream import MAX_PENDING

from .skipped_frames import SkippedFrames
from .stream_stats import IntraRequestCounts


@dataclass(frozen=True)
class DecodedSet:
    """A keypoint set that decoded, and when the sender captured its frame (its clock)."""

    frame_index: int
    kp6: np.ndarray  # (K, 6) float32
    capture_time: float | None  # None: its message's was dropped (too many waiting)


@dataclass(frozen=True)
class IntraRequestTiming:
    """How often the edge repeats an IntraRequest while the newest payload waits, per channel
    (seconds); ``kp_interval`` None: the sender has no ``kp`` channel to hear it on."""

    kp_interval: float | None = 0.1
    ctrl_interval: float = 0.5


@dataclass(frozen=True)
class Intake:
    """What one message brought: the sets it decoded (its own, and any that waited on it), and
    the channels to send an IntraRequest on now."""

    decoded: list[DecodedSet]
    ask_intra_on: tuple[str, ...] = ()


@dataclass
class KeypointIntake:
    """See the module docstring. ``receive`` raises ProtocolError for a message that does not
    belong to this stream (another codec, a payload that does not decode); the stream's state is
    then as if it had not come."""

    hello: Hello
    timing: IntraRequestTiming = field(default_factory=IntraRequestTiming)

    def __post_init__(self) -> None:
        self.decoder = KeypointDecoder(self.hello.codec, self.hello.num_kp)
        self.skipped = SkippedFrames(self.hello.observe, self.hello.predict)
        self.packets = 0
        self.packet_bytes = 0
        self.intra_requests = IntraRequestCounts()
        self._capture_times: dict[int, float] = {}  # of payloads not decoded yet
        self._asked_at = {"kp": -float("inf"), "ctrl": -float("inf")}

    def receive(self, message: Keypoints, nbytes: int, now: float) -> Intake:
        """Take ``message`` (``nbytes`` on the wire), which arrived at ``now`` (seconds, any
        monotonic clock: it times the IntraRequests)."""
        if message.codec != self.hello.codec:
            raise ProtocolError(f"keypoints in codec {message.codec!r}, hello said "
                                f"{self.hello.codec!r}")
        self._capture_times[message.frame_index] = self.hello.capture_time(message)
        try:
            decoded = self.decoder.decode(message.frame_index, message.payload)
        except ProtocolError as exc:
            del self._capture_times[message.frame_index]
            raise ProtocolError(f"keypoints of frame {message.frame_index}: {exc}") from None
        self.packets += 1
        self.packet_bytes += nbytes
        self.skipped.add(message.frame_index, message.skip_after)
        sets = [DecodedSet(k.frame_index, to_kp6(k.value, k.jacobian),
                           self._capture_times.pop(k.frame_index, None))
                for k in decoded]
        while len(self._capture_times) > 2 * MAX_PENDING:
            del self._capture_times[min(self._capture_times)]
        return Intake(sets, self._intra_channels(now) if self.decoder.broken else ())

    def _intra_channels(self, now: float) -> tuple[str, ...]:
        channels = []
        for channel, interval in (("kp", self.timing.kp_interval),
                                  ("ctrl", self.timing.ctrl_interval)):
            if interval is not None and now - self._asked_at[channel] >= interval:
                self._asked_at[channel] = now
                channels.append(channel)
        self.intra_requests.kp += "kp" in channels
        self.intra_requests.ctrl += "ctrl" in channels
        return tuple(channels)
