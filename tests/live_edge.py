"""An edge with one live synthetic stream, served from a background thread, for the browser
tests (sync Playwright cannot share a thread with a running asyncio loop)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from kpvid.sender.client import SenderOptions, run_sender
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import SyntheticSource
from tests.edge_harness import EDGE_TEST_CHECKPOINT, TOKEN, EdgeHandle, running_edge, wait_for


class LiveEdge:
    """The edge (``self.edge``, an EdgeHandle once up) and a sender streaming ``domain`` frames
    of the 64x64 test model as ``stream`` until the edge is closed; ``stamp_frames``: the edge
    time-stamps its viewers' frames (--stamp-frames). Use as a context manager."""

    def __init__(self, tmp: Path, stream: str, *, domain: str = "faces", fps: float = 30.0,
                 length: int = 120, stamp_frames: bool = False) -> None:
        self.tmp = tmp
        self.stream = stream
        self.source = dict(domain=domain, seed=3, size=64, fps=fps, length=length)
        self.stamp_frames = stamp_frames
        self.url = ""
        self.edge: EdgeHandle | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.done = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        try:
            async with running_edge(self.tmp, idle_timeout=5.0) as edge:
                edge.edge.options.stamp_frames = self.stamp_frames
                self.edge = edge
                self._start_sender()
                await wait_for(lambda: self.stream in edge.edge.streams, 20)
                self.url = edge.url
                self.ready.set()
                await self.done.wait()
                self.stop.set()
                await self.sender
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def _start_sender(self) -> None:
        assert self.edge is not None
        port = int(self.edge.url.rsplit(":", 1)[1])
        options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                ca_file=str(self.edge.cert), stream=self.stream)
        self.stop = asyncio.Event()
        self.sender = asyncio.create_task(run_sender(
            SyntheticSource(**self.source),
            KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT), options, stop=self.stop))

    async def _restart_sender(self) -> None:
        self.stop.set()
        await self.sender
        assert self.edge is not None
        await wait_for(lambda: self.stream not in self.edge.edge.streams, 10)
        self._start_sender()

    def restart_sender(self) -> None:
        """The sender stops (bye), its stream ends, and a new sender of the same name starts."""
        asyncio.run_coroutine_threadsafe(self._restart_sender(), self.loop).result(30)

    def __enter__(self) -> LiveEdge:
        self.thread.start()
        self.ready.wait(60)
        if self.error is not None or not self.url:
            raise RuntimeError(f"the edge did not come up: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.done.set)
        self.thread.join(30)
