"""kpvid-bench speed: what the edge's model work costs, and the end-to-end latency.

* keypoint detector: milliseconds per frame at batch 1 (the sender's work per observed frame);
* synthesis: milliseconds per frame by batch size (streams rendered in one call), for the plain
  generator(source, kp_driving, kp_source) call (which encodes the source again every
  frame), the Synthesizer without its optimized generator copy (source
  work cached only), with the copy but without its fast convolutions, and as the receiver runs
  it; the methods take turns call by call, so a machine busy with other work slows them alike;
* predictor step cost (kpvid.bench.predictor_step);
* end to end (kpvid.demo.streaming): a real receiver and sender on this machine as
  kpvid-demo runs them (its frame rate and torch threads), shipped model on the CPU,
  without prediction (the sender detects every frame) and with the default schedule (every
  other frame predicted at the edge): latency from capture to frame out, frame rate and the
  CPU of each process.

shipped is the shipped default checkpoint (kpvid-heads-256, 256x256); heads-64 the
64x64 model it was grown from; vox-256 the official vox-256 configuration at 256x256 with
random weights (the same weights for every method).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from kpvid.models import (
    SHIPPED_CHECKPOINT,
    WEIGHTS_DIR,
    CheckpointError,
    ConfigError,
    Detector,
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
from kpvid.training.speed import face_frames

from .predictor_step import cpu_name, time_steps
from .report import write_report

log = logging.getLogger(__name__)

# benchmark name -> the checkpoint in models/weights/ (used when shipped) or config it names
MODELS = {"shipped": model_id(SHIPPED_CHECKPOINT), "heads-64": "kpvid-heads-64",
          "vox-256": "vox-256"}
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
    fps: float  # the demo's stream frame rate
    edge_threads: int  # the demo receiver's torch threads


def load_model(name: str, device: torch.device
               ) -> tuple[Detector, OcclusionAwareGenerator, int]:
    """The networks of a benchmark model (eval mode, on ``device``) and their frame size: its
    shipped checkpoint, else its config's networks with random weights."""
    checkpoint = WEIGHTS_DIR / f"{MODELS[name]}.pth.tar"
    if checkpoint.is_file():
        kp_detector, generator, config = load_checkpoint_with_config(checkpoint, device=device)
        return kp_detector, generator, frame_size(config)
    config = load_config(MODELS[name])
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
def time_detector(name: str, kp_detector: Detector, size: int, frames: int,
                  device: torch.device) -> DetectorTiming:
    """Per-frame time on a real-photo face (Grace Hopper's, animated): a FaceMesh-driven detector
    does different work on a frame without a face."""
    image = face_frames(size, 1).to(device)
    ms = timed_calls({"detector": lambda: kp_detector(image)}, frames, device)["detector"]
    return DetectorTiming(name, size, ms, 1e3 / ms)


@torch.inference_mode()
def time_synthesis(name: str, kp_detector: Detector, generator: OcclusionAwareGenerator,
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
    """One ``kpvid-demo`` run of ``frames`` frames, predicting ``predict`` frames per group, as
    a user starts it (its own process); SystemExit if it fails."""
    with tempfile.TemporaryDirectory(prefix="kpvid-speed-") as out:
        summary_file = Path(out) / "summary.json"
        run = subprocess.run([sys.executable, "-m", "kpvid.demo", "--frames", str(frames),
                              "--predict", str(predict), "--out", out, "--json",
                              str(summary_file)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if run.returncode != 0:
            raise SystemExit(f"kpvid-demo failed ({run.returncode}):\n{run.stdout[-2000:]}")
        summary = json.loads(summary_file.read_text())
    return EndToEnd(1, predict, summary["frames_out"], summary["dropped"], summary["fps_out"],
                    summary["latency_p50_ms"], summary["latency_p99_ms"],
                    summary["sender_cpu_percent"], summary["receiver_cpu_percent"],
                    summary["fps"], summary["edge_threads"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpvid-bench speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all",
                        help="networks to time: the shipped checkpoint "
                             f"({MODELS['shipped']}), the 64x64 kpvid-heads-64, the official "
                             "vox-256 configuration at 256x256 (random weights), or all three "
                             "(default: all)")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="time this FOMM checkpoint instead of --model (official vox-256 "
                             "weights are recognised; --config for others)")
    parser.add_argument("--config", metavar="NAME|FILE",
                        help="FOMM config for a --checkpoint that carries none")
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
                        help="frames each end-to-end run streams at kpvid-demo's frame rate "
                             "(default: 150)")
    parser.add_argument("--skip-e2e", action="store_true",
                        help="skip the end-to-end runs (they start a receiver and a sender)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run that overrides the options above: shipped model, "
                             "batches 1 2, 3 timed calls, 20 predictor steps, no end-to-end run")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write every figure, the machine and the command here")
    parser.add_argument("--markdown", type=Path, metavar="FILE",
                        help="also write the tables here")
    return parser


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def format_markdown(results: dict) -> str:
    """Every figure of a run (the JSON's layout) as markdown tables."""
    machine = results["machine"]
    lines = [f"`{results['command']}`: {machine['cpu']}, torch {machine['torch']}, "
             f"{machine['threads']} thread(s), {machine['device']}; 1-minute load average "
             + " -> ".join(f"{load:.2f}" for load in machine["load_average"]), "",
             "**Keypoint detector**, batch 1", ""]
    lines += _table(["model", "size", "ms/frame", "fps"],
                    [[d["model"], str(d["frame_size"]), f"{d['ms_per_frame']:.2f}",
                      f"{d['fps']:.1f}"] for d in results["detector"]])
    lines += ["**Synthesis**, one frame per stream per call (median ms); *x plain* is the "
              "frame rate over the plain call's at the same batch size, *x plain at 1* over "
              "the plain per-frame call's (batch 1)", ""]
    plain_at_1 = {s["model"]: s["fps"] for s in results["synthesis"]
                  if s["method"] == "plain" and s["batch"] == 1}
    lines += [f"- `{method}`: {note}" for method, note in results["methods"].items()] + [""]
    lines += _table(["model", "size", "batch", "method", "ms/call", "ms/frame", "fps",
                     "x plain", "x plain at 1"],
                    [[s["model"], str(s["frame_size"]), str(s["batch"]), s["method"],
                      f"{s['ms_per_call']:.2f}", f"{s['ms_per_frame']:.2f}", f"{s['fps']:.1f}",
                      f"{s['speedup']:.2f}",
                      f"{s['fps'] / plain_at_1[s['model']]:.2f}" if s["model"] in plain_at_1
                      else "-"] for s in results["synthesis"]])
    lines += ["**Predictor step**, M2 pattern (`kpvid-bench predictor`)", ""]
    lines += _table(["predictor", "streams", "ms/call", "ms/stream"],
                    [[p["predictor"], str(p["streams"]), f"{p['ms_per_call']:.3f}",
                      f"{p['ms_per_stream']:.4f}"] for p in results["predictor"]])
    if results["end_to_end"]:
        first = results["end_to_end"][0]
        lines += ["**End to end**: `kpvid-demo`, receiver and sender on this machine, shipped "
                  f"model, {first['fps']:g} fps, {first['edge_threads']} torch threads at the "
                  "edge and 1 at the sender; CPU in % of one core", ""]
        lines += _table(["schedule", "frames out", "dropped", "fps out", "latency p50 ms",
                         "latency p99 ms", "sender CPU", "receiver CPU"],
                        [[f"observe {e['observe']} predict {e['predict']}",
                          str(e["frames_out"]), str(e["dropped"]), f"{e['fps_out']:.1f}",
                          f"{e['latency_p50_ms']:.0f}", f"{e['latency_p99_ms']:.0f}",
                          *("n/a" if c is None else f"{c:.0f} %"
                            for c in (e["sender_cpu_percent"], e["receiver_cpu_percent"]))]
                         for e in results["end_to_end"]])
    return "\n".join(lines)


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
    if args.checkpoint is not None:
        try:
            kp_detector, generator, config = load_checkpoint_with_config(
                args.checkpoint, args.config, device)
        except (CheckpointError, ConfigError) as exc:
            log.error("--checkpoint %s: %s", args.checkpoint, exc)
            return 2
        models = [(model_id(args.checkpoint), (kp_detector, generator, frame_size(config)))]
    else:
        models = [(name, load_model(name, device))
                  for name in (MODELS if args.model == "all" else [args.model])]
    for name, (kp_detector, generator, size) in models:
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
    results = {"command": command, "machine": machine, "methods": METHOD_NOTES,
               "detector": [asdict(d) for d in detectors],
               "synthesis": [asdict(s) for s in synthesis],
               "predictor": [asdict(p) for p in predictors],
               "end_to_end": [asdict(e) for e in end_to_end]}
    write_report(results, format_markdown(results), args.json, args.markdown)
    return status


if __name__ == "__main__":
    sys.exit(main())
