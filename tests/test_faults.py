"""Faults: the edge goes away and comes back; a real sender finds it again on its own."""

from __future__ import annotations

import asyncio

from kpvid.demo.streaming import free_port
from kpvid.models import SHIPPED_CHECKPOINT
from kpvid.sender.client import SenderOptions, run_sender
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import SyntheticSource
from kpvid.sender.stats import SenderStats
from tests.edge_harness import TOKEN, running_edge, wait_for


def playing(edge, name: str, frames: int) -> bool:
    """Whether `edge` has a live stream `name` that has put out at least `frames` frames."""
    session = edge.edge.streams.get(name)
    return session is not None and session.counts["out"] >= frames


def test_a_sender_reconnects_to_a_restarted_edge_under_the_same_name(tmp_path):
    port = free_port()

    async def scenario() -> tuple[int, SenderStats, float]:
        extractor = KeypointExtractor.from_checkpoint(SHIPPED_CHECKPOINT)
        # 30 s of frames: longer than the test
        source = SyntheticSource("faces", seed=5, size=64, fps=30.0, length=900)
        stats, stop = SenderStats(), asyncio.Event()
        async with running_edge(tmp_path, port=port) as edge:
            options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                    ca_file=str(edge.cert), stream="cam")
            sender = asyncio.create_task(run_sender(source, extractor, options, stats, stop))
            await wait_for(lambda: playing(edge, "cam", 30), 20)
        # the edge is gone (its peers closed, its port free); a new one on the same port
        gone_at = asyncio.get_running_loop().time()
        async with running_edge(tmp_path, port=port) as edge:
            await wait_for(lambda: playing(edge, "cam", 30), 20)
            resumed_after = asyncio.get_running_loop().time() - gone_at
            stop.set()
            code = await asyncio.wait_for(sender, 10)
        return code, stats, resumed_after

    code, stats, resumed_after = asyncio.run(scenario())
    assert code == 0
    assert stats.reconnects >= 1
    # the first retry comes 0.5 s after the loss; a new edge starts at once here
    assert resumed_after < 10, resumed_after
