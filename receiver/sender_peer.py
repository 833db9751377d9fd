"""A sender's WebRTC connection: its data channels in, decoded messages out to its stream.

Messages are decoded and handled one at a time, in arrival order, by one task per sender (a
source image arrives in chunks that must be reassembled in order). Anything that does not decode
or does not fit the stream is counted, logged at a limited rate and dropped; the connection and
every other stream go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiortc import RTCDataChannel, RTCPeerConnection

from kpvid.protocol import (
    Bye,
    Hello,
    Keypoints,
    Message,
    ProtocolError,
    decode_message,
    encode_message,
)

from .stream import StreamSession
from .stream_stats import EndReason, StreamEnd

if TYPE_CHECKING:
    from .edge import Edge

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024  # messages waiting to be handled; beyond this a sender is flooding


class SenderPeer:
    """The edge's end of one sender's peer connection."""

    def __init__(self, pc: RTCPeerConnection, edge: Edge, remote: str) -> None:
        self.pc = pc
        self.edge = edge
        self.remote = remote
        self.session: StreamSession | None = None
        self._ctrl_channel: RTCDataChannel | None = None
        self._kp_channel: RTCDataChannel | None = None
        self._queue: asyncio.Queue[tuple[str, bytes | str]] = asyncio.Queue(QUEUE_LIMIT)
        self._closed = False
        self._watcher: asyncio.Task | None = None
        self._consumer = asyncio.create_task(self._consume(), name=f"sender-{remote}")
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label == "ctrl":
            self._ctrl_channel = channel
        elif channel.label == "kp":
            self._kp_channel = channel
        else:
            self.edge.drop_message("unknown_channel", f"data channel {channel.label!r}",
                                   self.remote)

        def on_message(data: bytes | str) -> None:
            try:
                self._queue.put_nowait((channel.label, data))
            except asyncio.QueueFull:
                self.edge.drop_message("queue_full", "more messages than the edge can take",
                                       self.remote)

        channel.on("message", on_message)

    async def _on_state(self) -> None:
        if self.pc.connectionState not in ("failed", "closed"):
            return
        if self.session is not None and self.session.said_bye:
            return  # the stream plays out its last frames, then closes the peer
        await self.close(StreamEnd(EndReason.CONNECTION_LOST, self.pc.connectionState))

    def send_ctrl(self, message: Message) -> None:
        """Send a message to the sender on the reliable channel, if it is open."""
        if self._ctrl_channel is not None and self._ctrl_channel.readyState == "open":
            self._ctrl_channel.send(encode_message(message))

    def send_kp(self, message: Message) -> None:
        """Send a message to the sender on the unreliable channel, if it is open (an
        IntraRequest): never retransmitted, a lost one holds nothing up."""
        if self._kp_channel is not None and self._kp_channel.readyState == "open":
            self._kp_channel.send(encode_message(message))

    async def say_bye(self, reason: str, timeout: float = 1.0) -> None:
        """Send a bye and give it a moment to leave before the connection closes."""
        self.send_ctrl(Bye(reason))
        deadline = asyncio.get_running_loop().time() + timeout
        while self._ctrl_channel is not None and self._ctrl_channel.bufferedAmount > 0 \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # handed to SCTP is not yet on the wire

    async def _consume(self) -> None:
        while not self._closed:
            label, data = await self._queue.get()
            try:
                await self._handle(label, data)
            except ProtocolError as error:
                self.edge.drop_message(type(error).__name__, str(error), self.remote)
            except Exception as error:  # a bug must not take the receiver down
                log.exception("sender %s: message handling failed", self.remote)
                self.edge.drop_message("internal_error", repr(error), self.remote)

    async def _handle(self, label: str, data: bytes | str) -> None:
        if not isinstance(data, bytes):
            raise ProtocolError("text message on a binary channel")
        message = decode_message(data)
        expected = "kp" if isinstance(message, Keypoints) else "ctrl"
        if label != expected:
            raise ProtocolError(f"{type(message).__name__} on channel {label!r}, "
                                f"expected {expected!r}")
        if self.session is not None:
            await self.session.handle(message, len(data))
        elif isinstance(message, Hello):
            await self._open(message)
        elif isinstance(message, Bye):
            await self.close(StreamEnd(EndReason.NOT_STARTED,
                                       f"bye before hello: {message.reason}"))
        elif not isinstance(message, Keypoints):  # keypoints may overtake the hello: not an error
            raise ProtocolError(f"{type(message).__name__} before hello")

    async def _open(self, hello: Hello) -> None:
        session = await self.edge.open_stream(hello, self)
        if session is None:
            return
        self.session = session
        self._watcher = asyncio.create_task(self._close_when_ended(session))

    async def _close_when_ended(self, session: StreamSession) -> None:
        await session.ended.wait()
        assert session.end is not None
        if session.end.reason is EndReason.SENDER_FINISHED:
            self.send_ctrl(session.feedback())  # the final counts, which the sender reports
            await self.say_bye(str(session.end))
        await self.close(session.end)

    async def close(self, reason: StreamEnd) -> None:
        """End the stream (finalising its recording) and close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        log.info("sender %s: closing (%s)", self.remote, reason)
        if self.session is not None:
            await self.session.finish(reason)
        if self._consumer is not asyncio.current_task():
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        await self.pc.close()
        self.edge.forget_sender(self)
