"""Growing a model for larger frames from a smaller one, frozen modules and mid-epoch resumes."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from kpvid.models import CheckpointError, build_networks
from kpvid.training.grow import grow_into
from kpvid.training.train_fomm import TrainOptions, train


def grown_config(small: dict) -> dict:
    """``small`` with one more down and up block around the same core, half as wide outside
    it, and its detector and dense motion at half the scale (so they see the frame size they
    had on frames twice as large)."""
    config = copy.deepcopy(small)
    model = config["model_params"]
    generator = model["generator_params"]
    generator["block_expansion"] //= 2
    generator["num_down_blocks"] += 1
    model["kp_detector_params"]["scale_factor"] /= 2
    generator["dense_motion_params"]["scale_factor"] /= 2
    return config


def small_checkpoint(config: dict) -> dict:
    torch.manual_seed(1)
    kp_detector, generator = build_networks(config)
    return {"kp_detector": kp_detector.state_dict(), "generator": generator.state_dict()}


def test_grow_carries_the_detector_dense_motion_and_core(tiny_config):
    small = small_checkpoint(tiny_config)
    kp_detector, generator = build_networks(grown_config(tiny_config))
    fresh_first = generator.first.conv.weight.clone()
    grown = grow_into(kp_detector, generator, small)

    for name, value in small["kp_detector"].items():
        if name != "down.weight":  # each model's own blur for its own scale
            assert torch.equal(kp_detector.state_dict()[name], value), name
    state = generator.state_dict()
    assert torch.equal(state["down_blocks.1.conv.weight"],
                       small["generator"]["down_blocks.0.conv.weight"])
    assert torch.equal(state["up_blocks.0.conv.weight"],
                       small["generator"]["up_blocks.0.conv.weight"])
    assert torch.equal(state["bottleneck.r0.conv1.weight"],
                       small["generator"]["bottleneck.r0.conv1.weight"])
    assert torch.equal(state["dense_motion_network.hourglass.encoder.down_blocks.0.conv.weight"],
                       small["generator"]["dense_motion_network.hourglass.encoder.down_blocks.0."
                                          "conv.weight"])
    assert torch.equal(generator.first.conv.weight, fresh_first)  # new: reads full-size pixels
    assert "generator.down_blocks.0.conv.weight" in grown.new
    assert "generator.final.weight" in grown.new
    assert "generator.bottleneck.r0.conv1.weight" in grown.carried
    assert not set(grown.new) & set(grown.carried)


def test_a_small_model_that_does_not_fit_is_refused_naming_the_tensor(tiny_config):
    wider = copy.deepcopy(tiny_config)
    wider["model_params"]["generator_params"]["max_features"] = 32
    wider["model_params"]["generator_params"]["block_expansion"] = 8
    kp_detector, generator = build_networks(grown_config(tiny_config))
    with pytest.raises(CheckpointError, match=r"generator\.bottleneck\.r0\.conv1\.weight"):
        grow_into(kp_detector, generator, small_checkpoint(wider))


def test_grown_training_keeps_frozen_modules_and_warms_up_new_blocks(tmp_path, tiny_config,
                                                                      tiny_data):
    small = tmp_path / "small.pth.tar"
    torch.save(small_checkpoint(tiny_config), small)
    config = grown_config(tiny_config)
    train_params = config["train_params"]
    train_params["frozen"] = ["kp_detector", "generator.dense_motion_network"]
    train_params["grow_warmup_steps"] = 1
    path = tmp_path / "grown.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    opts = TrainOptions(config=str(path), data=[str(tiny_data)], out=str(run), grow=str(small),
                        max_steps=1, image_every=0, progress=False)
    after_warmup_step = torch.load(train(opts), weights_only=False)
    start = torch.load(small, weights_only=False)

    def same(state: dict, name: str, small_name: str | None = None) -> bool:
        return torch.equal(state["generator"][name], start["generator"][small_name or name])

    # step 1 is the warm-up: only the new blocks moved; the frozen modules never move (nor
    # do their batch-norm statistics)
    assert same(after_warmup_step, "bottleneck.r0.conv1.weight")
    assert same(after_warmup_step, "bottleneck.r0.norm1.running_mean")
    assert not torch.equal(after_warmup_step["generator"]["first.conv.weight"],
                           build_networks(config)[1].first.conv.weight)
    opts.grow, opts.resume, opts.max_steps = None, str(run / "checkpoints/latest.pth.tar"), 2
    trained = torch.load(train(opts), weights_only=False)
    assert not same(trained, "bottleneck.r0.conv1.weight")  # warm-up over: the core trains
    for name in start["kp_detector"]:
        if name != "down.weight":
            assert torch.equal(trained["kp_detector"][name], start["kp_detector"][name]), name
    for name in start["generator"]:
        if name.startswith("dense_motion_network.") and not name.endswith("down.weight"):
            assert same(trained, name), name
    assert trained["grown_carried"] == after_warmup_step["grown_carried"]
    assert "discriminator" not in trained  # no GAN in this config: nothing of it to keep


def test_a_checkpoint_from_mid_epoch_resumes_that_epoch(tmp_path, tiny_config, tiny_data):
    tiny_config["train_params"]["num_epochs"] = 2
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    # 4 training videos x 2 repeats / batch 4: 2 steps an epoch; save after every step
    opts = TrainOptions(config=str(path), data=[str(tiny_data)], out=str(tmp_path / "run"),
                        max_steps=1, image_every=0, save_every_s=0, progress=False)
    mid = torch.load(train(opts), weights_only=False)
    assert (mid["step"], mid["epoch"]) == (1, -1)  # no epoch finished yet
    opts.resume, opts.max_steps = str(tmp_path / "run/checkpoints/latest.pth.tar"), None
    done = torch.load(train(opts), weights_only=False)
    assert (done["step"], done["epoch"]) == (4, 1)  # epoch 0 finished at step 2, epoch 1 at 4
