"""The shipped checkpoint loads by default and rebuilds an unseen synthetic clip well."""

from __future__ import annotations

import torch

from kpvid.models import SHIPPED_CHECKPOINT, frame_size, load_checkpoint_with_config
from kpvid.training.evaluate import score_video
from kpvid.training.synthetic import generate_video


def test_shipped_checkpoint_rebuilds_an_unseen_clip():
    assert SHIPPED_CHECKPOINT.stat().st_size < 30 * 1024 * 1024
    kp_detector, generator, config = load_checkpoint_with_config()
    size = frame_size(config)
    assert size == 64
    clip = generate_video("faces", seed=987654, size=size, frames=16)  # not a training seed
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    scores, rebuilt, _ = score_video(kp_detector, generator, "unseen", frames)
    assert rebuilt.shape == frames.shape
    # the mean over 50 unseen videos is 29.6 dB / 0.907 (MANIFEST.md); one clip varies
    assert scores.psnr > 24 and scores.ssim > 0.8
