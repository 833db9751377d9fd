"""kpvid-eval predict: protocols, open-loop driving, scores, JSON, plots, FVD plumbing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kpvid.models.facemesh import facemesh_available
from kpvid.models.predictors import HoldLast, Predictor, rollout
from kpvid.synthetic import write_dataset
from kpvid.training import evaluate_predict, face_metrics
from kpvid.training.evaluate_predict import (
    FVD,
    FVD_UNAVAILABLE,
    PROTOCOLS,
    frechet_distance,
    parse_predictor,
    predict_main,
    summarize,
)


@pytest.fixture()
def data(tmp_path) -> Path:
    """test/: three 32-frame videos (enough for M1) and a 6-frame one (M2 only)."""
    out = tmp_path / "data"
    write_dataset("faces", out, videos=4, seed=3, size=32, frames=32, test_fraction=0.75,
                  progress=False)
    short = out / "test" / "faces_00009_short"
    short.mkdir()
    for frame in sorted((out / "test" / "faces_00000").iterdir())[:6]:
        shutil.copy(frame, short)
    return out


def test_protocol_masks():
    m1 = PROTOCOLS["m1"].observed(40)
    assert len(m1) == 32 and m1[:5].all() and not m1[5:].any()
    m2 = PROTOCOLS["m2"].observed(7)
    assert m2.tolist() == [True, False, True, False, True, False, True]
    bair = PROTOCOLS["bair"].observed(30)
    assert len(bair) == 30 and bair.sum() == 5 and bair[:5].all()
    assert (PROTOCOLS["m1"].min_frames, PROTOCOLS["m2"].min_frames) == (32, 2)
    assert (PROTOCOLS["m1"].inits, PROTOCOLS["m2"].inits) == (10, 5)


class Recorder(Predictor):
    """Logs calls; predicts the latest set it was given plus one."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.last: np.ndarray | None = None

    def reset(self) -> None:
        self.calls.append("reset")

    def observe(self, kp6: np.ndarray) -> None:
        self.calls.append("observe")
        self.last = kp6.copy()

    def predict(self) -> np.ndarray:
        self.calls.append("predict")
        self.last = self.last + 1
        return self.last

    def forecast(self) -> np.ndarray:
        return self.last + 1


def test_rollout_is_open_loop_in_frame_order():
    kp6 = np.arange(5 * 2 * 6, dtype=np.float32).reshape(5, 2, 6)
    predictor = Recorder()
    out = rollout(predictor, kp6, np.array([True, False, False, True, False]))
    assert predictor.calls == ["reset", "observe", "predict", "predict", "observe", "predict"]
    np.testing.assert_array_equal(out[[0, 3]], kp6[[0, 3]])
    np.testing.assert_array_equal(out[1], kp6[0] + 1)
    np.testing.assert_array_equal(out[2], kp6[0] + 2)  # its own output fed back
    np.testing.assert_array_equal(out[4], kp6[3] + 1)


def test_summarize_means_and_sample_std_over_runs():
    def run(offset: float) -> np.ndarray:  # frames 2 and 4 of two videos
        rows = np.array([[2, 1, 0, 0, 10, 0.5, 1], [4, 3, 0, 0, 20, 0.5, 2],
                         [2, 1, 0, 0, 10, 0.5, 1], [4, 5, 0, 0, 30, 0.5, 4]], dtype=float)
        rows[:, 1] += offset
        return rows

    one = summarize([run(0)])
    assert one["frame_mse"] == pytest.approx(2.5) and one["std"]["frame_mse"] == 0
    assert [f["frame"] for f in one["per_frame"]] == [2, 4]
    assert one["per_frame"][1]["frame_mse"] == pytest.approx(4)
    assert one["per_frame"][1]["psnr"] == pytest.approx(25)
    assert one["psnr_gain_frozen"] == pytest.approx(2)
    assert (one["inits"], one["frames"]) == (1, 4)
    two = summarize([run(0), run(2)])
    assert two["frame_mse"] == pytest.approx(3.5)
    assert two["std"]["frame_mse"] == pytest.approx(np.std([2.5, 4.5], ddof=1))
    assert two["inits"] == 2


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, a + [2, 0, 0]) == pytest.approx(4, rel=1e-6)


def test_parse_predictor():
    assert parse_predictor("hold-last").key == "hold_last"
    spec = parse_predictor("vrnn=a.pt,b.pt")
    assert (spec.key, spec.files) == ("vrnn", (Path("a.pt"), Path("b.pt")))
    for bad in ("vrnn", "vrnn=", "=a.pt"):
        with pytest.raises(Exception, match="vrnn|KIND"):
            parse_predictor(bad)


def test_predict_reconstruction_json_and_plots(tmp_path, tiny_checkpoint, data, monkeypatch):
    # learned predictors stand in as hold-last so that the init/spread plumbing runs
    monkeypatch.setattr(evaluate_predict, "load_learned", lambda *args: HoldLast())
    out = tmp_path / "results.json"
    code = predict_main(["--checkpoint", str(tiny_checkpoint), "--data", str(data), "--protocol",
                         "m1", "m2", "--predictors", "vrnn=a.pt,b.pt,c.pt", "constant-velocity",
                         "hold-last", "--inits", "2", "--json", str(out), "--plots",
                         str(tmp_path / "plots"), "--markdown", str(tmp_path / "tables.md"),
                         "--threads", "1", "--no-face-metrics", "--quiet"])
    assert code == 0
    tables = (tmp_path / "tables.md").read_text()
    assert "**M1, reconstruction** (3 videos)" in tables and "| constant_velocity | 1 |" in tables
    results = json.loads(out.read_text())
    assert set(results) == {"m1", "m2", "meta"}
    meta = results["meta"]
    assert meta["command"].startswith("kpvid-eval predict --checkpoint")
    assert meta["mode"] == "reconstruction" and meta["fvd"] == FVD_UNAVAILABLE
    assert meta["videos"] == {"m1": 3, "m2": 4}
    assert meta["skipped"] == {"unreadable": 0, "m1": 1, "m2": 0}
    for protocol, frames in (("m1", list(range(6, 33))), ("m2", list(range(2, 33, 2)))):
        entries = results[protocol]
        assert list(entries) == ["vrnn", "constant_velocity", "hold_last"]
        for entry in entries.values():
            assert {"frame_mse", "kp_mse", "kp_pos_mse", "psnr", "ssim", "psnr_gain_frozen",
                    "landmark_error", "landmark_missed", "mouth_correlation",
                    "mouth_correlation_undefined", "mouth_correlation_pooled", "std",
                    "per_frame", "inits"} <= set(entry)
            assert entry["landmark_error"] is None and entry["std"]["landmark_error"] is None
            assert [row["frame"] for row in entry["per_frame"]] == frames
            assert 0 <= entry["frame_mse"] < 1 and 0 < entry["ssim"] <= 1
        assert entries["vrnn"]["inits"] == 2 and entries["hold_last"]["inits"] == 1
        # identical runs: no spread, and the same scores as the built-in
        assert entries["vrnn"]["std"]["frame_mse"] == 0
        assert entries["vrnn"]["frame_mse"] == pytest.approx(entries["hold_last"]["frame_mse"])
        reference = meta["reference"][protocol]
        assert reference["frame_mse"] <= entries["hold_last"]["frame_mse"] + 1e-6
        assert reference["psnr_gain_frozen"] == pytest.approx(
            reference["psnr"] - (entries["hold_last"]["psnr"]
                                 - entries["hold_last"]["psnr_gain_frozen"]))

    assert results["m2"]["hold_last"]["frames"] == 3 * 16 + 3  # the 6-frame video: 3 predicted
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == sorted(f"{p}_reconstruction_{m}.png" for p in ("m1", "m2")
                           for m in ("kp_mse", "frame_mse", "psnr"))


@pytest.mark.skipif(not facemesh_available(), reason="MediaPipe FaceMesh is not installed")
def test_predict_face_metrics(tmp_path, tiny_checkpoint, data):
    out = tmp_path / "faces.json"
    assert predict_main(["--checkpoint", str(tiny_checkpoint), "--data", str(data), "--protocol",
                         "m2", "--max-videos", "1", "--predictors", "hold-last", "--json",
                         str(out), "--quiet"]) == 0
    results = json.loads(out.read_text())
    assert results["meta"]["face_metrics"].startswith("MediaPipe FaceMesh")
    for entry in (results["m2"]["hold_last"], results["meta"]["reference"]["m2"]):
        # every predicted frame scored or counted as missed; a lost face leaves no error
        assert 0 <= entry["landmark_missed"] <= entry["frames"] == 16
        assert (entry["landmark_error"] is None) == (entry["landmark_missed"] == 16)
        assert entry["mouth_correlation_undefined"] in (0, 1)
        assert set(entry["std"]) >= {"landmark_error", "mouth_correlation",
                                     "mouth_correlation_pooled"}


class MeanColour(torch.nn.Module):
    """NOT an I3D: per-channel mean and std of a clip, to exercise the --i3d path only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


def test_fvd_loads_an_exported_program(tmp_path):
    frames = torch.export.Dim("frames", min=2, max=64)
    program = torch.export.export(MeanColour(), (torch.zeros(1, 3, 4, 224, 224),),
                                  dynamic_shapes=({2: frames},))
    torch.export.save(program, tmp_path / "fake-i3d.pt2")
    video = torch.rand(6, 3, 32, 32)
    features = FVD(tmp_path / "fake-i3d.pt2").features(video)
    assert features.shape == (6,)
    assert features[:3] == pytest.approx((video.mean(dim=(0, 2, 3)) * 2 - 1).numpy(), abs=0.02)
    with pytest.raises(ValueError, match="not found"):
        FVD(tmp_path / "missing.pt")
    (tmp_path / "broken.pt2").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot load"):
        FVD(tmp_path / "broken.pt2")


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_predict_transfer_with_fvd_plumbing(tmp_path, tiny_checkpoint, data):
    i3d = tmp_path / "fake-i3d.pt"
    torch.jit.script(MeanColour()).save(str(i3d))
    out = tmp_path / "transfer.json"
    assert predict_main(["--checkpoint", str(tiny_checkpoint), "--data", str(data), "--protocol",
                         "m2", "--mode", "transfer", "--max-videos", "3", "--i3d", str(i3d),
                         "--json", str(out), "--no-face-metrics", "--quiet"]) == 0
    results = json.loads(out.read_text())
    meta = results["meta"]
    assert meta["transfer"]["adapt_movement_scale"] is True and "reference" not in meta
    assert set(meta["fvd"]["m2"]) == {"constant_velocity", "hold_last"}
    assert all(np.isfinite(v["fvd"]) for v in meta["fvd"]["m2"].values())
    assert 0 <= results["m2"]["hold_last"]["frame_mse"] < 1


def test_predict_with_learned_predictor_files(tmp_path, tiny_checkpoint, data):
    learned = pytest.importorskip("kpvid.models.learned_predictor")
    norm = learned.Normalisation(np.zeros(6), np.ones(6))
    files = []
    for seed, num_kp in ((0, 4), (1, 4), (2, 5)):
        torch.manual_seed(seed)
        network = learned.build_network("rnn", input_dim=num_kp * 6, hidden=8)
        for parameter in network.parameters():  # untrained weights that do move the keypoints
            torch.nn.init.normal_(parameter, std=0.3)
        files.append(learned.save_predictor(tmp_path / f"rnn{seed}.pt", network, norm,
                                            model_id="tiny-model"))
    out = tmp_path / "learned.json"
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(data), "--protocol", "m2",
            "--max-videos", "2", "--no-face-metrics", "--quiet", "--json", str(out),
            "--predictors"]
    assert predict_main([*args, f"rnn={files[0]},{files[1]}", "hold-last"]) == 0
    rnn = json.loads(out.read_text())["m2"]["rnn"]
    assert rnn["inits"] == 2 and rnn["std"]["kp_mse"] > 0
    assert predict_main([*args, f"rnn={files[2]}"]) == 2  # trained on 5 keypoints, model has 4
    assert predict_main([*args, f"vrnn={files[0]}"]) == 2  # an rnn file under the vrnn label


def test_predict_bad_input(tmp_path, tiny_checkpoint, data, capsys, monkeypatch):
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copytree(data / "test" / "faces_00000", lone / "faces_00000")
    assert predict_main(["--checkpoint", str(tiny_checkpoint), "--data", str(lone), "--mode",
                         "transfer", "--quiet"]) == 2
    assert predict_main(["--checkpoint", str(tiny_checkpoint), "--data", str(lone), "--protocol",
                         "bair", "--no-face-metrics", "--quiet"]) == 0  # 32 frames: bair cuts 30
    short = tmp_path / "short"
    short.mkdir()
    shutil.copytree(data / "test" / "faces_00009_short", short / "v")
    assert predict_main(["--checkpoint", str(tiny_checkpoint), "--data", str(short), "--protocol",
                         "m1", "--quiet"]) == 2
    with pytest.raises(SystemExit):
        predict_main(["--data", str(data), "--predictors", "vrnn"])
    with monkeypatch.context() as patch:
        patch.setattr(face_metrics, "facemesh_available", lambda: False)
        assert predict_main(["--checkpoint", str(tiny_checkpoint), "--data", str(data),
                             "--face-metrics", "--quiet"]) == 2
    with pytest.raises(SystemExit) as exc:
        predict_main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--protocol", "--mode", "--predictors", "--inits", "--samples", "--json",
                 "--plots", "--i3d", "--threads", "--max-videos", "--checkpoint",
                 "--face-metrics"):
        assert flag in text
