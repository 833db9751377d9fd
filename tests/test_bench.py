"""kpvid-bench: the benchmarks run and report what they measured."""

from __future__ import annotations

import json

from pytest import approx

from kpvid.bench.cli import main as bench_main


def test_predictor_step_benchmark_writes_a_row_per_predictor_and_stream_count(tmp_path, capsys):
    out = tmp_path / "steps.json"
    assert bench_main(["predictor", "--predictors", "vrnn", "hold-last", "--streams", "1", "3",
                       "--frames", "4", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["predictor"], r["streams"]) for r in rows] == [
        ("vrnn", 1), ("vrnn", 3), ("hold-last", 1), ("hold-last", 3)]
    for r in rows:
        assert r["ms_per_call"] > 0
        assert r["ms_per_stream"] * r["streams"] == approx(r["ms_per_call"])
    assert "ms/stream" in capsys.readouterr().out


def test_bench_without_a_benchmark_is_a_usage_error(capsys):
    assert bench_main([]) == 2
    assert "predictor" in capsys.readouterr().err
    assert bench_main(["--help"]) == 0
