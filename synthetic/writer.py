"""Entry points: generate one synthetic clip, or write a data set in the FOMM folder layout."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from .arm import generate_arm
from .faces import generate_faces
from .photo_heads import TRACK_MIRROR, TRACKED_LANDMARKS, generate_photo_faces, photo_face_tracks
from .photo_library import SPLITS, fitted_face_names, load_faces

logger = logging.getLogger(__name__)

DOMAINS: tuple[str, ...] = ("faces", "photos", "arm")
DEFAULT_FRAMES = {"faces": 32, "photos": 32, "arm": 30}
FORMATS = ("png", "mp4")
GENERATOR_VERSION = 1
FPS = 25
MIN_SIZE = 32
_GENERATORS: dict[str, Callable[[int, int, int, str, str | None], np.ndarray]] = {
    "faces": lambda seed, size, frames, split, face: generate_faces(seed, size, frames),
    "photos": generate_photo_faces,
    "arm": lambda seed, size, frames, split, face: generate_arm(seed, size, frames),
}


TRACKS_FILE = "landmarks.npz"


def tracks_path(video: Path) -> Path:
    """Where a video's landmark tracks lie: inside a frame folder, or beside a video file."""
    return video / TRACKS_FILE if video.is_dir() else video.with_suffix("." + TRACKS_FILE)


def _check(domain: str, size: int, frames: int | None) -> int:
    """Validate the common arguments; returns the frame count to use."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    frames = DEFAULT_FRAMES[domain] if frames is None else frames
    if int(frames) != frames or frames < 2:
        raise ValueError(f"frames must be an integer >= 2, got {frames!r}")
    return int(frames)


def generate_video(domain: str, seed: int, size: int = 64, frames: int | None = None,
                   split: str = "test", face: str | None = None) -> np.ndarray:
    """T x size x size x 3 uint8 RGB video, fully deterministic in its arguments. ``split`` and
    ``face`` matter to "photos" only: its test videos animate the photographs held out of
    training (the default, so a demo never shows a face the model trained on), ``face`` names
    one of them (e.g. "grace_hopper")."""
    if face is not None and domain != "photos":
        raise ValueError(f"face applies to the photos domain only, not {domain!r}")
    frames = _check(domain, size, frames)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return _GENERATORS[domain](int(seed), int(size), frames, split, face)


def _video_seed(seed: int, split: str, index: int) -> int:
    """Independent 63-bit seed of video `index` of `split`, derived from the data-set seed."""
    sequence = np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def _write_png(folder: Path, video: np.ndarray) -> None:
    folder.mkdir()
    for i, frame in enumerate(video):
        if not cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {folder / f'{i:05d}.png'}")


def _write_mp4(path: Path, video: np.ndarray) -> None:
    """H.264 in mp4, lossless in YUV 4:4:4 (crf 0): only the RGB<->YUV rounding is lost."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "fast"}
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _video_path(out: Path, domain: str, split: str, index: int, fmt: str) -> Path:
    """Where video ``index`` of a data set lies: a frame folder (png) or an .mp4 file."""
    name = f"{domain}_{index:05d}"
    return out / split / (name if fmt == "png" else f"{name}.mp4")


def _write_video(job: tuple) -> None:
    """Generate and write one video of a data set (a worker's unit of work)."""
    domain, out, seed, split, i, size, frames, fmt = job
    video = generate_video(domain, _video_seed(seed, split, i), size, frames, split)
    path = _video_path(out, domain, split, i, fmt)
    (_write_png if fmt == "png" else _write_mp4)(path, video)


def write_tracks(out: str | Path, progress: bool = True) -> int:
    """Write the landmark tracks of every video of a photos data set made by
    :func:`write_dataset` (``points``: T x K x 2 pixels of ``TRACKED_LANDMARKS``, ``mirror``:
    the slot permutation of a left-right flip). They are replayed from the clips' seeds, without
    rendering. Returns the number of videos."""
    out = Path(out)
    meta = json.loads((out / "meta.json").read_text())
    if meta["domain"] != "photos":
        raise ValueError(f"{out} holds {meta['domain']} videos; only photos have tracks")
    jobs = [(split, i) for split in SPLITS for i in range(meta["counts"][split])]
    for split, i in tqdm(jobs, desc="landmark tracks", unit="video", disable=not progress):
        video = _video_path(out, "photos", split, i, meta["fmt"])
        points = photo_face_tracks(_video_seed(meta["seed"], split, i), meta["size"],
                                   meta["frames"], split)
        np.savez(tracks_path(video), points=points, mirror=np.asarray(TRACK_MIRROR),
                 landmarks=np.asarray(TRACKED_LANDMARKS))
    return len(jobs)


def write_dataset(
    domain: str,
    out: str | Path,
    videos: int,
    seed: int,
    size: int = 64,
    frames: int | None = None,
    test_fraction: float = 0.1,
    fmt: str = "png",
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Write `videos` clips to out/train/<name> and out/test/<name> (FOMM layout) + out/meta.json.

    fmt 'png' writes a folder of frames 00000.png... per video, 'mp4' one <name>.mp4 per video.
    Per-video seeds derive from (seed, split, index) with np.random.SeedSequence, so another seed
    gives other videos. There is at least one test video when videos >= 2. Refuses to write into
    non-empty out/train or out/test folders. ``workers`` > 1 generates videos in that many
    processes (the same videos). Returns the metadata written to meta.json.
    """
    frames = _check(domain, size, frames)
    if int(videos) != videos or videos < 1:
        raise ValueError(f"videos must be an integer >= 1, got {videos!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown fmt {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    out = Path(out)
    photos = {}
    if domain == "photos":
        photos = {split: [face.name for face in load_faces(split)] for split in SPLITS}
        missing = sorted(set(fitted_face_names()) - {n for names in photos.values() for n in names})
        if missing:
            logger.warning("photos not available here, their faces are left out: %s",
                           ", ".join(missing))
        if not photos["train"] or (videos >= 2 and not photos["test"]):
            raise ValueError("the photos domain needs train and test photographs; install them "
                             "with pip install -e '.[faces]' (and --no-deps insightface==2.1)")
    n_test = min(max(1, round(videos * test_fraction)), videos - 1) if videos >= 2 else 0
    counts = {"train": int(videos) - n_test, "test": n_test}
    for split in SPLITS:
        folder = out / split
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(
                f"{folder} is not empty; remove it or choose another output folder"
            )
        folder.mkdir(parents=True, exist_ok=True)

    jobs = [(domain, out, int(seed), split, i, size, frames, fmt)
            for split in SPLITS for i in range(counts[split])]
    with (multiprocessing.get_context("spawn").Pool(workers) if workers > 1
          else contextlib.nullcontext()) as pool:
        done = pool.imap_unordered(_write_video, jobs, chunksize=4) if pool else map(
            _write_video, jobs)
        for _ in tqdm(done, total=len(jobs), desc=f"{domain} videos", unit="video",
                      disable=not progress):
            pass

    meta = {
        "domain": domain,
        "seed": int(seed),
        "size": int(size),
        "frames": frames,
        "fmt": fmt,
        "fps": FPS,
        "test_fraction": test_fraction,
        "counts": counts,
        "generator_version": GENERATOR_VERSION,
        **({"photos": photos} if photos else {}),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if domain == "photos":
        write_tracks(out, progress)
    logger.info("wrote %d %s videos (%s) to %s", videos, domain, counts, out)
    return meta
