"""A viewer's peer connection in aiortc (what the viewer page does, minus the browser): it
offers recvonly video to the edge's `/view/offer` and records when each frame arrives."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from tests.edge_harness import EdgeHandle


@dataclass
class ViewerPeer:
    """One viewer. `arrivals` holds (time.monotonic(), pts) of every decoded frame; `ended` is
    set when the edge's track ends or the connection closes or fails."""

    handle: EdgeHandle
    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    stream: str | None = None

    def __post_init__(self) -> None:
        self.ended = asyncio.Event()
        self._reader: asyncio.Task | None = None

        @self.pc.on("track")
        def on_track(track) -> None:
            self._reader = asyncio.ensure_future(self._read(track))

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self.ended.set()

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.arrivals.append((time.monotonic(), frame.pts))
        except MediaStreamError:
            self.ended.set()

    async def connect(self, stream: str | None = None) -> int:
        """Offer to watch `stream`; the HTTP status (200: answered and applied)."""
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, answer = await self.handle.request(
            "POST", "/view/offer", token=self.handle.view_token,
            json={"sdp": self.pc.localDescription.sdp, "type": "offer", "stream": stream})
        if status == 200:
            self.stream = answer["stream"]
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return status

    def frames_since(self, moment: float) -> int:
        return sum(1 for at, _ in self.arrivals if at >= moment)

    def first_after(self, moment: float) -> float | None:
        """When the first frame after `moment` arrived, or None."""
        return next((at for at, _ in self.arrivals if at >= moment), None)

    def rate(self, start: float, end: float) -> float:
        """Frames a second that arrived between `start` and `end` (monotonic times)."""
        return sum(1 for at, _ in self.arrivals if start <= at < end) / (end - start)

    def largest_gap(self, start: float, end: float) -> float:
        """The longest wait between two frames that arrived between `start` and `end`."""
        times = [at for at, _ in self.arrivals if start <= at <= end]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=end - start)

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
