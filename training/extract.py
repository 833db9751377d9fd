"""Keypoint sequences of a data set (``kpvid-extract``): the FOMM detector on every frame.

A FaceMesh-driven model can instead read the data set's FaceMesh tracks (``--mesh-tracks``,
made by ``kpvid-data facemesh``), which saves running FaceMesh on every frame again.

The output is one ``.npz`` file:

- ``kp``: float32 ``(N, T, K, 6)`` keypoint sets (``[x, y, j00, j01, j10, j11]``) per video and
  frame; videos shorter than the longest (``T``) are padded by repeating their last set
- ``names``: str ``(N,)`` video names; ``lengths``: int32 ``(N,)`` true lengths
- ``model_id``: str, the FOMM checkpoint's :func:`kpvid.models.model_id`; ``frame_size``: int
- ``split``: str, the folder read (``train``, ``test``, ...)
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kpvid.models import (
    CheckpointError,
    ConfigError,
    Detector,
    FaceMeshDetector,
    frame_size,
    kp6_from_dict,
    load_checkpoint_with_config,
    model_id,
)
from kpvid.models.mesh_keypoints import hold_last

from .arguments import add_checkpoint_arguments, positive_int
from .dataset import list_videos, read_mesh_tracks, read_video

log = logging.getLogger(__name__)


@dataclass
class KeypointSequences:
    """Keypoint sets of a data set, as stored in the ``.npz`` file."""

    kp: np.ndarray
    names: list[str]
    lengths: np.ndarray
    model_id: str
    frame_size: int
    split: str
    skipped: list[str] = field(default_factory=list)

    def sequence(self, index: int) -> np.ndarray:
        """Video ``index``'s sets without padding, ``(length, K, 6)``."""
        return self.kp[index, : self.lengths[index]]


def frames_to_tensor(frames: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """T x H x W x 3 uint8 -> T x 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).to(device)


@torch.inference_mode()
def detect_kp6(kp_detector: Detector, frames: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Keypoint sets ``(T, K, 6)`` of T x 3 x H x W frames in [0, 1], ``batch`` frames a call."""
    return np.concatenate([kp6_from_dict(kp_detector(frames[i:i + batch]))
                           for i in range(0, frames.shape[0], batch)])


@torch.inference_mode()
def mesh_tracks_kp6(detector: FaceMeshDetector, video: Path, size: int) -> np.ndarray:
    """Keypoint sets ``(T, K, 6)`` of a video from its FaceMesh tracks, as ``detector`` would
    give on its frames resized to ``size``: a frame without a face keeps the last landmarks
    found (before any: the reference face). VideoReadError when the tracks are missing."""
    landmarks = torch.from_numpy(read_mesh_tracks(video, size) * (2 / (size - 1)) - 1).float()
    held = hold_last(landmarks, detector.keypoints.reference.cpu())
    return kp6_from_dict(detector.keypoints(held))


def extract_keypoints(kp_detector: Detector, videos: list[Path], size: int, *,
                      checkpoint_id: str, split: str, batch: int = 32,
                      device: str | torch.device = "cpu", mesh_tracks: bool = False,
                      progress: bool = True) -> KeypointSequences:
    """Run the detector on every frame of every video (resized to ``size``), or with
    ``mesh_tracks`` (a FaceMesh-driven model only) turn the videos' FaceMesh tracks into
    keypoints; unreadable videos are skipped with a warning. ValueError when none can be read
    or when ``mesh_tracks`` is asked of a model that is not FaceMesh-driven."""
    if mesh_tracks and not isinstance(kp_detector, FaceMeshDetector):
        raise ValueError("--mesh-tracks needs a FaceMesh-driven model "
                         "(model_params.mesh_keypoints in its config)")
    sequences: list[np.ndarray] = []
    names: list[str] = []
    skipped: list[str] = []
    for path in tqdm(videos, desc="extract", unit="video", disable=not progress,
                     dynamic_ncols=True):
        try:
            if mesh_tracks:
                sequences.append(mesh_tracks_kp6(kp_detector, path, size))
            else:
                frames = read_video(path, size=size)
                sequences.append(detect_kp6(kp_detector, frames_to_tensor(frames, device), batch))
        except ValueError as exc:
            log.warning("skipping %s", exc)
            skipped.append(path.name)
            continue
        names.append(path.name)
    if not sequences:
        raise ValueError(f"none of the {len(videos)} videos could be read")
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    longest = int(lengths.max())
    kp = np.stack([np.concatenate([s, np.repeat(s[-1:], longest - len(s), axis=0)])
                   for s in sequences]).astype(np.float32)
    return KeypointSequences(kp=kp, names=names, lengths=lengths, model_id=checkpoint_id,
                             frame_size=size, split=split, skipped=skipped)


def save_keypoints(path: str | Path, sequences: KeypointSequences, force: bool = False) -> Path:
    """Write the ``.npz`` file (via a temporary file, then renamed); FileExistsError when
    ``path`` exists and not ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, kp=sequences.kp, names=np.array(sequences.names, dtype=str),
                            lengths=sequences.lengths, model_id=np.array(sequences.model_id),
                            frame_size=np.array(sequences.frame_size),
                            split=np.array(sequences.split))
    os.replace(tmp, path)
    return path


def load_keypoints(path: str | Path) -> KeypointSequences:
    """Read a file written by :func:`save_keypoints` (ValueError when keys or shapes are off)."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"kp", "names", "lengths", "model_id", "frame_size", "split"} - set(data.files)
        if missing:
            raise ValueError(f"{path} is not a keypoint sequence file: missing "
                             f"{', '.join(sorted(missing))}")
        sequences = KeypointSequences(
            kp=data["kp"].astype(np.float32), names=[str(n) for n in data["names"]],
            lengths=data["lengths"].astype(np.int32), model_id=str(data["model_id"]),
            frame_size=int(data["frame_size"]), split=str(data["split"]))
    kp = sequences.kp
    if kp.ndim != 4 or kp.shape[-1] != 6 or len(sequences.names) != kp.shape[0] \
            or sequences.lengths.shape != (kp.shape[0],):
        raise ValueError(f"{path}: inconsistent shapes kp {kp.shape}, names "
                         f"{len(sequences.names)}, lengths {sequences.lengths.shape}")
    return sequences


def resolve_split(data: Path, split: str | None) -> tuple[Path, str]:
    """The folder to read and its split name: ``data/<split>`` when asked for (it must exist),
    else ``data/train`` when present, else ``data`` itself."""
    if split is not None:
        folder = data / split
        if not folder.is_dir():
            raise ValueError(f"{data} has no {split}/ folder")
        return folder, split
    if (data / "train").is_dir():
        return data / "train", "train"
    return data, data.name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpvid-extract",
        description="Run the FOMM keypoint detector on every frame of every video of a data set "
                    "and write the keypoint sequences (positions and jacobians, K x 6 per frame) "
                    "to one .npz file: kp (N, T, K, 6) float32, names, lengths, model_id, "
                    "frame_size, split. Shorter videos are padded with their last set.")
    add_checkpoint_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, nargs="+",
                        metavar="DIR",
                        help="data folder(s): each one's --split subfolder, else train/ when "
                             "present, else the folder itself; several folders go into one "
                             "file (e.g. photo talking heads and cartoon faces)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                        help="the .npz file to write")
    parser.add_argument("--split", default=None,
                        help="subfolder of --data to read, e.g. train or test (default: train/ "
                             "when present, else --data itself)")
    parser.add_argument("--max-videos", type=positive_int, default=None,
                        metavar="N",
                        help="only the first N videos (sorted by name, folder after folder)")
    parser.add_argument("--batch", type=positive_int, default=32,
                        metavar="N",
                        help="frames per detector call (default: 32)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        metavar="N",
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--mesh-tracks", action="store_true",
                        help="FaceMesh-driven models: read each video's FaceMesh tracks (made "
                             "by kpvid-data facemesh) instead of running FaceMesh on its frames "
                             "again; much faster, and the tracks follow the face from frame to "
                             "frame where the model's detector finds it afresh in each")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def extract_main(argv: list[str] | None = None) -> int:
    """``kpvid-extract``: keypoint sequences of a data set as ``.npz``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"device '{args.device}' asked for but CUDA is not available")
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        folders = [resolve_split(data, args.split) for data in args.data]
        split = folders[0][1]
        videos = [video for folder, _ in folders for video in list_videos(folder)]
        videos = videos[:args.max_videos]
        if not videos:
            raise ValueError(f"no videos found under {', '.join(str(f) for f, _ in folders)}")
        kp_detector, _, config = load_checkpoint_with_config(args.checkpoint, args.config,
                                                             args.device)
        sequences = extract_keypoints(kp_detector, videos, frame_size(config),
                                      checkpoint_id=model_id(args.checkpoint), split=split,
                                      batch=args.batch, device=args.device,
                                      mesh_tracks=args.mesh_tracks, progress=not args.quiet)
        save_keypoints(args.out, sequences, force=args.force)
    except (ConfigError, CheckpointError, ValueError, FileExistsError,
            NotADirectoryError) as exc:
        log.error("%s", exc)
        return 2
    n, t, k, _ = sequences.kp.shape
    log.info("wrote %s: %d videos (%d skipped), up to %d frames, %d keypoints", args.out, n,
             len(sequences.skipped), t, k)
    return 0
