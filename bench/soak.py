"""kpvid-bench soak: a long two-stream run; does anything grow without bound?

Starts one kpvid-receive (CPU, --receiver-threads torch threads, no recording unless
--record) and two endless kpvid-send --synthetic faces processes (different seeds and
stream names, one torch thread each), then samples every --interval seconds for
--minutes: RSS and open file descriptors of each process, and per stream the edge's
counters, frame rate out, latency, keypoint kbps and viewers from /api/streams. With
--viewers N, N aiortc viewers per stream (python -m kpvid.demo.viewer_peer, each its own
process) watch from the moment both streams play.

The verdict: the receiver's RSS and descriptor count, fitted with a line over the second half
of the run, must grow slower than the limits; no process may die and no stream end early; both
streams must keep within --fps-tolerance of --fps in every sample after --warmup,
and keep their viewers. Exit status 1 when a verdict fails.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from kpvid.bench.report import write_report
from kpvid.receiver.local import EdgeApi, start_receiver, stop_process
from kpvid.training.arguments import positive_int

log = logging.getLogger(__name__)

RECEIVER = "receiver"
STREAMS = ("soak-a", "soak-b")
SEEDS = (2026, 2027)
START_TIMEOUT_S = 120.0  # both streams must be playing by then
VIEWER_TIMEOUT_S = 30.0  # each viewer must be connected by then, or the run goes on without


@dataclass(frozen=True)
class ProcessSample:
    """One process at one moment."""

    rss_mb: float
    fds: int
    cpu_percent: float  # of one core, since the previous sample


@dataclass(frozen=True)
class StreamSample:
    """One stream's figures from ``/api/streams`` at one moment."""

    playing: bool  # listed among the live streams (not ended, not gone)
    frames_out: int
    dropped: int
    lost: int
    predicted: int
    fps_out: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    kbps: float
    viewers: int = 0


@dataclass(frozen=True)
class Sample:
    """Everything measured at one moment, ``t_s`` seconds into the run."""

    t_s: float
    processes: dict[str, ProcessSample]
    streams: dict[str, StreamSample]


@dataclass(frozen=True)
class Growth:
    """A line fitted to a series over the second half of the run."""

    slope_per_min: float | None  # None: fewer than two points to fit
    limit_per_min: float

    @property
    def ok(self) -> bool:
        return self.slope_per_min is None or self.slope_per_min < self.limit_per_min


@dataclass
class Verdict:
    """Whether the run held up, and why not."""

    rss: Growth  # receiver RSS, MB/min
    fds: Growth  # receiver descriptors, per minute
    sender_rss: dict[str, Growth] = field(default_factory=dict)  # for information only
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def slope_per_minute(times_s: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of ``values`` against time, per minute (None for < 2 points)."""
    if len(times_s) < 2 or np.ptp(np.asarray(times_s, dtype=float)) == 0:
        return None
    slope, _ = np.polyfit(np.asarray(times_s, dtype=float) / 60, np.asarray(values, dtype=float), 1)
    return float(slope)


def second_half_growth(times_s: Sequence[float], values: Sequence[float],
                       limit_per_min: float) -> Growth:
    """The slope of ``values`` over the second half of the run's time span."""
    if not times_s:
        return Growth(None, limit_per_min)
    middle = (times_s[0] + times_s[-1]) / 2
    points = [(t, v) for t, v in zip(times_s, values) if t >= middle]
    return Growth(slope_per_minute([t for t, _ in points], [v for _, v in points]),
                  limit_per_min)


def judge(samples: Sequence[Sample], *, fps: float = 30.0, fps_tolerance: float = 0.1,
          warmup_s: float = 60.0, max_rss_slope: float = 1.0, max_fd_slope: float = 1.0,
          died: Sequence[str] = (), viewers: int = 0) -> Verdict:
    """The verdict on a run's samples (``died``: processes that exited before the end;
    ``viewers``: how many viewers each stream should keep after the warm-up)."""
    times = [s.t_s for s in samples]
    receiver = [s.processes.get(RECEIVER) for s in samples]
    kept = [(t, p) for t, p in zip(times, receiver) if p is not None]
    verdict = Verdict(
        rss=second_half_growth([t for t, _ in kept], [p.rss_mb for _, p in kept], max_rss_slope),
        fds=second_half_growth([t for t, _ in kept], [p.fds for _, p in kept], max_fd_slope))
    names = sorted({name for s in samples for name in s.processes} - {RECEIVER})
    for name in names:
        points = [(s.t_s, s.processes[name].rss_mb) for s in samples if name in s.processes]
        verdict.sender_rss[name] = second_half_growth(
            [t for t, _ in points], [v for _, v in points], max_rss_slope)

    if not samples:
        verdict.failures.append("no samples")
    for name in died:
        verdict.failures.append(f"{name} exited before the end of the run")
    if not verdict.rss.ok:
        verdict.failures.append(f"receiver RSS grows {verdict.rss.slope_per_min:.2f} MB/min "
                                f"(limit {max_rss_slope})")
    if not verdict.fds.ok:
        verdict.failures.append(f"receiver descriptors grow {verdict.fds.slope_per_min:.2f}/min "
                                f"(limit {max_fd_slope})")
    stream_names = sorted({name for s in samples for name in s.streams})
    low, high = fps * (1 - fps_tolerance), fps * (1 + fps_tolerance)
    for name in stream_names:
        seen = [s for s in samples if name in s.streams]
        stopped = [s.t_s for s in seen if not s.streams[name].playing]
        if stopped:
            verdict.failures.append(f"stream {name} ended early (at {stopped[0]:.0f} s)")
        off = [(s.t_s, s.streams[name].fps_out) for s in seen
               if s.t_s >= warmup_s and s.streams[name].playing
               and not low <= s.streams[name].fps_out <= high]
        if off:
            verdict.failures.append(
                f"stream {name}: frame rate outside {low:.1f}-{high:.1f} fps in {len(off)} "
                f"sample(s) after {warmup_s:.0f} s, first {off[0][1]:.1f} fps at "
                f"{off[0][0]:.0f} s")
        short = [(s.t_s, s.streams[name].viewers) for s in seen
                 if s.t_s >= warmup_s and s.streams[name].viewers < viewers]
        if short:
            verdict.failures.append(
                f"stream {name}: {short[0][1]} of {viewers} viewers at {short[0][0]:.0f} s")
    return verdict


def sample_process(process: psutil.Process) -> ProcessSample | None:
    """RSS, open descriptors and CPU share of a process (None once it is gone)."""
    try:
        with process.oneshot():
            return ProcessSample(rss_mb=round(process.memory_info().rss / 2**20, 1),
                                 fds=process.num_fds(),
                                 cpu_percent=round(process.cpu_percent(interval=None), 1))
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def sample_streams(edge: EdgeApi) -> dict[str, StreamSample]:
    """Every stream the edge lists, live or ended."""
    state = edge.get("/api/streams")
    found: dict[str, StreamSample] = {}
    for playing, streams in ((False, state["ended"]), (True, state["streams"])):
        for s in streams:
            frames, latency = s["frames"], s.get("latency_ms") or {}
            found[s["name"]] = StreamSample(
                playing=playing, frames_out=frames.get("out", 0),
                dropped=frames.get("dropped", 0), lost=frames.get("lost", 0),
                predicted=frames.get("predicted", 0), fps_out=s.get("fps_out", 0.0),
                latency_p50_ms=latency.get("p50"), latency_p99_ms=latency.get("p99"),
                kbps=s.get("kbps", 0.0), viewers=s.get("viewers", 0))
    return found


def _wait_for_viewers(edge: EdgeApi, stream: str, count: int) -> None:
    """Until the edge counts ``count`` viewers of ``stream`` (at most VIEWER_TIMEOUT_S)."""
    deadline = time.monotonic() + VIEWER_TIMEOUT_S
    while time.monotonic() < deadline:
        found = sample_streams(edge).get(stream)
        if found is not None and found.viewers >= count:
            return
        time.sleep(0.25)
    log.warning("viewer %d of %s not connected after %.0f s", count, stream, VIEWER_TIMEOUT_S)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_soak(args: argparse.Namespace) -> tuple[list[Sample], list[str]]:
    """Run the processes and sample them; the samples and the processes that died early."""
    args.out.mkdir(parents=True, exist_ok=True)
    record = [] if args.record is None else ["--record", str(args.record)]
    model = [] if args.checkpoint is None else ["--checkpoint", str(args.checkpoint)]
    processes: dict[str, subprocess.Popen] = {}
    logs = []
    samples: list[Sample] = []
    died: list[str] = []
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        logs.append((args.out / "receiver.log").open("w"))
        local = start_receiver(args.out, logs[-1], args.receiver_threads, [*record, *model],
                               args.port)
        processes[RECEIVER], edge = local.process, local.edge
        log.info("receiver up on port %d (logs in %s)", local.port, args.out)
        for stream, seed in zip(STREAMS, SEEDS):
            logs.append((args.out / f"sender-{stream}.log").open("w"))
            processes[stream] = subprocess.Popen(
                [sys.executable, "-m", "kpvid.sender.cli", "--synthetic", "faces",
                 "--seed", str(seed), "--fps", str(args.fps), "--to", f"localhost:{local.port}",
                 "--ca", str(local.cert), "--stream", stream, "--threads", "1", *model],
                env=local.sender_env, stdout=logs[-1], stderr=subprocess.STDOUT)
        watched = {name: psutil.Process(p.pid) for name, p in processes.items()}
        for process in watched.values():
            process.cpu_percent(interval=None)  # the first reading starts the CPU clock

        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(s in sample_streams(edge) for s in STREAMS):
            gone = [name for name, p in processes.items() if p.poll() is not None]
            if gone or time.monotonic() > deadline:
                died.extend(gone)
                log.error("the streams did not start (%s); see the logs in %s",
                          f"{', '.join(gone)} exited" if gone else "timed out", args.out)
                return samples, died
            time.sleep(0.5)
        for stream in STREAMS:
            for n in range(1, args.viewers + 1):
                name = f"viewer-{stream}-{n}"
                logs.append((args.out / f"{name}.log").open("w"))
                processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "kpvid.demo.viewer_peer", edge.url, stream,
                     "--ca", str(local.cert)],
                    env=local.sender_env, stdout=logs[-1], stderr=subprocess.STDOUT)
                watched[name] = psutil.Process(processes[name].pid)
                watched[name].cpu_percent(interval=None)
                _wait_for_viewers(edge, stream, n)  # one start-up at a time on a small machine
        log.info("both streams playing%s; sampling every %.0f s for %.1f min",
                 f", {args.viewers} viewer(s) each" if args.viewers else "",
                 args.interval, args.minutes)

        duration = args.minutes * 60
        start = time.monotonic()
        with tqdm(total=round(duration), desc="soak", unit="s") as bar:
            while True:
                now = time.monotonic() - start
                measured = {name: sample_process(p) for name, p in watched.items()}
                try:
                    streams = sample_streams(edge)
                except (urllib.error.URLError, ConnectionError, OSError) as error:
                    log.error("the edge stopped answering: %s", error)
                    streams = {}
                samples.append(Sample(round(now, 1), {n: p for n, p in measured.items() if p},
                                      streams))
                bar.n = min(round(now), bar.total)
                receiver = measured[RECEIVER]
                bar.set_postfix(rss=receiver.rss_mb if receiver else None,
                                fds=receiver.fds if receiver else None,
                                fps="/".join(f"{streams[s].fps_out:.0f}" if s in streams
                                             else "-" for s in STREAMS))
                died = [name for name, p in processes.items() if p.poll() is not None]
                if died:
                    log.error("%s exited early (status %s); see the logs in %s",
                              ", ".join(died),
                              ", ".join(str(processes[n].returncode) for n in died), args.out)
                    break
                if now >= duration:
                    break
                time.sleep(max(0.0, min(args.interval * len(samples) - now, duration - now)))
    except KeyboardInterrupt:
        log.warning("interrupted after %d sample(s); stopping the processes", len(samples))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for name in processes:
            if name != RECEIVER:
                stop_process(name, processes[name])
        if RECEIVER in processes:
            stop_process(RECEIVER, processes[RECEIVER], signal.SIGINT)
        for log_file in logs:
            log_file.close()
    return samples, died


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def tables(samples: Sequence[Sample], verdict: Verdict, args: argparse.Namespace) -> str:
    """The markdown: settings, verdict, and the samples about once a minute."""
    every = max(1, round(60 / args.interval))
    shown = [s for i, s in enumerate(samples) if i % every == 0 or i == len(samples) - 1]
    names = [RECEIVER, *STREAMS,
             *sorted({n for s in samples for n in s.processes} - {RECEIVER, *STREAMS})]
    lines = [
        "# Soak: two streams on one edge",
        "",
        f"{args.minutes:g} min, a sample every {args.interval:g} s ({len(samples)} samples; "
        f"the tables show about one a minute), two synthetic-face senders at {args.fps:g} fps, "
        f"{args.receiver_threads} torch thread(s) for the receiver, one for each sender, "
        f"{args.viewers} viewer(s) per stream, recording {'on' if args.record else 'off'}.",
        "",
        "## Verdict",
        "",
        "| check | figure | limit | ok |",
        "|---|---|---|---|",
        f"| receiver RSS slope, second half | {_num(verdict.rss.slope_per_min, 3)} MB/min "
        f"| < {verdict.rss.limit_per_min:g} | {'yes' if verdict.rss.ok else 'NO'} |",
        f"| receiver fds slope, second half | {_num(verdict.fds.slope_per_min, 3)} /min "
        f"| < {verdict.fds.limit_per_min:g} | {'yes' if verdict.fds.ok else 'NO'} |",
    ]
    for name, growth in verdict.sender_rss.items():
        lines.append(f"| {name} RSS slope, second half (info) "
                     f"| {_num(growth.slope_per_min, 3)} MB/min | - | - |")
    lines += ["", "Failures: " + ("; ".join(verdict.failures) if verdict.failures else "none"),
              "", "## Processes: RSS (MB) / open descriptors / CPU (% of a core)", "",
              "| t (min) | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for s in shown:
        cells = [f"{p.rss_mb:.1f} / {p.fds} / {p.cpu_percent:.0f}" if p else "gone"
                 for p in (s.processes.get(n) for n in names)]
        lines.append(f"| {s.t_s / 60:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "## Streams: fps out / latency p50, p99 (ms) / frames out, dropped, lost / "
              "kbps / viewers", "",
              "| t (min) | " + " | ".join(STREAMS) + " |",
              "|---|" + "---|" * len(STREAMS)]
    for s in shown:
        cells = []
        for name in STREAMS:
            st = s.streams.get(name)
            cells.append("-" if st is None else
                         f"{st.fps_out:.1f} / {_num(st.latency_p50_ms, 0)}, "
                         f"{_num(st.latency_p99_ms, 0)} / {st.frames_out}, {st.dropped}, "
                         f"{st.lost} / {st.kbps:.1f} / {st.viewers}"
                         + ("" if st.playing else " (ended)"))
        lines.append(f"| {s.t_s / 60:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(samples: Sequence[Sample], path: Path) -> None:
    """One PNG: RSS and descriptors of each process, frame rate and p99 latency per stream."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for name in [RECEIVER, *STREAMS]:
        points = [(s.t_s / 60, s.processes[name]) for s in samples if name in s.processes]
        label = name if name == RECEIVER else f"sender {name}"
        axes[0, 0].plot([t for t, _ in points], [p.rss_mb for _, p in points], label=label)
        axes[0, 1].plot([t for t, _ in points], [p.fds for _, p in points], label=label)
    for name in STREAMS:
        points = [(s.t_s / 60, s.streams[name]) for s in samples if name in s.streams]
        axes[1, 0].plot([t for t, _ in points], [st.fps_out for _, st in points], label=name)
        axes[1, 1].plot([t for t, _ in points],
                        [np.nan if st.latency_p99_ms is None else st.latency_p99_ms
                         for _, st in points], label=name)
    for ax, title in zip(axes.flat, ("RSS (MB)", "open descriptors", "frame rate out (fps)",
                                     "latency p99 (ms)")):
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpvid-bench soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="how long to sample, once both streams play (default: 10)")
    parser.add_argument("--receiver-threads", type=positive_int, default=2,
                        help="torch threads of the receiver (default: 2; the senders get one "
                             "each)")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between samples (default: 10)")
    parser.add_argument("--fps", type=float, default=30.0,
                        help="the senders' frame rate, and the verdict's target (default: 30)")
    parser.add_argument("--fps-tolerance", type=float, default=0.1,
                        help="largest relative frame-rate deviation after the warm-up "
                             "(default: 0.1)")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds at the start the frame-rate check ignores (default: 60)")
    parser.add_argument("--max-rss-slope", type=float, default=1.0,
                        help="receiver RSS growth limit over the second half, MB/min "
                             "(default: 1)")
    parser.add_argument("--max-fd-slope", type=float, default=1.0,
                        help="receiver descriptor growth limit over the second half, per minute "
                             "(default: 1)")
    parser.add_argument("--viewers", type=int, default=0, metavar="N",
                        help="aiortc viewers per stream, each its own process (default: 0)")
    parser.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                        help="the FOMM checkpoint of the receiver and both senders (default: "
                             "the shipped one; the clips are made at its frame size)")
    parser.add_argument("--record", type=Path, default=None, metavar="DIR",
                        help="have the receiver record both streams into DIR (default: off)")
    parser.add_argument("--port", type=int, default=0,
                        help="the receiver's HTTPS port (default: a free one)")
    parser.add_argument("--out", type=Path, default=Path("out/soak"),
                        help="process logs and the receiver's certificate (default: out/soak)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="write every sample and the verdict here")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="write the tables here")
    parser.add_argument("--plots", type=Path, default=None, metavar="DIR",
                        help="write soak.png (RSS, descriptors, frame rate, latency) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.viewers < 0:
        raise SystemExit("kpvid-bench soak: --minutes and --interval must be > 0, --viewers "
                         ">= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        samples, died = run_soak(args)
    except KeyboardInterrupt:
        log.error("soak interrupted; every process it started is stopped, nothing written")
        return 130
    verdict = judge(samples, fps=args.fps, fps_tolerance=args.fps_tolerance,
                    warmup_s=args.warmup, max_rss_slope=args.max_rss_slope,
                    max_fd_slope=args.max_fd_slope, died=died, viewers=args.viewers)
    results = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "verdict": {"ok": verdict.ok, "failures": verdict.failures,
                    "receiver_rss_slope_mb_per_min": verdict.rss.slope_per_min,
                    "receiver_fds_slope_per_min": verdict.fds.slope_per_min,
                    "sender_rss_slope_mb_per_min": {
                        n: g.slope_per_min for n, g in verdict.sender_rss.items()}},
        "samples": [asdict(s) for s in samples],
    }
    write_report(results, tables(samples, verdict, args), args.json, args.markdown)
    if args.plots is not None and samples:
        plot(samples, args.plots / "soak.png")
    if not verdict.ok:
        log.error("soak failed: %s", "; ".join(verdict.failures))
        return 1
    log.info("soak passed")
    return 0
