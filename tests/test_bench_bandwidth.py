"""kpvid-bench bandwidth on two tiny clips: the tables, the JSON and the comparison."""

from __future__ import annotations

import json

from kpvid.bench.bandwidth import main, video_wire_overhead_kbps
from kpvid.synthetic import write_dataset
from tests.edge_harness import EDGE_TEST_CHECKPOINT


def test_bandwidth_benchmark_writes_tables_json_and_plots(tmp_path, capsys):
    data = tmp_path / "data"
    write_dataset("faces", data, videos=3, seed=4, size=64, frames=12, test_fraction=0.6,
                  progress=False)
    out = tmp_path / "bandwidth.json"
    code = main(["--data", str(data), "--codecs", "none", "q12", "delta", "--schedules", "1:1",
                 "--predictor", "constant-velocity", "--video-codecs", "h264",
                 "--bitrates", "8", "64", "--checkpoint", str(EDGE_TEST_CHECKPOINT),
                 "--json", str(out), "--markdown",
                 str(tmp_path / "bandwidth.md"), "--plots", str(tmp_path), "--quiet"])
    assert code == 0
    results = json.loads(out.read_text())
    rows = {r["codec"]: r for r in results["keypoints"]}
    assert set(rows) == {"none", "q12", "delta"} and results["meta"]["videos"] == 2
    q12, delta = rows["q12"], rows["delta"]
    assert q12["bytes_per_packet"] == 96 and q12["bytes_per_frame"] == 48  # half the frames
    assert delta["bytes_per_packet"] < 35 and delta["position_error_px256_max"] <= 0.5
    assert delta["kbps"] == delta["bytes_per_frame"] * 30 * 8 / 1000
    assert delta["wire_kbps"] > delta["kbps"]
    assert abs(delta["psnr"] - rows["none"]["psnr"]) < 0.5
    assert results["source_image"]["bytes"] > 0
    h264 = results["video_codecs"]["h264"]
    assert [p["target_kbps"] for p in h264] == [8, 64] and h264[1]["psnr"] > h264[0]["psnr"]
    assert {c["metric"] for c in results["comparison"]} == {"psnr", "ssim"}
    assert "kbps" in results["comparison"][0]["codec_kbps"]
    assert (tmp_path / "bandwidth_psnr.png").stat().st_size > 0
    assert "| delta | 1:1 |" in capsys.readouterr().out


def test_bandwidth_benchmark_rejects_bad_input(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "missing"), "--video-codecs"]) == 2
    assert main(["--data", str(tmp_path), "--video-codecs", "mpeg1"]) == 2


def test_video_packets_overhead():
    # one packet per frame below 1200 bytes: 50 bytes of headers 30 times a second
    assert video_wire_overhead_kbps(20, 30) == 50 * 8 * 30 / 1000
    assert video_wire_overhead_kbps(600, 30) == 3 * 50 * 8 * 30 / 1000  # 2500-byte frames
