"""The FOMM networks: shapes, ranges, initialisation, official names and checkpoint loading."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from kpvid.models import (
    CheckpointError,
    ConfigError,
    KPDetector,
    OcclusionAwareGenerator,
    build_networks,
    load_checkpoint,
    load_config,
    normalize_kp,
)
from kpvid.models.checkpoint import load_state_strict, recognise_config
from kpvid.models.relative_motion import convex_hull_area

OFFICIAL_NAMES = Path(__file__).parent / "data" / "fomm-vox256-state-dict.json"


def test_kp_detector_outputs_keypoints_in_range_with_identity_jacobians(tiny_config):
    kp_detector, _ = build_networks(tiny_config)
    out = kp_detector.eval()(torch.rand(3, 3, 32, 32))
    assert set(out) == {"value", "jacobian"}
    assert out["value"].shape == (3, 4, 2)
    assert out["jacobian"].shape == (3, 4, 2, 2)
    assert out["value"].abs().max() <= 1
    # jacobian head starts at weight 0, bias [1, 0, 0, 1]: identity for any input
    assert torch.allclose(out["jacobian"], torch.eye(2).expand(3, 4, 2, 2), atol=1e-6)


def test_generator_prediction_shape_range_and_extras(tiny_config):
    kp_detector, generator = build_networks(tiny_config)
    kp_detector.eval()
    generator.eval()
    source, driving = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = generator(source, kp_driving=kp_detector(driving), kp_source=kp_detector(source))
    assert out["prediction"].shape == (2, 3, 32, 32)
    assert out["prediction"].min() >= 0 and out["prediction"].max() <= 1
    assert out["mask"].shape == (2, 5, 16, 16)
    assert torch.allclose(out["mask"].sum(1), torch.ones(2, 16, 16), atol=1e-5)
    assert out["occlusion_map"].shape == (2, 1, 16, 16)
    assert out["deformed"].shape == (2, 3, 32, 32)


def test_skip_connections_bring_every_scale_past_the_bottleneck(tiny_config):
    params = tiny_config["model_params"]["generator_params"]
    params.update(num_down_blocks=2, skip_connections=True)
    kp_detector, generator = (network.eval() for network in build_networks(tiny_config))
    source = torch.rand(1, 3, 32, 32)
    features = generator.encode_source(source)
    assert [tuple(f.shape[1:]) for f in features] == [(4, 32, 32), (8, 16, 16), (16, 8, 8)]
    with torch.no_grad():
        kp = kp_detector(source)
        warped = generator.warp_features(features, generator.dense_motion_network(
            source_image=source, kp_driving=kp, kp_source=kp))
        frame = generator.decode_features(warped)
        # the full-size features reach the frame without going through the bottleneck
        moved = generator.decode_features((warped[0] + 1, *warped[1:]))
    assert frame.shape == (1, 3, 32, 32)
    assert (moved - frame).abs().max() > 1e-3
    params["skip_connections"] = False
    _, plain = build_networks(tiny_config)
    assert [tuple(f.shape[1:]) for f in plain.eval().encode_source(source)] == [(16, 8, 8)]


def test_identity_motion_gives_identity_deformation(tiny_config):
    _, generator = build_networks(tiny_config)
    dense = generator.dense_motion_network.eval()
    kp = {"value": torch.rand(1, 4, 2) * 2 - 1, "jacobian": torch.eye(2).expand(1, 4, 2, 2)}
    source = torch.rand(1, 3, 32, 32)
    sparse = dense.create_sparse_motions(dense.down(source), kp, kp)
    # every sparse motion, and so any mix of them, is the identity grid when kp_d == kp_s
    assert torch.allclose(sparse, sparse[:, :1].expand_as(sparse), atol=1e-6)


def test_vox256_module_tree_matches_official_names_and_shapes():
    official = json.loads(OFFICIAL_NAMES.read_text())
    kp_detector, generator = build_networks(load_config("vox-256"))
    for name, module in (("kp_detector", kp_detector), ("generator", generator)):
        ours = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert ours == official[name], name
        # a state dict with exactly the official names and shapes loads strictly
        fake = {k: torch.zeros(shape, dtype=module.state_dict()[k].dtype)
                for k, shape in official[name].items()}
        load_state_strict(module, fake, name)
    assert len(official["kp_detector"]) == 75 and len(official["generator"]) == 196


def _official_layout(config: dict) -> dict:
    kp_detector, generator = build_networks(config)
    return {"kp_detector": kp_detector.state_dict(), "generator": generator.state_dict(),
            "discriminator": {}, "optimizer_generator": {}, "optimizer_kp_detector": {},
            "optimizer_discriminator": {}, "epoch": 3}


def test_load_official_layout_checkpoint_with_config(tmp_path, tiny_config):
    state = _official_layout(tiny_config)
    path = tmp_path / "tiny.pth.tar"
    torch.save(state, path)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config))
    kp_detector, generator = load_checkpoint(path, config_path)
    assert isinstance(kp_detector, KPDetector) and isinstance(generator, OcclusionAwareGenerator)
    assert not kp_detector.training and not generator.training
    for key, value in state["generator"].items():
        assert torch.equal(generator.state_dict()[key], value)
    # the config beside the checkpoint is found on its own
    kp_detector2, _ = load_checkpoint(path)
    assert torch.equal(kp_detector2.kp.weight, kp_detector.kp.weight)


def test_mismatched_checkpoint_lists_missing_unexpected_and_misshaped(tmp_path, tiny_config):
    state = _official_layout(tiny_config)
    del state["generator"]["final.bias"]
    state["generator"]["extra.weight"] = torch.zeros(1)
    state["generator"]["final.weight"] = torch.zeros(3, 5, 7, 7)
    path = tmp_path / "bad.pth.tar"
    torch.save(state, path)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, config_path)
    message = str(err.value)
    assert "missing keys (1): final.bias" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "final.weight: checkpoint (3, 5, 7, 7) != model (3, 4, 7, 7)" in message


def test_official_vox256_weights_are_recognised_without_a_config(tmp_path, tiny_config):
    official = json.loads(OFFICIAL_NAMES.read_text())
    # the official release holds state dicts only; shapes are all recognition looks at
    state = {name: {k: torch.empty(shape, device="meta") for k, shape in keys.items()}
             for name, keys in official.items() if name != "about"}
    config = recognise_config(state, "vox-cpk.pth.tar")
    assert config == load_config("vox-256")
    with pytest.raises(CheckpointError, match="fit none of the official configs"):
        recognise_config(_official_layout(tiny_config), "tiny.pth.tar")
    path = tmp_path / "tiny.pth.tar"
    torch.save(_official_layout(tiny_config), path)
    with pytest.raises(CheckpointError, match="carries no config"):
        load_checkpoint(path)


def test_unreadable_or_foreign_checkpoints_raise_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth.tar", "vox-256")
    garbage = tmp_path / "garbage.pth.tar"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(garbage, "vox-256")
    foreign = tmp_path / "foreign.pth.tar"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="'kp_detector' and 'generator'"):
        load_checkpoint(foreign, "vox-256")


def test_config_errors_name_the_key(tmp_path):
    base = load_config("vox-256")
    unknown = copy.deepcopy(base)
    unknown["model_params"]["generator_params"]["num_bottlenek_blocks"] = 3
    path = tmp_path / "unknown.yaml"
    path.write_text(yaml.safe_dump(unknown))
    with pytest.raises(ConfigError, match="unknown config key "
                                          "'model_params.generator_params.num_bottlenek_blocks'"):
        load_config(path)
    missing = copy.deepcopy(base)
    del missing["model_params"]["generator_params"]["dense_motion_params"]["scale_factor"]
    path.write_text(yaml.safe_dump(missing))
    with pytest.raises(ConfigError, match="missing config key 'model_params.generator_params."
                                          "dense_motion_params.scale_factor'"):
        load_config(path)
    path.write_text("model_params: [1, 2")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path)


def test_shipped_configs_are_valid():
    for name in ("vox-256", "kpvid-faces-64"):
        config = load_config(name)
        build_networks(config)


def test_relative_motion_moves_source_by_driving_delta():
    kp_source = {"value": torch.tensor([[[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]]),
                 "jacobian": torch.eye(2).expand(1, 3, 2, 2) * 2}
    kp_initial = {"value": torch.tensor([[[0.0, 0.0], [0.25, 0.0], [0.0, 0.25]]]),
                  "jacobian": torch.eye(2).expand(1, 3, 2, 2)}
    kp_driving = {"value": kp_initial["value"] + 0.1,
                  "jacobian": torch.eye(2).expand(1, 3, 2, 2) * 3}
    same = normalize_kp(kp_source, kp_initial, kp_initial, use_relative_movement=True,
                        use_relative_jacobian=True)
    assert torch.allclose(same["value"], kp_source["value"])
    assert torch.allclose(same["jacobian"], kp_source["jacobian"])
    moved = normalize_kp(kp_source, kp_driving, kp_initial, use_relative_movement=True,
                         use_relative_jacobian=True)
    assert torch.allclose(moved["value"], kp_source["value"] + 0.1)
    assert torch.allclose(moved["jacobian"], torch.eye(2).expand(1, 3, 2, 2) * 6)
    # the source hull is 4x the driving one: motion is scaled by sqrt(4) = 2
    scaled = normalize_kp(kp_source, kp_driving, kp_initial, adapt_movement_scale=True,
                          use_relative_movement=True)
    assert torch.allclose(scaled["value"], kp_source["value"] + 0.2)
    absolute = normalize_kp(kp_source, kp_driving, kp_initial)
    assert torch.equal(absolute["value"], kp_driving["value"])


def test_convex_hull_area():
    square = [[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]]
    assert convex_hull_area(square) == pytest.approx(1.0)
    assert convex_hull_area([[0, 0], [1, 1]]) == 0.0


def test_outputs_match_the_official_implementation():
    """``official-fomm-tiny.pt`` holds random weights, inputs and the outputs the official
    first-order-model modules computed from them (eval mode); ours must agree to 1e-4."""
    fixture = torch.load(Path(__file__).parent / "data" / "official-fomm-tiny.pt",
                         weights_only=False)
    kp_detector, generator = build_networks(fixture["config"])
    load_state_strict(kp_detector, fixture["kp_detector"], "kp_detector")
    load_state_strict(generator, fixture["generator"], "generator")
    kp_detector.eval()
    generator.eval()
    with torch.no_grad():
        kp_source = kp_detector(fixture["source"])
        kp_driving = kp_detector(fixture["driving"])
        out = generator(fixture["source"], kp_driving=kp_driving, kp_source=kp_source)
    for key in ("value", "jacobian"):
        torch.testing.assert_close(kp_source[key], fixture["kp_source"][key], atol=1e-4, rtol=0)
        torch.testing.assert_close(kp_driving[key], fixture["kp_driving"][key], atol=1e-4, rtol=0)
    for key, expected in fixture["generated"].items():
        torch.testing.assert_close(out[key], expected, atol=1e-4, rtol=0)
