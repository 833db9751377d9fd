"""kpvid-bench loss: how well the edge conceals lost keypoint sets, against the loss rate.

For every test video: the keypoint detector on every frame; then for each loss model (random
Bernoulli loss, bursty Gilbert-Elliott loss), loss rate and predictor, the sender's packets are
coded (default: the sender's schedule, observe 1 predict 1, and the delta codec), the
channel drops some, and the edge decodes what arrives as it does
(kpvid.training.transmission.transmit): a lost set, and a delta set whose
reference was lost, is predicted like a skipped frame, and the edge's IntraRequest makes a
later packet intra. The FOMM generator rebuilds every frame from the video's first frame (the
source image); quality is PSNR/SSIM of the rebuilt frames against the real ones, and the
keypoint error is the played keypoints' distance to the detected ones.

The loss pattern of a (video, loss model, rate) is the same for every predictor, and the
whole run is deterministic given --seed. A loss rate of 0 is run once per predictor and
reported under each loss model.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kpvid.models import frame_size, load_checkpoint_with_config, model_id
from kpvid.models.predictors import LEARNED_PREDICTORS, PREDICTORS, predictor_factory
from kpvid.protocol import CODEC_NAMES
from kpvid.protocol.keypoint_set import PX_PER_UNIT
from kpvid.protocol.keypoint_stream import DEFAULT_INTRA_INTERVAL
from kpvid.protocol.schedule import DEFAULT_OBSERVE, DEFAULT_PREDICT, Schedule
from kpvid.receiver.keypoint_intake import IntraRequestTiming
from kpvid.training.arguments import add_checkpoint_arguments, non_negative, positive_int
from kpvid.training.dataset import list_test_videos, read_video
from kpvid.training.evaluate_predict import Renderer
from kpvid.training.extract import detect_kp6, frames_to_tensor
from kpvid.training.loss_models import DEFAULT_BURST_LENGTH, LOSS_MODELS, make_loss_model
from kpvid.training.transmission import UNCODED, SimulatedChannel, TransmittedClip, transmit
from kpvid.training.visualize import to_uint8

from .bandwidth import parse_schedule
from .predictor_step import cpu_name
from .report import add_output_arguments, run_and_report
from .video_codecs import frame_quality

log = logging.getLogger(__name__)

DEFAULT_RATES = (0.0, 0.05, 0.1, 0.2, 0.3)
DEFAULT_PREDICTORS = ("vrnn", "hold-last")
# The receiver asks for an intra payload at most every 0.1 s on kp, where a request can be
# lost, and every 0.5 s on ctrl, where it arrives, if late (SessionOptions.
# intra_request_interval, intra_request_ctrl_interval). The simulated channel loses no request:
# the bench models the ctrl rate alone.
DEFAULT_REQUEST_INTERVAL = 0.5


@dataclass(frozen=True)
class LossRow:
    """One loss model, loss rate and predictor, over all videos."""

    loss_model: str
    loss_rate: float  # the model's mean rate
    predictor: str
    packets_lost: float  # share of sent packets the channel dropped
    frames_concealed: float  # share of all frames whose sent set was not played (lost or
    # undecodable) and was predicted instead
    frames_undecodable: float  # share of all frames received but not decodable
    psnr: float  # mean over videos of the per-video mean
    ssim: float
    position_error_px256_mean: float  # played vs detected keypoints, all frames, px at 256
    position_error_px256_concealed: float | None  # the same over the concealed frames only
    intra_share: float  # of sent packets
    intra_requests_per_video: float


@dataclass
class _Totals:
    """Running sums for one (loss model, rate, predictor)."""

    frames: int = 0
    packets: int = 0
    lost: int = 0
    concealed: int = 0
    undecodable: int = 0
    intra: int = 0
    requests: int = 0
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    errors: list[np.ndarray] = field(default_factory=list)
    concealed_errors: list[np.ndarray] = field(default_factory=list)

    def add(self, sent: TransmittedClip, kp6: np.ndarray, psnr: float, ssim: float) -> None:
        self.frames += len(kp6)
        self.packets += sent.packets
        self.lost += int(sent.lost.sum())
        self.concealed += int(sent.concealed.sum())
        self.undecodable += int(sent.undecodable.sum())
        self.intra += sent.intra_payloads
        self.requests += sent.intra_requests
        self.psnr.append(psnr)
        self.ssim.append(ssim)
        error = np.linalg.norm(sent.kp6[..., :2] - kp6[..., :2], axis=-1) * PX_PER_UNIT
        self.errors.append(error.ravel())
        self.concealed_errors.append(error[sent.concealed].ravel())

    def row(self, loss_model: str, rate: float, predictor: str, videos: int) -> LossRow:
        concealed = np.concatenate(self.concealed_errors)
        return LossRow(
            loss_model=loss_model, loss_rate=rate, predictor=predictor,
            packets_lost=self.lost / self.packets,
            frames_concealed=self.concealed / self.frames,
            frames_undecodable=self.undecodable / self.frames,
            psnr=float(np.mean(self.psnr)), ssim=float(np.mean(self.ssim)),
            position_error_px256_mean=float(np.concatenate(self.errors).mean()),
            position_error_px256_concealed=(float(concealed.mean()) if concealed.size
                                            else None),
            intra_share=self.intra / self.packets if self.packets else 0.0,
            intra_requests_per_video=self.requests / videos)


def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    kp_detector, generator, config = load_checkpoint_with_config(args.checkpoint, args.config)
    size = frame_size(config)
    root, paths = list_test_videos(args.data, args.max_videos)
    factories = {name: predictor_factory(name, model_id=model_id(args.checkpoint))
                 for name in args.predictors}
    # each (loss model, rate) pair with a positive rate, and rate 0 once (the same for every
    # model)
    channels = [(model, rate) for model in args.loss_models for rate in args.rates if rate > 0]
    if 0.0 in args.rates:
        channels.insert(0, ("none", 0.0))
    totals = {(model, rate, name): _Totals() for model, rate in channels
              for name in args.predictors}
    videos = frames = 0
    progress = tqdm(total=len(paths) * len(totals), desc="loss", unit="clip",
                    disable=args.quiet, dynamic_ncols=True)
    for video, path in enumerate(paths):
        try:
            clip = read_video(path, size=size)
        except ValueError as exc:
            log.warning("skipping %s", exc)
            progress.update(len(totals))
            continue
        videos += 1
        frames += len(clip)
        tensor = frames_to_tensor(clip)
        kp6 = detect_kp6(kp_detector, tensor)
        render = Renderer(kp_detector, generator, tensor[:1])
        for model, rate in channels:
            for name in args.predictors:
                progress.set_postfix_str(f"{model} {rate:g} {name}")
                loss = None
                if rate > 0:  # the same losses for every predictor
                    seed = [args.seed, video, list(LOSS_MODELS).index(model),
                            args.rates.index(rate)]
                    loss = make_loss_model(model, rate, seed, args.burst_length)
                sent = transmit(kp6, args.schedule, args.codec, factories[name],
                                args.intra_interval, SimulatedChannel(loss, args.delay),
                                IntraRequestTiming(kp_interval=None,
                                                   ctrl_interval=args.request_interval))
                psnr, ssim = frame_quality(to_uint8(render(sent.kp6)), clip)
                totals[model, rate, name].add(sent, kp6, psnr, ssim)
                progress.update()
    progress.close()
    if not videos:
        raise ValueError(f"none of the {len(paths)} videos under {root} could be read")
    rows = []
    for model in args.loss_models:
        for rate in args.rates:
            for name in args.predictors:
                key = ("none", 0.0, name) if rate == 0 else (model, rate, name)
                rows.append(totals[key].row(model, rate, name, videos))
    return {
        "meta": {"command": "kpvid-bench loss " + shlex.join(args.argv),
                 "machine": cpu_name(), "videos": videos, "frames": frames,
                 "seconds": round(time.monotonic() - started, 1),
                 "schedule": {"observe": args.schedule.observe,
                              "predict": args.schedule.predict},
                 "codec": args.codec, "intra_interval": args.intra_interval,
                 "burst_length": args.burst_length, "delay": args.delay,
                 "request_interval": args.request_interval, "seed": args.seed},
        "rows": [asdict(r) for r in rows],
    }


def _label(model: str, predictor: str) -> str:
    return f"{predictor}, {model}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_markdown(results: dict) -> str:
    """PSNR against the loss rate (one column per loss model and predictor), then every
    number, as markdown."""
    meta = results["meta"]
    rows = results["rows"]
    rates = sorted({r["loss_rate"] for r in rows})
    series = list(dict.fromkeys((r["loss_model"], r["predictor"]) for r in rows))
    by_key = {(r["loss_model"], r["predictor"], r["loss_rate"]): r for r in rows}
    schedule = meta["schedule"]
    lines = [f"**Rebuilt PSNR (dB) against the loss rate** ({meta['videos']} videos, "
             f"{meta['frames']} frames; schedule {schedule['observe']}:{schedule['predict']}, "
             f"codec `{meta['codec']}`, Gilbert-Elliott mean burst {meta['burst_length']:g} "
             f"packets, {1000 * meta['delay']:g} ms each way, at most one intra request "
             f"every {meta['request_interval']:g} s)", "",
             "| loss rate | " + " | ".join(_label(m, p) for m, p in series) + " |",
             "|---|" + "---|" * len(series)]
    for rate in rates:
        cells = [f"{by_key[m, p, rate]['psnr']:.2f}" if (m, p, rate) in by_key else "-"
                 for m, p in series]
        lines.append(f"| {100 * rate:g} % | " + " | ".join(cells) + " |")
    lines += ["", "**Every number** (shares of packets lost and of all frames concealed; "
              "keypoint error: played vs detected positions, px at 256, over all frames and "
              "over the concealed ones)", "",
              "| loss model | rate | predictor | packets lost | frames concealed "
              "(undecodable) | PSNR (dB) | SSIM | kp error all / concealed | intra | "
              "requests/video |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['loss_model']} | {100 * r['loss_rate']:g} % | {r['predictor']} | "
            f"{100 * r['packets_lost']:.1f} % | {100 * r['frames_concealed']:.1f} % "
            f"({100 * r['frames_undecodable']:.1f} %) | {r['psnr']:.2f} | {r['ssim']:.3f} | "
            f"{r['position_error_px256_mean']:.2f} / {_number(r['position_error_px256_concealed'])}"
            f" | {100 * r['intra_share']:.0f} % | {r['intra_requests_per_video']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, out_dir: Path) -> Path:
    """PSNR against the loss rate, a line per predictor and loss model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"bernoulli": "-", "gilbert-elliott": "--"}
    for model, predictor in dict.fromkeys((r["loss_model"], r["predictor"]) for r in rows):
        points = sorted((r["loss_rate"], r["psnr"]) for r in rows
                        if (r["loss_model"], r["predictor"]) == (model, predictor))
        ax.plot([100 * x for x, _ in points], [y for _, y in points], marker="o",
                linestyle=styles.get(model, "-"), label=_label(model, predictor))
    meta = results["meta"]
    ax.set_xlabel("packet loss rate (%)")
    ax.set_ylabel("rebuilt PSNR (dB)")
    ax.set_title(f"Loss concealment, {meta['videos']} test videos, "
                 f"{meta['schedule']['observe']}:{meta['schedule']['predict']} "
                 f"{meta['codec']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "loss_psnr.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_rate(text: str) -> float:
    """A loss rate in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"a loss rate must be in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpvid-bench loss", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="test videos (DIR/test when it exists, else DIR)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--max-videos", type=positive_int, default=20,
                        help="use only the first N videos (default: %(default)s)")
    parser.add_argument("--rates", type=loss_rate, nargs="+", default=list(DEFAULT_RATES),
                        help="mean packet loss rates (default: 0 0.05 0.1 0.2 0.3)")
    parser.add_argument("--loss-models", nargs="+", choices=list(LOSS_MODELS),
                        default=list(LOSS_MODELS), help="loss models (default: all)")
    parser.add_argument("--burst-length", type=float, default=DEFAULT_BURST_LENGTH,
                        help="Gilbert-Elliott's mean burst of lost packets (default: "
                             "%(default)g)")
    parser.add_argument("--predictors", nargs="+",
                        choices=sorted([*PREDICTORS, *LEARNED_PREDICTORS]),
                        default=list(DEFAULT_PREDICTORS),
                        help="the edge's predictors, for skipped and lost frames (default: "
                             f"{' '.join(DEFAULT_PREDICTORS)})")
    parser.add_argument("--schedule", type=parse_schedule,
                        default=Schedule(DEFAULT_OBSERVE, DEFAULT_PREDICT),
                        help="the sender's schedule M:N, observe M predict N (default: 1:1)")
    parser.add_argument("--codec", choices=[*CODEC_NAMES, UNCODED], default="delta",
                        help="keypoint codec (default: %(default)s)")
    parser.add_argument("--intra-interval", type=positive_int, default=DEFAULT_INTRA_INTERVAL,
                        help="delta: an intra payload at least every N packets (default: "
                             "%(default)s)")
    parser.add_argument("--delay", type=non_negative, default=0.0, metavar="SECONDS",
                        help="the channel's one-way delay, for keypoints and the edge's "
                             "IntraRequests alike (default: 0: the next packet after a "
                             "request is intra, optimistic)")
    parser.add_argument("--request-interval", type=non_negative,
                        default=DEFAULT_REQUEST_INTERVAL, metavar="SECONDS",
                        help="at most one IntraRequest this often (default: %(default)g, the "
                             "receiver's rate on ctrl)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the loss patterns")
    add_output_arguments(parser, "the PSNR-against-loss PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.argv = argv
    args.rates = sorted(set(args.rates))
    args.loss_models = list(dict.fromkeys(args.loss_models))
    args.predictors = list(dict.fromkeys(args.predictors))
    if not args.data.is_dir():
        log.error("--data %s is not a folder of videos", args.data)
        return 2
    try:  # a rate a model cannot reach (Gilbert-Elliott: rate <= burst / (1 + burst))
        for model in args.loss_models:
            for rate in args.rates:
                make_loss_model(model, rate, 0, args.burst_length)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return run_and_report(args, run, format_markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
