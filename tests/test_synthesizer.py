"""Synthesizer: source-only work once, frames equal to the plain per-frame generator call."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kpvid.models import (
    SHIPPED_CHECKPOINT,
    Synthesizer,
    build_networks,
    load_checkpoint,
    optimize_for_inference,
)
from kpvid.models.blocks import UpBlock2d
from kpvid.models.fast_conv import FastConv2d, is_fast_convertible
from kpvid.models.synthesizer import HALF_TOLERANCE, TransposedUpBlock2d, half_precision_error
from kpvid.receiver.cli import choose_half

TOLERANCE = 1e-4


def randomize_batch_norms(network: nn.Module, seed: int) -> None:
    """Untrained batch norms are identities; give them statistics worth folding."""
    generator = torch.Generator().manual_seed(seed)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


def tiny_networks(config: dict) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    kp_detector, generator = build_networks(config)
    randomize_batch_norms(generator, seed=1)
    return kp_detector.eval(), generator.eval()


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """n smooth RGB images (n x 3 x size x size in [0, 1]) whose keypoints differ."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def plain_frames(kp_detector, generator, sources: torch.Tensor, drivers: torch.Tensor
                 ) -> torch.Tensor:
    """generator(source, kp_driving, kp_source) one frame at a time, source i with driver i."""
    frames = []
    with torch.no_grad():
        for source, driver in zip(sources, drivers):
            kp_source, kp_driving = kp_detector(source[None]), kp_detector(driver[None])
            frames.append(generator(source[None], kp_driving, kp_source)["prediction"])
    return torch.cat(frames)


def driving_keypoints(kp_detector, drivers: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return kp_detector(drivers)


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("skip_connections", [False, True])
def test_render_many_matches_the_plain_generator(tiny_config, optimize, skip_connections):
    tiny_config["model_params"]["generator_params"]["skip_connections"] = skip_connections
    kp_detector, generator = tiny_networks(tiny_config)
    sources, drivers = smooth_images(3, 32, seed=2), smooth_images(3, 32, seed=3)
    expected = plain_frames(kp_detector, generator, sources, drivers)
    synthesizer = Synthesizer(kp_detector, generator, optimize=optimize)
    prepared = [synthesizer.prepare(source[None]) for source in sources]
    frames = synthesizer.render_many(prepared, driving_keypoints(kp_detector, drivers))
    assert frames.shape == (3, 3, 32, 32)
    assert (frames - expected).abs().max() < TOLERANCE
    # the same source in every row, and a batch of one, give the same frames
    again = synthesizer.render_many([prepared[1]] * 3, driving_keypoints(kp_detector, drivers))
    single = synthesizer.render_many([prepared[1]], driving_keypoints(kp_detector, drivers[1:2]))
    assert (again[1] - frames[1]).abs().max() < TOLERANCE
    assert (single[0] - frames[1]).abs().max() < TOLERANCE


def test_render_uses_the_current_source(tiny_config):
    kp_detector, generator = tiny_networks(tiny_config)
    source, drivers = smooth_images(1, 32, seed=4), smooth_images(4, 32, seed=5)
    synthesizer = Synthesizer(kp_detector, generator)
    with pytest.raises(RuntimeError, match="set_source"):
        synthesizer.render(driving_keypoints(kp_detector, drivers))
    prepared = synthesizer.set_source(source)
    assert prepared.num_kp == tiny_config["model_params"]["common_params"]["num_kp"]
    frames = synthesizer.render(driving_keypoints(kp_detector, drivers))
    expected = plain_frames(kp_detector, generator, source.expand(4, -1, -1, -1), drivers)
    assert (frames - expected).abs().max() < TOLERANCE
    with pytest.raises(ValueError, match="2 sources for 4"):
        synthesizer.render_many([prepared] * 2, driving_keypoints(kp_detector, drivers))
    with pytest.raises(ValueError, match="1 x C x H x W"):
        synthesizer.prepare(drivers)


def test_detector_without_jacobians(tiny_config):
    config = copy.deepcopy(tiny_config)
    config["model_params"]["common_params"]["estimate_jacobian"] = False
    kp_detector, generator = tiny_networks(config)
    sources, drivers = smooth_images(2, 32, seed=6), smooth_images(2, 32, seed=7)
    synthesizer = Synthesizer(kp_detector, generator)
    prepared = [synthesizer.prepare(source[None]) for source in sources]
    assert torch.equal(prepared[0].kp["jacobian"], torch.eye(2).expand(1, 4, 2, 2))
    frames = synthesizer.render_many(prepared, driving_keypoints(kp_detector, drivers))
    expected = plain_frames(kp_detector, generator, sources, drivers)
    assert (frames - expected).abs().max() < TOLERANCE


def test_optimized_copy_folds_norms_and_transposes_up_blocks(tiny_config):
    _, generator = tiny_networks(tiny_config)
    optimized = optimize_for_inference(generator)
    folded = list(optimized.up_blocks.modules()) + list(optimized.down_blocks.modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, UpBlock2d)) for m in folded)
    assert any(isinstance(m, TransposedUpBlock2d) for m in optimized.modules())
    assert not any(is_fast_convertible(m) for m in optimized.modules())  # all FastConv2d
    assert any(isinstance(m, FastConv2d) for m in optimized.bottleneck.modules())
    assert not any(isinstance(m, FastConv2d)
                   for m in optimize_for_inference(generator, fast_conv=False).modules())
    assert any(isinstance(m, UpBlock2d) for m in generator.modules())  # the original is kept
    block = generator.up_blocks[0]
    for height, width in ((5, 7), (9, 10)):  # under and over TransposedUpBlock2d.MIN_PIXELS
        x = torch.randn(2, block.conv.in_channels, height, width)
        with torch.no_grad():
            assert (TransposedUpBlock2d(block)(x) - block(x)).abs().max() < 1e-5


def test_shipped_checkpoint_matches_the_plain_generator():
    kp_detector, generator = load_checkpoint(SHIPPED_CHECKPOINT)
    sources, drivers = smooth_images(2, 256, seed=8), smooth_images(2, 256, seed=9)
    expected = plain_frames(kp_detector, generator, sources, drivers)
    synthesizer = Synthesizer(kp_detector, generator)
    prepared = [synthesizer.prepare(source[None]) for source in sources]
    frames = synthesizer.render_many(prepared, driving_keypoints(kp_detector, drivers))
    assert (frames - expected).abs().max() < TOLERANCE


def test_half_precision_frames_stay_within_tolerance(tiny_config):
    kp_detector, generator = tiny_networks(tiny_config)
    sources, drivers = smooth_images(2, 32, seed=6), smooth_images(2, 32, seed=7)
    expected = plain_frames(kp_detector, generator, sources, drivers)
    synthesizer = Synthesizer(kp_detector, generator, half=True)
    frames = synthesizer.render_many([synthesizer.prepare(s[None]) for s in sources],
                                     driving_keypoints(kp_detector, drivers))
    assert frames.dtype == torch.float32
    error = (frames - expected).abs().max()
    assert 0 < error < HALF_TOLERANCE  # float16 arithmetic, and close to float32's
    measured = half_precision_error(kp_detector, generator, size=32)
    assert 0 < measured < HALF_TOLERANCE


def test_edge_precision_choice(tiny_config):
    kp_detector, generator = tiny_networks(tiny_config)
    cpu = torch.device("cpu")
    assert choose_half("float16", cpu, kp_detector, generator, 32)
    assert not choose_half("float32", cpu, kp_detector, generator, 32)
    assert not choose_half("auto", cpu, kp_detector, generator, 32)  # float16 only on a GPU
