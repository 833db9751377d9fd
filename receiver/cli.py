"""kpvid-receive: the edge node. Takes keypoint streams from senders, synthesizes every frame
and serves the video to browser viewers over WebRTC, all on one HTTPS port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

import torch
from aiohttp import web
from aiortc import RTCIceServer

from kpvid.models import (
    SHIPPED_CHECKPOINT,
    CheckpointError,
    ConfigError,
    Detector,
    OcclusionAwareGenerator,
    frame_size,
    load_checkpoint_with_config,
    model_id,
)
from kpvid.models.config import CONFIG_FLAG_HELP
from kpvid.models.predictors import (
    DEFAULT_PREDICTOR,
    LEARNED_PREDICTORS,
    PREDICTOR_NAMES,
    predictor_factory,
)
from kpvid.models.synthesizer import HALF_TOLERANCE, half_precision_error
from kpvid.protocol.messages import MAX_RENDER_EVERY

from .edge import (
    MAX_PENDING_PER_ADDRESS,
    MAX_STREAMS,
    MAX_VIEWERS,
    RESUME_GRACE,
    Edge,
    EdgeOptions,
)
from .frame_stamp import can_stamp
from .overload import OverloadOptions
from .server import OFFER_BURST, OFFERS_PER_SECOND, make_app
from .stream import ModelInfo, SessionOptions
from .synthesis import SynthesisEngine
from .tls import (
    CertificateError,
    certificate_fingerprint,
    ensure_certificate,
    server_ssl_context,
)

log = logging.getLogger("kpvid.receive")

DEFAULT_STATE_DIR = Path.home() / ".cache" / "kpvid"

def _auto_or_seconds(text: str) -> float | None:
    """--playout-delay: "auto" (None) or seconds, 0 or more."""
    if text == "auto":
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or seconds, got {text!r}") from None
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"expected auto or seconds >= 0, got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpvid-receive", description=__doc__,
        epilog="Viewers open https://HOST:PORT/?token=TOKEN in a browser, with the view token "
               "(--view-token, else --token).")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--gpu", type=int, metavar="N",
                       help="run the models on CUDA device N (default: GPU 0 when CUDA is "
                            "available, else the CPU)")
    where.add_argument("--cpu", action="store_true", help="run the models on the CPU")
    parser.add_argument("--host", default="0.0.0.0",
                        help="address to listen on (default: 0.0.0.0, every interface)")
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port (default: 8443)")
    parser.add_argument("--token", default=os.environ.get("KPVID_TOKEN"),
                        help="bearer token senders and viewers must present, the default of "
                             "--send-token and --view-token (default: $KPVID_TOKEN; without "
                             "either, a random one is made and printed)")
    parser.add_argument("--send-token", default=os.environ.get("KPVID_SEND_TOKEN"),
                        help="token for senders (POST /offer) and for /metrics; it also "
                             "works wherever the view token does (default: "
                             "$KPVID_SEND_TOKEN, else --token)")
    parser.add_argument("--view-token", default=os.environ.get("KPVID_VIEW_TOKEN"),
                        help="token for viewers: the page's ?token=, POST /view/offer, "
                             "/api/streams, /api/config; it cannot send (default: "
                             "$KPVID_VIEW_TOKEN, else --token)")
    parser.add_argument("--max-streams", type=int, default=MAX_STREAMS, metavar="N",
                        help="most sender connections at once; an offer beyond it gets HTTP "
                             f"503, reason max_streams (default: {MAX_STREAMS})")
    parser.add_argument("--max-viewers", type=int, default=MAX_VIEWERS, metavar="N",
                        help="most viewers at once over all streams; beyond it HTTP 503, "
                             f"reason max_viewers (default: {MAX_VIEWERS})")
    parser.add_argument("--offers-per-second", type=float, default=OFFERS_PER_SECOND,
                        metavar="RATE",
                        help="offers each client address may make to each offer endpoint, "
                             f"in bursts of up to {OFFER_BURST}; beyond it HTTP 429 (default: "
                             f"{OFFERS_PER_SECOND:g}; 0: no limit)")
    parser.add_argument("--max-pending", type=int, default=MAX_PENDING_PER_ADDRESS, metavar="N",
                        help="answered offers one client address may have that are not going "
                             "yet (a sender without a hello, a viewer not connected), per "
                             "role; beyond it HTTP 429, reason too_many_pending (default: "
                             f"{MAX_PENDING_PER_ADDRESS})")
    parser.add_argument("--cert", type=Path,
                        help="TLS certificate (PEM); without --cert/--key a self-signed one is "
                             "made and its fingerprint printed")
    parser.add_argument("--key", type=Path, help="TLS private key (PEM) for --cert")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help="where the self-signed certificate is kept "
                             "(default: ~/.cache/kpvid)")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT,
                        help="FOMM checkpoint (default: the shipped "
                             f"{model_id(SHIPPED_CHECKPOINT)}); senders must use the same one")
    parser.add_argument("--config", metavar="NAME|FILE",
                        help=CONFIG_FLAG_HELP)
    parser.add_argument("--precision", choices=("auto", "float32", "float16"), default="auto",
                        help="the synthesis arithmetic; auto: float16 on a GPU when its frames "
                             "stay within two 8-bit levels of float32's (checked at start), "
                             "else float32 (default: auto)")
    parser.add_argument("--predictor", choices=PREDICTOR_NAMES,
                        default=DEFAULT_PREDICTOR,
                        help="what fills the keypoint sets the sender skipped or lost: a "
                             "learned vrnn, rnn or vae, or constant-velocity or hold-last "
                             f"(default: {DEFAULT_PREDICTOR}; docs/prediction.md compares them)")
    parser.add_argument("--predictor-checkpoint", type=Path, metavar="FILE",
                        help="weights of a learned --predictor (default: the shipped ones, "
                             "trained on the shipped --checkpoint's keypoints)")
    parser.add_argument("--playout-delay", type=_auto_or_seconds, default=None,
                        metavar="auto|SECONDS",
                        help="how long a frame waits for its keypoints beyond their fastest "
                             "arrival before it is played from a prediction (a set that comes "
                             "later only corrects the predictor). auto (default): a high "
                             "percentile of the stream's arrival jitter, at most "
                             "--max-playout-delay; a number: that many seconds, always")
    parser.add_argument("--max-playout-delay", type=float, default=0.1, metavar="SECONDS",
                        help="the most --playout-delay auto waits (default: 0.1)")
    parser.add_argument("--max-lag", type=float, default=0.25, metavar="SECONDS",
                        help="an edge too busy to keep up skips rendering frames already this "
                             "late, so the delay stays bounded (default: 0.25)")
    parser.add_argument("--max-render-every", type=int, default=OverloadOptions.max_every,
                        metavar="K",
                        help="while its synthesis is overloaded (busy over 90 %% of the time) "
                             "the edge renders only every 2nd, 3rd ... up to every K-th frame "
                             "of each stream, evenly, tells the senders to predict more and the "
                             "viewers why, and renders every frame again when the load goes "
                             f"(default: {OverloadOptions.max_every}; 1: never thin)")
    parser.add_argument("--resume-grace", type=float, default=RESUME_GRACE, metavar="SECONDS",
                        help="a stream that ends keeps its viewers connected this long, so a "
                             "sender restarting under the same name plays on to them "
                             f"(default: {RESUME_GRACE:g})")
    parser.add_argument("--max-batch", type=int, default=8,
                        help="most frames of different streams synthesised in one model "
                             "call (default: 8)")
    parser.add_argument("--record", type=Path, metavar="DIR",
                        help="write each stream to DIR/<stream>-<time>.mp4 as it plays")
    parser.add_argument("--stamp-frames", action="store_true",
                        help="measurement mode: draw a strip of black and white blocks along "
                             "the bottom of the viewers' picture that carries each frame's "
                             "capture time and the time it left the edge, so that the viewer "
                             "page can show the glass-to-glass latency (capture on the sender "
                             "to picture shown in the browser) and where it goes. It alters "
                             "what viewers see; recordings are not stamped")
    parser.add_argument("--ice-server", action="append", default=[], metavar="URL",
                        help="STUN/TURN server for the edge and its viewers, e.g. "
                             "turn:turn.example:3478 (repeatable; default: none, host "
                             "candidates only)")
    parser.add_argument("--viewer-ice-server", action="append", metavar="URL",
                        help="STUN/TURN server the viewer page is told to use, when browsers "
                             "reach it by another address than the edge does (repeatable; "
                             "default: the --ice-server list)")
    parser.add_argument("--ice-username", help="username for the TURN servers above")
    parser.add_argument("--ice-credential", help="credential for the TURN servers above")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for the models (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def resolve_tokens(args: argparse.Namespace) -> tuple[str, str]:
    """(send token, view token): each its own flag, else --token, else one random token made
    for this run and printed (the only time the edge shows a token it was not given)."""
    token = args.token
    if not token and not (args.send_token and args.view_token):
        token = secrets.token_urlsafe(16)
        print(f"no --token or KPVID_TOKEN given; this run's token: {token}"
              + (" (for what --send-token/--view-token leave open)"
                 if args.send_token or args.view_token else ""), flush=True)
    return args.send_token or token, args.view_token or token


def pick_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    if args.cpu:
        return torch.device("cpu")
    if args.gpu is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        parser.exit(2, f"kpvid-receive: error: --gpu {args.gpu}: CUDA is not available here "
                       f"(torch {torch.__version__}, no CUDA device); use --cpu\n")
    if not 0 <= args.gpu < torch.cuda.device_count():
        parser.exit(2, f"kpvid-receive: error: --gpu {args.gpu}: this machine has "
                       f"{torch.cuda.device_count()} CUDA device(s)\n")
    return torch.device(f"cuda:{args.gpu}")


def choose_half(precision: str, device: torch.device, kp_detector: Detector,
                generator: OcclusionAwareGenerator, size: int) -> bool:
    """Whether to synthesise in float16: as ``--precision`` says, or for ``auto`` on a GPU
    when :func:`~kpvid.models.synthesizer.half_precision_error` is within tolerance."""
    if precision != "auto":
        return precision == "float16"
    if device.type != "cuda":
        return False
    error = half_precision_error(kp_detector, generator, size)
    half = error <= HALF_TOLERANCE
    log.info("float16 frames differ from float32 by up to %.4f (tolerance %.4f): %s", error,
             HALF_TOLERANCE, "synthesising in float16" if half else "staying in float32")
    return half


async def serve(args: argparse.Namespace, device: torch.device, send_token: str,
                view_token: str, cert: Path, key: Path) -> int:
    try:
        kp_detector, generator, config = load_checkpoint_with_config(
            args.checkpoint, args.config, device=device)
    except (CheckpointError, ConfigError) as exc:
        log.error("--checkpoint %s: %s", args.checkpoint, exc)
        return 2
    model = ModelInfo(model_id=model_id(args.checkpoint), frame_size=frame_size(config),
                      num_kp=int(config["model_params"]["common_params"]["num_kp"]))
    try:
        new_predictor = predictor_factory(args.predictor, args.predictor_checkpoint,
                                          num_kp=model.num_kp, model_id=model.model_id)
    except (CheckpointError, ValueError) as exc:
        log.error("--predictor %s: %s", args.predictor, exc)
        return 2
    if args.stamp_frames and not can_stamp(model.frame_size, model.frame_size):
        log.error("--stamp-frames: %dpx frames are too small to carry a stamp",
                  model.frame_size)
        return 2
    half = choose_half(args.precision, device, kp_detector, generator, model.frame_size)
    engine = SynthesisEngine(kp_detector, generator, device, max_batch=args.max_batch,
                             new_predictor=new_predictor, half=half,
                             overload=OverloadOptions(max_every=args.max_render_every))
    started = time.monotonic()
    await engine.warm_up(model.frame_size)
    log.info("model warmed up in %.2f s", time.monotonic() - started)

    def ice(urls: list[str]) -> list[RTCIceServer]:
        return [RTCIceServer(urls=url, username=args.ice_username,
                             credential=args.ice_credential) for url in urls]

    edge = Edge(engine, model, EdgeOptions(
        ice_servers=ice(args.ice_server),
        viewer_ice_servers=None if args.viewer_ice_server is None else
        ice(args.viewer_ice_server),
        max_streams=args.max_streams, max_viewers=args.max_viewers,
        resume_grace=args.resume_grace, max_pending_per_address=args.max_pending,
        stamp_frames=args.stamp_frames,
        session=SessionOptions(playout_delay=args.playout_delay,
                               max_playout_delay=args.max_playout_delay, max_lag=args.max_lag,
                               record_dir=args.record)))
    app = make_app(edge, send_token=send_token, view_token=view_token,
                   offers_per_second=args.offers_per_second or None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=server_ssl_context(cert, key))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return 1

    shown_host = socket.gethostname() if args.host == "0.0.0.0" else args.host
    print(f"kpvid edge: model {model.model_id} ({model.frame_size}px, {model.num_kp} keypoints) "
          f"on {device}{' in float16' if half else ''}, predictor {args.predictor}", flush=True)
    print(f"listening on https://{args.host}:{args.port}  "
          f"(certificate {certificate_fingerprint(cert)})", flush=True)
    print(f"viewer: https://{shown_host}:{args.port}/?token={view_token}", flush=True)
    print(f"limits: {args.max_streams} streams, {args.max_viewers} viewers, "
          + (f"{args.offers_per_second:g} offers/s per client" if args.offers_per_second
             else "no offer rate limit"), flush=True)
    if args.record:
        print(f"recording streams to {args.record}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: closing peers, finalising recordings")
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a TCP port")
    if args.predictor_checkpoint is not None and args.predictor not in LEARNED_PREDICTORS:
        parser.error(f"--predictor-checkpoint is for a learned --predictor "
                     f"({', '.join(LEARNED_PREDICTORS)}), not {args.predictor}")
    if args.max_batch < 1:
        parser.error("--max-batch must be at least 1")
    if args.max_streams < 1 or args.max_viewers < 1:
        parser.error("--max-streams and --max-viewers must be at least 1")
    if args.max_pending < 1:
        parser.error("--max-pending must be at least 1")
    if args.offers_per_second < 0 or not math.isfinite(args.offers_per_second):
        parser.error("--offers-per-second must be a number, 0 or more (0: no limit)")
    if args.resume_grace < 0 or not math.isfinite(args.resume_grace):
        parser.error("--resume-grace must be a number, 0 or more")
    if not 1 <= args.max_render_every <= MAX_RENDER_EVERY:
        parser.error(f"--max-render-every must be 1 to {MAX_RENDER_EVERY}")
    if args.max_playout_delay < 0 or args.max_lag <= 0:
        parser.error("--max-playout-delay cannot be negative and --max-lag must be positive")
    if args.record is not None:
        try:
            args.record.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            parser.error(f"--record {args.record}: {exc.strerror}")
    device = pick_device(parser, args)
    hosts = sorted({"localhost", "127.0.0.1", socket.gethostname(), args.host} - {"0.0.0.0"})
    try:
        cert, key = ensure_certificate(args.cert, args.key, args.state_dir, hosts)
    except (CertificateError, OSError) as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    send_token, view_token = resolve_tokens(args)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(serve(args, device, send_token, view_token, cert, key))


if __name__ == "__main__":
    sys.exit(main())

