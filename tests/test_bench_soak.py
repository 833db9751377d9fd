"""``kpvid-bench soak``: the growth verdict on synthetic series, and a short real run."""

from __future__ import annotations

import json
from pathlib import Path

from kpvid.bench.soak import (
    RECEIVER,
    STREAMS,
    ProcessSample,
    Sample,
    StreamSample,
    judge,
    second_half_growth,
    slope_per_minute,
)
from tests.edge_harness import EDGE_TEST_CHECKPOINT


def series(rss_per_min: float, fds_per_min: float, fps: float = 30.0, minutes: float = 10,
           playing: bool = True) -> list[Sample]:
    """A run sampled every 10 s whose receiver grows at the given rates."""
    samples = []
    for i in range(int(minutes * 6) + 1):
        t = i * 10.0
        stream = StreamSample(playing=playing or t < 300, frames_out=int(t * fps), dropped=0,
                              lost=0, predicted=0, fps_out=fps, latency_p50_ms=100.0,
                              latency_p99_ms=150.0, kbps=3.0)
        receiver = ProcessSample(rss_mb=400 + rss_per_min * t / 60,
                                 fds=20 + int(fds_per_min * t / 60), cpu_percent=50.0)
        sender = ProcessSample(rss_mb=350.0, fds=15, cpu_percent=20.0)
        samples.append(Sample(t, {RECEIVER: receiver, STREAMS[0]: sender, STREAMS[1]: sender},
                              {name: stream for name in STREAMS}))
    return samples


def test_slope_per_minute() -> None:
    assert abs(slope_per_minute([0, 60, 120], [1, 3, 5]) - 2.0) < 1e-9
    assert slope_per_minute([0], [1]) is None
    growth = second_half_growth([0, 60, 120, 180, 240], [0, 100, 5, 5, 5], 1.0)
    assert growth.slope_per_min is not None and abs(growth.slope_per_min) < 1e-9
    assert growth.ok


def test_flat_run_passes() -> None:
    verdict = judge(series(0.0, 0.0))
    assert verdict.ok, verdict.failures
    assert abs(verdict.rss.slope_per_min) < 1e-9 and abs(verdict.fds.slope_per_min) < 1e-9


def test_growing_run_fails() -> None:
    verdict = judge(series(rss_per_min=5.0, fds_per_min=3.0))
    assert not verdict.ok
    assert abs(verdict.rss.slope_per_min - 5.0) < 1e-6
    assert not verdict.rss.ok and not verdict.fds.ok
    assert len(verdict.failures) == 2


def test_slow_stream_ended_stream_and_death_fail() -> None:
    assert any("frame rate" in f for f in judge(series(0, 0, fps=20.0)).failures)
    assert judge(series(0, 0, fps=20.0), warmup_s=1e9).ok  # only after the warm-up
    assert any("ended early" in f for f in judge(series(0, 0, playing=False)).failures)
    assert any("exited" in f for f in judge(series(0, 0), died=["soak-a"]).failures)
    assert any("viewers" in f for f in judge(series(0, 0), viewers=1).failures)


def test_short_real_run(tmp_path: Path) -> None:
    from kpvid.bench.soak import main

    out = tmp_path / "soak"
    status = main(["--minutes", "0.1", "--interval", "2", "--out", str(out), "--viewers", "1",
                   "--checkpoint", str(EDGE_TEST_CHECKPOINT), "--fps", "15",
                   "--json", str(out / "soak.json"), "--markdown", str(out / "soak.md"),
                   "--plots", str(out)])
    assert status in (0, 1)  # 6 s is too short for a growth verdict to mean much
    results = json.loads((out / "soak.json").read_text())
    assert not any("exited" in f or "ended early" in f for f in results["verdict"]["failures"])
    samples = results["samples"]
    assert len(samples) >= 3
    for sample in samples:
        assert set(sample["processes"]) == {RECEIVER, *STREAMS,
                                            *(f"viewer-{name}-1" for name in STREAMS)}
        for figures in sample["processes"].values():
            assert figures["rss_mb"] > 0 and figures["fds"] > 0
    last = samples[-1]["streams"]
    for name in STREAMS:
        assert last[name]["playing"] and last[name]["frames_out"] > 0
        assert last[name]["viewers"] == 1
    assert (out / "soak.md").stat().st_size > 0
    assert (out / "soak.png").stat().st_size > 0
