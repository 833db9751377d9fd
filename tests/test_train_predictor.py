"""``kpvid-train predictor``: keypoint files, schedules, open-loop scores, a tiny end-to-end run."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from kpvid.models.learned_predictor import Normalisation, load_predictor
from kpvid.models.predictors import ConstantVelocity, HoldLast, rollout
from kpvid.models.sequence_model import schedule_mask
from kpvid.training.train_predictor import (
    KeypointData,
    PredictorTrainOptions,
    augmented_batch,
    build_parser,
    evaluate_predictor,
    load_keypoint_file,
    split_indices,
    train_predictor_main,
)


def write_npz(path, count: int = 20, length: int = 10, k: int = 2, lengths=None) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(length)[None, :, None, None]
    kp = np.sin(0.3 * t + rng.uniform(0, 6, (count, 1, k, 6))).astype(np.float32)
    np.savez(path, kp=kp, names=np.array([f"v{i}" for i in range(count)]),
             lengths=np.array(lengths if lengths is not None else [length] * count, np.int32),
             model_id=np.array("tiny-fomm"), frame_size=np.array(64), split=np.array("train"))
    return kp


def test_schedule_masks():
    np.testing.assert_array_equal(schedule_mask("m1", 8), [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(schedule_mask("m2", 5), [1, 0, 1, 0, 1])
    rng = np.random.default_rng(0)
    masks = [schedule_mask("mixed", 32, rng) for _ in range(60)]
    assert all(m[0] for m in masks)  # every pattern starts by observing
    patterns = {m.tobytes() for m in masks}
    assert schedule_mask("m1", 32).tobytes() in patterns
    assert schedule_mask("m2", 32).tobytes() in patterns
    assert len(patterns) > 5
    with pytest.raises(ValueError, match="mixed"):
        schedule_mask("mixed", 8)
    with pytest.raises(ValueError, match="m1, m2, mixed"):
        schedule_mask("m3", 8)


def test_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(50, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45
    assert sorted([*train, *val]) == list(range(50))
    np.testing.assert_array_equal(split_indices(50, 0.1, seed=0)[1], val)
    assert not np.array_equal(split_indices(50, 0.1, seed=1)[1], val)
    assert len(split_indices(3, 0.1, seed=0)[1]) == 1
    with pytest.raises(ValueError):
        split_indices(1, 0.1, seed=0)


def test_load_keypoint_file_checks(tmp_path):
    kp = write_npz(tmp_path / "ok.npz")
    data = load_keypoint_file(tmp_path / "ok.npz")
    assert data.kp.shape == kp.shape and data.num_kp == 2 and data.model_id == "tiny-fomm"
    assert data.frame_size == 64 and data.valid().all()
    np.savez(tmp_path / "flat.npz", kp=np.zeros((3, 4, 6), np.float32))
    with pytest.raises(ValueError, match=r"\(N, T, K, 6\)"):
        load_keypoint_file(tmp_path / "flat.npz")
    np.savez(tmp_path / "none.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="no 'kp'"):
        load_keypoint_file(tmp_path / "none.npz")
    with pytest.raises(ValueError, match="not found"):
        load_keypoint_file(tmp_path / "missing.npz")


def test_rollout_feeds_back_and_hides_ground_truth():
    kp = np.cumsum(np.ones((6, 1, 6), np.float32), axis=0)  # 1, 2, 3, ... per number
    mask = schedule_mask("m2", 6)
    out = rollout(ConstantVelocity(), kp, mask)
    np.testing.assert_array_equal(out[1], kp[0])  # one observation: nothing to extrapolate
    np.testing.assert_array_equal(out[2:], kp[2:])  # then the straight line is exact
    out = rollout(HoldLast(), kp, schedule_mask("m1", 6))
    np.testing.assert_array_equal(out[5], kp[4])


def test_open_loop_scores_and_short_sequences(caplog):
    kp = np.cumsum(np.ones((3, 8, 2, 6), np.float32), axis=1)
    data = KeypointData(kp, np.array([8, 8, 4]), np.array(["a", "b", "c"]), None, None)
    with caplog.at_level(logging.WARNING):
        m1 = evaluate_predictor(HoldLast, data, "m1")
    assert m1.sequences == 2 and m1.skipped == 1 and "1 sequences shorter" in caplog.text
    assert m1.kp_mse == pytest.approx(np.mean([1, 4, 9]))  # 1, 2, 3 frames after the last seen
    m2 = evaluate_predictor(ConstantVelocity, data, "m2")
    # only each sequence's frame 1 misses (by 1): 3 of its 10 predicted frames
    assert m2.kp_mse == pytest.approx(0.3) and m2.sequences == 3 and m2.skipped == 0


def test_augmented_batches_crop_and_shift_positions_only():
    kp = np.random.default_rng(1).normal(size=(5, 12, 3, 6)).astype(np.float32)
    norm = Normalisation(np.zeros(6), np.full(6, 2.0))
    x = torch.from_numpy(norm.apply(kp))
    valid = torch.ones(5, 12, dtype=torch.bool)
    opts = PredictorTrainOptions(kind="rnn", data="", out="", batch=7, crop=4, shift=0.5)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        batch, batch_valid = augmented_batch(x, valid, norm, opts, rng)
        assert batch.shape[0] == 7 and batch.shape[2] == 18 and 8 <= batch.shape[1] <= 12
        assert batch_valid.shape == batch.shape[:2]
        starts.add(12 - batch.shape[1])
        sets = norm.invert(batch.numpy())  # back in detector units: (7, T', 3, 6)
        # each sequence is one of the originals, cropped, moved by one offset per sequence
        diffs = [sets[i] - kp[j, 12 - sets.shape[1]:] for i in range(7) for j in range(5)
                 if np.allclose(sets[i][..., 2:], kp[j, 12 - sets.shape[1]:, :, 2:], atol=1e-5)]
        assert len(diffs) == 7
        for diff in diffs:
            assert np.allclose(diff[..., :2], diff[0, 0, :2], atol=1e-5)
            assert np.all(np.abs(diff[0, 0, :2]) <= 0.5 + 1e-5)
    assert starts == {0, 1, 2, 3, 4}
    plain = PredictorTrainOptions(kind="rnn", data="", out="", batch=3, crop=0, shift=0)
    batch, _ = augmented_batch(x, valid, norm, plain, rng)
    assert any(torch.equal(batch[0], x[j]) for j in range(5))


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--kind", "--data", "--out", "--steps", "--batch", "--lr", "--hidden",
                   "--latent", "--beta", "--kl-anneal", "--seed", "--threads", "--schedule"):
        assert option in text


@pytest.mark.parametrize("kind", ["vrnn", "rnn", "vae"])
def test_train_predictor_main_end_to_end(tmp_path, kind):
    write_npz(tmp_path / "kp.npz")
    run = tmp_path / "run"
    argv = ["--kind", kind, "--data", str(tmp_path / "kp.npz"), "--out", str(run), "--steps", "6",
            "--batch", "4", "--hidden", "8", "--latent", "2", "--beta", "0.5", "--kl-anneal", "3",
            "--val-every", "3", "--log-every", "2", "--val-samples", "2", "--threads", "1",
            "--no-progress"]
    assert train_predictor_main(argv) == 0
    assert {p.name for p in run.iterdir()} == {"predictor.pt", "last.pt", "metrics.jsonl",
                                               "summary.json"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["train", "val", "train", "train", "val", "final"]
    assert records[0]["beta"] == pytest.approx(0.5 * 2 / 3)  # annealed: step 2 of 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["validation"]["m1"]["sequences"] == 2
    assert set(summary["baselines"]) == {"hold-last", "constant-velocity"}
    assert ("validation_sampled_2" in summary) == (kind != "rnn")
    predictor = load_predictor(run / "predictor.pt", num_kp=2, model_id="tiny-fomm")
    assert predictor.name == kind
    checkpoint = torch.load(run / "predictor.pt", weights_only=False)
    meta = checkpoint["meta"]
    assert meta["command"].startswith(f"kpvid-train predictor --kind {kind}")
    assert meta["seed"] == 0 and meta["final_step"] == 6 and "loss" in meta["final_losses"]
    assert checkpoint["model_id"] == "tiny-fomm" and checkpoint["num_kp"] == 2


def test_train_predictor_main_rejects_bad_data(tmp_path, caplog):
    np.savez(tmp_path / "bad.npz", kp=np.zeros((3, 4, 6), np.float32))
    argv = ["--kind", "rnn", "--data", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "r"),
            "--no-progress"]
    with caplog.at_level(logging.ERROR):
        assert train_predictor_main(argv) == 2
    assert "(N, T, K, 6)" in caplog.text
