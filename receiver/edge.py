"""The edge node: its senders' streams, its viewers, and the one synthesis engine they share."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
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


class NoSuchStream(LookupError):
    """A viewer asked for a stream that is not live."""


@dataclass
class EdgeOptions:
    session: SessionOptions = field(default_factory=SessionOptions)
    ice_servers: list[RTCIceServer] = field(default_factory=list)  # the edge's own peers
    viewer_ice_servers: list[RTCIceServer] | None = None  # for browsers; None: ice_servers


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
        self.ended: deque[dict] = deque(maxlen=ENDED_KEPT)
        self.stream_opened: list[Callable[[StreamSession], None]] = []  # called before it plays

    def _peer_connection(self) -> RTCPeerConnection:
        return RTCPeerConnection(RTCConfiguration(iceServers=list(self.options.ice_servers)))

    # ------------------------------------------------------------------ senders
    async def accept_sender(self, offer: RTCSessionDescription, remote: str
                            ) -> RTCSessionDescription:
        """Answer a sender's offer; its stream opens when its hello arrives."""
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
        """Answer a recvonly viewer with the stream's video (through the shared relay)."""
        session = self.pick_stream(name)
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
        for peer in list(self._senders):
            await peer.close("edge shutting down")
        for session in list(self.streams.values()):
            await session.end("edge shutting down")
        for pc in list(self._viewers):
            await self._close_viewer(pc)
        self.engine.close()
