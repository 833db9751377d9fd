"""kpvid-bench adapt: the sender adapting N to the motion and the edge's feedback, against
fixed schedules, on quality per bit.

Synthetic talking-head calls (made here, at the shipped model's size, from seeds that no data
set uses): *steady* clips keep one liveliness throughout; *varying* ones alternate still
(listening) and lively (talking, moving) phases of 1-4 s, as calls do. For every clip: the
keypoint detector on every frame, then each schedule through the delta codec, the edge's
predictor (kpvid.training.transmission.transmit) and the FOMM generator, from the
clip's first frame. Fixed schedules observe 1 and predict N; adaptive ones start at 1:1 and
follow kpvid.sender.adaptation.ScheduleController with a pace (group length at 1 px
per frame of keypoint motion), the edge's feedback reaching the sender every second, 100 ms
late. A fixed schedule's bit rate is set by N alone, so the question is whether the adaptive
points lie above the fixed schedules' curve of PSNR against bit rate: the table gives each
adaptive point's gain over the fixed curve at its own bit rate (linear between the two fixed
points around it), and on how many clips the point lies above that clip's own fixed curve.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kpvid.models import frame_size, load_checkpoint_with_config, model_id
from kpvid.models.predictors import LEARNED_PREDICTORS, PREDICTORS, predictor_factory
from kpvid.protocol.keypoint_set import PX_PER_UNIT
from kpvid.protocol.schedule import Schedule
from kpvid.sender.adaptation import AdaptationOptions
from kpvid.synthetic.faces import ACTIVITIES, generate_faces
from kpvid.training.arguments import add_checkpoint_arguments, positive_int
from kpvid.training.evaluate_predict import Renderer
from kpvid.training.extract import detect_kp6, frames_to_tensor
from kpvid.training.loss_models import (
    DEFAULT_BURST_LENGTH,
    LOSS_MODELS,
    GilbertElliott,
    make_loss_model,
)
from kpvid.training.transmission import SimulatedChannel, transmit
from kpvid.training.visualize import to_uint8

from .loss import loss_rate
from .predictor_step import cpu_name
from .report import add_output_arguments, run_and_report
from .video_codecs import frame_quality

log = logging.getLogger(__name__)

FPS = 30.0
SEED_BASE = 900_000  # clip seeds: SEED_BASE + --seed * 10_000 + clip number
DEFAULT_FIXED = (0, 1, 2, 3, 4, 6)
DEFAULT_PACES = (2.0, 3.0, 4.0, 5.0, 6.0)


@dataclass(frozen=True)
class ScheduleRow:
    """One schedule on one kind of clip, over all clips."""

    activity: str
    schedule: str  # "fixed 1:N" or "adaptive pace <pace>"
    adaptive: bool
    kbps: float  # Keypoints messages, whole messages, at 30 fps
    psnr: float  # mean over clips of the per-clip mean
    ssim: float
    position_error_px256: float  # played vs detected keypoints, all frames
    sent_share: float  # frames whose keypoints were sent
    mean_predict: float  # N, averaged over frames
    changes_per_s: float  # times N changed, per second of video
    gain_db: float | None  # adaptive: PSNR above the fixed curve at the same kbps
    # adaptive: clips whose own fixed curve the clip's point lies above, of those it lies within
    clips_above: int | None
    clips_compared: int | None


def _fixed_curve_psnr(points: list[tuple[float, float]], kbps: float) -> float | None:
    """PSNR of the fixed schedules' curve, ``(kbps, psnr)`` points, at ``kbps`` (linear between
    neighbours), None outside it."""
    points = sorted(points)
    for (k0, p0), (k1, p1) in zip(points, points[1:]):
        if k0 <= kbps <= k1:
            return p0 + (p1 - p0) * (kbps - k0) / (k1 - k0) if k1 > k0 else max(p0, p1)
    return None


def _clips_above(fixed: list[dict], adaptive: dict) -> tuple[int, int]:
    """Of the clips whose fixed curve spans the adaptive schedule's bit rate on that clip, how
    many the adaptive point lies above, and how many there are."""
    above = compared = 0
    for clip, (kbps, psnr) in enumerate(zip(adaptive["kbps"], adaptive["psnr"])):
        curve = _fixed_curve_psnr([(f["kbps"][clip], f["psnr"][clip]) for f in fixed], kbps)
        if curve is not None:
            compared += 1
            above += psnr > curve
    return above, compared


def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    kp_detector, generator, config = load_checkpoint_with_config(args.checkpoint, args.config)
    size = frame_size(config)
    new_predictor = predictor_factory(args.predictor, model_id=model_id(args.checkpoint),
                                      rewind=not args.no_rewind)
    schedules: list[tuple[str, float | int, bool]] = (
        [(f"fixed 1:{n}", n, False) for n in args.fixed]
        + [(f"adaptive pace {p:g}", p, True) for p in args.paces])
    sums = {(a, name): {"bytes": 0, "frames": 0, "sent": 0, "predict": 0.0, "changes": 0,
                        "kbps": [], "psnr": [], "ssim": [], "error": []}
            for a in args.activities for name, _, _ in schedules}
    progress = tqdm(total=len(args.activities) * args.clips * len(schedules), desc="adapt",
                    unit="run", disable=args.quiet, dynamic_ncols=True)
    for activity in args.activities:
        for clip_number in range(args.clips):
            seed = SEED_BASE + args.seed * 10_000 + clip_number
            clip = generate_faces(seed, size, args.frames, activity)
            tensor = frames_to_tensor(clip)
            kp6 = detect_kp6(kp_detector, tensor)
            render = Renderer(kp_detector, generator, tensor[:1])
            for name, value, adaptive in schedules:
                progress.set_postfix_str(f"{activity} {name}")
                loss = (make_loss_model(args.loss_model, args.loss_rate,
                                        [args.seed, clip_number], args.burst_length)
                        if args.loss_rate > 0 else None)
                start = Schedule(1, 1 if adaptive else int(value))
                adapt = (AdaptationOptions(pace=float(value), max_predict=args.max_predict,
                                           loss_high=args.loss_high) if adaptive else None)
                sent = transmit(kp6, start, "delta", new_predictor,
                                channel=SimulatedChannel(loss), adapt=adapt)
                psnr, ssim = frame_quality(to_uint8(render(sent.kp6)), clip)
                total = sums[activity, name]
                total["bytes"] += int(sent.message_bytes.sum())
                total["kbps"].append(float(sent.message_bytes.sum()) * 8 * FPS / 1000 / len(kp6))
                total["frames"] += len(kp6)
                total["sent"] += sent.packets
                total["predict"] += float(sent.predict.sum())
                total["changes"] += int(np.count_nonzero(np.diff(sent.predict)))
                total["psnr"].append(psnr)
                total["ssim"].append(ssim)
                total["error"].append(float(np.linalg.norm(
                    sent.kp6[..., :2] - kp6[..., :2], axis=-1).mean() * PX_PER_UNIT))
                progress.update()
    progress.close()
    rows: list[ScheduleRow] = []
    for activity in args.activities:
        made = [ScheduleRow(
            activity=activity, schedule=name, adaptive=adaptive,
            kbps=sums[activity, name]["bytes"] * 8 * FPS / 1000 / sums[activity, name]["frames"],
            psnr=float(np.mean(sums[activity, name]["psnr"])),
            ssim=float(np.mean(sums[activity, name]["ssim"])),
            position_error_px256=float(np.mean(sums[activity, name]["error"])),
            sent_share=sums[activity, name]["sent"] / sums[activity, name]["frames"],
            mean_predict=sums[activity, name]["predict"] / sums[activity, name]["frames"],
            changes_per_s=sums[activity, name]["changes"] * FPS / sums[activity, name]["frames"],
            gain_db=None, clips_above=None, clips_compared=None)
            for name, _, adaptive in schedules]
        fixed = [r for r in made if not r.adaptive]
        fixed_clips = [sums[activity, r.schedule] for r in fixed]
        for row in made:
            if row.adaptive:
                curve = _fixed_curve_psnr([(r.kbps, r.psnr) for r in fixed], row.kbps)
                above, compared = _clips_above(fixed_clips, sums[activity, row.schedule])
                row = ScheduleRow(**{**asdict(row), "gain_db": None if curve is None
                                     else row.psnr - curve, "clips_above": above,
                                     "clips_compared": compared})
            rows.append(row)
    return {
        "meta": {"command": "kpvid-bench adapt " + shlex.join(args.argv),
                 "machine": cpu_name(), "clips": args.clips, "frames_per_clip": args.frames,
                 "fps": FPS, "seconds": round(time.monotonic() - started, 1),
                 "predictor": args.predictor, "rewind": not args.no_rewind, "codec": "delta",
                 "seed": args.seed,
                 "max_predict": args.max_predict, "loss_high": args.loss_high,
                 "loss_model": args.loss_model,
                 "loss_rate": args.loss_rate},
        "rows": [asdict(r) for r in rows],
    }


def _gain(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def _share(part: int | None, whole: int | None) -> str:
    return "" if part is None or not whole else f"{part} of {whole}"


def format_markdown(results: dict) -> str:
    """One table per kind of clip: every schedule's bit rate and quality, and each adaptive
    schedule's gain over the fixed curve."""
    meta = results["meta"]
    loss = (f", {100 * meta['loss_rate']:g} % {meta['loss_model']} loss"
            if meta["loss_rate"] else "")
    rewind = "" if meta.get("rewind", True) else " (no rewinds)"
    lines = [f"{meta['clips']} clips of {meta['frames_per_clip']} frames per kind, "
             f"{meta['predictor']}{rewind} at the edge, `{meta['codec']}` codec{loss}; adaptive: "
             f"N from 0 to {meta['max_predict']}, starting at 1:1, loss over "
             f"{100 * meta.get('loss_high', AdaptationOptions.loss_high):g} % lowers its cap", ""]
    for activity in dict.fromkeys(r["activity"] for r in results["rows"]):
        lines += [f"**{activity} clips**", "",
                  "| schedule | kbps | PSNR (dB) | SSIM | kp error (px at 256) | frames sent | "
                  "mean N | N changes/s | PSNR above the fixed curve (dB) | clips above "
                  "their own fixed curve |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["rows"]:
            if r["activity"] == activity:
                lines.append(
                    f"| {r['schedule']} | {r['kbps']:.2f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                    f"{r['position_error_px256']:.2f} | {100 * r['sent_share']:.0f} % | "
                    f"{r['mean_predict']:.2f} | {r['changes_per_s']:.2f} | "
                    f"{_gain(r['gain_db'])} | {_share(r['clips_above'], r['clips_compared'])} |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, out_dir: Path) -> Path:
    """PSNR against kbps: the fixed schedules' curve and the adaptive points, per kind of
    clip."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    activities = list(dict.fromkeys(r["activity"] for r in results["rows"]))
    fig, axes = plt.subplots(1, len(activities), figsize=(5.5 * len(activities), 4.2),
                             squeeze=False)
    for ax, activity in zip(axes[0], activities):
        for adaptive, style, label in ((False, "o-", "fixed 1:N"),
                                       (True, "s--", "adaptive (pace)")):
            points = sorted((r["kbps"], r["psnr"], r["schedule"]) for r in results["rows"]
                            if r["activity"] == activity and r["adaptive"] == adaptive)
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
            for kbps, psnr, name in points:
                ax.annotate(name.split()[-1] if adaptive else name.split(":")[-1],
                            (kbps, psnr), textcoords="offset points", xytext=(4, -10),
                            fontsize=7)
        ax.set_title(f"{activity} clips")
        ax.set_xlabel("keypoint stream (kbps)")
        ax.set_ylabel("rebuilt PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "adapt_psnr.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _loss_share(text: str) -> float:
    """A share of lost sets in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpvid-bench adapt", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser)
    parser.add_argument("--clips", type=positive_int, default=8,
                        help="clips of each kind (default: %(default)s)")
    parser.add_argument("--frames", type=positive_int, default=240,
                        help="frames per clip, at 30 fps (default: %(default)s, 8 s)")
    parser.add_argument("--activities", nargs="+", choices=ACTIVITIES, default=list(ACTIVITIES),
                        help="kinds of clip (default: all)")
    parser.add_argument("--fixed", type=int, nargs="+", default=list(DEFAULT_FIXED),
                        help="N of the fixed schedules 1:N (default: 0 1 2 3 4 6)")
    parser.add_argument("--paces", type=float, nargs="+", default=list(DEFAULT_PACES),
                        help="paces of the adaptive schedules, frames per group at 1 px per "
                             "frame of motion (default: 2 3 4 5 6)")
    parser.add_argument("--max-predict", type=int, default=AdaptationOptions.max_predict,
                        help="the most frames an adaptive schedule predicts per group "
                             "(default: %(default)s)")
    parser.add_argument("--predictor", choices=sorted([*PREDICTORS, *LEARNED_PREDICTORS]),
                        default="vrnn", help="the edge's predictor (default: %(default)s)")
    parser.add_argument("--loss-high", type=_loss_share, default=AdaptationOptions.loss_high,
                        help="the share of lost sets over which the feedback lowers the cap on "
                             "N (default: %(default)g; 1: never)")
    parser.add_argument("--no-rewind", action="store_true",
                        help="learned predictors do not replay gaps their forecast got wrong "
                             "(kpvid.models.learned_predictor), to see what the rewind does")
    parser.add_argument("--loss-rate", type=loss_rate, default=0.0,
                        help="keypoint packet loss rate (default: 0)")
    parser.add_argument("--loss-model", choices=list(LOSS_MODELS),
                        default=GilbertElliott.name, help="with --loss-rate (default: "
                                                        "%(default)s)")
    parser.add_argument("--burst-length", type=float, default=DEFAULT_BURST_LENGTH,
                        help="Gilbert-Elliott's mean burst (default: %(default)g packets)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips and losses")
    add_output_arguments(parser, "the PSNR-against-kbps PNG")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.argv = argv
    if any(n < 0 for n in args.fixed) or any(p <= 0 for p in args.paces):
        parser.error("--fixed needs N >= 0 and --paces > 0")
    args.fixed = sorted(set(args.fixed))
    return run_and_report(args, run, format_markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
