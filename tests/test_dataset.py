"""Tests for kpvid.training.dataset and kpvid.training.augmentation (tiny synthetic videos)."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from kpvid.training import dataset as dataset_module
from kpvid.training.augmentation import Augmentation, adjust_hue, adjust_saturation
from kpvid.training.dataset import (
    DatasetRepeater,
    FramesDataset,
    VideoReadError,
    list_videos,
    read_video,
)

SIZE = 40  # even, so yuv420p mp4 encoding keeps it exactly


def make_frames(num: int = 5, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Distinct, left/right-asymmetric uint8 RGB frames made of flat blocks (codec friendly)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(num, 4, 4, 3), dtype=np.uint8)
    frames = blocks.repeat(size // 4, axis=1).repeat(size // 4, axis=2)
    frames[:, :, : size // 8] = 255  # white left edge: a horizontal flip is visible
    return frames


def write_folder(path: Path, frames: np.ndarray) -> Path:
    path.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(path / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return path


def write_strip(path: Path, frames: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    strip = np.concatenate(list(frames), axis=1)
    cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    return path


def write_mp4(path: Path, frames: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 20_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_gif(path: Path, frames: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, extension=".gif", duration=100, loop=0)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


# --- read_video -------------------------------------------------------------------------------


def test_read_png_folder(tmp_path: Path) -> None:
    frames = make_frames()
    folder = write_folder(tmp_path / "clip", frames)
    video = read_video(folder)
    assert video.dtype == np.uint8
    np.testing.assert_array_equal(video, frames)
    assert read_video(folder, size=16).shape == (5, 16, 16, 3)


def test_read_mp4(tmp_path: Path) -> None:
    frames = make_frames()
    path = write_mp4(tmp_path / "clip.mp4", frames)
    video = read_video(path)
    assert video.shape == frames.shape and video.dtype == np.uint8
    assert np.abs(video.astype(int) - frames).mean() < 8
    assert read_video(str(path), size=24).shape == (5, 24, 24, 3)


def test_read_gif(tmp_path: Path) -> None:
    frames = make_frames(num=4)
    path = write_gif(tmp_path / "clip.gif", frames)
    video = read_video(path)
    assert video.shape == frames.shape and video.dtype == np.uint8
    assert np.abs(video.astype(int) - frames).mean() < 8
    assert read_video(path, size=20).shape == (4, 20, 20, 3)


def test_read_strip(tmp_path: Path) -> None:
    frames = make_frames(num=6)
    path = write_strip(tmp_path / "clip.png", frames)
    np.testing.assert_array_equal(read_video(path), frames)
    assert read_video(path, size=16).shape == (6, 16, 16, 3)


def test_read_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((10, 25, 3), np.uint8))
    bad_paths = [
        tmp_path / "missing.mp4",
        tmp_path / "empty",
        write_corrupt(tmp_path / "corrupt.mp4"),
        tmp_path / "wide.png",
    ]
    for path in bad_paths:
        with pytest.raises(VideoReadError, match=path.name) as info:
            read_video(path)
        assert isinstance(info.value, ValueError) and info.value.path == path


def test_list_videos(tmp_path: Path) -> None:
    write_folder(tmp_path / "b_folder", make_frames(num=2))
    write_strip(tmp_path / "a.png", make_frames(num=2))
    write_mp4(tmp_path / "c.mp4", make_frames(num=2))
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / ".hidden").mkdir()
    names = [p.name for p in list_videos(tmp_path)]
    assert names == ["a.png", "b_folder", "c.mp4"]


# --- FramesDataset ----------------------------------------------------------------------------


def make_root(tmp_path: Path) -> Path:
    """A root with train/ (folder, mp4, strip) and test/ (one strip)."""
    root = tmp_path / "data"
    write_folder(root / "train" / "folder", make_frames(seed=1))
    write_mp4(root / "train" / "movie.mp4", make_frames(seed=2))
    write_strip(root / "train" / "strip.png", make_frames(seed=3))
    write_strip(root / "test" / "held_out.png", make_frames(num=7, seed=4))
    return root


def test_train_samples(tmp_path: Path) -> None:
    ds = FramesDataset(make_root(tmp_path), frame_shape=(32, 32, 3), pairs_per_video=2)
    assert len(ds) == 6
    names = set()
    for i in range(len(ds)):
        sample = ds[i]
        assert set(sample) == {"source", "driving", "name"}
        for key in ("source", "driving"):
            assert sample[key].shape == (3, 32, 32) and sample[key].dtype == torch.float32
            assert sample[key].min() >= 0.0 and sample[key].max() <= 1.0
        assert not torch.equal(sample["source"], sample["driving"])
        names.add(sample["name"])
    assert names == {"folder", "movie.mp4", "strip.png"}
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_test_mode(tmp_path: Path) -> None:
    ds = FramesDataset(make_root(tmp_path), frame_shape=(32, 32, 3), is_train=False)
    assert len(ds) == 1
    sample = ds[0]
    assert set(sample) == {"video", "name"} and sample["name"] == "held_out.png"
    assert sample["video"].shape == (3, 7, 32, 32) and sample["video"].dtype == torch.float32
    assert sample["video"].min() >= 0.0 and sample["video"].max() <= 1.0


def test_folder_reads_only_two_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Frame i is flat grey 10 * i, so the frame order can be checked from the pixel values.
    grey_levels = np.arange(20, dtype=np.uint8)[:, None, None, None] * 10
    write_folder(tmp_path / "train" / "clip", np.broadcast_to(grey_levels, (20, SIZE, SIZE, 3)))
    (tmp_path / "test").mkdir()
    reads = []
    original = dataset_module._read_image
    monkeypatch.setattr(dataset_module, "_read_image", lambda p: reads.append(p) or original(p))
    sample = FramesDataset(tmp_path, frame_shape=(SIZE, SIZE, 3))[0]
    assert len(reads) == 2
    assert sample["source"].mean() < sample["driving"].mean()  # distinct, in time order


def test_auto_split(tmp_path: Path) -> None:
    for i in range(10):
        write_strip(tmp_path / f"v{i}.png", make_frames(num=2, seed=i))
    train = FramesDataset(tmp_path, random_seed=1)
    test = FramesDataset(tmp_path, random_seed=1, is_train=False)
    assert len(train.videos) == 8 and len(test.videos) == 2
    assert set(train.videos).isdisjoint(test.videos)
    assert FramesDataset(tmp_path, random_seed=1).videos == train.videos


def test_id_sampling(tmp_path: Path) -> None:
    for name in ("alice#1.png", "alice#2.png", "bob#1.png"):
        write_strip(tmp_path / "train" / name, make_frames(num=3))
    (tmp_path / "test").mkdir()
    ds = FramesDataset(tmp_path, id_sampling=True)
    assert len(ds) == 2
    assert {ds[0]["name"] for _ in range(20)} == {"alice#1.png", "alice#2.png"}


def test_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nowhere"):
        FramesDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        FramesDataset(tmp_path / "empty")


def test_corrupt_video_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        write_strip(tmp_path / "train" / f"good{i}.png", make_frames(num=3, seed=i))
    write_corrupt(tmp_path / "train" / "broken.mp4")
    ds = FramesDataset(tmp_path, frame_shape=(SIZE, SIZE, 3))
    assert len(ds) == 4
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            for i in range(len(ds)):
                assert ds[i]["name"].startswith("good")
    warnings = [r for r in caplog.records if "broken.mp4" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


def test_all_corrupt_raises(tmp_path: Path) -> None:
    write_corrupt(tmp_path / "train" / "a.mp4")
    (tmp_path / "train" / "empty_folder").mkdir()
    (tmp_path / "test").mkdir()
    ds = FramesDataset(tmp_path)
    with pytest.raises(RuntimeError, match="none of the 2 videos"):
        ds[1]


def test_dataset_repeater(tmp_path: Path) -> None:
    ds = FramesDataset(make_root(tmp_path), frame_shape=(16, 16, 3), is_train=False)
    repeated = DatasetRepeater(ds, num_repeats=3)
    assert len(repeated) == 3
    assert repeated[2]["name"] == "held_out.png"
    with pytest.raises(IndexError):
        repeated[3]


# --- augmentation -----------------------------------------------------------------------------


def seeded_samples(ds: FramesDataset, seeds: range) -> list[dict]:
    samples = []
    for seed in seeds:
        np.random.seed(seed)
        samples.append(ds[0])
    return samples


def one_video_root(tmp_path: Path, frames: np.ndarray) -> Path:
    write_folder(tmp_path / "train" / "clip", frames)
    (tmp_path / "test").mkdir()
    return tmp_path


def test_flips(tmp_path: Path) -> None:
    root = one_video_root(tmp_path, make_frames(num=6))
    shape = (SIZE, SIZE, 3)
    plain = seeded_samples(FramesDataset(root, shape), range(16))
    flip = {"flip_param": {"horizontal_flip": True, "time_flip": False}}
    flipped = seeded_samples(FramesDataset(root, shape, augmentation_params=flip), range(16))
    outcomes = set()
    for ref, aug in zip(plain, flipped, strict=True):
        mirrored = torch.equal(aug["source"], ref["source"].flip(-1))
        assert mirrored or torch.equal(aug["source"], ref["source"])
        assert torch.equal(aug["driving"], ref["driving"].flip(-1) if mirrored else ref["driving"])
        outcomes.add(mirrored)
    assert outcomes == {True, False}

    time = {"flip_param": {"horizontal_flip": False, "time_flip": True}}
    reversed_ = seeded_samples(FramesDataset(root, shape, augmentation_params=time), range(16))
    outcomes = set()
    for ref, aug in zip(plain, reversed_, strict=True):
        swapped = torch.equal(aug["source"], ref["driving"])
        expected = (ref["driving"], ref["source"]) if swapped else (ref["source"], ref["driving"])
        assert torch.equal(aug["source"], expected[0])
        assert torch.equal(aug["driving"], expected[1])
        outcomes.add(swapped)
    assert outcomes == {True, False}


def test_jitter_same_for_source_and_driving(tmp_path: Path) -> None:
    frames = np.repeat(make_frames(num=1), 4, axis=0)  # all frames identical
    root = one_video_root(tmp_path, frames)
    jitter = {"jitter_param": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.2}}
    ds = FramesDataset(root, (SIZE, SIZE, 3), augmentation_params=jitter)
    plain = FramesDataset(root, (SIZE, SIZE, 3))[0]["source"]
    for sample in seeded_samples(ds, range(5)):
        assert torch.equal(sample["source"], sample["driving"])
        assert sample["source"].min() >= 0.0 and sample["source"].max() <= 1.0
        assert not torch.allclose(sample["source"], plain, atol=1e-3)


def test_augmentation_range_and_determinism() -> None:
    clip = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    aug = Augmentation(
        {
            "flip_param": {"horizontal_flip": True, "time_flip": True},
            "jitter_param": {"brightness": 2.0, "contrast": 2.0, "saturation": 2.0, "hue": 0.5},
        }
    )
    for seed in range(10):
        np.random.seed(seed)
        first = aug(clip)
        np.random.seed(seed)
        np.testing.assert_array_equal(first, aug(clip))
        assert first.dtype == np.float32 and first.shape == clip.shape
        assert first.min() >= 0.0 and first.max() <= 1.0


def test_colour_ops() -> None:
    red = np.zeros((1, 2, 2, 3), np.float32)
    red[..., 0] = 1.0
    np.testing.assert_allclose(adjust_hue(red, 1 / 3)[0, 0, 0], [0.0, 1.0, 0.0], atol=1e-5)
    grey = adjust_saturation(make_frames(num=1).astype(np.float32) / 255, 0.0)
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-6)


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"crop_param": {"size": [64, 64]}}, "crop_param"),
        ({"flip_param": {"vertical_flip": True}}, "vertical_flip"),
        ({"jitter_param": {"gamma": 0.1}}, "gamma"),
    ],
)
def test_unknown_augmentation_key(tmp_path: Path, params: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Augmentation(params)
    root = one_video_root(tmp_path, make_frames(num=2))
    with pytest.raises(ValueError, match=key):
        FramesDataset(root, augmentation_params=params)
