"""Video reading and FOMM's training/test dataset (behaviour of first-order-model's FramesDataset).

A video is one of: a folder of frame images (sorted by name), a video file (decoded with PyAV), or a
single image holding a horizontal strip of square frames (FOMM's ``.png`` format for VoxCeleb).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from kpvid.synthetic.writer import tracks_path

from .augmentation import Augmentation

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".gif", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.2


class VideoReadError(ValueError):
    """A video (or one of its frames) is missing, empty, corrupt or unreadable."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


def _frame_files(folder: Path) -> list[Path]:
    """Frame images of a folder video, sorted by name; raises VideoReadError when there are none."""
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    except OSError as err:
        raise VideoReadError(folder, f"cannot list the folder ({err})") from err
    if not files:
        raise VideoReadError(folder, f"folder has no frame images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _read_image(path: Path) -> np.ndarray:
    """One image as H x W x 3 uint8 RGB (grey is expanded, alpha dropped)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoReadError(path, "image is corrupt or not a supported image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H x W x 3 frame with INTER_AREA unless it already has the target size."""
    if frame.shape[:2] == (height, width):
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _split_strip(path: Path) -> list[np.ndarray]:
    """Frames of an image that is a horizontal strip of square frames."""
    image = _read_image(path)
    height, width = image.shape[:2]
    if width % height:
        raise VideoReadError(
            path, f"image of {height}x{width} is not a horizontal strip of square frames"
        )
    return [image[:, i : i + height] for i in range(0, width, height)]


def _decode_video(path: Path) -> list[np.ndarray]:
    """All frames of a video file, decoded with PyAV."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "file has no video stream")
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except av.FFmpegError as err:
        raise VideoReadError(path, f"decoding failed ({err})") from err


def read_video(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read a whole video as a T x H x W x 3 uint8 RGB array.

    `path` is a folder of frames (png/jpg, sorted by name), a video file (one of VIDEO_EXTENSIONS),
    or a single png/jpg holding a horizontal strip of square frames. With `size`, every frame is
    resized to size x size (cv2.INTER_AREA). Raises VideoReadError naming the path and the reason
    when the video is missing, empty, corrupt or unreadable.
    """
    return read_video_sizes(path, (size,))[0]


def read_video_sizes(path: str | Path, sizes: Sequence[int | None]) -> list[np.ndarray]:
    """:func:`read_video` at each of ``sizes`` (``None``: as stored), decoding the video once."""
    path = Path(path)
    if any(size is not None and size <= 0 for size in sizes):
        raise ValueError(f"sizes must be positive, got {list(sizes)}")
    if not path.exists():
        raise VideoReadError(path, "path does not exist")
    suffix = path.suffix.lower()
    if path.is_dir():
        frames = [_read_image(file) for file in _frame_files(path)]
    elif suffix in IMAGE_EXTENSIONS:
        frames = _split_strip(path)
    elif suffix in VIDEO_EXTENSIONS:
        frames = _decode_video(path)
    else:
        raise VideoReadError(path, f"unsupported file type {suffix!r}")
    if not frames:
        raise VideoReadError(path, "video has no frames")
    videos = []
    for size in sizes:
        resized = frames if size is None else [_resize(frame, size, size) for frame in frames]
        if len({frame.shape for frame in resized}) > 1:
            raise VideoReadError(path, "frames have different sizes (pass `size` to resize "
                                       "them)")
        videos.append(np.stack(resized))
    return videos


def list_videos(root: str | Path) -> list[Path]:
    """Entries of directory `root` that are videos (frame folders, video files, strips), sorted.

    Hidden entries and files of other types are ignored. Raises NotADirectoryError if `root` is not
    a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    return sorted(
        entry
        for entry in root.iterdir()
        if not entry.name.startswith(".")
        and (entry.is_dir() or entry.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
    )


def list_test_videos(data: str | Path, max_videos: int | None = None
                     ) -> tuple[Path, list[Path]]:
    """The folder of a data set's test videos (``data/test`` when it exists, else ``data``) and
    its first ``max_videos`` videos (all by default). ValueError when there are none."""
    root = Path(data)
    if (root / "test").is_dir():
        root = root / "test"
    videos = list_videos(root)[:max_videos]
    if not videos:
        raise ValueError(f"no videos found under {root}")
    return root, videos


def _identity(video: Path) -> str:
    """FOMM's identity key for id_sampling: the name up to the first '#'."""
    return video.name.split("#")[0]


def _split_videos(
    videos: list[Path], is_train: bool, random_seed: int, by_identity: bool
) -> list[Path]:
    """Seeded 80/20 train/test split (by identity with `by_identity`, so none straddles both)."""
    keys = sorted({_identity(v) if by_identity else v.name for v in videos})
    order = np.random.RandomState(random_seed).permutation(len(keys))
    # At least one unit stays in train; a single unit leaves the test split empty.
    n_test = min(math.ceil(TEST_FRACTION * len(keys)), len(keys) - 1)
    test_keys = {keys[i] for i in order[:n_test]}
    return [
        v for v in videos if ((_identity(v) if by_identity else v.name) in test_keys) != is_train
    ]


def _to_chw(frame: np.ndarray) -> torch.Tensor:
    """H x W x 3 float array -> contiguous 3 x H x W float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1), dtype=np.float32))


class FramesDataset(Dataset):
    """FOMM's dataset of videos under ``root_dir/train`` and ``root_dir/test``.

    Without a ``train/`` subfolder, the videos directly under `root_dir` are split 80/20 with
    `random_seed`. Training items are ``{'source', 'driving', 'name'}``: float32 3 x H x W tensors
    in [0, 1] holding two distinct random frames in time order, augmented identically. Test items
    are ``{'video': float32 3 x T x H x W tensor, 'name'}``. With `id_sampling` (training only),
    videos are grouped by the name part before '#' and each item picks a random video of one
    identity.

    With ``track_points`` K > 0, training items also hold ``'landmarks'``: 2 x K x 2, the source
    and driving frames' landmark tracks (``landmarks.npz`` of a photo talking head) in the
    keypoints' [-1, 1] coordinates, flipped with the frames; NaN for videos without tracks.
    With ``mesh_landmarks``, training items hold ``'mesh'``: 2 x 468 x 2, the two frames'
    FaceMesh landmarks (``facemesh.npz``, kpvid-data facemesh) in the same coordinates; the pair
    is drawn among the frames where FaceMesh found the face, and a video without such a pair is
    skipped like an unreadable one. A left-right flip would swap the mesh's sides, so it is
    refused with it.

    An unreadable video is logged once as a warning, remembered as bad, and replaced by the next
    readable one; RuntimeError is raised only when no video can be read.
    """

    def __init__(
        self,
        root_dir: str | Path,
        frame_shape: tuple[int, int, int] = (64, 64, 3),
        is_train: bool = True,
        id_sampling: bool = False,
        random_seed: int = 0,
        augmentation_params: Mapping[str, Any] | None = None,
        pairs_per_video: int = 1,
        track_points: int = 0,
        mesh_landmarks: bool = False,
    ) -> None:
        root = Path(root_dir)
        if not root.is_dir():
            raise ValueError(f"dataset root {root} does not exist or is not a directory")
        if len(frame_shape) != 3 or frame_shape[2] != 3:
            raise ValueError(f"frame_shape must be (height, width, 3), got {tuple(frame_shape)}")
        if pairs_per_video < 1:
            raise ValueError(f"pairs_per_video must be >= 1, got {pairs_per_video}")
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.is_train = is_train
        self.pairs_per_video = pairs_per_video
        self.transform = Augmentation(augmentation_params)
        self.track_points = track_points
        self.mesh_landmarks = mesh_landmarks
        flips = (augmentation_params or {}).get("flip_param", {})
        if mesh_landmarks and flips.get("horizontal_flip"):
            raise ValueError("FaceMesh landmarks cannot follow a left-right flip: set "
                             "augmentation_params.flip_param.horizontal_flip to False")

        if (root / "train").is_dir():
            self.root_dir = root / ("train" if is_train else "test")
            self.videos = list_videos(self.root_dir) if self.root_dir.is_dir() else []
        else:
            self.root_dir = root
            self.videos = _split_videos(list_videos(root), is_train, random_seed, id_sampling)
        if not self.videos:
            split = "train" if is_train else "test"
            raise ValueError(f"no {split} videos found in {self.root_dir}")

        if is_train and id_sampling:
            groups: dict[str, list[Path]] = {}
            for video in self.videos:
                groups.setdefault(_identity(video), []).append(video)
            self._groups = list(groups.values())
        else:
            self._groups = [[video] for video in self.videos]
        self._bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self._groups) * (self.pairs_per_video if self.is_train else 1)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for dataset of length {len(self)}")
        n_groups = len(self._groups)
        for offset in range(n_groups):
            sample = self._sample_group(self._groups[(idx + offset) % n_groups])
            if sample is not None:
                return sample
        raise RuntimeError(
            f"none of the {len(self.videos)} videos in {self.root_dir} can be read "
            "(see the warnings logged for each)"
        )

    def _sample_group(self, group: list[Path]) -> dict[str, Any] | None:
        """A sample from a readable video of `group`, or None when all of them are bad."""
        candidates = [video for video in group if video not in self._bad]
        while candidates:
            pick = np.random.randint(len(candidates)) if len(candidates) > 1 else 0
            video = candidates.pop(pick)
            try:
                return self._train_sample(video) if self.is_train else self._test_sample(video)
            except VideoReadError as err:
                logger.warning("%s; using another video instead", err)
                self._bad.add(video)
        return None

    def _train_sample(self, video: Path) -> dict[str, Any]:
        height, width = self.frame_shape[:2]
        mesh = _read_mesh(video) if self.mesh_landmarks else None
        if video.is_dir():
            # Decode only the two chosen frames of a frame folder.
            files = _frame_files(video)
            pair = _pick_pair(len(files), None if mesh is None else _found(mesh, video))
            frames = [_read_image(files[i]) for i in pair]
        else:
            whole = read_video(video)
            pair = _pick_pair(len(whole), None if mesh is None else _found(mesh, video))
            frames = list(whole[pair])
        size = frames[0].shape[:2]
        clip = np.stack([_resize(frame, height, width) for frame in frames])
        tracks = _read_tracks(video) if self.track_points else None
        points = mirror = None
        if tracks is not None:
            points = _rescaled(tracks["points"][pair], size, width, height)
            mirror = tracks["mirror"]
        if mesh is not None:  # no left-right flip (refused above), so no mirror permutation
            points = _rescaled(mesh[pair], size, width, height)
        clip, points = self.transform.with_points(clip.astype(np.float32) / 255.0, points, mirror)
        sample = {"source": _to_chw(clip[0]), "driving": _to_chw(clip[1]), "name": video.name}
        if self.track_points:
            sample["landmarks"] = _normalised(points, width, height, self.track_points)
        if mesh is not None:
            sample["mesh"] = _normalised(points, width, height, points.shape[1])
        return sample

    def _test_sample(self, video: Path) -> dict[str, Any]:
        height, width = self.frame_shape[:2]
        frames = np.stack([_resize(frame, height, width) for frame in read_video(video)])
        clip = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32) / 255.0
        return {"video": torch.from_numpy(clip), "name": video.name}


def _read_tracks(video: Path) -> dict[str, np.ndarray] | None:
    """A photo talking head's landmark tracks (kpvid-data synth --domain photos), if it has
    them; a corrupt file raises VideoReadError."""
    path = tracks_path(video)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {"points": data["points"].astype(np.float64), "mirror": data["mirror"]}
    except (OSError, ValueError, KeyError) as err:
        raise VideoReadError(path, f"unreadable landmark tracks ({err})") from err


MESH_FILE = "facemesh.npz"


def mesh_path(video: Path) -> Path:
    """Where a video's FaceMesh tracks lie: inside a frame folder, or beside a video file."""
    return video / MESH_FILE if video.is_dir() else video.with_suffix("." + MESH_FILE)


def _rescaled(points: np.ndarray, size: tuple[int, ...], width: int, height: int) -> np.ndarray:
    """Pixel positions on frames of ``size`` (H, W) moved to frames of width x height (pixel
    centres scale with the frames)."""
    return (points + 0.5) * [width / size[1], height / size[0]] - 0.5


def _read_mesh(video: Path) -> np.ndarray:
    """A video's FaceMesh tracks (T x 468 x 2 pixels, NaN where no face); VideoReadError when
    it has none (kpvid-data facemesh makes them) or they are unreadable."""
    path = mesh_path(video)
    if not path.is_file():
        raise VideoReadError(path, "no FaceMesh tracks (make them with kpvid-data facemesh)")
    try:
        with np.load(path) as data:
            return data["points"].astype(np.float64)
    except (OSError, ValueError, KeyError) as err:
        raise VideoReadError(path, f"unreadable FaceMesh tracks ({err})") from err


def read_mesh_tracks(video: Path, size: int) -> np.ndarray:
    """A video's FaceMesh tracks moved to its frames resized to ``size`` x ``size``: T x 468 x 2
    pixels, NaN where no face. VideoReadError when the tracks are missing or unreadable, or do
    not match the video's length."""
    mesh = _read_mesh(video)
    frames = read_video(video)
    if len(frames) != len(mesh):
        raise VideoReadError(video, f"{len(mesh)} frames of FaceMesh tracks for "
                                    f"{len(frames)} frames")
    return _rescaled(mesh, frames.shape[1:3], size, size)


def _found(mesh: np.ndarray, video: Path) -> np.ndarray:
    """Indices of the frames where FaceMesh found the face; VideoReadError when fewer than 2."""
    found = np.flatnonzero(np.isfinite(mesh).all(axis=(1, 2)))
    if len(found) < 2:
        raise VideoReadError(video, f"FaceMesh found the face in {len(found)} frame(s)")
    return found


def _normalised(points: np.ndarray | None, width: int, height: int, count: int) -> torch.Tensor:
    """2 x K x 2 landmark points in the keypoints' [-1, 1] coordinates; NaN for a video
    without tracks, so that such samples batch with the others and are left out of the loss."""
    if points is None:
        return torch.full((2, count, 2), float("nan"))
    if points.shape[1] != count:
        raise ValueError(f"landmark tracks have {points.shape[1]} points, the data set "
                         f"expects {count}")
    scale = np.array([2 / (width - 1), 2 / (height - 1)])
    return torch.from_numpy((points * scale - 1).astype(np.float32))


def _pick_pair(num_frames: int, among: np.ndarray | None = None) -> np.ndarray:
    """Indices of two distinct random frames (of ``among`` when given) in increasing order (the
    same one if only one)."""
    if num_frames < 2:
        return np.zeros(2, dtype=np.int64)
    if among is not None:
        return np.sort(np.random.choice(among, size=2, replace=False))
    return np.sort(np.random.choice(num_frames, size=2, replace=False))


class DatasetRepeater(Dataset):
    """Repeat a dataset `num_repeats` times per epoch (FOMM's DatasetRepeater)."""

    def __init__(self, dataset: Dataset, num_repeats: int = 100) -> None:
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        self.dataset = dataset
        self.num_repeats = num_repeats

    def __len__(self) -> int:
        return self.num_repeats * len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for dataset of length {len(self)}")
        return self.dataset[idx % len(self.dataset)]
