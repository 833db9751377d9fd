"""The edge node: its senders' streams, its viewers, and the one synthesis engine they share."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from kpvid.protocol import Hello, RateLimitedLog

from .metrics import ReceiverMetrics
from .sender_peer import SenderPeer
from .stream import ModelInfo, SessionOptions, StreamSession
from .synthesis import SynthesisEngine

log = logging.getLogger(__name__)

ENDED_KEPT = 16  # final figures of this many ended streams stay in /api/streams
MAX_STREAMS = 16
MAX_VIEWERS = 32
HANDSHAKE_TIMEOUT = 15.0


class NoSuchStream(LookupError):
    """A viewer asked for a stream that is not live."""


class EdgeFull(RuntimeError):
    """An offer refused, before any peer connection was made, because a limit is reached.
    `reason` names the limit (max_streams, max_viewers)."""

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


class Edge:
    """Accepts senders and viewers; one `StreamSession` per live stream name."""

    def __init__(self, engine: SynthesisEngine, model: ModelInfo,
                 options: EdgeOptions | None = None,
                 metrics: ReceiverMetrics | None = None) -> None:
        self.engine = engine
        self.model = model
        self.options = options or EdgeOptions()
        self.metrics = metrics or ReceiverMetrics()
        self.streams: dict[str, StreamSession] = {}
        self.relay = MediaRelay()
        self._senders: set[SenderPeer] = set()
        self._viewers: dict[RTCPeerConnection, str] = {}
        self._drop_log = RateLimitedLog(log)
        self._tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.Task] = set()
        self.ended: deque[dict] = deque(maxlen=ENDED_KEPT)
        self.stream_opened: list[Callable[[StreamSession], None]] = []  # called before it plays

    def _peer_connection(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=list(self.options.ice_servers)))

    def _refuse(self, reason: str, message: str) -> EdgeFull:
        self.metrics.offers_refused.labels(reason).inc()
        return EdgeFull(reason, message)

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
        `max_streams` senders are already connected."""
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
            await peer.close("offer failed")
            raise
        self.metrics.sessions.inc()

        async def hello_or_close() -> None:
            if peer in self._senders and peer.session is None:
                self.metrics.handshakes_timed_out.labels("sender").inc()
                await peer.close(f"no hello within {self.options.handshake_timeout:g} s")

        self._after_handshake_timeout(hello_or_close)
        return pc.localDescription

    async def open_stream(self, hello: Hello, peer: SenderPeer) -> StreamSession | None:
        """Start the stream a hello announces, or refuse it with a bye that says why."""
        problem = self.model.check(hello)
        if problem is not None:
            log.warning("sender %s refused: %s", peer.remote, problem)
            await peer.say_bye(problem)
            await peer.close(problem)
            return None
        previous = self.streams.get(hello.stream)
        if previous is not None:
            log.info("stream %s: a new session replaces the live one", hello.stream)
            await previous.end("replaced by a new session of the same name")
        session = StreamSession(hello, engine=self.engine, metrics=self.metrics,
                                send_ctrl=peer.send_ctrl, options=self.options.session)
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
        self.ended.append({**session.snapshot(), "ended": session.end_reason})
        if self.streams.get(session.name) is session:
            del self.streams[session.name]
        self.metrics.streams.set(len(self.streams))
        for pc, name in list(self._viewers.items()):
            if name == session.name:
                await self._close_viewer(pc)

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
        `NoSuchStream` when it is not live, `EdgeFull` when `max_viewers` are watching."""
        session = self.pick_stream(name)
        if len(self._viewers) >= self.options.max_viewers:
            raise self._refuse("max_viewers", f"edge full: {len(self._viewers)} viewers "
                               f"already (max-viewers {self.options.max_viewers})")
        pc = self._peer_connection()
        self._viewers[pc] = session.name
        session.viewers += 1
        self.metrics.viewers.inc()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close_viewer(pc)

        try:
            await pc.setRemoteDescription(offer)
            pc.addTrack(self.relay.subscribe(session.track, buffered=False))
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
        if name is None:
            return
        self.metrics.viewers.dec()
        session = self.streams.get(name)
        if session is not None:
            session.viewers = max(0, session.viewers - 1)
        await pc.close()

    # ------------------------------------------------------------------ reporting, shutdown
    def snapshot(self) -> list[dict]:
        return [session.snapshot() for session in self.streams.values()]

    async def close(self) -> None:
        """Close every peer and finalise every recording."""
        for task in list(self._timers):
            task.cancel()
        for peer in list(self._senders):
            await peer.close("edge shutting down")
        for session in list(self.streams.values()):
            await session.end("edge shutting down")
        for pc in list(self._viewers):
            await self._close_viewer(pc)
        self.engine.close()
