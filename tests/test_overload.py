"""Graceful overload: the render step follows the synthesis worker's busy share."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from kpvid.models import SHIPPED_CHECKPOINT
from kpvid.receiver.overload import OverloadOptions, RenderRate
from kpvid.sender.client import SenderOptions, run_sender
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import SyntheticSource
from kpvid.sender.stats import SenderStats
from tests.edge_harness import TOKEN, running_edge, wait_for


def run(rate: RenderRate, shares: list[float], lags: list[float] | None = None) -> list[int]:
    """Feed one window per share, each with a frame played its ``lags`` s late (default 0.1);
    the render step after each."""
    now, busy, steps = 0.0, 0.0, []
    rate.update(now, busy)
    for share, lag in zip(shares, lags or [0.1] * len(shares)):
        now += rate.options.window
        busy += share * rate.options.window
        rate.note_lag(lag, now, busy)
        steps.append(rate.update(now, busy))
    return steps


def test_the_render_step_rises_under_load_and_comes_back_when_it_goes() -> None:
    rate = RenderRate(OverloadOptions(high=0.9, low=0.7, calm_windows=2, window=1.0,
                                      max_every=3))
    # overloaded: one step a window, up to max_every; then at every 3rd frame the worker is
    # half busy (every 2nd would make it 0.75, over low: it stays); lighter for two windows in
    # a row (0.4 * 3 / 2 = 0.6 < 0.7), one step back; then 0.3 * 2 = 0.6 twice: every frame
    assert run(rate, [0.95, 0.97, 0.99, 0.99, 0.5, 0.4, 0.4, 0.3, 0.3, 0.3]) == \
        [2, 3, 3, 3, 3, 3, 2, 2, 1, 1]
    # a calm window broken by a busy one starts the count again
    rate = RenderRate(OverloadOptions(high=0.9, low=0.7, calm_windows=2, window=1.0))
    assert run(rate, [0.95, 0.3, 0.5, 0.3, 0.3]) == [2, 2, 2, 2, 1]


def test_a_busy_worker_that_keeps_up_is_not_overloaded() -> None:
    rate = RenderRate(OverloadOptions(high=0.9, lag=0.05))
    # no frame fell behind, then one did
    assert run(rate, [0.95, 0.97, 0.95], lags=[0.01, -0.02, 0.2]) == [1, 1, 2]


def test_a_window_is_judged_only_once_it_is_over() -> None:
    rate = RenderRate(OverloadOptions(window=1.0))
    rate.update(0.0, 0.0)
    rate.note_lag(0.3, 0.0, 0.0)
    assert rate.update(0.5, 0.5) == 1 and rate.share is None  # half a window, all busy
    assert rate.update(1.0, 1.0) == 2 and rate.share == pytest.approx(1.0)


def test_a_late_frame_in_a_busy_half_window_steps_up_at_once() -> None:
    rate = RenderRate(OverloadOptions(window=1.0, high=0.9, lag=0.05))
    rate.update(0.0, 0.0)
    assert rate.note_lag(0.2, 0.3, 0.3) == 1  # busy, but under half a window: not yet
    assert rate.note_lag(0.02, 0.6, 0.58) == 1  # half a window, busy, but not late enough
    assert rate.note_lag(0.2, 0.6, 0.58) == 2  # late too: at once
    assert rate.note_lag(0.3, 0.7, 0.68) == 2  # a new window has begun
    assert rate.update(1.0, 0.7) == 2  # that window is not over yet


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        OverloadOptions(high=0.5, low=0.7)
    with pytest.raises(ValueError):
        OverloadOptions(max_every=0)
    with pytest.raises(ValueError):
        OverloadOptions(calm_windows=0)


# ------------------------------------------------------------------ a real edge, a real burner
def burn_cpus(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each spin a core until killed."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def test_an_overloaded_edge_thins_its_frames_evenly_and_comes_back(tmp_path):
    """The shipped 256x256 model at 20 fps, edge and sender in this process; after 2 s of
    stream, processes spinning twice as many cores as the machine has for 4 s; then 11 s for
    the edge to come back (a step a window once 3 windows in a row were calm)."""
    fps, frames = 20.0, 340
    burn_from, burn_for = 2.0, 4.0
    outs: list[tuple[float, int]] = []  # (time out, frame index)
    steps: list[tuple[float, int]] = []  # (time, the engine's render step)
    stats = SenderStats()

    async def scenario() -> dict:
        async with running_edge(tmp_path, checkpoint=SHIPPED_CHECKPOINT, playout_delay=None,
                                overload=OverloadOptions(), idle_timeout=3.0) as edge:
            edge.edge.stream_opened.append(lambda session: session.sinks.append(
                lambda index, _rgb, _capture_time: outs.append((time.monotonic(), index))))
            await edge.edge.engine.warm_up(256)  # as kpvid-receive does before it listens
            port = int(edge.url.rsplit(":", 1)[1])
            options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                    ca_file=str(edge.cert), stream="busy", max_frames=frames)
            source = SyntheticSource("faces", seed=3, size=256, fps=fps, length=frames)
            extractor = KeypointExtractor.from_checkpoint(SHIPPED_CHECKPOINT)
            sender = asyncio.ensure_future(run_sender(source, extractor, options, stats))
            await wait_for(lambda: bool(outs), 20)
            burners: list[subprocess.Popen] = []
            try:
                started = time.monotonic()
                while not sender.done():
                    now = time.monotonic() - started
                    if burn_from <= now < burn_from + burn_for and not burners:
                        burners = burn_cpus(2 * (os.cpu_count() or 2))
                        steps.append((time.monotonic(), -1))  # the burn starts
                    elif now >= burn_from + burn_for and burners:
                        for burner in burners:
                            burner.kill()
                        steps.append((time.monotonic(), -2))  # the burn ends
                        burners = []
                    steps.append((time.monotonic(), edge.edge.engine.render_every))
                    await asyncio.sleep(0.1)
            finally:
                for burner in burners:
                    burner.kill()
            assert await sender == 0
            await wait_for(lambda: bool(edge.edge.ended), 10)
            return edge.edge.ended[0].to_json()

    final = asyncio.run(scenario())
    marks = [t for t, step in steps if step < 0]
    assert len(marks) == 2, "the stream ended before the burn did"
    burn_start, burn_end = marks
    during = [step for t, step in steps if burn_start + 1.5 <= t < burn_end and step > 0]
    last = [step for t, step in steps if step > 0][-1]
    counts = final["frames"]
    # overloaded, the edge rendered every k-th frame, evenly, and dropped few in bursts
    assert max(during) >= 2, (steps, counts)
    assert counts["thinned"] > 0 and counts["dropped"] <= counts["thinned"] / 2, counts
    gaps = np.diff([index for t, index in outs if burn_start + 1.5 <= t < burn_end])
    assert np.median(gaps) >= 2 and np.mean(gaps > 4) < 0.1, gaps
    # its latency stayed bounded, and the sender heard it and detected less
    assert final["latency_ms"]["p99"] < 600, final
    assert stats.schedule_changes >= 1, stats
    # once the load had gone, every frame again
    assert last == 1, steps
