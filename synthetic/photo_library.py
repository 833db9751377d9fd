"""The real photographs kpvid animates, where each comes from, and FaceMesh's fit of each face.

No data set can be downloaded, so the photo talking heads start from the few face photographs
that ship inside installed packages. Each face has a split: the training videos animate the
"train" faces, the test videos the held-out ones (Grace Hopper's portrait among them, which the
demo streams). The FaceMesh fits are computed once by ``kpvid-data fit-photos`` and shipped in
``photo_fits.json`` beside this file, so making videos needs the photographs but not MediaPipe.

Sources and licences (the photographs are read from the packages at run time, never copied
into this repository):

| face | package, file | licence |
|---|---|---|
| astronaut | scikit-image, ``skimage.data.astronaut()`` (Eileen Collins, NASA) | public domain |
| camera | scikit-image, ``skimage.data.camera()`` (grey) | CC0 (Lav Varshney) |
| grace_hopper | matplotlib, ``mpl-data/sample_data/grace_hopper.jpg`` (US Navy) | public domain |
| hanks | insightface 2.1 wheel, ``data/images/Tom_Hanks_54745.png`` (112 px) | not stated |
| group_0..5 | insightface 2.1 wheel, ``data/images/t1.jpg`` (six faces of ~100 px) | not stated |

The insightface images carry no licence of their own (the package's code is MIT); kpvid only
reads them from an installed wheel (``pip install --no-deps insightface==2.1``) for training.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np

from kpvid.models.facemesh import NUM_LANDMARKS, FaceMesh

log = logging.getLogger(__name__)

FITS_PATH = Path(__file__).with_name("photo_fits.json")
SPLITS = ("train", "test")


def _read_rgb(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _package_file(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package} is not installed")
    return os.path.join(spec.submodule_search_locations[0], *parts)


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image

    return load


def _matplotlib_sample(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib

        return _read_rgb(os.path.join(matplotlib.get_data_path(), "sample_data", name))

    return load


def _insightface(name: str) -> Callable[[], np.ndarray]:
    return lambda: _read_rgb(_package_file("insightface", "data", "images", name))


@dataclass(frozen=True)
class Photo:
    """A photograph from an installed package, and how many faces kpvid uses in it."""

    name: str
    load: Callable[[], np.ndarray]
    faces: int = 1


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", _skimage("astronaut")),
    Photo("camera", _skimage("camera")),
    Photo("grace_hopper", _matplotlib_sample("grace_hopper.jpg")),
    Photo("hanks", _insightface("Tom_Hanks_54745.png")),
    Photo("group", _insightface("t1.jpg"), faces=6),
)
# held out of training: the test videos animate these (and the demo streams grace_hopper)
TEST_FACES = frozenset({"grace_hopper", "group_2", "group_4"})


@dataclass(frozen=True)
class PhotoFace:
    """One face of a photograph: the picture and FaceMesh's (468, 3) landmarks on it, px."""

    name: str
    image: np.ndarray
    landmarks: np.ndarray

    @property
    def split(self) -> str:
        return "test" if self.name in TEST_FACES else "train"


def face_names(photo: Photo) -> list[str]:
    return [photo.name] if photo.faces == 1 else [f"{photo.name}_{i}" for i in range(photo.faces)]


def load_photo(photo: Photo) -> np.ndarray | None:
    """The photograph as RGB uint8, or None (with a warning naming it) if it cannot be had."""
    try:
        return photo.load()
    except (ImportError, OSError, AttributeError) as exc:
        log.info("photo %s is not available here, skipped: %s", photo.name, exc)
        return None


def find_faces(image: np.ndarray, mesh: FaceMesh, expected: int) -> list[np.ndarray]:
    """Landmarks of up to ``expected`` faces, left to right. A single face is fitted on the
    whole picture; a group photo is scanned with overlapping square windows (FaceMesh's face
    detector finds only large faces), keeping one fit per face."""
    if expected == 1:
        points = mesh.landmarks(image)
        return [] if points is None else [points]
    h, w = image.shape[:2]
    found: list[np.ndarray] = []
    for window in (min(h, w) * 3 // 10, min(h, w) * 4 // 10):
        step = window // 3
        for y in range(0, h - window + 1, step):
            for x in range(0, w - window + 1, step):
                points = mesh.landmarks(np.ascontiguousarray(image[y:y + window, x:x + window]))
                if points is None:
                    continue
                points = points + np.array([x, y, 0], np.float32)
                width = np.ptp(points[:, 0])
                if all(np.linalg.norm(points[:, :2].mean(0) - f[:, :2].mean(0)) > 0.5 * width
                       for f in found):
                    found.append(points)
    found.sort(key=lambda p: float(p[:, 0].mean()))
    return found[:expected]


def fit_photos(out: Path = FITS_PATH) -> dict[str, list]:
    """Fit FaceMesh to every available photograph and write the fits (JSON) to ``out``.

    A photograph without the faces it should have is skipped with a warning naming it."""
    fits: dict[str, list] = {}
    with FaceMesh(static=True, min_confidence=0.5) as mesh:
        for photo in PHOTOS:
            image = load_photo(photo)
            if image is None:
                log.warning("photo %s is not available here, skipped", photo.name)
                continue
            faces = find_faces(image, mesh, photo.faces)
            if len(faces) < photo.faces:
                log.warning("photo %s: FaceMesh found %d of its %d faces; skipped", photo.name,
                            len(faces), photo.faces)
                continue
            for name, points in zip(face_names(photo), faces, strict=True):
                fits[name] = np.round(points, 1).tolist()
            log.info("photo %s: fitted %d face(s)", photo.name, len(faces))
    out.write_text(json.dumps({"num_landmarks": NUM_LANDMARKS, "faces": fits},
                              separators=(",", ":")) + "\n")
    return fits


@cache
def _fits() -> dict[str, np.ndarray]:
    data = json.loads(FITS_PATH.read_text())
    return {name: np.asarray(points, np.float32) for name, points in data["faces"].items()}


def fitted_face_names() -> list[str]:
    """Names of every face the shipped fits hold."""
    return list(_fits())


def load_faces(split: str | None = None) -> list[PhotoFace]:
    """The fitted faces whose photographs are available here, optionally of one split; a face
    whose photograph is missing is skipped with a warning naming it."""
    if split not in (None, *SPLITS):
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    fits = _fits()
    faces = []
    for photo in PHOTOS:
        names = [n for n in face_names(photo) if n in fits]
        if split is not None:
            names = [n for n in names if (n in TEST_FACES) == (split == "test")]
        if not names:
            continue
        image = _load_cached(photo.name)
        if image is None:
            continue
        faces.extend(PhotoFace(n, image, fits[n]) for n in names)
    return faces


@cache
def _load_cached(name: str) -> np.ndarray | None:
    photo = next(p for p in PHOTOS if p.name == name)
    image = load_photo(photo)
    if image is not None:
        image.setflags(write=False)
    return image
