"""Tests for kpvid.synthetic: clip shapes, determinism, smooth motion, data-set writing."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from kpvid.synthetic import DEFAULT_FRAMES, DOMAINS, generate_video, write_dataset


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def read_mp4(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("size", [64, 96])
def test_shape_and_dtype(domain: str, size: int) -> None:
    video = generate_video(domain, seed=3, size=size)
    assert video.shape == (DEFAULT_FRAMES[domain], size, size, 3)
    assert video.dtype == np.uint8
    assert video.std() > 10  # not a blank picture


@pytest.mark.parametrize("domain", DOMAINS)
def test_frames_and_odd_size(domain: str) -> None:
    assert generate_video(domain, seed=0, size=33, frames=2).shape == (2, 33, 33, 3)


@pytest.mark.parametrize("domain", DOMAINS)
def test_deterministic(domain: str) -> None:
    a = generate_video(domain, seed=11, frames=6)
    b = generate_video(domain, seed=11, frames=6)
    c = generate_video(domain, seed=12, frames=6)
    np.testing.assert_array_equal(a, b)
    assert mean_abs(a, c) > 5


@pytest.mark.parametrize("domain", DOMAINS)
def test_motion_is_present_and_smooth(domain: str) -> None:
    """Frames change, and the change grows with the time lag (smooth motion, not flicker)."""
    step, far = [], []
    for seed in range(4):
        video = generate_video(domain, seed=seed)
        step.append(np.mean([mean_abs(video[t], video[t + 1]) for t in range(len(video) - 1)]))
        far.append(np.mean([mean_abs(video[t], video[t + 10]) for t in range(len(video) - 10)]))
    assert np.mean(step) > 0.3
    assert np.mean(step) < 0.5 * np.mean(far)


@pytest.mark.parametrize("fmt", ["png", "mp4"])
def test_write_dataset(tmp_path: Path, fmt: str) -> None:
    meta = write_dataset(
        "faces", tmp_path, videos=3, seed=5, size=64, frames=4, fmt=fmt, progress=False
    )
    assert meta["counts"] == {"train": 2, "test": 1}
    assert json.loads((tmp_path / "meta.json").read_text()) == meta
    assert meta["domain"] == "faces" and meta["size"] == 64 and meta["frames"] == 4
    for split, count in meta["counts"].items():
        entries = sorted((tmp_path / split).iterdir())
        assert len(entries) == count
        for entry in entries:
            if fmt == "png":
                files = sorted(entry.glob("*.png"))
                assert [f.name for f in files] == [f"{i:05d}.png" for i in range(4)]
                video = np.stack([cv2.imread(str(f)) for f in files])
            else:
                assert entry.suffix == ".mp4"
                video = read_mp4(entry)
            assert video.shape == (4, 64, 64, 3)


def test_mp4_is_nearly_lossless(tmp_path: Path) -> None:
    write_dataset("arm", tmp_path / "png", videos=2, seed=1, frames=3, progress=False)
    write_dataset("arm", tmp_path / "mp4", videos=2, seed=1, frames=3, fmt="mp4", progress=False)
    name = "arm_00000"
    png = np.stack(
        [
            cv2.imread(str(p))[..., ::-1]
            for p in sorted((tmp_path / "png/test" / name).glob("*.png"))
        ]
    )
    assert mean_abs(png, read_mp4(tmp_path / "mp4/test" / f"{name}.mp4")) < 2.0


def test_seeds_give_different_videos(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_dataset("arm", tmp_path / str(seed), videos=2, seed=seed, frames=2, progress=False)
    a, b = (cv2.imread(str(tmp_path / s / "test/arm_00000/00000.png")) for s in ("0", "1"))
    train = cv2.imread(str(tmp_path / "0/train/arm_00000/00000.png"))
    assert mean_abs(a, b) > 5 and mean_abs(a, train) > 5


def test_single_video_and_non_empty_output(tmp_path: Path) -> None:
    meta = write_dataset("arm", tmp_path, videos=1, seed=0, frames=2, progress=False)
    assert meta["counts"] == {"train": 1, "test": 0}
    with pytest.raises(FileExistsError):
        write_dataset("arm", tmp_path, videos=1, seed=0, frames=2, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"domain": "cats"},
        {"size": 31},
        {"frames": 1},
        {"videos": 0},
        {"fmt": "gif"},
        {"test_fraction": 1.0},
        {"seed": -1},
    ],
)
def test_bad_input(tmp_path: Path, kwargs: dict) -> None:
    args = {"domain": "faces", "out": tmp_path, "videos": 2, "seed": 0, "progress": False} | kwargs
    with pytest.raises(ValueError):
        write_dataset(**args)
    gen_args = {k: v for k, v in args.items() if k in ("domain", "seed", "size", "frames")}
    if set(kwargs) <= {"domain", "size", "frames", "seed"}:
        with pytest.raises(ValueError):
            generate_video(**gen_args)
