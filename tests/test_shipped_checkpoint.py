"""The shipped checkpoints load and rebuild unseen synthetic clips well."""

from __future__ import annotations

import pytest
import torch

from kpvid.models import (
    SHIPPED_CHECKPOINT,
    Detector,
    FaceMeshDetector,
    OcclusionAwareGenerator,
    frame_size,
    load_checkpoint_with_config,
)
from kpvid.models.checkpoint import WEIGHTS_DIR
from kpvid.models.facemesh import facemesh_available
from kpvid.models.predictors import LEARNED_PREDICTORS, predictor_factory
from kpvid.synthetic import generate_video
from kpvid.training.evaluate import score_video


def test_shipped_checkpoint_rebuilds_an_unseen_clip():
    assert SHIPPED_CHECKPOINT.stat().st_size < 30 * 1024 * 1024
    kp_detector, generator, config = load_checkpoint_with_config()
    size = frame_size(config)
    assert size == 256
    clip = generate_video("faces", seed=987654, size=size, frames=16)  # not a training seed
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    scores, rebuilt, _ = score_video(kp_detector, generator, "unseen", frames)
    assert rebuilt.shape == frames.shape
    # MANIFEST.md has the mean over 50 unseen videos; one clip varies
    assert scores.psnr > 26 and scores.ssim > 0.85  # 29.9 dB / 0.918 on this one


def _mean_gain_on_grace_hopper(kp_detector: Detector, generator: OcclusionAwareGenerator,
                               config: dict) -> float:
    """Three held-out clips of Grace Hopper's portrait: the model's mean gain over the frozen
    first frame; its keypoints must spread over the face and move with it."""
    gains = []
    for seed in (11, 12, 13):
        clip = generate_video("photos", seed=seed, size=frame_size(config), frames=24,
                              split="test", face="grace_hopper")
        frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
        scores, _, _ = score_video(kp_detector, generator, "grace_hopper", frames)
        gains.append(scores.psnr_gain_frozen)
        assert scores.kp_spread > 8 and scores.kp_motion > 0.5
    return sum(gains) / len(gains)


@pytest.mark.parametrize(("name", "least_gain"), [("kpvid-heads-256", 1.2),
                                                  ("kpvid-heads-64", 1.3)])
def test_the_heads_checkpoints_follow_a_held_out_photograph(name, least_gain):
    """A real face no model here trained on, turning and talking: the rebuilt clips beat the
    frozen first frame, and the keypoints spread over the face and move with it. (On these three
    clips kpvid-heads-64 gains 1.8 dB, kpvid-heads-256 1.7 dB; the cartoon-only
    kpvid-faces-64 gains 1.1 dB with its keypoints in a 1.2 px cluster. Over 50 clips:
    docs/real-faces.md.)"""
    model = load_checkpoint_with_config(WEIGHTS_DIR / f"{name}.pth.tar")
    assert _mean_gain_on_grace_hopper(*model) > least_gain


@pytest.mark.skipif(not facemesh_available(), reason="MediaPipe not installed")
def test_the_facemesh_driven_checkpoint_follows_a_held_out_photograph():
    """kpvid-mesh-64: FaceMesh's landmarks drive it (no keypoint network). On the same clips it
    beats the frozen frame, and the predictors made for its keypoints are shipped."""
    path = WEIGHTS_DIR / "kpvid-mesh-64.pth.tar"
    assert path.stat().st_size < 30 * 1024 * 1024
    model = load_checkpoint_with_config(path)
    assert isinstance(model[0], FaceMeshDetector)
    assert _mean_gain_on_grace_hopper(*model) > 1.0
    for kind in LEARNED_PREDICTORS:
        predictor_factory(kind, num_kp=10, model_id="kpvid-mesh-64")()


def test_the_256_model_keeps_the_64_detector():
    """kpvid-heads-256 was grown from kpvid-heads-64 with its keypoint detector frozen, so a
    sender's keypoints are the same at either size (and so are the predictors' inputs)."""
    kp_detector, _, _ = load_checkpoint_with_config()
    small, _, _ = load_checkpoint_with_config(WEIGHTS_DIR / "kpvid-heads-64.pth.tar")
    for name, value in small.state_dict().items():
        if name != "down.weight":  # each size's own anti-aliasing blur
            assert torch.equal(kp_detector.state_dict()[name], value), name
