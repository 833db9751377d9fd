"""kpvid-extract: keypoint sequences of a data set as .npz, with a tiny FOMM model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from kpvid.models import kp6_from_dict, kp_dict_from_kp6, load_checkpoint_with_config
from kpvid.synthetic import write_dataset
from kpvid.training.dataset import read_video
from kpvid.training.extract import (
    detect_kp6,
    extract_main,
    frames_to_tensor,
    load_keypoints,
)


@pytest.fixture()
def data(tmp_path) -> Path:
    """train/: two 8-frame videos, a 5-frame cut of the first and a broken one; test/: one."""
    out = tmp_path / "data"
    write_dataset("faces", out, videos=3, seed=0, size=32, frames=8, test_fraction=0.34,
                  progress=False)
    short = out / "train" / "faces_00002_short"
    short.mkdir()
    for frame in sorted((out / "train" / "faces_00000").iterdir())[:5]:
        shutil.copy(frame, short)
    (out / "train" / "faces_00003_broken").mkdir()
    (out / "train" / "faces_00003_broken" / "00000.png").write_bytes(b"not a png")
    return out


def test_extract_writes_padded_sequences_and_skips_broken_videos(tmp_path, tiny_checkpoint, data,
                                                                 caplog):
    out = tmp_path / "kp" / "train.npz"
    assert extract_main(["--checkpoint", str(tiny_checkpoint), "--data", str(data),
                         "--out", str(out), "--batch", "3", "--threads", "1", "--quiet"]) == 0
    assert "faces_00003_broken" in caplog.text
    sequences = load_keypoints(out)
    assert sequences.names == ["faces_00000", "faces_00001", "faces_00002_short"]
    assert sequences.kp.shape == (3, 8, 4, 6) and sequences.kp.dtype == np.float32
    assert sequences.lengths.tolist() == [8, 8, 5]
    assert (sequences.model_id, sequences.frame_size, sequences.split) == ("tiny-model", 32,
                                                                           "train")
    kp_detector, _, _ = load_checkpoint_with_config(tiny_checkpoint)
    frames = frames_to_tensor(read_video(data / "train" / "faces_00001", size=32))
    np.testing.assert_allclose(sequences.kp[1], detect_kp6(kp_detector, frames), atol=1e-5)
    # the short video is the first one's first five frames, padded with its last set
    np.testing.assert_allclose(sequences.kp[2, :5], sequences.kp[0, :5], atol=1e-5)
    np.testing.assert_array_equal(sequences.kp[2, 5:], np.repeat(sequences.kp[2, 4:5], 3, 0))
    assert sequences.sequence(2).shape == (5, 4, 6)


def test_extract_split_and_refuses_to_overwrite(tmp_path, tiny_checkpoint, data, capsys):
    out = tmp_path / "test.npz"
    common = ["--checkpoint", str(tiny_checkpoint), "--data", str(data), "--out", str(out),
              "--quiet"]
    args = [*common, "--split", "test"]
    assert extract_main(args) == 0
    sequences = load_keypoints(out)
    assert (sequences.split, sequences.names) == ("test", ["faces_00000"])
    with pytest.raises(SystemExit) as exc:
        extract_main(args)
    assert exc.value.code == 2 and "--force" in capsys.readouterr().err
    assert extract_main([*args, "--force", "--max-videos", "1"]) == 0
    assert extract_main([*common, "--split", "validation", "--force"]) == 2


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        extract_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--checkpoint", "--data", "--out", "--split", "--max-videos", "--batch",
                 "--threads", "--force"):
        assert flag in text


def test_kp6_conversions_round_trip_and_fill_identity_jacobians():
    kp6 = np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32)
    kp = kp_dict_from_kp6(kp6)
    assert kp["value"].shape == (3, 4, 2) and kp["jacobian"].shape == (3, 4, 2, 2)
    np.testing.assert_array_equal(kp6_from_dict(kp), kp6)
    no_jacobian = kp6_from_dict({"value": kp["value"]})
    np.testing.assert_array_equal(no_jacobian[..., 2:], np.tile([1, 0, 0, 1], (3, 4, 1)))
