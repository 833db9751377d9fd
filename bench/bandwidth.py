"""kpvid-bench bandwidth: bytes and quality of each keypoint codec and schedule, against
conventional video codecs on the same frames.

For every test video: the keypoint detector on every frame; for each schedule (observe M,
predict N) and keypoint codec, the sender's packets are coded and decoded as the edge does, the
edge's predictor fills the skipped frames, and the FOMM generator rebuilds every frame from the
video's first frame (the source image). Quality is PSNR/SSIM of the rebuilt frames against the
real ones. The same frames go through H.264, VP8, VP9 and AV1 at a sweep of bitrates
(kpvid.bench.video_codecs), and each codec's bitrate at kpvid's quality is compared with
kpvid's, the source image amortised over a call included.

Rates: *payload* counts what the application hands to the transport (Keypoints messages; the
video codecs' bitstream). *Wire* adds per-packet headers, one packet per keypoint message
(SCTP common header 12 + DATA chunk 16, DTLS 1.2 record 13 + AES-GCM nonce and tag 24, UDP 8,
IPv4 20 = 93 bytes) and one per video frame (RTP 12, SRTP tag 10, UDP 8, IPv4 20 = 50 bytes;
one more per further 1200 bytes of a frame).
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kpvid.models import frame_size, load_checkpoint_with_config, model_id
from kpvid.models.predictors import DEFAULT_PREDICTOR, PREDICTOR_NAMES, predictor_factory
from kpvid.protocol import CODEC_NAMES, encode_source_image
from kpvid.protocol.keypoint_set import PX_PER_UNIT
from kpvid.protocol.schedule import DEFAULT_OBSERVE, DEFAULT_PREDICT, Schedule
from kpvid.training.arguments import add_checkpoint_arguments, positive_int
from kpvid.training.dataset import list_test_videos, read_video
from kpvid.training.evaluate_predict import Renderer
from kpvid.training.extract import detect_kp6, frames_to_tensor
from kpvid.training.transmission import UNCODED, transmit
from kpvid.training.visualize import to_uint8

from . import video_codecs
from .predictor_step import cpu_name
from .report import add_output_arguments, run_and_report

log = logging.getLogger(__name__)

KP_PACKET_OVERHEAD = 12 + 16 + 13 + 24 + 8 + 20  # SCTP, DTLS (AES-GCM), UDP, IPv4
VIDEO_PACKET_OVERHEAD = 12 + 10 + 8 + 20  # RTP, SRTP tag, UDP, IPv4
VIDEO_PACKET_PAYLOAD = 1200
SOURCE_QUALITY = 90  # kpvid-send's JPEG quality for the source image


@dataclass(frozen=True)
class KeypointRow:
    """One keypoint codec at one schedule, over all videos."""

    codec: str
    observe: int
    predict: int
    bytes_per_packet: float  # whole Keypoints message, mean over packets
    payload_per_packet: float  # codec payload only
    bytes_per_frame: float  # message bytes per output frame (predicted frames count zero)
    kbps: float  # payload rate: bytes_per_frame * fps
    wire_kbps: float
    psnr: float
    ssim: float
    position_error_px256_max: float  # decoded vs detected, in pixels of a 256x256 frame
    position_error_px256_mean: float
    intra_share: float  # of packets


@dataclass(frozen=True)
class Comparison:
    """A video codec's bitrate at kpvid's quality, and how many times kpvid's rate it is."""

    codec: str
    metric: str
    target: float
    codec_kbps: str  # "23.4 kbps", or a bound like "> 144 kbps"
    ratio: str  # codec kbps / kpvid kbps (with the source image amortised), or a bound
    wire_ratio: str


def parse_schedule(text: str) -> Schedule:
    """``M:N`` -> Schedule(M, N)."""
    try:
        observe, predict = (int(x) for x in text.split(":"))
        return Schedule(observe, predict)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected M:N with M >= 1 and N >= 0, got {text!r}"
                                         ) from None


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _describe_ratio(estimate: video_codecs.BitrateEstimate, kpvid_kbps: float,
                    overhead_kbps: float = 0.0) -> str:
    """``estimate`` (+ overhead) over kpvid's rate, as a number or a bound."""
    if estimate.kbps is not None:
        return f"{(estimate.kbps + overhead_kbps) / kpvid_kbps:.1f}"
    if estimate.upper_bound is not None:
        return f"< {(estimate.upper_bound + overhead_kbps) / kpvid_kbps:.1f}"
    return f"> {(estimate.lower_bound + overhead_kbps) / kpvid_kbps:.1f}"


def video_wire_overhead_kbps(kbps: float, fps: float) -> float:
    """Packet headers of a video stream at ``kbps``: per frame, one packet per 1200 bytes."""
    frame_bytes = kbps * 1000 / 8 / fps
    packets = max(1, math.ceil(frame_bytes / VIDEO_PACKET_PAYLOAD))
    return packets * VIDEO_PACKET_OVERHEAD * 8 * fps / 1000


class _Totals:
    """Running sums for one (codec, schedule)."""

    def __init__(self) -> None:
        self.frames = self.packets = self.message_bytes = self.payload_bytes = self.intra = 0
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.position_errors: list[np.ndarray] = []


def run(args: argparse.Namespace) -> dict:
    kp_detector, generator, config = load_checkpoint_with_config(args.checkpoint, args.config)
    size = frame_size(config)
    root, paths = list_test_videos(args.data, args.videos)
    new_predictor = predictor_factory(args.predictor, model_id=model_id(args.checkpoint))
    totals = {(codec, s): _Totals() for s in args.schedules for codec in args.codecs}
    clips, source_bytes = [], []
    for path in tqdm(paths, desc="keypoint streams", unit="video", disable=args.quiet):
        try:
            clip = read_video(path, size=size)
        except ValueError as exc:
            log.warning("skipping %s", exc)
            continue
        clips.append(clip)
        frames = frames_to_tensor(clip)
        kp6 = detect_kp6(kp_detector, frames)
        source_bytes.append(len(encode_source_image(clip[0], "jpeg", SOURCE_QUALITY)))
        render = Renderer(kp_detector, generator, frames[:1])
        for (codec, schedule), total in totals.items():
            sent = transmit(kp6, schedule, codec, new_predictor)
            rebuilt = to_uint8(render(sent.kp6))
            psnr, ssim = video_codecs.frame_quality(rebuilt, clip)
            total.psnr.append(psnr)
            total.ssim.append(ssim)
            total.frames += len(clip)
            total.packets += sent.packets
            total.message_bytes += int(sent.message_bytes.sum())
            total.payload_bytes += int(sent.payload_bytes.sum())
            total.intra += sent.intra_payloads
            total.position_errors.append(
                np.abs(sent.kp6[sent.observed, :, :2] - kp6[sent.observed, :, :2]).ravel())
    if not clips:
        raise ValueError(f"none of the {len(paths)} videos under {root} could be read")
    fps = args.fps
    rows = []
    for (codec, schedule), total in totals.items():
        per_frame = total.message_bytes / total.frames
        packets_per_s = total.packets / total.frames * fps
        errors = np.concatenate(total.position_errors) * PX_PER_UNIT
        rows.append(KeypointRow(
            codec=codec, observe=schedule.observe, predict=schedule.predict,
            bytes_per_packet=total.message_bytes / total.packets,
            payload_per_packet=total.payload_bytes / total.packets,
            bytes_per_frame=per_frame, kbps=per_frame * fps * 8 / 1000,
            wire_kbps=(per_frame * fps + packets_per_s * KP_PACKET_OVERHEAD) * 8 / 1000,
            psnr=_mean(total.psnr), ssim=_mean(total.ssim),
            position_error_px256_max=float(errors.max()),
            position_error_px256_mean=float(errors.mean()),
            intra_share=total.intra / total.packets))
    source = float(np.mean(source_bytes))
    source_kbps = source * 8 / args.call_seconds / 1000
    curves = {codec: video_codecs.sweep(clips, codec, args.bitrates, fps,
                                        progress=not args.quiet)
              for codec in args.video_codecs}
    reference = next((r for r in rows if (r.codec, r.observe, r.predict)
                      == (args.compare_codec, *args.compare_schedule)), None)
    comparisons = []
    if reference is not None:
        kpvid_kbps = reference.kbps + source_kbps
        kpvid_wire = reference.wire_kbps + source_kbps
        for codec, points in curves.items():
            for metric in ("psnr", "ssim"):
                target = getattr(reference, metric)
                estimate = video_codecs.bitrate_at_quality(points, metric, target)
                at = estimate.kbps or estimate.upper_bound or estimate.lower_bound or 0.0
                comparisons.append(Comparison(
                    codec, metric, target, estimate.describe(),
                    _describe_ratio(estimate, kpvid_kbps),
                    _describe_ratio(estimate, kpvid_wire, video_wire_overhead_kbps(at, fps))))
    return {
        "meta": {"command": "kpvid-bench bandwidth " + shlex.join(args.argv),
                 "machine": cpu_name(), "videos": len(clips), "frames": int(sum(map(len, clips))),
                 "fps": fps, "predictor": args.predictor, "call_seconds": args.call_seconds,
                 "kp_packet_overhead_bytes": KP_PACKET_OVERHEAD,
                 "video_packet_overhead_bytes": VIDEO_PACKET_OVERHEAD,
                 "compare": {"codec": args.compare_codec,
                             "observe": args.compare_schedule[0],
                             "predict": args.compare_schedule[1]},
                 "unavailable_video_codecs": video_codecs.unavailable_codecs()},
        "source_image": {"format": "jpeg", "quality": SOURCE_QUALITY, "bytes": source,
                         "kbps_amortised": source_kbps},
        "keypoints": [asdict(r) for r in rows],
        "video_codecs": {codec: [asdict(p) for p in points] for codec, points in curves.items()},
        "comparison": [asdict(c) for c in comparisons],
    }


def format_markdown(results: dict) -> str:
    """The keypoint table, the source image and the codec comparison, as markdown."""
    meta = results["meta"]
    lines = [f"**Keypoint streams** ({meta['videos']} videos, {meta['frames']} frames, "
             f"{meta['fps']:g} fps, predictor `{meta['predictor']}`)", "",
             "| codec | M:N | bytes/packet (payload) | bytes/frame | kbps | wire kbps | "
             "PSNR (dB) | SSIM | position error, px at 256 (max / mean) | intra |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["keypoints"]:
        coded = r["codec"] != UNCODED
        sizes = (f"{r['bytes_per_packet']:.1f} ({r['payload_per_packet']:.1f})" if coded
                 else "-")
        rates = (f"{r['bytes_per_frame']:.1f} | {r['kbps']:.2f} | {r['wire_kbps']:.2f}" if coded
                 else "- | - | -")
        errors = (f"{r['position_error_px256_max']:.3f} / {r['position_error_px256_mean']:.3f}"
                  if coded else "-")
        lines.append(f"| {r['codec']} | {r['observe']}:{r['predict']} | {sizes} | {rates} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.3f} | {errors} | "
                     f"{100 * r['intra_share']:.0f} % |")
    source = results["source_image"]
    lines += ["", f"Source image: JPEG (quality {source['quality']}), {source['bytes']:.0f} "
              f"bytes; over a {meta['call_seconds']:g} s call {source['kbps_amortised']:.3f} "
              "kbps.", ""]
    compare = meta["compare"]
    if results["comparison"]:
        lines += [f"**Video codecs at kpvid's quality** (kpvid: `{compare['codec']}`, "
                  f"{compare['observe']}:{compare['predict']}, source image amortised)", "",
                  "| codec | quality | codec bitrate | x kpvid (payload) | x kpvid (wire) |",
                  "|---|---|---|---|---|"]
        for c in results["comparison"]:
            quality = (f"PSNR {c['target']:.2f} dB" if c["metric"] == "psnr"
                       else f"SSIM {c['target']:.3f}")
            lines.append(f"| {c['codec']} | {quality} | {c['codec_kbps']} | {c['ratio']} | "
                         f"{c['wire_ratio']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, out_dir: Path) -> list[Path]:
    """Rate-quality curves (PSNR and SSIM against kbps) with the keypoint streams as points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    source_kbps = results["source_image"]["kbps_amortised"]
    written = []
    for metric, label in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for codec, points in results["video_codecs"].items():
            ax.plot([p["kbps"] for p in points], [p[metric] for p in points], marker="o",
                    label=codec)
        for r in results["keypoints"]:
            if r["codec"] == UNCODED:
                continue
            ax.scatter(r["kbps"] + source_kbps, r[metric], marker="*", s=90, zorder=3,
                       label=f"kpvid {r['codec']} {r['observe']}:{r['predict']}")
        ax.set_xscale("log")
        ax.set_xlabel("kbps (payload; kpvid with the source image amortised)")
        ax.set_ylabel(label)
        ax.set_title(f"Rate and quality, {results['meta']['videos']} test videos")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / f"bandwidth_{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpvid-bench bandwidth", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True,
                        help="test videos (DIR/test when it exists, else DIR)")
    add_checkpoint_arguments(parser)
    parser.add_argument("--videos", type=positive_int, default=None,
                        help="use only the first N videos (default: all)")
    parser.add_argument("--codecs", nargs="+", choices=[*CODEC_NAMES, UNCODED],
                        default=[UNCODED, *CODEC_NAMES],
                        help=f"keypoint codecs ('{UNCODED}': the detector's float keypoints, "
                             "for quality only) (default: all)")
    parser.add_argument("--schedules", nargs="+", type=parse_schedule,
                        default=[Schedule(1, 0), Schedule(DEFAULT_OBSERVE, DEFAULT_PREDICT),
                                 Schedule(1, 3)],
                        help="schedules as M:N, observe M predict N (default: 1:0 1:1 1:3)")
    parser.add_argument("--predictor", choices=PREDICTOR_NAMES, default=DEFAULT_PREDICTOR,
                        help="the edge's predictor for skipped frames (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=30.0,
                        help="the streams' frame rate for kbps (default: 30)")
    parser.add_argument("--call-seconds", type=float, default=60.0,
                        help="the source image is amortised over a call this long (default: 60)")
    parser.add_argument("--video-codecs", nargs="*", default=None,
                        help="video codecs to compare (default: every one this PyAV has of "
                             f"{', '.join(video_codecs.CODECS)}; none to skip)")
    parser.add_argument("--bitrates", type=float, nargs="+",
                        default=list(video_codecs.DEFAULT_BITRATES_KBPS),
                        help="video codec target bitrates in kbps (default: a sweep for 64x64)")
    parser.add_argument("--compare-codec", choices=CODEC_NAMES, default="delta",
                        help="the keypoint codec compared with the video codecs (default: delta)")
    parser.add_argument("--compare-schedule", type=parse_schedule,
                        default=Schedule(DEFAULT_OBSERVE, DEFAULT_PREDICT),
                        help="the schedule compared with the video codecs (default: the "
                             "sender's, 1:1)")
    add_output_arguments(parser, "rate-quality PNGs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.argv = argv
    args.compare_schedule = (args.compare_schedule.observe, args.compare_schedule.predict)
    available = video_codecs.available_codecs()
    if args.video_codecs is None:
        args.video_codecs = available
    missing = [c for c in args.video_codecs if c not in available]
    if missing:
        log.error("video codec(s) %s not available here (available: %s)", ", ".join(missing),
                  ", ".join(available))
        return 2
    if not args.data.is_dir():
        log.error("--data %s is not a folder of videos", args.data)
        return 2
    return run_and_report(args, run, format_markdown, plot)


if __name__ == "__main__":
    sys.exit(main())
