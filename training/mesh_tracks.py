"""FaceMesh tracks of a data set's videos (``kpvid-data facemesh``): the training data of the
FaceMesh-driven model, whose keypoints are landmarks the sender finds with MediaPipe FaceMesh
(see :mod:`kpvid.models.mesh_keypoints`).

Each video gets ``facemesh.npz`` beside its landmark tracks: ``points``, T x 468 x 2 float32
pixels of the video's frames (x right, y down, pixel centres at integers), NaN in the frames
where FaceMesh found no face. FaceMesh runs as the sender runs it: tracking from frame to frame,
on each frame resized to 256 x 256.
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kpvid.models.facemesh import (
    LEFT_EYE_OUTER,
    LOWER_INNER_LIP,
    NUM_LANDMARKS,
    RIGHT_EYE_OUTER,
    UPPER_INNER_LIP,
    FaceMesh,
)
from kpvid.models.mesh_keypoints import MeshKeypoints
from kpvid.synthetic.photo_heads import TRACKED_LANDMARKS
from kpvid.synthetic.photo_library import TEST_FACES, _fits

from .dataset import VideoReadError, list_videos, mesh_path, read_video

log = logging.getLogger(__name__)

REFERENCE_IOD = 0.6  # about a face's inter-ocular distance in the keypoints' [-1, 1] units


def reference_face() -> np.ndarray:
    """468 x 2 reference face for the keypoints' jacobians: the FaceMesh fits of the training
    photographs (shipped in photo_fits.json), each aligned to the first by a least-squares
    similarity, averaged, and scaled to REFERENCE_IOD, so that jacobians are near the identity
    on a face of the usual size."""
    faces = [points[:, :2].astype(np.float64) for name, points in _fits().items()
             if name not in TEST_FACES]
    target = faces[0] - faces[0].mean(0)
    aligned = []
    for face in faces:
        centred = face - face.mean(0)
        # similarity (rotation and scale) as one complex number: argmin |a z - t|
        z, t = centred @ [1, 1j], target @ [1, 1j]
        a = np.vdot(z, t) / np.vdot(z, z)
        moved = a * z
        aligned.append(np.column_stack([moved.real, moved.imag]))
    mean = np.mean(aligned, axis=0)
    return mean * REFERENCE_IOD / np.linalg.norm(mean[LEFT_EYE_OUTER] - mean[RIGHT_EYE_OUTER])


def facemesh_keypoints(neighbours: int = 12) -> MeshKeypoints:
    """The FaceMesh-driven keypoints kpvid trains: the ten landmarks the photo talking heads track
    (in their order, which the learned detector's landmark prior also uses), jacobians over each
    one's ``neighbours`` nearest landmarks on :func:`reference_face`, the inner lips' kept to
    their own side of the mouth (what is below the upper lip moves with the jaw)."""
    module = MeshKeypoints(len(TRACKED_LANDMARKS), neighbours)
    reference = reference_face()
    y = reference[:, 1]  # down
    exclude = [np.flatnonzero(y > y[a]) if a == UPPER_INNER_LIP
               else np.flatnonzero(y < y[a]) if a == LOWER_INNER_LIP else ()
               for a in TRACKED_LANDMARKS]
    module.set_reference(reference, TRACKED_LANDMARKS, exclude)
    return module


def track_video(frames: np.ndarray, mesh: FaceMesh) -> np.ndarray:
    """T x 468 x 2 FaceMesh landmarks of a T x H x W x 3 uint8 clip in its pixels; NaN where no
    face was found. ``mesh`` should be a fresh tracking graph (``FaceMesh(static=False)``)."""
    out = np.full((len(frames), NUM_LANDMARKS, 2), np.nan, np.float32)
    for i, frame in enumerate(frames):
        points = mesh.locate(frame)
        if points is not None:
            out[i] = points
    return out


def _track_one(video: Path) -> tuple[Path, float]:
    """Track one video and write its file; returns (video, share of frames with a face)."""
    with FaceMesh(static=False) as mesh:
        points = track_video(read_video(video), mesh)
    np.savez(mesh_path(video), points=points)
    return video, float(np.isfinite(points[:, 0, 0]).mean())


def write_mesh_tracks(data: str | Path, workers: int = 1, progress: bool = True,
                      overwrite: bool = False) -> dict[str, float]:
    """Track every video of a data set (``data/train`` and ``data/test``, or the videos right
    under ``data``) and write its ``facemesh.npz``; videos that have one are kept unless
    ``overwrite``. Returns ``{"videos": n tracked now, "faces_found": their share of frames
    with a face, "kept": n that had tracks}``. Unreadable videos are logged and skipped."""
    root = Path(data)
    folders = [root / s for s in ("train", "test") if (root / s).is_dir()] or [root]
    videos = [v for folder in folders for v in list_videos(folder)]
    if not videos:
        raise ValueError(f"no videos found under {root}")
    todo = [v for v in videos if overwrite or not mesh_path(v).is_file()]
    log.info("%d videos, %d to track with FaceMesh", len(videos), len(todo))
    found: list[float] = []
    with multiprocessing.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        results = pool.imap_unordered(_safe_track, todo)
        for result in tqdm(results, total=len(todo), desc="facemesh", unit="video",
                           disable=not progress):
            if result is not None:
                found.append(result[1])
    return {"videos": len(found), "faces_found": float(np.mean(found)) if found else 0.0,
            "kept": len(videos) - len(todo)}


def _safe_track(video: Path) -> tuple[Path, float] | None:
    try:
        return _track_one(video)
    except VideoReadError as err:
        log.warning("%s; skipped", err)
        return None


class _Serial:
    """The part of a process pool's interface :func:`write_mesh_tracks` uses, in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap_unordered(func, items):  # noqa: ANN001, ANN205
        return map(func, items)
