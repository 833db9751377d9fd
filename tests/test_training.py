"""Training losses, a few optimisation steps, the training command and reconstruction eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from kpvid.models import build_networks, load_checkpoint
from kpvid.models.facemesh import facemesh_available
from kpvid.synthetic import generate_video
from kpvid.training import face_metrics, metrics
from kpvid.training.cli import eval_main, train_main
from kpvid.training.losses import Transform, Vgg19, equivariance_losses
from kpvid.training.train_fomm import GeneratorFullModel, TrainOptions, train


def _write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_identity_transform_gives_zero_equivariance_loss(tiny_config):
    kp_detector, _ = build_networks(tiny_config)
    kp_detector.eval()
    frames = torch.rand(2, 3, 32, 32)
    identity = Transform(2, sigma_affine=0.0, sigma_tps=0.0, points_tps=5)
    assert torch.allclose(identity.transform_frame(frames), frames, atol=1e-5)
    value, jacobian = equivariance_losses(kp_detector(frames),
                                          kp_detector(identity.transform_frame(frames)), identity)
    assert value.item() < 1e-5 and jacobian.item() < 1e-5


def test_transform_jacobian_of_an_affine_warp_is_its_matrix():
    torch.manual_seed(0)
    warp = Transform(3, sigma_affine=0.1)
    points = (torch.rand(3, 5, 2) * 2 - 1).requires_grad_(True)
    expected = warp.theta[:, None, :, :2].expand(3, 5, 2, 2)
    assert torch.allclose(warp.jacobian(points), expected, atol=1e-6)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_config):
    torch.manual_seed(0)
    kp_detector, generator = build_networks(tiny_config)
    full = GeneratorFullModel(kp_detector, generator, None, tiny_config["train_params"])
    params = list(kp_detector.parameters()) + list(generator.parameters())
    optimizer = torch.optim.Adam(params, lr=2e-3, betas=(0.5, 0.999))
    clips = [torch.from_numpy(generate_video("faces", seed, size=32, frames=8))
             for seed in range(4)]
    video = torch.stack(clips).permute(0, 1, 4, 2, 3).float() / 255  # B, T, C, H, W
    source, driving = video[:, 0], video[:, 6]
    first = None
    for _ in range(25):
        losses, _ = full(source, driving)
        loss = losses["reconstruction"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert set(losses) == {"reconstruction", "ssim", "equivariance_value",
                           "equivariance_jacobian"}
    assert loss.item() < 0.5 * first


def test_perceptual_loss_with_a_user_supplied_vgg19_file(tmp_path, tiny_config):
    torch.manual_seed(0)
    channels = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                512, 512, 512, 512]
    state, index, in_channels = {}, 0, 3
    for c in channels:  # torchvision's vgg19 ``features.N`` layout: conv, relu (, pool)
        if c == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(c, in_channels, 3, 3) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(c)
        in_channels, index = c, index + 2
    state["classifier.0.weight"] = torch.zeros(1)  # ignored: only features are read
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    vgg = Vgg19(path)
    assert [f.shape[1] for f in vgg(torch.rand(1, 3, 32, 32))] == [64, 128, 256, 512, 512]
    kp_detector, generator = build_networks(tiny_config)
    full = GeneratorFullModel(kp_detector, generator, None, tiny_config["train_params"], vgg)
    frames = torch.rand(2, 3, 32, 32)
    losses, _ = full(frames, frames.flip(3))
    assert "perceptual" in losses and "reconstruction" not in losses
    losses["perceptual"].backward()
    assert generator.final.weight.grad.abs().sum() > 0


def test_train_writes_official_checkpoints_logs_and_resumes(tmp_path, tiny_config, tiny_data):
    tiny_config["train_params"]["loss_weights"]["generator_gan"] = 1  # exercise the GAN path
    tiny_config["train_params"]["num_epochs"] = 3
    config = _write_config(tiny_config, tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    opts = TrainOptions(config=str(config), data=[str(tiny_data)], out=str(run), max_steps=2,
                        image_every=1, log_every=1, progress=False)
    checkpoint = train(opts)
    state = torch.load(checkpoint, weights_only=False)
    assert {"kp_detector", "generator", "discriminator", "optimizer_generator",
            "optimizer_kp_detector", "optimizer_discriminator", "epoch"} <= set(state)
    assert state["step"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"reconstruction", "gen_gan", "feature_matching", "disc_gan"} <= set(records[0])
    assert sorted(p.name for p in (run / "images").iterdir()) == ["step_0000001.png",
                                                                  "step_0000002.png"]
    kp_detector, generator = load_checkpoint(checkpoint)  # the config travels inside
    assert not generator.training

    opts.resume, opts.max_steps = str(checkpoint), 4
    resumed = torch.load(train(opts), weights_only=False)
    assert resumed["step"] == 4 and resumed["epoch"] > state["epoch"]


def test_distributed_training_under_torchrun(tmp_path, tiny_config, tiny_data):
    """Two CPU processes (gloo) through torchrun, as several GPUs would run."""
    tiny_config["train_params"].update(batch_size=2, num_epochs=2)
    config = _write_config(tiny_config, tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--no-python",
         "kpvid-train", "fomm", "--config", str(config), "--data", str(tiny_data),
         "--out", str(run), "--threads", "1", "--no-progress", "--image-every", "0"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # 4 training videos x 2 repeats / (batch 2 x 2 processes) = 2 steps an epoch, 2 epochs
    state = torch.load(run / "checkpoints" / "latest.pth.tar", weights_only=False)
    assert state["step"] == 4 and state["epoch"] == 1


def test_train_command_reports_bad_config(tmp_path, tiny_data, tiny_config, caplog):
    del tiny_config["train_params"]
    config = _write_config(tiny_config, tmp_path / "bad.yaml")
    code = train_main(["fomm", "--config", str(config), "--data", str(tiny_data),
                       "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "has no train_params" in caplog.text


def test_eval_reconstruct_writes_json(tmp_path, tiny_config, tiny_data, capsys, caplog):
    config = _write_config(tiny_config, tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    checkpoint = train(TrainOptions(config=str(config), data=[str(tiny_data)], out=str(run),
                                    max_steps=1, image_every=0, progress=False))
    out_json = tmp_path / "scores.json"
    code = eval_main(["reconstruct", "--checkpoint", str(checkpoint), "--data", str(tiny_data),
                      "--json", str(out_json), "--save-videos", str(tmp_path / "videos"),
                      "--save-strips", str(tmp_path / "strips"), "--quiet"])
    assert code == 0
    report = json.loads(out_json.read_text())
    assert set(report["mean"]) == {"l1", "psnr", "ssim", "akd", "kp_bytes_per_frame",
                                   "psnr_gain_frozen", "landmark_error", "landmark_missed",
                                   "mouth_correlation", "mouth_correlation_undefined",
                                   "mouth_correlation_pooled", "kp_spread", "kp_motion",
                                   "kp_on_face", "truth_landmark_error",
                                   "truth_mouth_correlation", "truth_mouth_correlation_pooled",
                                   "truth_input_landmark_error", "truth_input_mouth_correlation"}
    # cartoon clips carry no renderer landmark tracks: nothing to score against
    assert report["mean"]["truth_landmark_error"] is None
    assert report["mean"]["kp_bytes_per_frame"] is None and report["codec"] == "none"
    assert isinstance(report["mean"]["psnr_gain_frozen"], float)
    video = report["videos"][0]
    assert {"psnr_gain_frozen", "landmark_error", "landmark_missed",
            "mouth_correlation"} <= set(video)
    if facemesh_available():  # FaceMesh ran: every frame scored or counted as missed
        assert 0 <= video["landmark_missed"] <= 8
        assert report["mean"]["landmark_missed"] == sum(v["landmark_missed"]
                                                        for v in report["videos"])
    assert report["schedule"] == {"observe": 1, "predict": 0}
    assert report["scored_size"] == 32
    assert len(report["videos"]) == 2 and report["videos"][0]["frames"] == 8
    strips = sorted((tmp_path / "strips").glob("*.png"))
    assert len(strips) == 2 and cv2.imread(str(strips[0])).shape[0] == 3 * 32  # three rows
    assert 0 < report["mean"]["ssim"] <= 1 and report["mean"]["psnr"] > 0
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    assert "mean" in capsys.readouterr().out
    # as a stream plays it: every other frame sent in the delta codec, the rest predicted
    code = eval_main(["reconstruct", "--checkpoint", str(checkpoint), "--data", str(tiny_data),
                      "--json", str(out_json), "--observe", "1", "--predict", "1",
                      "--codec", "delta", "--predictor", "constant-velocity",
                      "--no-face-metrics", "--quiet"])
    assert code == 0
    streamed = json.loads(out_json.read_text())
    assert streamed["mean"]["landmark_error"] is None
    assert streamed["videos"][0]["landmark_missed"] is None
    assert streamed["schedule"] == {"observe": 1, "predict": 1}
    assert (streamed["codec"], streamed["predictor"]) == ("delta", "constant-velocity")
    per_frame = [v["kp_bytes_per_frame"] for v in streamed["videos"]]
    assert streamed["mean"]["kp_bytes_per_frame"] == pytest.approx(np.mean(per_frame))
    assert 4 < streamed["mean"]["kp_bytes_per_frame"] < 30  # 4 of 8 frames sent, a few bytes
    assert streamed["mean"]["psnr"] != report["mean"]["psnr"]
    # scored at twice the model's size: the output upscaled, the strips at that size
    code = eval_main(["reconstruct", "--checkpoint", str(checkpoint), "--data", str(tiny_data),
                      "--json", str(out_json), "--output-size", "64", "--no-face-metrics",
                      "--save-strips", str(tmp_path / "strips64"), "--quiet"])
    assert code == 0
    upscaled = json.loads(out_json.read_text())
    assert upscaled["scored_size"] == 64
    assert upscaled["mean"]["akd"] == pytest.approx(report["mean"]["akd"])  # at the model's size
    assert upscaled["mean"]["psnr"] != report["mean"]["psnr"]
    strip = cv2.imread(str(sorted((tmp_path / "strips64").glob("*.png"))[0]))
    assert strip.shape[0] == 3 * 64
    # a learned predictor is the one shipped for this checkpoint's model: none for this one
    code = eval_main(["reconstruct", "--checkpoint", str(checkpoint), "--data", str(tiny_data),
                      "--json", str(out_json), "--predict", "1", "--predictor", "vrnn",
                      "--no-face-metrics", "--quiet"])
    assert code == 2 and "no vrnn predictor is shipped for model 'latest'" in caplog.text


def test_export_and_speed(tmp_path, tiny_config, tiny_data, capsys):
    config = _write_config(tiny_config, tmp_path / "tiny.yaml")
    checkpoint = train(TrainOptions(config=str(config), data=[str(tiny_data)],
                                    out=str(tmp_path / "run"), max_steps=1, image_every=0,
                                    progress=False))
    shipped = tmp_path / "shipped.pth.tar"
    assert train_main(["export", "--checkpoint", str(checkpoint), "--out", str(shipped)]) == 0
    assert set(torch.load(shipped, weights_only=False)) == {"kp_detector", "generator", "config",
                                                           "epoch", "step"}
    assert shipped.stat().st_size < checkpoint.stat().st_size
    speed_json = tmp_path / "speed.json"
    assert eval_main(["speed", "--checkpoint", str(shipped), "--frames", "3",
                      "--json", str(speed_json)]) == 0
    figures = json.loads(speed_json.read_text())
    assert figures["frame_size"] == 32 and figures["frames"] == 3
    assert figures["kp_detector_ms"] > 0 and figures["synthesis_ms"] > 0
    assert figures["fps"] == pytest.approx(1000 / figures["total_ms"])
    assert "frames per second" in capsys.readouterr().out


def test_eval_face_metrics_asked_for_without_facemesh(tmp_path, tiny_data, monkeypatch, caplog):
    monkeypatch.setattr(face_metrics, "facemesh_available", lambda: False)
    code = eval_main(["reconstruct", "--checkpoint", str(tmp_path / "none.pth.tar"),
                      "--data", str(tiny_data), "--json", str(tmp_path / "x.json"),
                      "--face-metrics"])
    assert code == 2
    assert "--face-metrics: MediaPipe FaceMesh is not installed" in caplog.text


def test_eval_reports_missing_checkpoint(tmp_path, tiny_data, caplog):
    code = eval_main(["reconstruct", "--checkpoint", str(tmp_path / "none.pth.tar"),
                      "--data", str(tiny_data), "--json", str(tmp_path / "x.json")])
    assert code == 2
    assert "checkpoint not found" in caplog.text


def test_metrics():
    ramp = torch.linspace(0.2, 0.8, 32)
    a = (ramp.view(1, 1, 1, 32) * ramp.view(1, 1, 32, 1)).expand(2, 3, 32, 32)
    noisy = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    assert torch.allclose(metrics.ssim(a, a), torch.ones(2), atol=1e-5)
    assert (metrics.ssim(noisy, a) < 0.5).all()
    assert (metrics.psnr(a, a) > 90).all()
    assert torch.allclose(metrics.psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)),
                          torch.tensor([20.0]), atol=1e-4)
    kp = torch.zeros(1, 2, 2)
    assert metrics.keypoint_distance(kp, kp + 2 / 63, 64).item() == pytest.approx(2**0.5)
