"""kpvid-demo: a receiver and a synthetic talking-head sender on this machine, end to end.

Starts kpvid-receive (CPU, recording) and kpvid-send --synthetic photos (a real
photograph held out of training, animated as a talking head) as two real
processes talking WebRTC over HTTPS signaling, shows the viewer URL and a progress bar while the
clip streams, then prints what happened: keypoint kbps, frame rate, the predicted share,
end-to-end latency (capture on the sender to frame out of the receiver), CPU of each process, and
PSNR/SSIM of the recorded output against the frames the sender captured.

With --browser the viewer page also plays the stream in headless Chromium, and the summary adds
the glass-to-glass latency: capture on the sender to the frame shown in that browser, and where
it goes (the receiver time-stamps its viewers' frames, --stamp-frames; the recording is not
stamped).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import psutil
import torch
from tqdm import tqdm

from kpvid.models import (
    SHIPPED_CHECKPOINT,
    CheckpointError,
    ConfigError,
    frame_size,
    load_checkpoint_with_config,
)
from kpvid.models.predictors import DEFAULT_PREDICTOR, PREDICTOR_NAMES
from kpvid.receiver.local import LocalReceiver, start_receiver, stop_process
from kpvid.receiver.overload import OverloadOptions
from kpvid.sender.sources import SYNTHETIC_LENGTH, SyntheticSource
from kpvid.training.evaluate import write_side_by_side
from kpvid.training.metrics import psnr, ssim

from .browser_viewer import BrowserError, ViewerPage, require_browser, viewer_page

log = logging.getLogger(__name__)

STREAM = "demo"


class CpuMeter:
    """CPU share of a process between two readings (while the stream plays)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None

    def sample(self) -> None:
        try:
            times = self.process.cpu_times()
        except psutil.NoSuchProcess:
            return
        reading = (time.monotonic(), times.user + times.system)
        self.first = self.first or reading
        self.last = reading

    def percent(self) -> float | None:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        return 100 * (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


def read_recording(path: Path, fps: float) -> tuple[list[int], np.ndarray]:
    """The stream frame index (from its timestamp: a frame the edge skipped leaves a gap) and
    the picture of every frame of a recording."""
    indices, frames = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            indices.append(round(float(frame.pts * frame.time_base) * fps))
            frames.append(frame.to_ndarray(format="rgb24"))
    return indices, np.stack(frames)


def on_stream_timeline(indices: list[int], frames: np.ndarray, length: int) -> np.ndarray:
    """``length`` frames, one per stream frame index: each recorded frame at its index, and a
    frame the edge skipped (or one past the recording's end) filled with the last frame before
    it, as a viewer's picture holds; the first recorded frame fills any gap before it."""
    timeline = np.empty((length, *frames.shape[1:]), dtype=frames.dtype)
    position = 0
    for index in range(length):
        while position + 1 < len(indices) and indices[position + 1] <= index:
            position += 1
        timeline[index] = frames[position]
    return timeline


def score(received: np.ndarray, sent: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of received frames against the frames the sender captured."""
    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(0, 3, 1, 2).float().div(255)

    a, b = tensor(received), tensor(sent)
    return float(psnr(a, b).mean()), float(ssim(a, b).mean())


@dataclass(frozen=True)
class DemoSummary:
    """What one demo run measured (the figures its summary table prints)."""

    frames_sent: int
    frames_out: int
    dropped: int  # not rendered: the edge was --max-lag late
    thinned: int  # not rendered: the overloaded edge rendered only every k-th frame
    longest_gap: int  # most stream frames between two frames of the recording (1: none missing)
    observed: int
    predicted: int
    lost: int
    late: int  # played from a prediction, its set came after its deadline
    predicted_share: float  # (predicted + lost + late) / frames played (every tick)
    kbps_mean: float  # keypoint stream: its Keypoints messages
    packets: int
    fps_out: float
    latency_p50_ms: float  # capture on the sender to frame out of the receiver
    latency_p99_ms: float
    sender_cpu_percent: float | None  # of one core, while the stream played
    receiver_cpu_percent: float | None
    psnr: float  # mean, recorded output against the frames the sender captured
    ssim: float
    scored_frames: int  # frames of the H.264 recording PSNR and SSIM were measured on
    recording: Path
    side_by_side: Path
    fps: float  # the stream's frame rate
    edge_threads: int  # torch threads of the receiver
    # --browser: capture on the sender to the frame shown in headless Chromium, over the frames
    # it showed (the viewer page's window, its last 300); None when not measured
    glass_to_glass_p50_ms: float | None = None
    glass_to_glass_p99_ms: float | None = None
    glass_to_glass_frames: int | None = None  # time-stamped frames the browser showed
    # where it goes: {stage: {"p50": ms, "p99": ms}} for captureToEdgeOut (sender and edge),
    # edgeOutToReceive (VP8 encode, packets, network) and receiveToDisplay (the browser's
    # jitter buffer, decode and display)
    glass_to_glass_stages: dict[str, dict[str, float | None]] | None = None
    # the edge's own split of capture -> frame out for observed frames, p50 ms (/api/streams
    # stages_ms): capture_to_arrival (the sender's detector and the channel), wait, synthesis
    edge_stages_ms: dict[str, float | None] | None = None

    def to_json(self) -> dict:
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(self).items()}


DEMO_FACE = "grace_hopper"


DEMO_FPS = 20.0  # what a 2-core machine keeps up with at 256x256, both ends on it
EDGE_THREADS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpvid-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200,
                        help="frames the sender streams (default: 200, 10 s at 20 fps)")
    parser.add_argument("--fps", type=float, default=DEMO_FPS,
                        help=f"stream frame rate (default: {DEMO_FPS:g}: a 2-core machine "
                             "running both ends cannot synthesise 30 frames a second at "
                             "256x256; the README's demo table has the figures)")
    parser.add_argument("--domain", choices=("photos", "faces"), default="photos",
                        help="what the sender streams: photos, a real photograph held out of "
                             "training, animated as a talking head; faces, a cartoon face "
                             "(default: photos)")
    parser.add_argument("--face", default=DEMO_FACE,
                        help=f"with --domain photos: the held-out photograph (default: "
                             f"{DEMO_FACE}, which ships with matplotlib)")
    parser.add_argument("--seed", type=int, default=2026,
                        help="the clip's motion (and cartoon face) seed (default: 2026, never "
                             "used in training)")
    parser.add_argument("--observe", type=int, default=1,
                        help="frames the sender detects keypoints on, per group (default: 1)")
    parser.add_argument("--predict", type=int, default=1,
                        help="frames the edge predicts, per group (default: 1)")
    parser.add_argument("--predictor", default=DEFAULT_PREDICTOR,
                        choices=PREDICTOR_NAMES,
                        help=f"the edge's predictor (default: {DEFAULT_PREDICTOR})")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT, metavar="FILE",
                        help="the FOMM checkpoint both ends run (default: the shipped "
                             f"{SHIPPED_CHECKPOINT.name.removesuffix('.pth.tar')}); the clip "
                             "is made at its frame size")
    parser.add_argument("--port", type=int, default=0,
                        help="the receiver's HTTPS port (default: a free one)")
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="recording, side-by-side video and certificate go here "
                             "(default: out/demo)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the summary's figures here")
    parser.add_argument("--max-render-every", type=int, default=OverloadOptions.max_every,
                        metavar="K",
                        help="the receiver's --max-render-every: while its synthesis is "
                             "overloaded it renders 1 frame in 2, 3 ... up to K, evenly "
                             f"(default: {OverloadOptions.max_every}; 1: it renders every frame "
                             "it can and skips those already --max-lag late)")
    parser.add_argument("--browser", action="store_true",
                        help="also play the stream in headless Chromium (the system one, or "
                             "$KPVID_CHROMIUM; needs Playwright's Python package) and report "
                             "the glass-to-glass latency, capture on the sender to frame shown "
                             "in the browser, and where it goes. The receiver then draws time "
                             "stamps into the viewers' picture (not the recording); the "
                             "browser adds CPU load to this machine")
    return parser


def open_viewer(stack: ExitStack, url: str, chromium: str) -> ViewerPage | None:
    """The viewer page at ``url`` in headless Chromium until ``stack`` closes, once it waits
    for the stream (Chromium's start-up then no longer competes with the stream's for the
    CPU); None (with a warning) when the browser fails."""
    try:
        page = stack.enter_context(viewer_page(url, chromium))
        if not page.wait_until("() => window.kpvid?.state === 'waiting'", 30,
                               "waiting for the viewer page"):
            log.warning("the viewer page is not waiting for the stream after 30 s")
        return page
    except BrowserError as exc:
        log.warning("no glass-to-glass figures: %s", exc)
        return None


def read_glass_to_glass(page: ViewerPage) -> dict | None:
    """What the page measured (``ViewerPage.glass_to_glass``); None, with a warning, when it
    showed no time-stamped frame or the browser failed."""
    try:
        figures = page.glass_to_glass()
    except BrowserError as exc:
        log.warning("no glass-to-glass figures: %s", exc)
        return None
    if figures is None:
        log.warning("no glass-to-glass figures: the browser showed no time-stamped frame")
    return figures


def run_demo(args: argparse.Namespace, quiet: bool = False) -> DemoSummary:
    """Stream one clip through a real receiver and sender (the options of
    :func:`build_parser`) and measure it; ``quiet`` prints no viewer URL and no progress bar.
    Raises SystemExit when a process fails."""
    if args.frames < 2 or args.fps <= 0:
        raise SystemExit("kpvid-demo: --frames must be >= 2 and --fps > 0")
    chromium = require_browser() if args.browser else None
    try:
        _, _, config = load_checkpoint_with_config(args.checkpoint)
    except (CheckpointError, ConfigError) as exc:
        raise SystemExit(f"kpvid-demo: --checkpoint {args.checkpoint}: {exc}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    recordings = args.out / "recordings"
    for old in recordings.glob(f"{STREAM}-*.mp4"):
        old.unlink()
    logs = (args.out / "receiver.log").open("w"), (args.out / "sender.log").open("w")
    local: LocalReceiver | None = None
    sender: subprocess.Popen | None = None
    glass_to_glass: dict | None = None
    browser = ExitStack()  # with --browser: the viewer page in headless Chromium
    try:
        # the edge two torch threads, the sender one: at 256x256 synthesis needs more than a
        # core (measured on 2 cores at 30 fps: 219 of 300 frames out with one thread, 237
        # with two)
        local = start_receiver(args.out, logs[0], threads=EDGE_THREADS, port=args.port, extra_args=[
            "--record", str(recordings), "--predictor", args.predictor,
            "--checkpoint", str(args.checkpoint),
            "--max-render-every", str(args.max_render_every),
            *(["--stamp-frames"] if chromium is not None else [])])
        receiver, edge, cert = local.process, local.edge, local.cert
        if not quiet:
            print(f"viewer (while it runs): https://localhost:{local.port}/?token={edge.token}")
            print(f"  (self-signed certificate: {cert}; logs in {args.out})")
        page = None if chromium is None else open_viewer(
            browser, f"{edge.url}/?token={edge.token}&stream={STREAM}", chromium)

        sender = subprocess.Popen(
            [sys.executable, "-m", "kpvid.sender.cli", "--synthetic", args.domain,
             *(["--face", args.face] if args.domain == "photos" else []),
             "--seed", str(args.seed), "--fps", str(args.fps), "--frames", str(args.frames),
             "--observe", str(args.observe), "--predict", str(args.predict),
             "--to", f"localhost:{local.port}", "--ca", str(cert), "--stream", STREAM,
             "--checkpoint", str(args.checkpoint)],
            env=local.sender_env, stdout=logs[1], stderr=subprocess.STDOUT)
        meters = CpuMeter(sender.pid), CpuMeter(receiver.pid)
        snapshot: dict | None = None
        with tqdm(total=args.frames, desc="frames out", unit="frame", disable=quiet) as bar:
            while True:
                current, ended = edge.stream(STREAM)
                if current is not None:
                    snapshot = current
                    bar.n = current["frames"]["out"]
                    bar.refresh()
                if ended or (current is None and sender.poll() is not None):
                    break
                if current is not None:
                    for meter in meters:
                        meter.sample()
                    bar.set_postfix(kbps=current["kbps"], fps=current["fps_out"])
                if receiver.poll() is not None:
                    raise SystemExit(f"kpvid-receive exited with {receiver.returncode}")
                time.sleep(0.5)
        try:
            sender.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise SystemExit("kpvid-send did not finish after its stream ended") from None
        if sender.returncode != 0:
            raise SystemExit(f"kpvid-send exited with {sender.returncode}; see "
                             f"{args.out / 'sender.log'}")
        if snapshot is None:
            raise SystemExit("the stream never started; see the logs in " + str(args.out))
        if page is not None:
            glass_to_glass = read_glass_to_glass(page)
    finally:
        browser.close()
        if sender is not None and sender.poll() is None:
            sender.terminate()
        if local is not None:
            stop_process("kpvid-receive", local.process, signal.SIGINT)
        for log_file in logs:
            log_file.close()

    recording = max(recordings.glob(f"{STREAM}-*.mp4"), key=lambda p: p.stat().st_mtime)
    indices, received = read_recording(recording, args.fps)
    source = SyntheticSource(args.domain, seed=args.seed, size=frame_size(config), fps=args.fps,
                             length=max(min(args.frames, SYNTHETIC_LENGTH), 2),
                             face=args.face if args.domain == "photos" else None)
    sent = np.stack([source.frame_at(i) for i in indices])
    mean_psnr, mean_ssim = score(received, sent)
    side_by_side = args.out / "side-by-side.mp4"  # time-aligned, skipped frames held
    write_side_by_side(side_by_side,
                       [np.stack([source.frame_at(i) for i in range(args.frames)]),
                        on_stream_timeline(indices, received, args.frames)], fps=args.fps)

    frames = snapshot["frames"]
    played = frames["observed"] + frames["predicted"] + frames["lost"] + frames["late"]
    sender_cpu, receiver_cpu = (meter.percent() for meter in meters)
    latency = snapshot["latency_ms"]
    return DemoSummary(
        frames_sent=args.frames, frames_out=frames["out"], dropped=frames["dropped"],
        thinned=frames["thinned"], longest_gap=int(np.diff(indices).max(initial=1)),
        observed=frames["observed"], predicted=frames["predicted"], lost=frames["lost"],
        late=frames["late"],
        predicted_share=(played - frames["observed"]) / max(played, 1),
        kbps_mean=snapshot["kbps_mean"], packets=snapshot["packets"],
        fps_out=snapshot["fps_out"], latency_p50_ms=latency["p50"],
        latency_p99_ms=latency["p99"], sender_cpu_percent=sender_cpu,
        receiver_cpu_percent=receiver_cpu, psnr=mean_psnr, ssim=mean_ssim,
        scored_frames=len(received), recording=recording, side_by_side=side_by_side,
        fps=args.fps, edge_threads=EDGE_THREADS, edge_stages_ms=snapshot.get("stages_ms"),
        **({} if glass_to_glass is None else dict(
            glass_to_glass_p50_ms=glass_to_glass["p50"],
            glass_to_glass_p99_ms=glass_to_glass["p99"],
            glass_to_glass_frames=glass_to_glass["count"],
            glass_to_glass_stages=glass_to_glass["stages"])))


def latency_rows(summary: DemoSummary) -> list[tuple[str, str]]:
    """The summary table's rows under the latency: the edge's stages, and glass to glass when
    it was measured."""
    rows = []
    if summary.edge_stages_ms:
        rows.append(("  observed frames' split, p50 ms", ", ".join(
            f"{name.replace('_', ' ')} {'n/a' if ms is None else f'{ms:.0f}'}"
            for name, ms in summary.edge_stages_ms.items())))
    if summary.glass_to_glass_p50_ms is None:
        return rows
    stages = summary.glass_to_glass_stages or {}

    def ms(stage: str) -> str:
        figures = stages.get(stage) or {}
        return "/".join("n/a" if figures.get(q) is None else f"{figures[q]:.0f}"
                        for q in ("p50", "p99"))

    return [
        *rows,
        ("glass to glass (browser)", f"p50 {summary.glass_to_glass_p50_ms:.0f} ms, p99 "
                                     f"{summary.glass_to_glass_p99_ms:.0f} ms "
                                     f"({summary.glass_to_glass_frames} frames shown in "
                                     "headless Chromium)"),
        ("  where it goes, p50/p99 ms", f"capture -> edge out {ms('captureToEdgeOut')}, "
                                        f"VP8 + network {ms('edgeOutToReceive')}, "
                                        f"browser {ms('receiveToDisplay')}"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = run_demo(args)
    if args.json is not None:
        args.json.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
    rows = [
        ("frames out / sent", f"{summary.frames_out} / {summary.frames_sent}  "
                              f"({summary.dropped} dropped late, {summary.thinned} thinned "
                              f"under load; longest gap {summary.longest_gap} frame"
                              f"{'' if summary.longest_gap == 1 else 's'})"),
        ("observed / predicted / lost / late", f"{summary.observed} / {summary.predicted} / "
                                               f"{summary.lost} / {summary.late}"),
        ("predicted share", f"{100 * summary.predicted_share:.1f} % of the frames played  "
                            f"(schedule observe {args.observe}, predict {args.predict}, "
                            f"predictor {args.predictor})"),
        ("keypoint stream", f"{summary.kbps_mean:.1f} kbps mean "
                            f"({summary.packets} Keypoints messages)"),
        ("frame rate out", f"{summary.fps_out:.1f} fps"),
        ("latency capture -> frame out", f"p50 {summary.latency_p50_ms} ms, "
                                         f"p99 {summary.latency_p99_ms} ms"),
        *latency_rows(summary),
        ("CPU sender / receiver", " / ".join(
            "n/a" if c is None else f"{c:.0f} %"
            for c in (summary.sender_cpu_percent, summary.receiver_cpu_percent))),
        ("PSNR / SSIM vs sent frames", f"{summary.psnr:.2f} dB / {summary.ssim:.3f} "
                                       f"({summary.scored_frames} frames of the H.264 "
                                       "recording)"),
        ("recording", str(summary.recording)),
        ("sent | received", str(summary.side_by_side)),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nkpvid demo summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0
