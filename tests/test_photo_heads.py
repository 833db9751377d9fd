"""Photo talking heads: held-out faces stay out of training, the animation does what it says
(checked with FaceMesh, which judges the rendered frames independently), bad photographs are
skipped with a warning."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from kpvid.models.facemesh import NOSE_TIP, facemesh_available, inter_ocular, mouth_opening
from kpvid.synthetic import generate_video, photo_heads, photo_library, write_dataset
from kpvid.synthetic.photo_library import TEST_FACES, Photo, load_faces

needs_facemesh = pytest.mark.skipif(not facemesh_available(), reason="FaceMesh not installed")


def test_splits_are_disjoint_and_hold_out_the_test_faces() -> None:
    train = {f.name for f in load_faces("train")}
    test = {f.name for f in load_faces("test")}
    assert train and test
    assert not train & TEST_FACES
    assert test <= TEST_FACES
    assert "grace_hopper" in test  # ships with matplotlib, a core dependency: the demo's face


def test_split_changes_the_video_and_is_checked() -> None:
    a = generate_video("photos", seed=5, size=48, frames=3, split="train")
    b = generate_video("photos", seed=5, size=48, frames=3, split="test")
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5
    with pytest.raises(ValueError, match="split"):
        generate_video("photos", seed=5, size=48, frames=3, split="validation")


def test_dataset_records_its_photos(tmp_path) -> None:
    meta = write_dataset("photos", tmp_path / "d", videos=3, seed=1, size=32, frames=2,
                         test_fraction=0.34, progress=False)
    assert set(meta["photos"]["test"]) <= TEST_FACES
    assert not set(meta["photos"]["train"]) & TEST_FACES
    assert json.loads((tmp_path / "d" / "meta.json").read_text())["photos"] == meta["photos"]


def _clip(mouth: list[float], yaw: list[float], size: int = 128) -> np.ndarray:
    """Frames of the held-out portrait with the given jaw opening and head yaw, nothing else."""
    face = next(f for f in load_faces("test") if f.name == "grace_hopper")
    rng = np.random.default_rng(0)
    crop = photo_heads._crop(face, rng, 2 * size)
    rig = photo_heads._Rig(crop)
    n = len(mouth)
    zeros = np.zeros(n)
    motion = photo_heads._Motion(
        yaw=np.array(yaw), pitch=zeros, roll=zeros, shift=np.zeros((n, 2)), scale=np.ones(n),
        mouth=np.array(mouth), smile=zeros, brow=zeros, openness=np.ones(n),
        shake=np.zeros((n, 2)))
    frames = []
    for i in range(n):
        points, depth = rig.frame(motion, i)
        frame = photo_heads._warp(crop.image, rig.src, points, rig.triangles, depth)
        photo_heads._draw_mouth(frame, points, rig.v, rig.iod, 1.0)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8)[::2, ::2])
    return np.stack(frames)


@needs_facemesh
def test_facemesh_sees_the_jaw_open_and_the_head_turn() -> None:
    from kpvid.models.facemesh import FaceMesh

    frames = _clip(mouth=[0.0, 0.5, 1.0, 0.0, 0.0], yaw=[0.0, 0.0, 0.0, 0.35, -0.35])
    with FaceMesh() as mesh:
        points = [mesh.landmarks(f) for f in frames]
    assert all(p is not None for p in points)
    opening = [mouth_opening(p) for p in points]
    assert opening[0] < 0.05 and opening[1] > opening[0] + 0.15 and opening[2] > opening[1] + 0.08
    # a turn moves the nose tip sideways by a good part of the eye distance, each way its own
    nose = [p[NOSE_TIP, 0] / inter_ocular(points[0]) for p in points]
    assert abs(nose[3] - nose[0]) > 0.15 and abs(nose[4] - nose[0]) > 0.15
    assert (nose[3] - nose[0]) * (nose[4] - nose[0]) < 0


def test_a_photo_without_a_face_is_skipped_with_a_warning(monkeypatch, tmp_path, caplog) -> None:
    pytest.importorskip("mediapipe")
    blank = Photo("blank_wall", lambda: np.full((200, 200, 3), 128, np.uint8))
    gone = Photo("missing", lambda: (_ for _ in ()).throw(ImportError("no such package")))
    monkeypatch.setattr(photo_library, "PHOTOS", (blank, gone))
    out = tmp_path / "fits.json"
    with caplog.at_level(logging.WARNING):
        fits = photo_library.fit_photos(out)
    assert fits == {}
    assert "blank_wall" in caplog.text and "missing" in caplog.text
    assert json.loads(out.read_text())["faces"] == {}
