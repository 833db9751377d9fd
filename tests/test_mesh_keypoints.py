"""The FaceMesh-driven model: keypoints and jacobians from landmarks, FaceMesh tracks of a data
set, the dataset's mesh pairs, training on them, and loading such a checkpoint for the sender
and the edge."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml

from kpvid.models import load_checkpoint_with_config
from kpvid.models.facemesh import facemesh_available
from kpvid.models.mesh_keypoints import FaceMeshDetector, MeshKeypoints
from kpvid.synthetic import write_dataset
from kpvid.synthetic.photo_heads import TRACKED_LANDMARKS
from kpvid.training.dataset import FramesDataset, VideoReadError, mesh_path
from kpvid.training.mesh_tracks import facemesh_keypoints, reference_face

needs_facemesh = pytest.mark.skipif(not facemesh_available(), reason="MediaPipe not installed")


def test_an_affine_motion_of_the_face_is_each_keypoints_jacobian() -> None:
    module = facemesh_keypoints()
    reference = torch.as_tensor(reference_face(), dtype=torch.float32)
    motion = torch.tensor([[1.1, 0.2], [-0.1, 0.9]])
    moved = reference @ motion.T + torch.tensor([0.05, -0.1])
    kp_ref, kp_moved = module(reference[None]), module(moved[None])
    assert torch.equal(kp_moved["value"][0], moved[list(TRACKED_LANDMARKS)])
    # what reaches the dense motion network: J_moved J_ref^-1 = the motion itself
    relative = kp_moved["jacobian"][0] @ torch.linalg.inv(kp_ref["jacobian"][0])
    torch.testing.assert_close(relative, motion.expand(10, 2, 2), atol=1e-4, rtol=1e-4)
    # the reference face's own jacobians are the identity (it is its own reference)
    torch.testing.assert_close(kp_ref["jacobian"][0], torch.eye(2).expand(10, 2, 2),
                               atol=1e-4, rtol=1e-4)


def test_the_inner_lips_jacobians_see_their_own_lip_only() -> None:
    """An opening mouth moves the lower lip down: the upper lip's jacobian stays the identity
    while the jaw's moves, since its neighbourhood holds nothing below it."""
    module = facemesh_keypoints()
    reference = torch.as_tensor(reference_face(), dtype=torch.float32)
    upper, lower = TRACKED_LANDMARKS.index(13), TRACKED_LANDMARKS.index(14)
    opened = reference.clone()
    below = reference[:, 1] >= reference[14, 1]
    opened[below, 1] += 0.1  # everything from the lower inner lip down
    jacobian = module(opened[None])["jacobian"][0]
    torch.testing.assert_close(jacobian[upper], torch.eye(2), atol=1e-5, rtol=0)
    assert set(module.neighbours[upper].tolist()).isdisjoint(np.flatnonzero(below.numpy()))
    assert set(module.neighbours[lower].tolist()) <= set(np.flatnonzero(below.numpy()))


def test_bad_landmarks_and_geometry_are_refused() -> None:
    module = facemesh_keypoints()
    with pytest.raises(ValueError, match="B x L x 2"):
        module(torch.zeros(468, 2))
    with pytest.raises(ValueError, match="anchors"):
        MeshKeypoints(3).set_reference(reference_face(), [1, 2])
    with pytest.raises(ValueError, match="neighbours"):
        MeshKeypoints(3, neighbours=2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("mesh") / "d"
    write_dataset("photos", out, videos=3, seed=4, size=64, frames=4, test_fraction=0.34,
                  progress=False)  # (FaceMesh finds faces of 32 pixels too rarely)
    return out


def _write_mesh(video, found: list[bool]) -> None:
    """Fake FaceMesh tracks: the reference face, placed on a 64-pixel frame, NaN where not found."""
    face = (reference_face() * 40 + 31.5).astype(np.float32)
    points = np.stack([face if f else np.full_like(face, np.nan) for f in found])
    np.savez(mesh_path(video), points=points)


def test_the_dataset_pairs_frames_where_the_face_was_found(photos) -> None:
    videos = sorted((photos / "train").iterdir())
    for video in videos:
        _write_mesh(video, [True, False, True, False])
    data = FramesDataset(photos, frame_shape=(64, 64, 3), mesh_landmarks=True)
    for _ in range(5):
        sample = data[0]
        assert sample["mesh"].shape == (2, 468, 2) and torch.isfinite(sample["mesh"]).all()
        expected = torch.as_tensor(reference_face() * 40 + 31.5) * 2 / 63 - 1
        torch.testing.assert_close(sample["mesh"][0], expected.float(), atol=1e-4, rtol=0)
    _write_mesh(videos[0], [True, False, False, False])  # one face: no pair to draw
    with pytest.raises(VideoReadError, match="found the face in 1 frame"):
        data._train_sample(videos[0])
    mesh_path(videos[0]).unlink()
    with pytest.raises(VideoReadError, match="kpvid-data facemesh"):
        data._train_sample(videos[0])
    with pytest.raises(ValueError, match="horizontal_flip"):
        FramesDataset(photos, frame_shape=(64, 64, 3), mesh_landmarks=True,
                      augmentation_params={"flip_param": {"horizontal_flip": True}})


@pytest.fixture()
def mesh_config(tiny_config) -> dict:
    config = copy.deepcopy(tiny_config)
    config["model_params"]["mesh_keypoints"] = {"neighbours": 8}
    config["model_params"]["common_params"]["num_kp"] = 10
    config["dataset_params"]["frame_shape"] = [64, 64, 3]
    config["dataset_params"]["augmentation_params"]["flip_param"]["horizontal_flip"] = False
    weights = config["train_params"]["loss_weights"]
    weights.update(equivariance_value=0, equivariance_jacobian=0)
    return config


@needs_facemesh
def test_tracks_training_and_a_checkpoint_that_drives_from_facemesh(photos, mesh_config,
                                                                     tmp_path) -> None:
    from kpvid.synthetic import generate_video
    from kpvid.synthetic.photo_heads import photo_face_tracks
    from kpvid.training.mesh_tracks import write_mesh_tracks
    from kpvid.training.train_fomm import TrainOptions, train

    summary = write_mesh_tracks(photos, progress=False, overwrite=True)
    assert summary["videos"] == 3 and summary["kept"] == 0 and summary["faces_found"] > 0.5
    with np.load(mesh_path(photos / "train" / "photos_00001")) as data:
        assert data["points"].shape == (4, 468, 2)

    config_file = tmp_path / "mesh.yaml"
    config_file.write_text(yaml.safe_dump(mesh_config))
    checkpoint = train(TrainOptions(config=str(config_file), data=[str(photos)],
                                    out=str(tmp_path / "run"), max_steps=1, progress=False))
    detector, _, _ = load_checkpoint_with_config(checkpoint)
    assert isinstance(detector, FaceMeshDetector) and detector.num_kp == 10

    # the sender's and the edge's detector on a rendered frame: keypoints on the tracked
    # landmarks, as the renderer placed them
    frames = generate_video("photos", seed=9, size=64, frames=2, split="test")
    tracks = photo_face_tracks(9, 64, 2, "test")[0]
    x = torch.from_numpy(frames[:1]).permute(0, 3, 1, 2).float() / 255
    value = detector(x)["value"][0].numpy()
    eyes = np.linalg.norm(tracks[0] - tracks[1])
    error = np.median(np.linalg.norm((value + 1) * 63 / 2 - tracks, axis=1)) / eyes
    assert error < 0.1 and detector.missed == 0
    blank = detector(torch.zeros(1, 3, 64, 64))["value"][0].numpy()  # no face: the last one
    np.testing.assert_array_equal(blank, value)
    assert detector.missed == 1

    # kpvid-extract --mesh-tracks: the data set's tracks give the keypoints the detector finds
    from kpvid.training.dataset import list_videos
    from kpvid.training.extract import extract_keypoints

    videos = list_videos(photos / "train")
    kwargs = {"checkpoint_id": "m", "split": "train", "progress": False}
    tracked = extract_keypoints(detector, videos, 64, mesh_tracks=True, **kwargs)
    fresh = extract_keypoints(detector, videos, 64, **kwargs)
    assert tracked.kp.shape == fresh.kp.shape == (2, 4, 10, 6)
    assert np.median(np.abs(tracked.kp[..., :2] - fresh.kp[..., :2])) < 0.03
    with pytest.raises(ValueError, match="FaceMesh-driven"):
        extract_keypoints(torch.nn.Identity(), videos, 64, mesh_tracks=True, **kwargs)
