"""A viewer without a browser: what the viewer page does, in aiortc. It offers recvonly video to
an edge's /view/offer and records when each frame arrives.

kpvid-bench soak --viewers runs it as its own process (python -m
kpvid.demo.viewer_peer URL STREAM, the token in KPVID_TOKEN): it watches until it is
stopped, logs its frame count every --report seconds, and exits 1 if the edge ends the
video or the connection fails before that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)


class ViewerPeer:
    """One viewer of an edge at ``url`` (https://host:port). ``frames`` counts the decoded
    frames; with ``keep_arrivals`` (for tests) ``arrivals`` holds (time.monotonic(), pts) of
    each. ``ended`` is set when the edge's track ends or the connection closes or fails."""

    def __init__(self, url: str, token: str, ssl_context: ssl.SSLContext | bool,
                 keep_arrivals: bool = True) -> None:
        self.url = url
        self.token = token
        self.ssl_context = ssl_context
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.frames = 0
        self.keep_arrivals = keep_arrivals
        self.arrivals: list[tuple[float, int]] = []
        self.stream: str | None = None
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
                self.frames += 1
                if self.keep_arrivals:
                    self.arrivals.append((time.monotonic(), frame.pts))
        except MediaStreamError:
            self.ended.set()

    async def connect(self, stream: str | None = None) -> int:
        """Offer to watch ``stream`` (None: any); the HTTP status (200: answered and
        applied)."""
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"sdp": self.pc.localDescription.sdp, "type": "offer", "stream": stream}
        async with aiohttp.ClientSession() as http, http.post(
                self.url + "/view/offer", json=offer, ssl=self.ssl_context,
                headers={"Authorization": f"Bearer {self.token}"}) as response:
            status = response.status
            answer = await response.json(content_type=None) if status == 200 else None
        if answer is not None:
            self.stream = answer["stream"]
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return status

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


async def watch(args: argparse.Namespace) -> int:
    """Watch until SIGTERM/SIGINT (0) or the video ends (1)."""
    context: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(args.ca))
                                      if args.ca else False)
    viewer = ViewerPeer(args.url, os.environ.get("KPVID_TOKEN", ""), context,
                        keep_arrivals=False)  # runs for hours: count only
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        status = await viewer.connect(args.stream)
        if status != 200:
            log.error("the edge refused the offer (HTTP %d)", status)
            return 1
        log.info("watching %s", viewer.stream)
        while not stop.is_set() and not viewer.ended.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), args.report)
            log.info("frames %d", viewer.frames)
        if viewer.ended.is_set() and not stop.is_set():
            log.error("the video ended after %d frames", viewer.frames)
            return 1
        return 0
    finally:
        await viewer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kpvid.demo.viewer_peer",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the edge, https://HOST:PORT")
    parser.add_argument("stream", help="the stream to watch")
    parser.add_argument("--ca", help="the edge's certificate (default: not verified)")
    parser.add_argument("--report", type=float, default=10.0,
                        help="seconds between frame-count log lines (default: %(default)g)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(watch(args))


if __name__ == "__main__":
    sys.exit(main())
