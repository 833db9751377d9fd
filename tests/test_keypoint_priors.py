"""The keypoint priors for real faces: landmark tracks of photo talking heads (written, read,
flipped with their frames), the landmark and separation losses, and training that uses them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kpvid.models.facemesh import facemesh_available
from kpvid.synthetic import write_dataset
from kpvid.synthetic.photo_heads import (
    TRACK_MIRROR,
    TRACKED_LANDMARKS,
    photo_face_tracks,
)
from kpvid.synthetic.writer import tracks_path, write_tracks
from kpvid.training.augmentation import RandomFlip
from kpvid.training.dataset import FramesDataset
from kpvid.training.losses import keypoint_landmark_error, keypoint_separation


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("photos") / "d"
    write_dataset("photos", out, videos=3, seed=4, size=32, frames=4, test_fraction=0.34,
                  progress=False)
    return out


def test_tracks_are_written_and_replayable(photos) -> None:
    with np.load(tracks_path(photos / "train" / "photos_00001")) as data:
        points, mirror = data["points"], data["mirror"]
    assert points.shape == (4, 10, 2) and tuple(mirror) == TRACK_MIRROR
    assert ((points > 0) & (points < 31)).all()  # on the picture
    assert np.ptp(points[0, :, 0]) > 5  # spread over the face, not one spot
    before = points.copy()
    write_tracks(photos, progress=False)  # kpvid-data tracks: the same numbers again
    with np.load(tracks_path(photos / "train" / "photos_00001")) as data:
        np.testing.assert_array_equal(data["points"], before)


def test_flip_mirrors_points_and_swaps_their_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    clip = np.arange(2 * 8 * 10 * 3, dtype=np.float32).reshape(2, 8, 10, 3)
    points = np.array([[[1.0, 2.0], [8.0, 3.0], [4.0, 4.0]]] * 2)
    monkeypatch.setattr(np.random, "rand", lambda: 0.0)  # the coin says flip
    flipped, moved = RandomFlip(horizontal_flip=True).with_points(clip, points,
                                                                  np.array([1, 0, 2]))
    np.testing.assert_array_equal(flipped, clip[:, :, ::-1])
    # slot 0 now holds the mirror image of slot 1, and so on; x -> width - 1 - x
    np.testing.assert_allclose(moved[0], [[1.0, 3.0], [8.0, 2.0], [5.0, 4.0]])


def test_dataset_gives_normalised_landmarks_or_nan(photos, tmp_path) -> None:
    data = FramesDataset(photos, frame_shape=(32, 32, 3), track_points=10)
    sample = data[0]
    assert sample["landmarks"].shape == (2, 10, 2)
    assert torch.isfinite(sample["landmarks"]).all()
    assert sample["landmarks"].abs().max() <= 1
    cartoons = tmp_path / "faces"
    write_dataset("faces", cartoons, videos=2, seed=0, size=32, frames=3, progress=False)
    assert torch.isnan(FramesDataset(cartoons, (32, 32, 3), track_points=10)[0]["landmarks"]).all()
    with pytest.raises(ValueError, match="tracks have 10 points, the data set expects 5"):
        FramesDataset(photos, frame_shape=(32, 32, 3), track_points=5)[0]


def test_landmark_error_skips_unknown_samples() -> None:
    value = torch.zeros(3, 2, 2)
    landmarks = torch.full((3, 2, 2), float("nan"))
    assert keypoint_landmark_error(value, landmarks) == 0
    landmarks[1] = 0.5
    assert keypoint_landmark_error(value, landmarks) == pytest.approx(0.5)


def test_separation_is_high_for_a_cluster_and_low_when_spread() -> None:
    cluster = torch.zeros(1, 10, 2) + 0.01 * torch.randn(1, 10, 2)
    grid = torch.stack(torch.meshgrid(torch.linspace(-0.8, 0.8, 5), torch.linspace(-0.5, 0.5, 2),
                                      indexing="xy"), -1).reshape(1, 10, 2)
    assert keypoint_separation(cluster) > 0.95
    assert keypoint_separation(grid) < 0.1


@pytest.mark.skipif(not facemesh_available(), reason="FaceMesh not installed")
def test_tracks_follow_the_rendered_face() -> None:
    """The replayed tracks belong to the clip generate_video renders for the same seed:
    FaceMesh, run on the rendered frames, finds the same landmarks where the tracks say."""
    import cv2

    from kpvid.models.facemesh import FaceMesh
    from kpvid.synthetic import generate_video

    with FaceMesh() as mesh:
        for seed in (9, 11):
            frames = generate_video("photos", seed=seed, size=64, frames=2, split="test")
            tracks = photo_face_tracks(seed, 64, 2, "test")
            others = photo_face_tracks(seed + 1, 64, 2, "test")  # another clip's: the control
            for frame, track, other in zip(frames, tracks, others, strict=True):
                found = mesh.landmarks(cv2.resize(frame, (256, 256),
                                                  interpolation=cv2.INTER_CUBIC))
                assert found is not None
                found = (found[list(TRACKED_LANDMARKS), :2] + 0.5) / 4 - 0.5
                eyes = np.linalg.norm(track[0] - track[1])  # outer eye corners, slots 0 and 1
                # medians: on a turned head FaceMesh guesses the hidden cheek and eye corner
                error = np.median(np.linalg.norm(found - track, axis=1)) / eyes
                control = np.median(np.linalg.norm(found - other, axis=1)) / eyes
                assert error < 0.1 and control > 2 * error
