"""``kpvid-bench speed``: a quick run writes every figure, positive, with machine and command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kpvid.bench import cli, speed
from kpvid.demo.streaming import DEMO_FPS, DemoSummary
from kpvid.demo.streaming import build_parser as demo_parser


def test_quick_run_writes_positive_figures(tmp_path, capsys):
    out, markdown = tmp_path / "speed.json", tmp_path / "speed.md"
    assert cli.main(["speed", "--quick", "--json", str(out), "--markdown", str(markdown)]) == 0
    result = json.loads(out.read_text())
    assert result["command"] == f"kpvid-bench speed --quick --json {out} --markdown {markdown}"
    assert set(result["machine"]) == {"cpu", "torch", "threads", "device", "load_average"}
    assert result["machine"]["threads"] >= 1
    assert [d["model"] for d in result["detector"]] == ["shipped"]
    assert result["detector"][0]["ms_per_frame"] > 0
    rows = result["synthesis"]
    assert [(r["batch"], r["method"]) for r in rows] == \
        [(b, m) for b in (1, 2) for m in speed.METHODS]
    for row in rows:
        assert row["frame_size"] == 256
        assert all(row[key] > 0 for key in ("ms_per_call", "ms_per_frame", "fps", "speedup"))
    assert all(r["speedup"] == 1 for r in rows if r["method"] == "plain")
    assert {p["predictor"] for p in result["predictor"]} == {"vrnn", "constant-velocity"}
    assert all(p["ms_per_call"] > 0 for p in result["predictor"])
    assert result["end_to_end"] == []  # --quick skips it
    table = capsys.readouterr().out
    assert "**Synthesis**" in table and "| x plain |" in table
    assert markdown.read_text() in table
    assert speed.format_markdown(result) == markdown.read_text()


def test_end_to_end_runs_the_demo_without_and_with_prediction(tmp_path, monkeypatch):
    runs = []

    def fake_demo_process(command, **kwargs):  # kpvid-demo as its own process
        args = demo_parser().parse_args(command[command.index("kpvid.demo") + 1:])
        runs.append((args.frames, args.observe, args.predict))
        summary = DemoSummary(
            frames_sent=args.frames, frames_out=args.frames, dropped=0, thinned=0, longest_gap=1,
            observed=10, predicted=0, lost=0, late=0, predicted_share=0.0, kbps_mean=5.0,
            packets=10, fps_out=20.0,
            latency_p50_ms=40.0 + args.predict, latency_p99_ms=60.0, sender_cpu_percent=50.0,
            receiver_cpu_percent=40.0, psnr=30.0, ssim=0.9, scored_frames=10,
            recording=Path("r.mp4"), side_by_side=Path("s.mp4"), fps=args.fps, edge_threads=2)
        args.json.write_text(json.dumps(summary.to_json()))
        return subprocess.CompletedProcess(command, 0, stdout="")

    monkeypatch.setattr(speed.subprocess, "run", fake_demo_process)
    out, markdown = tmp_path / "speed.json", tmp_path / "speed.md"
    assert speed.main(["--model", "shipped", "--batches", "1", "--frames", "1",
                       "--predictors", "constant-velocity", "--predictor-streams", "1",
                       "--predictor-frames", "5", "--e2e-frames", "12",
                       "--json", str(out), "--markdown", str(markdown)]) == 0
    assert runs == [(12, 1, 0), (12, 1, 1)]
    end_to_end = json.loads(out.read_text())["end_to_end"]
    assert [(e["predict"], e["latency_p50_ms"]) for e in end_to_end] == [(0, 40.0), (1, 41.0)]
    assert all(e["sender_cpu_percent"] > 0 and e["fps_out"] > 0 for e in end_to_end)
    assert f"{DEMO_FPS:g} fps, 2 torch threads at the edge" in markdown.read_text()


def test_a_failed_demo_run_stops_the_bench_with_its_output(monkeypatch):
    monkeypatch.setattr(speed.subprocess, "run", lambda command, **kwargs:
                        subprocess.CompletedProcess(command, 1, stdout="kpvid-receive exited"))
    with pytest.raises(SystemExit, match="kpvid-receive exited"):
        speed.run_end_to_end(1, 10)


def test_a_given_checkpoint_is_timed_at_its_frame_size(tmp_path, tiny_checkpoint, caplog):
    out = tmp_path / "speed.json"
    assert cli.main(["speed", "--quick", "--checkpoint", str(tiny_checkpoint),
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(d["model"], d["frame_size"]) for d in result["detector"]] == [("tiny-model", 32)]
    assert {r["frame_size"] for r in result["synthesis"]} == {32}
    assert cli.main(["speed", "--quick", "--checkpoint", str(tmp_path / "none.pth.tar")]) == 2
    assert "checkpoint not found" in caplog.text
