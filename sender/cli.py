"""``kpvid-send``: stream keypoints from a camera, a video file or the synthetic generator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from kpvid.models import SHIPPED_CHECKPOINT, CheckpointError, ConfigError, model_id
from kpvid.models.config import CONFIG_FLAG_HELP
from kpvid.protocol import CODEC_NAMES, DEFAULT_INTRA_INTERVAL, IMAGE_FORMATS
from kpvid.protocol.messages import STREAM_NAME_RE, STREAM_NAME_RULE
from kpvid.protocol.schedule import DEFAULT_OBSERVE, DEFAULT_PREDICT
from kpvid.synthetic import DOMAINS

from .adaptation import DEFAULT_PACE, AdaptationOptions
from .client import (
    DEFAULT_CODEC,
    DEFAULT_PORT,
    SenderOptions,
    make_hello,
    parse_ice_server,
    parse_target,
    run_sender,
    sanitize_stream_name,
)
from .face_crop import CONFIRM_CHECKS, DETECT_INTERVAL_S, SIDE_FACTOR, SIZE_TOLERANCE
from .keypoints import KeypointExtractor
from .sources import (
    AUTO_CROP,
    SYNTHETIC_LENGTH,
    CameraSource,
    Crop,
    FrameSource,
    SourceError,
    SyntheticSource,
    VideoFileSource,
    parse_crop_spec,
)
from .stats import SenderStats

log = logging.getLogger("kpvid.sender")

T = TypeVar("T")
TOKEN_ENV = "KPVID_TOKEN"
SYNTHETIC_FPS = 30.0
EPILOG = f"""\
schedule: of every group of M+N frames the sender detects keypoints on the first M and sends
them; it does not run the detector on the other N (nor decode them where the source allows)
and the edge predicts them. The defaults, M={DEFAULT_OBSERVE} and N={DEFAULT_PREDICT}, are
the papers' M2 protocol (every other frame).

crop (--camera, --video): auto, the default, sends a square about {SIDE_FACTOR:g}x the
face (head and shoulders) found by OpenCV's Haar face detector, which looks every
{DETECT_INTERVAL_S:g} s on a frame decoded anyway. The square holds still: it jumps to the face
again only when the face has drifted off its centre or changed size by more than
{SIZE_TOLERANCE:.0%} on {CONFIRM_CHECKS} checks in a row. Until a face is first seen it is
the centre crop (with a warning) while the detector keeps looking; a face lost later
keeps the last crop, and the summary counts the checks that found no face.
center: the largest centred square. X,Y,W,H: that rectangle, in source pixels.

exit status: 0 when the clip (or --frames) has been sent or on Ctrl-C; 1 on a fatal error
(token rejected, certificate not trusted, source failure); 2 on bad arguments. A lost edge
is retried with backoff (0.5 s doubling to 10 s); each reconnect starts a new session
(frame index 0, Hello and source image again).

examples:
  kpvid-send --camera 0 --to edge:8443 --ca edge.pem
  kpvid-send --camera 0 --crop center --to edge:8443 --ca edge.pem
  kpvid-send --video talk.mp4 --crop 420,80,600,600 --to edge:8443 --insecure
  KPVID_TOKEN=secret kpvid-send --synthetic faces --to localhost --insecure --frames 300
"""


def _arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type`` that shows the parser's own ValueError message."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise ValueError(f"must be >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"must be > 0, got {text}")
    return value


def _ice_server(text: str) -> str:
    parse_ice_server(text)
    return text


def _stream_name(text: str) -> str:
    if not STREAM_NAME_RE.fullmatch(text):
        raise ValueError(f"use {STREAM_NAME_RULE}, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpvid-send", description="Send keypoints (motion, not pixels) to a kpvid edge.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("source (exactly one)")
    group = source.add_mutually_exclusive_group(required=True)
    group.add_argument("--camera", metavar="INDEX", type=_arg_type(_int_at_least(0)),
                       help="OpenCV camera index (0 is the default webcam)")
    group.add_argument("--video", metavar="FILE", type=Path,
                       help="video file, any size and frame rate (decoded with PyAV); sent "
                            "at its own frame rate")
    group.add_argument("--synthetic", metavar="DOMAIN", choices=DOMAINS,
                       help=f"the project's procedural generator, endless ({', '.join(DOMAINS)})")
    source.add_argument("--loop", action="store_true",
                        help="with --video: start again at the end instead of exiting")
    source.add_argument("--seed", type=_arg_type(_int_at_least(0)), default=0,
                        help="with --synthetic: clip seed (default 0)")
    source.add_argument("--face", metavar="NAME",
                        help="with --synthetic photos: the held-out photograph to animate, e.g. "
                             "grace_hopper (default: one chosen by --seed)")
    source.add_argument("--fps", type=_arg_type(_positive_float),
                        help=f"with --synthetic: frame rate (default {SYNTHETIC_FPS:g}); "
                             "with --camera: rate to request from the camera")
    source.add_argument("--crop", metavar="auto|center|X,Y,W,H",
                        type=_arg_type(parse_crop_spec),
                        help="part of the camera/video frame to send, resized to the model's "
                             "frame size: auto (default) follows the face with a steady "
                             "head-and-shoulders square, center is the largest centred square, "
                             "X,Y,W,H a fixed rectangle in source pixels (see 'crop' below)")

    edge = parser.add_argument_group("edge")
    edge.add_argument("--to", metavar="HOST:PORT", required=True,
                      type=_arg_type(parse_target),
                      help=f"edge receiver; the offer goes to https://HOST:PORT/offer "
                           f"(port {DEFAULT_PORT} if omitted)")
    edge.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                      help=f"bearer token for the edge (default: ${TOKEN_ENV})")
    trust = edge.add_mutually_exclusive_group()
    trust.add_argument("--insecure", action="store_true",
                       help="do not verify the edge's TLS certificate (self-signed, testing)")
    trust.add_argument("--ca", metavar="FILE", type=Path,
                       help="PEM file with the certificate (or CA) the edge's TLS "
                            "certificate must chain to")
    edge.add_argument("--stream", metavar="NAME", type=_arg_type(_stream_name),
                      help="stream name shown on the edge (default: cameraINDEX, the video "
                           "file's stem, or synthetic-DOMAIN)")
    edge.add_argument("--ice-server", metavar="URL", action="append", default=[],
                      type=_arg_type(_ice_server),
                      help="STUN/TURN server, repeatable: stun:HOST:PORT or "
                           "turn:USER:PASS@HOST:PORT (default: none, host candidates only)")

    coding = parser.add_argument_group("keypoints")
    coding.add_argument("--observe", metavar="M", default=DEFAULT_OBSERVE,
                        type=_arg_type(_int_at_least(1)),
                        help=f"frames observed per group (default {DEFAULT_OBSERVE})")
    coding.add_argument("--predict", metavar="N", default=DEFAULT_PREDICT,
                        type=_arg_type(_int_at_least(0)),
                        help=f"frames per group left to the edge's predictor "
                             f"(default {DEFAULT_PREDICT}; 0 sends every frame)")
    coding.add_argument("--adapt", metavar="PACE", nargs="?", const=DEFAULT_PACE,
                        default=None, type=_arg_type(_positive_float),
                        help="choose N at every group from the keypoints' motion: groups of "
                             "PACE / sqrt(speed) frames, speed in pixels of a 256x256 frame per "
                             "frame (PACE frames at 1 px/frame; more motion, fewer predicted "
                             "frames), capped lower while the edge reports high loss or "
                             "prediction error; starts at --predict (default: off; PACE "
                             f"defaults to {DEFAULT_PACE:g}). docs/reliability.md has what it "
                             "gains")
    coding.add_argument("--max-predict", metavar="N", default=AdaptationOptions.max_predict,
                        type=_arg_type(_int_at_least(0)),
                        help="with --adapt, the most frames per group left to the predictor "
                             "(default %(default)s)")
    coding.add_argument("--codec", choices=CODEC_NAMES, default=DEFAULT_CODEC,
                        help="keypoint codec: delta (each set against the previous one sent, "
                             "entropy coded, about 24 bytes a packet), q12 (12-bit, 107 bytes) "
                             "or f16 (float16, 137 bytes) (default %(default)s)")
    coding.add_argument("--intra-interval", metavar="PACKETS", default=DEFAULT_INTRA_INTERVAL,
                        type=_arg_type(_int_at_least(1)),
                        help="delta codec: a self-contained packet at least every PACKETS "
                             "packets, so a lost one is not felt for longer (default "
                             "%(default)s; the edge also asks for one when it lost a packet)")
    coding.add_argument("--source-format", choices=IMAGE_FORMATS, default="jpeg",
                        help="format of the source image sent at the start (default jpeg)")
    coding.add_argument("--checkpoint", metavar="FILE", type=Path, default=SHIPPED_CHECKPOINT,
                        help="FOMM checkpoint whose keypoint detector to run (default: the "
                             f"shipped {model_id(SHIPPED_CHECKPOINT)}); must match the edge's "
                             "model")
    coding.add_argument("--config", metavar="NAME|FILE",
                        help=CONFIG_FLAG_HELP)
    coding.add_argument("--device", default="cpu",
                        help="torch device for the detector: cpu, cuda or cuda:N (default cpu)")
    coding.add_argument("--threads", type=_arg_type(_int_at_least(1)), default=1,
                        help="CPU threads for the detector (default: 1; it needs a few ms a "
                             "frame, and leaves the other cores to the rest of the machine)")

    parser.add_argument("--frames", metavar="N", type=_arg_type(_int_at_least(1)),
                        help="stop after N frames (observed + skipped), then exit 0")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v: debug for kpvid, -vv: also aiortc)")
    return parser


class _LineAwareHandler(logging.StreamHandler):
    """Clears the live status line before a log record on a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\r\x1b[K" + text if self.stream.isatty() else text


def _setup_logging(verbose: int) -> None:
    handler = _LineAwareHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                           datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose >= 2 else logging.WARNING,
                        handlers=[handler])
    logging.getLogger("kpvid").setLevel(logging.DEBUG if verbose else logging.INFO)


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.loop and args.video is None:
        parser.error("--loop only applies to --video")
    if args.fps is not None and args.video is not None:
        parser.error("--fps does not apply to --video (a file plays at its own frame rate)")
    if args.face is not None and args.synthetic != "photos":
        parser.error("--face only applies to --synthetic photos")
    if args.crop is not None and args.synthetic is not None:
        parser.error("--crop does not apply to --synthetic (it renders at the model's size)")
    if not args.token:
        parser.error(f"no token: pass --token or set {TOKEN_ENV}")
    if args.ca is not None and not args.ca.is_file():
        parser.error(f"--ca: no such file: {args.ca}")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint: no such file: {args.checkpoint}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available")
    elif args.device != "cpu":
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")


def _crop_spec(args: argparse.Namespace) -> Crop | str:
    """--crop as given, or the default for cameras and files: follow the face."""
    return AUTO_CROP if args.crop is None else args.crop


def _open_source(args: argparse.Namespace, size: int) -> tuple[FrameSource, str]:
    """The source and its default stream name; SourceError when it cannot be opened."""
    if args.camera is not None:
        return (CameraSource(args.camera, size, _crop_spec(args), args.fps),
                f"camera{args.camera}")
    if args.video is not None:
        return (VideoFileSource(args.video, size, _crop_spec(args), args.loop),
                sanitize_stream_name(args.video.stem))
    try:
        # a clip as long as what will be sent (rendered up front: about 20 ms a frame for photos)
        length = min(args.frames, SYNTHETIC_LENGTH) if args.frames else SYNTHETIC_LENGTH
        source = SyntheticSource(args.synthetic, args.seed, size, args.fps or SYNTHETIC_FPS,
                                 length=max(length, 2), face=args.face)
    except (ValueError, RuntimeError) as exc:
        raise SourceError(f"--synthetic {args.synthetic}: {exc}") from exc
    return source, f"synthetic-{args.synthetic}"


async def _run(source: FrameSource, extractor: KeypointExtractor, options: SenderOptions,
               stats: SenderStats) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set():
            main_task.cancel()  # second Ctrl-C: do not wait for the goodbye
        else:
            log.info("stopping (Ctrl-C again to quit at once)")
            stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises instead (130)
            loop.add_signal_handler(sig, on_signal)
    return await run_sender(source, extractor, options, stats, stop)


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    _setup_logging(args.verbose)

    import torch

    torch.set_num_threads(args.threads)
    try:
        extractor = KeypointExtractor.from_checkpoint(args.checkpoint, args.device, args.config)
    except (CheckpointError, ConfigError, OSError, RuntimeError) as exc:
        parser.error(f"--checkpoint {args.checkpoint}: {exc}")
    try:
        source, default_name = _open_source(args, extractor.frame_size)
    except (SourceError, ValueError) as exc:
        parser.error(str(exc))
    host, port = args.to
    try:
        options = SenderOptions(
            host=host, port=port, token=args.token, insecure=args.insecure,
            ca_file=str(args.ca) if args.ca else None, stream=args.stream or default_name,
            codec=args.codec, intra_interval=args.intra_interval, observe=args.observe,
            predict=args.predict, source_format=args.source_format,
            ice_servers=args.ice_server,
            max_frames=args.frames,
            adapt=None if args.adapt is None else AdaptationOptions(
                pace=args.adapt, min_predict=0,
                max_predict=max(args.max_predict, args.predict)))
        make_hello(source, extractor, options, time.time())
    except ValueError as exc:
        source.close()
        parser.error(str(exc))
    stats = SenderStats()
    log.info("kpvid-send: %s -> %s, stream %r, observe %d / predict %d, codec %s",
             default_name, options.url, options.stream, options.observe, options.predict,
             options.codec)
    try:
        code = _run_loop(_run(source, extractor, options, stats))
    except (KeyboardInterrupt, asyncio.CancelledError):
        code = 130
    finally:
        source.close()
    stats.end_line()
    print(stats.summary(), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
