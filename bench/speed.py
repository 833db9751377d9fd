"""``kpvid-bench speed``: what the edge's model work costs, and the end-to-end latency.

* keypoint detector: milliseconds per frame at batch 1 (the sender's work per observed frame);
* synthesis: milliseconds per frame by batch size (streams rendered in one call), for the plain
  ``generator(source, kp_driving, kp_source)`` call (which encodes the source again every
  frame), the :class:`~kpvid.models.Synthesizer` without its optimized generator copy (source
  work cached only), with the copy but without its fast convolutions, and as the receiver runs
  it; the methods take turns call by call, so a machine busy with other work slows them alike;
* predictor step cost (:mod:`kpvid.bench.predictor_step`);
* end to end (:mod:`kpvid.demo.streaming`): a real receiver and sender on this machine, one
  torch thread each, shipped model on the CPU, without prediction (the sender detects every
  frame) and with the default schedule (every other frame predicted at the edge): latency from
  capture to frame out, frame rate and the CPU of each process.

``shipped`` is the shipped kpvid-faces-64 checkpoint at 64x64; ``vox-256`` the official vox-256
configuration at 256x256 with random weights (the same weights for every method).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from kpvid.demo.streaming import build_parser as demo_parser
from kpvid.demo.streaming import run_demo
from kpvid.models import (
    SHIPPED_CHECKPOINT,
    KPDetector,
    OcclusionAwareGenerator,
    Synthesizer,
    build_networks,
    frame_size,
    load_checkpoint_with_config,
    load_config,
    model_id,
)
from kpvid.models.predictors import DEFAULT_PREDICTOR, LEARNED_PREDICTORS, PREDICTORS
from kpvid.training.arguments import device as device_type
from kpvid.training.arguments import positive_int

from .predictor_step import StepTiming, cpu_name, time_steps

log = logging.getLogger(__name__)

MODELS = ("shipped", "vox-256")
METHODS = ("plain", "cached", "folded", "synthesizer")
METHOD_NOTES = {
    "plain": "generator(source, kp_driving, kp_source), the source encoded every call",
    "cached": "Synthesizer(optimize=False): source-only work once, the generator as trained",
    "folded": "Synthesizer(fast_conv=False): + norms folded, transposed up blocks, "
              "channels-last",
    "synthesizer": "Synthesizer(): + Winograd / im2col 3x3 convolutions (the receiver's)",
}
QUICK = {"model": "shipped", "batches": [1, 2], "frames": 3, "predictor_frames": 20,
         "skip_e2e": True}


@dataclass(frozen=True)
class DetectorTiming:
    model: str
    frame_size: int
    ms_per_frame: float  # median, batch 1
    fps: float


@dataclass(frozen=True)
class SynthesisTiming:
    model: str
    frame_size: int
    method: str  # one of METHODS
    batch: int  # streams rendered in one call, one frame each
    ms_per_call: float  # median over the timed calls
    ms_per_frame: float
    fps: float
    speedup: float  # fps over the plain call's at the same batch size


@dataclass(frozen=True)
class EndToEnd:
    observe: int
    predict: int  # frames the edge predicts per group (0: the sender detects every frame)
    frames_out: int
    dropped: int
    fps_out: float
    latency_p50_ms: float
    latency_p99_ms: float
    sender_cpu_percent: float | None  # of one core
    receiver_cpu_percent: float | None


def load_model(name: str, device: torch.device
               ) -> tuple[KPDetector, OcclusionAwareGenerator, int]:
    """The networks of a benchmark model (eval mode, on ``device``) and their frame size."""
    if name == "shipped":
        kp_detector, generator, config = load_checkpoint_with_config(SHIPPED_CHECKPOINT,
                                                                     device=device)
        return kp_detector, generator, frame_size(config)
    config = load_config(name)
    torch.manual_seed(0)
    kp_detector, generator = build_networks(config)
    return kp_detector.to(device).eval(), generator.to(device).eval(), frame_size(config)


def timed_calls(calls: dict[str, Callable[[], object]], rounds: int, device: torch.device,
                warmup: int = 2) -> dict[str, float]:
    """Median wall milliseconds of each call over ``rounds`` rounds in which every call runs
    once, after ``warmup`` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def time_detector(name: str, kp_detector: KPDetector, size: int, frames: int,
                  device: torch.device) -> DetectorTiming:
    image = torch.rand(1, 3, size, size, device=device)
    ms = timed_calls({"detector": lambda: kp_detector(image)}, frames, device)["detector"]
    return DetectorTiming(name, size, ms, 1e3 / ms)


@torch.inference_mode()
def time_synthesis(name: str, kp_detector: KPDetector, generator: OcclusionAwareGenerator,
                   size: int, batches: list[int], frames: int, device: torch.device
                   ) -> list[SynthesisTiming]:
    """Each method at each batch size: ``batch`` streams, each with its own source, one driving
    keypoint set per stream per call."""
    rng = torch.Generator().manual_seed(1)
    synthesizers = {"cached": Synthesizer(kp_detector, generator, optimize=False),
                    "folded": Synthesizer(kp_detector, generator, fast_conv=False),
                    "synthesizer": Synthesizer(kp_detector, generator)}
    rows = []
    for batch in batches:
        log.info("timing %s synthesis, batch %d", name, batch)
        sources = torch.rand(batch, 3, size, size, generator=rng).to(device)
        kp_source = kp_detector(sources)
        kp_driving = kp_detector(torch.rand(batch, 3, size, size, generator=rng)
                                 .to(device))
        calls: dict[str, Callable[[], object]] = {
            "plain": partial(generator, sources, kp_driving, kp_source)}
        for method, synthesizer in synthesizers.items():
            prepared = [synthesizer.prepare(source[None]) for source in sources]
            calls[method] = partial(synthesizer.render_many, prepared, kp_driving)
        medians = timed_calls(calls, frames, device)
        for method in METHODS:
            ms = medians[method]
            rows.append(SynthesisTiming(name, size, method, batch, ms, ms / batch,
                                        1e3 * batch / ms, medians["plain"] / ms))
    return rows


def run_end_to_end(predict: int, frames: int) -> EndToEnd:
    """One kpvid-demo run of ``frames`` frames, predicting ``predict`` frames per group."""
    with tempfile.TemporaryDirectory(prefix="kpvid-speed-") as out:
        args = demo_parser().parse_args(["--frames", str(frames), "--predict", str(predict),
                                         "--out", out])
        summary = run_demo(args, quiet=True)
    return EndToEnd(args.observe, predict, summary.frames_out, summary.dropped,
                    summary.fps_out, summary.latency_p50_ms, summary.latency_p99_ms,
                    summary.sender_cpu_percent, summary.receiver_cpu_percent)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpvid-bench speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all",
                        help="networks to time: the shipped 64x64 checkpoint, the vox-256 "
                             "configuration at 256x256 (random weights), or both (default: all)")
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 2, 4, 8],
                        help="synthesis batch sizes: streams rendered in one call "
                             "(default: 1 2 4 8)")
    parser.add_argument("--frames", type=positive_int, default=10,
                        help="timed calls per model, method and batch size, and for the "
                             "detector (default: 10; each synthesis call renders one frame per "
                             "stream of the batch)")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(),
                        help="torch CPU threads for the detector, synthesis and predictor "
                             f"timings (default: {torch.get_num_threads()}, torch's choice "
                             "here)")
    parser.add_argument("--device", type=device_type, default="cpu",
                        help="device for the detector and synthesis timings, e.g. cuda "
                             "(default: cpu; the predictor and end-to-end runs stay on the CPU)")
    parser.add_argument("--predictors", nargs="+", default=[DEFAULT_PREDICTOR,
                                                            "constant-velocity"],
                        choices=[*LEARNED_PREDICTORS, *sorted(PREDICTORS)],
                        help=f"predictors to time (default: {DEFAULT_PREDICTOR}, the "
                             "receiver's, and constant-velocity)")
    parser.add_argument("--predictor-streams", type=positive_int, nargs="+", default=[1, 8],
                        help="streams stepped together per predictor call (default: 1 8)")
    parser.add_argument("--predictor-frames", type=positive_int, default=200,
                        help="timed predictor steps per measurement (default: 200)")
    parser.add_argument("--e2e-frames", type=positive_int, default=150,
                        help="frames each end-to-end run streams at 30 fps (default: 150, 5 s)")
    parser.add_argument("--skip-e2e", action="store_true",
                        help="skip the end-to-end runs (they start a receiver and a sender)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run that overrides the options above: shipped model, "
                             "batches 1 2, 3 timed calls, 20 predictor steps, no end-to-end run")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every figure, the machine and the command here")
    return parser


def print_tables(machine: dict, command: str, detectors: list[DetectorTiming],
                 synthesis: list[SynthesisTiming], predictors: list[StepTiming],
                 end_to_end: list[EndToEnd]) -> None:
    print(f"kpvid-bench speed: {machine['cpu']}, torch {machine['torch']}, "
          f"{machine['threads']} thread(s), {machine['device']}, load average "
          + " -> ".join(f"{load:.2f}" for load in machine["load_average"]))
    print(f"command: {command}\n")
    print("keypoint detector, batch 1")
    print(f"{'model':10s} {'size':>5s} {'ms/frame':>9s} {'fps':>7s}")
    for d in detectors:
        print(f"{d.model:10s} {d.frame_size:5d} {d.ms_per_frame:9.2f} {d.fps:7.1f}")
    print("\nsynthesis, one frame per stream per call (median ms)")
    for method in METHODS:
        print(f"  {method:12s} {METHOD_NOTES[method]}")
    print(f"{'model':10s} {'size':>5s} {'batch':>5s} {'method':12s} {'ms/call':>9s} "
          f"{'ms/frame':>9s} {'fps':>7s} {'x plain':>8s}")
    for s in synthesis:
        print(f"{s.model:10s} {s.frame_size:5d} {s.batch:5d} {s.method:12s} "
              f"{s.ms_per_call:9.2f} {s.ms_per_frame:9.2f} {s.fps:7.1f} {s.speedup:8.2f}")
    print("\npredictor step, M2 pattern (kpvid-bench predictor)")
    print(f"{'predictor':18s} {'streams':>7s} {'ms/call':>9s} {'ms/stream':>10s}")
    for p in predictors:
        print(f"{p.predictor:18s} {p.streams:7d} {p.ms_per_call:9.3f} {p.ms_per_stream:10.4f}")
    if end_to_end:
        print("\nend to end: kpvid-demo, receiver and sender on this machine, shipped model, "
              "1 thread each")
        print(f"{'schedule':20s} {'frames out':>10s} {'fps out':>8s} {'p50 ms':>7s} "
              f"{'p99 ms':>7s} {'sender CPU':>11s} {'receiver CPU':>13s}")
        for e in end_to_end:
            cpu = ["n/a" if c is None else f"{c:.0f} %"
                   for c in (e.sender_cpu_percent, e.receiver_cpu_percent)]
            print(f"{f'observe {e.observe} predict {e.predict}':20s} {e.frames_out:10d} "
                  f"{e.fps_out:8.1f} {e.latency_p50_ms:7.0f} {e.latency_p99_ms:7.0f} "
                  f"{cpu[0]:>11s} {cpu[1]:>13s}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        vars(args).update(QUICK)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    command = shlex.join(["kpvid-bench", "speed", *argv])
    machine = {"cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads,
               "device": str(device) if device.type == "cpu"
               else torch.cuda.get_device_name(device),
               # 1-minute load average before and after: other work on the machine slows the
               # timings (the synthesis methods take turns, so their ratios suffer less)
               "load_average": [os.getloadavg()[0]]}

    detectors, synthesis = [], []
    for name in MODELS if args.model == "all" else [args.model]:
        kp_detector, generator, size = load_model(name, device)
        log.info("timing %s at %dx%d", name, size, size)
        detectors.append(time_detector(name, kp_detector, size, args.frames, device))
        synthesis += time_synthesis(name, kp_detector, generator, size, args.batches,
                                    args.frames, device)
    num_kp = 10  # the shipped checkpoint's keypoints, which the shipped predictors learnt
    predictors = [time_steps(name, streams, args.predictor_frames, num_kp,
                             model=model_id(SHIPPED_CHECKPOINT))
                  for name in args.predictors for streams in args.predictor_streams]
    end_to_end = []
    status = 0
    if not args.skip_e2e:
        for predict in (0, 1):
            log.info("end to end, predict %d: %d frames", predict, args.e2e_frames)
            try:
                end_to_end.append(run_end_to_end(predict, args.e2e_frames))
            except SystemExit as exc:  # what the demo raises when a process fails
                log.error("end-to-end run (predict %d) failed: %s", predict, exc)
                status = 1

    machine["load_average"].append(os.getloadavg()[0])
    print_tables(machine, command, detectors, synthesis, predictors, end_to_end)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command, "machine": machine,
            "methods": METHOD_NOTES,
            "detector": [asdict(d) for d in detectors],
            "synthesis": [asdict(s) for s in synthesis],
            "predictor": [asdict(p) for p in predictors],
            "end_to_end": [asdict(e) for e in end_to_end],
        }, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
