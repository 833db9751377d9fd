"""kpvid-bench predictor: what one keypoint-prediction step costs the edge, per stream.

The edge steps all its streams' predictors in one call per frame
(kpvid.models.predictors.step_predictors). This times that call for each predictor and
number of streams, on the M2 pattern (every other frame observed, the others predicted open
loop), after a warm-up, and reports milliseconds per call and per stream-step."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from kpvid.models import SHIPPED_CHECKPOINT, CheckpointError, model_id
from kpvid.models.predictors import (
    LEARNED_PREDICTORS,
    PREDICTORS,
    predictor_factory,
    step_predictors,
)
from kpvid.training.arguments import positive_int

log = logging.getLogger(__name__)

BUDGET_MS = 1.0  # the receiver's target: one step costs at most this per stream


@dataclass(frozen=True)
class StepTiming:
    predictor: str
    streams: int
    ms_per_call: float  # median over the timed frames
    ms_per_stream: float
    p99_ms_per_call: float


def time_steps(name: str, streams: int, frames: int, num_kp: int,
               checkpoint: str | Path | None = None, model: str | None = None,
               warmup: int = 20) -> StepTiming:
    """Time ``frames`` frames of ``streams`` predictors of kind ``name`` stepped together."""
    new = predictor_factory(name, checkpoint, num_kp=num_kp, model_id=model)
    predictors = [new() for _ in range(streams)]
    rng = np.random.default_rng(0)
    sets = rng.normal(0, 0.3, (streams, num_kp, 6)).astype(np.float32)
    times = []
    for t in range(warmup + frames):
        kp6 = [sets[i] + 0.01 * t for i in range(streams)] if t % 2 == 0 else [None] * streams
        start = time.perf_counter()
        step_predictors(predictors, kp6)
        if t >= warmup:
            times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    median = float(np.median(ms))
    return StepTiming(name, streams, median, median / streams, float(np.percentile(ms, 99)))


def cpu_name() -> str:
    """The CPU's model name where Linux tells it, else the architecture."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.machine()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpvid-bench predictor", description=__doc__)
    parser.add_argument("--predictors", nargs="+",
                        default=[*LEARNED_PREDICTORS, *sorted(PREDICTORS)],
                        choices=[*LEARNED_PREDICTORS, *sorted(PREDICTORS)],
                        help="predictors to time (default: all; learned ones use the shipped "
                             "weights)")
    parser.add_argument("--streams", type=positive_int, nargs="+", default=[1, 4, 16, 64],
                        help="numbers of streams stepped together (default: 1 4 16 64)")
    parser.add_argument("--frames", type=positive_int, default=400,
                        help="timed frames per measurement (default: 400)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads for torch, as the edge's engine runs (default: 1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    num_kp = 10  # the shipped FOMM checkpoint's keypoints, which the shipped predictors learnt
    model = model_id(SHIPPED_CHECKPOINT)
    rows = []
    try:
        for name in args.predictors:
            for streams in args.streams:
                rows.append(time_steps(name, streams, args.frames, num_kp, model=model))
    except (CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    machine = f"{cpu_name()}, torch {torch.__version__}, {args.threads} thread(s)"
    print(f"predictor step cost (M2 pattern, K={num_kp}; {machine})")
    print(f"{'predictor':18s} {'streams':>7s} {'ms/call':>9s} {'p99 ms':>8s} "
          f"{'ms/stream':>10s}  <= {BUDGET_MS:g} ms")
    for row in rows:
        verdict = "yes" if row.ms_per_stream <= BUDGET_MS else "NO"
        print(f"{row.predictor:18s} {row.streams:7d} {row.ms_per_call:9.3f} "
              f"{row.p99_ms_per_call:8.3f} {row.ms_per_stream:10.4f}  {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "num_kp": num_kp,
                                         "budget_ms": BUDGET_MS,
                                         "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
