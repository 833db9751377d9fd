"""The edge node: its senders' streams, its viewers, and the one synthesis engine they share."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from kpvid.protocol import Hello, RateLimitedLog

from .frame_stamp import FrameStamp, draw_stamp, stamp_ms
from .metrics import ReceiverMetrics
from .sender_peer import SenderPeer
from .stream import FrameSink, ModelInfo, SessionOptions, StreamSession
from .stream_stats import EndReason, StreamEnd, StreamStats
from .synthesis import SynthesisEngine
from .video_track import VIDEO_CLOCK_RATE, SynthesizedVideoTrack

log = logging.getLogger(__name__)

ENDED_KEPT = 16  # final figures of this many ended streams stay in /api/streams
MAX_STREAMS = 16
MAX_VIEWERS = 32
HANDSHAKE_TIMEOUT = 15.0
MAX_PENDING_PER_ADDRESS = 4
RESUME_GRACE = 10.0


class NoSuchStream(LookupError):
    """A viewer asked for a stream that is not live."""


class StreamOutput:
    """The video the viewers of one stream name watch. It outlives the stream's sessions: a
    sender that comes back under the same name (restarted, reconnected, or replacing itself)
    plays on to the same viewers, whose peer connections stay as they are.

    Each session feeds it through its own `sink`; the frames' pts (90 kHz) go on from the
    previous session's last one, plus the time that passed in between, so the viewers' RTP
    clock never jumps back when a new session's frame index starts again at 0.

    With ``stamp_frames`` each frame with a capture time carries a time stamp
    (receiver/frame_stamp.py: its capture time and when it left the edge) for the viewer page
    to measure glass-to-glass latency; only the viewers' picture is stamped."""

    def __init__(self, name: str, stamp_frames: bool = False) -> None:
        self.name = name
        self.stamp_frames = stamp_frames
        self.track = SynthesizedVideoTrack(VIDEO_CLOCK_RATE)  # "frame index" = pts
        self.expiry: asyncio.Task | None = None  # closes the viewers if no sender comes back
        self.idle_since: float | None = None  # when its last session ended (None: one is live)
        self._last_pts: int | None = None
        self._last_at = 0.0

    def sink(self, fps: float) -> FrameSink:
        """Where one session at `fps` pushes its frames."""
        offset: int | None = None

        def push(frame_index: int, rgb: np.ndarray, capture_time: float | None) -> None:
            nonlocal offset
            now = time.monotonic()
            ticks = round(frame_index * VIDEO_CLOCK_RATE / fps)
            if offset is None:
                start = 0 if self._last_pts is None else self._last_pts + max(
                    1, round((now - self._last_at) * VIDEO_CLOCK_RATE))
                offset = start - ticks
            pts = offset + ticks
            if self._last_pts is not None and pts <= self._last_pts:
                return  # never back in time
            self._last_pts, self._last_at = pts, now
            if self.stamp_frames and capture_time is not None:
                rgb = draw_stamp(rgb, FrameStamp(stamp_ms(capture_time), stamp_ms(time.time())))
            self.track.push(pts, rgb)

        return push

    def cancel_expiry(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None

    def close(self) -> None:
        self.cancel_expiry()
        self.track.stop()


class EdgeFull(RuntimeError):
    """An offer refused, before any peer connection was made, because a limit is reached.
    `reason` names the limit (max_streams, max_viewers, too_many_pending)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class EdgeOptions:
    session: SessionOptions = field(default_factory=SessionOptions)
    ice_servers: list[RTCIceServer] = field(default_factory=list)  # the edge's own peers
    viewer_ice_servers: list[RTCIceServer] | None = None  # for browsers; None: ice_servers
    max_streams: int = MAX_STREAMS  # sender connections at once, said hello or not yet
    max_viewers: int = MAX_VIEWERS  # viewer connections at once, over all streams
    # a sender must say hello, and a viewer be connected, this soon after its answer, or its
    # peer is closed (an offer that never gets going must not hold a slot)
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    # answered offers from one client address that are not going yet (a sender without a
    # hello, a viewer not connected), per role: without it, an address or two posting offers
    # at the allowed rate and never connecting would hold every slot
    max_pending_per_address: int = MAX_PENDING_PER_ADDRESS
    # a stream that ends keeps its viewers connected this long, for its sender to come back
    # under the same name (a restart); then they are closed
    resume_grace: float = RESUME_GRACE
    # measurement mode: time stamps drawn into the viewers' video (StreamOutput), not the recording
    stamp_frames: bool = False


class Edge:
    """Accepts senders and viewers; one `StreamSession` per live stream name."""

    def __init__(self, engine: SynthesisEngine, model: ModelInfo,
                 options: EdgeOptions | None = None,
                 metrics: ReceiverMetrics | None = None) -> None:
        self.engine = engine
        self.model = model
        self.options = options or EdgeOptions()
        self.metrics = metrics or ReceiverMetrics()
        # tells this edge from the one before it on the same address: a viewer still connected
        # to the old one (it need not have noticed) sees it changed and reconnects
        self.instance = secrets.token_hex(6)
        self.streams: dict[str, StreamSession] = {}
        self.outputs: dict[str, StreamOutput] = {}  # per stream name, live or resuming
        self.relay = MediaRelay()
        self._senders: set[SenderPeer] = set()
        self._viewers: dict[RTCPeerConnection, str] = {}
        self._viewer_remotes: dict[RTCPeerConnection, str] = {}
        self._drop_log = RateLimitedLog(log)
        self._tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.Task] = set()
        self.ended: deque[StreamStats] = deque(maxlen=ENDED_KEPT)
        self.stream_opened: list[Callable[[StreamSession], None]] = []  # called before it plays

    def _peer_connection(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=list(self.options.ice_servers)))

    def _refuse(self, reason: str, message: str) -> EdgeFull:
        self.metrics.offers_refused.labels(reason).inc()
        return EdgeFull(reason, message)

    def _check_pending(self, role: str, remote: str, pending: int) -> None:
        """Refuse a client address that has `max_pending_per_address` offers of `role`
        answered and not going yet."""
        if pending >= self.options.max_pending_per_address:
            raise self._refuse("too_many_pending", f"{remote} already has {pending} {role} "
                               f"offers answered and not connected (at most "
                               f"{self.options.max_pending_per_address}); retry when they "
                               f"are, or after {self.options.handshake_timeout:g} s")

    def _after_handshake_timeout(self, check: Callable[[], Awaitable[None]]) -> None:
        async def timer() -> None:
            await asyncio.sleep(self.options.handshake_timeout)
            await check()

        task = asyncio.create_task(timer())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    # ------------------------------------------------------------------ senders
    async def accept_sender(self, offer: RTCSessionDescription, remote: str
                            ) -> RTCSessionDescription:
        """Answer a sender's offer; its stream opens when its hello arrives. `EdgeFull` when
        `max_streams` senders are already connected, or `remote` has
        `max_pending_per_address` senders that have not said hello yet."""
        self._check_pending("sender", remote, sum(
            1 for peer in self._senders if peer.remote == remote and peer.session is None))
        if len(self._senders) >= self.options.max_streams:
            raise self._refuse("max_streams", f"edge full: {len(self._senders)} sender "
                               f"streams already (max-streams {self.options.max_streams})")
        pc = self._peer_connection()
        peer = SenderPeer(pc, self, remote)
        self._senders.add(peer)
        try:
            await pc.setRemoteDescription(offer)
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await peer.close(StreamEnd(EndReason.NOT_STARTED, "offer failed"))
            raise
        self.metrics.sessions.inc()

        async def hello_or_close() -> None:
            if peer in self._senders and peer.session is None:
                self.metrics.handshakes_timed_out.labels("sender").inc()
                await peer.close(StreamEnd(
                    EndReason.NOT_STARTED,
                    f"no hello within {self.options.handshake_timeout:g} s"))

        self._after_handshake_timeout(hello_or_close)
        return pc.localDescription

    async def open_stream(self, hello: Hello, peer: SenderPeer) -> StreamSession | None:
        """Start the stream a hello announces, or refuse it with a bye that says why."""
        problem = self.model.check(hello)
        if problem is not None:
            log.warning("sender %s refused: %s", peer.remote, problem)
            await peer.say_bye(problem)
            await peer.close(StreamEnd(EndReason.NOT_STARTED, problem))
            return None
        previous = self.streams.get(hello.stream)
        if previous is not None:
            log.info("stream %s: a new session replaces the live one", hello.stream)
            await previous.finish(StreamEnd(EndReason.REPLACED))
        session = StreamSession(hello, engine=self.engine, metrics=self.metrics,
                                send_ctrl=peer.send_ctrl, send_kp=peer.send_kp,
                                options=self.options.session)
        output = self.outputs.get(hello.stream)
        if output is None:
            output = self.outputs[hello.stream] = StreamOutput(hello.stream,
                                                                self.options.stamp_frames)
        elif output.idle_since is not None:
            log.info("stream %s resumes after %.2f s, %d viewer(s) still watching",
                     hello.stream, time.monotonic() - output.idle_since,
                     self._viewers_of(hello.stream))
        output.cancel_expiry()
        output.idle_since = None
        session.sinks.append(output.sink(hello.fps))
        session.viewers = self._viewers_of(hello.stream)
        self.streams[hello.stream] = session
        self.metrics.streams.set(len(self.streams))
        for callback in self.stream_opened:
            callback(session)
        session.start()
        task = asyncio.create_task(self._forget_when_ended(session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return session

    async def _forget_when_ended(self, session: StreamSession) -> None:
        await session.ended.wait()
        self.ended.append(session.stats())
        if self.streams.get(session.name) is not session:
            return  # replaced: the new session plays on to the same viewers
        del self.streams[session.name]
        self.metrics.streams.set(len(self.streams))
        output = self.outputs.get(session.name)
        if output is None:  # the edge is closing
            return
        output.idle_since = time.monotonic()
        output.cancel_expiry()
        output.expiry = asyncio.create_task(self._expire(output))

    async def _expire(self, output: StreamOutput) -> None:
        """After the resume grace, close the viewers of a stream whose sender did not come
        back, and forget its output."""
        await asyncio.sleep(self.options.resume_grace)
        if output.name in self.streams or self.outputs.get(output.name) is not output:
            return
        output.expiry = None  # (this task: not to be cancelled by close below)
        del self.outputs[output.name]
        output.close()
        for pc, name in list(self._viewers.items()):
            if name == output.name:
                await self._close_viewer(pc)

    def _viewers_of(self, name: str) -> int:
        return sum(1 for watched in self._viewers.values() if watched == name)

    def resuming(self) -> list[dict]:
        """Streams that ended within the resume grace, their viewers still connected."""
        now = time.monotonic()
        return [{"name": name, "viewers": self._viewers_of(name),
                 "closes_in": round(max(0.0, output.idle_since + self.options.resume_grace
                                        - now), 1)}
                for name, output in self.outputs.items() if output.idle_since is not None]

    def forget_sender(self, peer: SenderPeer) -> None:
        self._senders.discard(peer)

    def drop_message(self, reason: str, detail: str, remote: str) -> None:
        """Count and (rate-limited) log a message the edge could not use."""
        self.metrics.bad_messages.labels(reason).inc()
        self._drop_log.warning(reason, "dropped a message from %s (%s): %s", remote, reason,
                               detail)

    # ------------------------------------------------------------------ viewers
    def pick_stream(self, name: str | None) -> StreamSession:
        if name:
            if name not in self.streams:
                raise NoSuchStream(f"no live stream named {name!r}")
            return self.streams[name]
        if not self.streams:
            raise NoSuchStream("no live stream yet")
        return next(iter(self.streams.values()))

    async def accept_viewer(self, offer: RTCSessionDescription, name: str | None, remote: str
                            ) -> tuple[RTCSessionDescription, str]:
        """Answer a recvonly viewer with the stream's video (through the shared relay).
        `NoSuchStream` when it is not live, `EdgeFull` when `max_viewers` are watching or
        `remote` has `max_pending_per_address` viewers not connected yet."""
        session = self.pick_stream(name)
        output = self.outputs.get(session.name)  # (a live stream has one, unless closing)
        if output is None:
            raise NoSuchStream(f"stream {session.name!r} is closing")
        self._check_pending("viewer", remote, sum(
            1 for pc, address in self._viewer_remotes.items()
            if address == remote and pc.connectionState in ("new", "connecting")))
        if len(self._viewers) >= self.options.max_viewers:
            raise self._refuse("max_viewers", f"edge full: {len(self._viewers)} viewers "
                               f"already (max-viewers {self.options.max_viewers})")
        pc = self._peer_connection()
        self._viewers[pc] = session.name
        self._viewer_remotes[pc] = remote
        session.viewers += 1
        self.metrics.viewers.inc()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close_viewer(pc)

        try:
            await pc.setRemoteDescription(offer)
            pc.addTrack(self.relay.subscribe(output.track, buffered=False))
            await pc.setLocalDescription(await pc.createAnswer())
        except BaseException:
            await self._close_viewer(pc)
            raise
        log.info("viewer %s watches %s", remote, session.name)

        async def connected_or_close() -> None:
            if pc in self._viewers and pc.connectionState != "connected":
                log.info("viewer %s: not connected within %g s, closing", remote,
                         self.options.handshake_timeout)
                self.metrics.handshakes_timed_out.labels("viewer").inc()
                await self._close_viewer(pc)

        self._after_handshake_timeout(connected_or_close)
        return pc.localDescription, session.name

    async def _close_viewer(self, pc: RTCPeerConnection) -> None:
        name = self._viewers.pop(pc, None)
        self._viewer_remotes.pop(pc, None)
        if name is None:
            return
        self.metrics.viewers.dec()
        session = self.streams.get(name)
        if session is not None:
            session.viewers = max(0, session.viewers - 1)
        await pc.close()

    # ------------------------------------------------------------------ reporting, shutdown
    def stats(self) -> list[StreamStats]:
        """The live streams' figures."""
        return [session.stats() for session in self.streams.values()]

    async def close(self) -> None:
        """Close every peer and finalise every recording."""
        for task in list(self._timers):
            task.cancel()
        for peer in list(self._senders):
            await peer.close(StreamEnd(EndReason.EDGE_SHUTDOWN))
        for session in list(self.streams.values()):
            await session.finish(StreamEnd(EndReason.EDGE_SHUTDOWN))
        for pc in list(self._viewers):
            await self._close_viewer(pc)
        for output in self.outputs.values():
            output.close()
        self.outputs.clear()
        self.engine.close()
