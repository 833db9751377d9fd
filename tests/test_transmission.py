"""Keypoints as the edge plays them: schedule, codec, predictor (training/transmission.py)."""

from __future__ import annotations

import numpy as np
import pytest

from kpvid.models.predictors import ConstantVelocity, HoldLast
from kpvid.protocol import KEYPOINT_CODECS
from kpvid.protocol.delta_codec import JACOBIAN_STEP, POSITION_STEP
from kpvid.protocol.schedule import Schedule
from kpvid.training.transmission import UNCODED, transmit


def clip(frames: int = 12, num_kp: int = 10) -> np.ndarray:
    rng = np.random.default_rng(1)
    kp6 = np.zeros((frames, num_kp, 6), np.float32)
    kp6[..., :2] = rng.uniform(-0.5, 0.5, (1, num_kp, 2)) + 0.01 * np.arange(frames)[:, None, None]
    kp6[..., 2:] = [1, 0, 0, 1]
    return kp6


def test_skipped_frames_cost_nothing_and_are_predicted() -> None:
    kp6 = clip()
    sent = transmit(kp6, Schedule(1, 2), "q12", HoldLast)
    assert sent.observed.tolist() == [i % 3 == 0 for i in range(12)] and sent.packets == 4
    assert (sent.payload_bytes[sent.observed] == KEYPOINT_CODECS["q12"].payload_bytes(10)).all()
    assert (sent.message_bytes[~sent.observed] == 0).all()
    assert (sent.message_bytes[sent.observed] == 90 + 6).all()  # 2-byte frame index header
    np.testing.assert_array_equal(sent.kp6[1], sent.kp6[0])  # hold-last fills the gap


def test_uncoded_keypoints_pass_unchanged_and_delta_within_half_a_step() -> None:
    kp6 = clip()
    plain = transmit(kp6, Schedule(1, 0), UNCODED, ConstantVelocity)
    np.testing.assert_array_equal(plain.kp6, kp6)
    assert plain.message_bytes.sum() == 0 and plain.intra_payloads == 0
    delta = transmit(kp6, Schedule(1, 0), "delta", ConstantVelocity, intra_interval=5)
    assert np.abs(delta.kp6[..., :2] - kp6[..., :2]).max() <= POSITION_STEP / 2 + 1e-6
    assert np.abs(delta.kp6[..., 2:] - kp6[..., 2:]).max() <= JACOBIAN_STEP / 2 + 1e-6
    assert delta.intra_payloads == 3  # packets 0, 5 and 10
    assert delta.message_bytes.mean() < 30


def test_unknown_codec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown keypoint codec"):
        transmit(clip(), Schedule(1, 1), "zip", HoldLast)


def test_without_loss_nothing_is_lost_or_concealed() -> None:
    sent = transmit(clip(), Schedule(1, 1), "delta", HoldLast)
    assert sent.lost is not None and sent.concealed is not None
    assert sent.lost.shape == sent.concealed.shape == (12,)
    assert not sent.lost.any() and not sent.concealed.any() and not sent.undecodable.any()
    assert sent.intra_requests == 0
