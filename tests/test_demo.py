"""The demo's own arithmetic: the side-by-side's timeline, and the summary's latency rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kpvid.demo.streaming import (
    DemoSummary,
    build_parser,
    latency_rows,
    on_stream_timeline,
    run_demo,
)


def test_skipped_frames_hold_the_last_picture_so_the_side_by_side_stays_aligned():
    frames = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1) * 10  # recorded: 0, 10, 20, 30
    timeline = on_stream_timeline([1, 2, 5, 6], frames, 9)
    # before the first recorded frame: the first; a gap (3, 4) and the end (7, 8): the last one
    assert timeline[:, 0, 0, 0].tolist() == [0, 0, 10, 10, 10, 20, 30, 30, 30]
    assert on_stream_timeline([0, 1], frames[:2], 2).tolist() == frames[:2].tolist()


def test_glass_to_glass_rows_only_when_the_browser_measured_it():
    summary = DemoSummary(
        frames_sent=10, frames_out=10, dropped=0, thinned=0, longest_gap=1, observed=5,
        predicted=5, lost=0, late=0, predicted_share=0.5, kbps_mean=3.0, packets=5,
        fps_out=20.0, latency_p50_ms=50.0,
        latency_p99_ms=90.0, sender_cpu_percent=None, receiver_cpu_percent=None, psnr=20.0,
        ssim=0.5, scored_frames=10, recording=Path("r.mp4"), side_by_side=Path("s.mp4"),
        fps=20.0, edge_threads=2,
        edge_stages_ms={"capture_to_arrival": 12.0, "wait": 2.5, "synthesis": None})
    assert [name for name, _ in latency_rows(summary)] == ["  observed frames' split, p50 ms"]
    assert latency_rows(summary)[0][1] == "capture to arrival 12, wait 2, synthesis n/a"
    measured = DemoSummary(**{
        **summary.__dict__, "glass_to_glass_p50_ms": 103.3, "glass_to_glass_p99_ms": 142.8,
        "glass_to_glass_frames": 190, "glass_to_glass_stages": {
            "captureToEdgeOut": {"p50": 50.0, "p99": 91.1},
            "edgeOutToReceive": {"p50": 6.9, "p99": 15.1},
            "receiveToDisplay": {"p50": None, "p99": None}}})
    rows = dict(latency_rows(measured))
    assert rows["glass to glass (browser)"].startswith("p50 103 ms, p99 143 ms (190 frames")
    assert rows["  where it goes, p50/p99 ms"] == ("capture -> edge out 50/91, VP8 + network "
                                                   "7/15, browser n/a/n/a")
    assert measured.to_json()["glass_to_glass_stages"]["edgeOutToReceive"]["p50"] == 6.9
    assert summary.to_json()["glass_to_glass_p50_ms"] is None


def test_browser_without_chromium_stops_before_starting_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("KPVID_CHROMIUM", str(tmp_path / "no-chromium"))
    args = build_parser().parse_args(["--browser", "--out", str(tmp_path / "demo")])
    with pytest.raises(SystemExit, match="KPVID_CHROMIUM=.*no-chromium is not an executable"):
        run_demo(args, quiet=True)
    assert not (tmp_path / "demo").exists()
