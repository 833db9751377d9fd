"""Video codecs for the bandwidth benchmark: round trips, rate control, quality, bitrate lookup."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytest import approx

from kpvid.bench.video_codecs import (
    CODECS,
    BitrateEstimate,
    RatePoint,
    available_codecs,
    bitrate_at_quality,
    encode_decode,
    frame_quality,
    sweep,
    unavailable_codecs,
)
from kpvid.training import metrics


def moving_pattern(frames: int = 8, height: int = 64, width: int = 64) -> np.ndarray:
    """A smooth colour pattern drifting a little each frame (T x H x W x 3 uint8)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    clip = []
    for t in range(frames):
        r = 128 + 90 * np.sin((x + 1.5 * t) / 9) * np.cos(y / 13)
        g = 128 + 80 * np.cos((x - y + t) / 11)
        b = 128 + 70 * np.sin((y + 2 * t) / 7)
        clip.append(np.stack([r, g, b], -1))
    return np.clip(np.round(clip), 0, 255).astype(np.uint8)


def points(*rates_psnr: tuple[float, float]) -> list[RatePoint]:
    return [RatePoint("x", kbps, kbps, psnr, psnr / 40, 1) for kbps, psnr in rates_psnr]


def test_probe_splits_the_codecs_into_available_and_unavailable():
    available, unavailable = available_codecs(), unavailable_codecs()
    assert set(available) | set(unavailable) == set(CODECS)
    assert not set(available) & set(unavailable)
    assert all(reason for reason in unavailable.values())
    assert "h264" in available  # PyAV's wheels ship libx264


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_each_codec_round_trips_a_clip_with_one_keyframe(codec):
    if codec not in available_codecs():
        pytest.skip(f"{codec}: {unavailable_codecs()[codec]}")
    clip = moving_pattern()
    coded = encode_decode(clip, codec, 400.0, fps=30.0)
    assert coded.frames.shape == clip.shape and coded.frames.dtype == np.uint8
    assert coded.keyframes == 1
    assert coded.total_bytes > 0
    assert coded.kbps == approx(coded.total_bytes * 8 / (len(clip) / 30) / 1000)
    assert frame_quality(coded.frames, clip)[0] > 28


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_each_codec_keeps_a_small_odd_frame_size(codec):
    if codec not in available_codecs():
        pytest.skip(f"{codec}: {unavailable_codecs()[codec]}")
    clip = moving_pattern(frames=3, height=21, width=35)  # padded for x264 and SVT-AV1
    coded = encode_decode(clip, codec, 200.0)
    assert coded.frames.shape == clip.shape
    assert frame_quality(coded.frames, clip)[0] > 20


def test_h264_spends_more_and_looks_better_at_a_higher_bitrate():
    clip = moving_pattern()
    low, high = encode_decode(clip, "h264", 10.0), encode_decode(clip, "h264", 300.0)
    assert high.kbps > 3 * low.kbps
    (psnr_low, ssim_low), (psnr_high, ssim_high) = (frame_quality(c.frames, clip)
                                                    for c in (low, high))
    assert psnr_high > psnr_low + 3 and ssim_high > ssim_low


def test_frame_quality_matches_kpvid_metrics():
    rng = np.random.default_rng(0)
    clip = moving_pattern(frames=3, height=24, width=32)
    noisy = np.clip(clip + rng.normal(0, 12, clip.shape), 0, 255).astype(np.uint8)

    def tensor(c: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(c).permute(0, 3, 1, 2).double() / 255

    psnr, ssim = frame_quality(noisy, clip)
    assert psnr == approx(float(metrics.psnr(tensor(noisy), tensor(clip)).mean()), abs=1e-9)
    assert ssim == approx(float(metrics.ssim(tensor(noisy), tensor(clip)).mean()), abs=1e-9)
    assert frame_quality(clip, clip)[1] == approx(1.0)


def test_sweep_averages_rate_and_quality_over_the_clips():
    clips = [moving_pattern(frames=4), moving_pattern(frames=4)[:, ::-1].copy()]
    calls = []

    def quality(decoded: np.ndarray, original: np.ndarray) -> tuple[float, float]:
        calls.append(decoded.shape)
        return 30.0 + len(calls), 0.5

    result = sweep(clips, "h264", [20.0, 100.0], fps=25.0, quality_fn=quality, progress=False)
    assert [p.target_kbps for p in result] == [20.0, 100.0]
    assert len(calls) == 4 and all(shape == clips[0].shape for shape in calls)
    assert [p.psnr for p in result] == [31.5, 33.5] and result[0].ssim == 0.5
    expected = np.mean([encode_decode(c, "h264", 100.0, fps=25.0).kbps for c in clips])
    assert result[1].kbps == approx(expected) and result[1].clips == 2


def test_bitrate_at_quality_interpolates_against_log_bitrate():
    curve = points((40, 32), (10, 25), (20, 30))  # any order
    assert bitrate_at_quality(curve, "psnr", 27.5).kbps == approx(math.sqrt(10 * 20))
    at_31 = bitrate_at_quality(curve, "psnr", 31)
    assert at_31.kbps == approx(math.sqrt(20 * 40))
    assert (at_31.lower_bound, at_31.upper_bound) == (20, 40)
    assert at_31.describe() == "28.3 kbps"
    assert bitrate_at_quality(curve, "ssim", 30 / 40).kbps == approx(20)
    assert bitrate_at_quality(curve, "psnr", 25).kbps == approx(10)


def test_bitrate_at_quality_makes_the_curve_monotone():
    curve = points((10, 25), (20, 31), (40, 30), (80, 33))
    assert bitrate_at_quality(curve, "psnr", 30.5).kbps == approx(
        math.exp(math.log(10) + 5.5 / 6 * math.log(2)))
    assert bitrate_at_quality(curve, "psnr", 32).kbps == approx(math.sqrt(40 * 80))


def test_bitrate_at_quality_returns_bounds_outside_the_sweep():
    curve = points((8, 25), (50, 30), (400, 35))
    below = bitrate_at_quality(curve, "psnr", 20)
    assert below == BitrateEstimate("psnr", 20, None, upper_bound=8)
    assert below.describe() == "< 8 kbps"
    above = bitrate_at_quality(curve, "psnr", 36)
    assert above == BitrateEstimate("psnr", 36, None, lower_bound=400)
    assert above.describe() == "> 400 kbps"


@pytest.mark.parametrize(("frames", "message"), [
    (np.zeros((4, 64, 64, 3), np.float32), "uint8"),
    (np.zeros((4, 64, 64), np.uint8), "T x H x W x 3"),
    (np.zeros((4, 64, 64, 4), np.uint8), "T x H x W x 3"),
    (np.zeros((0, 64, 64, 3), np.uint8), "non-empty"),
    ([[0]], "numpy array"),
])
def test_encode_decode_rejects_bad_frames(frames, message):
    with pytest.raises(ValueError, match=message):
        encode_decode(frames, "h264", 100.0)


@pytest.mark.parametrize(("codec", "kbps", "fps", "message"), [
    ("h265", 100.0, 30.0, "unknown codec 'h265'; known: h264, vp8, vp9, av1"),
    ("h264", 0.0, 30.0, "bitrate_kbps must be a positive number"),
    ("h264", -5.0, 30.0, "bitrate_kbps must be a positive number"),
    ("h264", math.nan, 30.0, "bitrate_kbps must be a positive number"),
    ("h264", 100.0, 0.0, "fps must be a positive number"),
])
def test_encode_decode_rejects_bad_arguments(codec, kbps, fps, message):
    with pytest.raises(ValueError, match=message):
        encode_decode(moving_pattern(frames=2), codec, kbps, fps)


def test_sweep_and_bitrate_at_quality_reject_bad_arguments():
    clip = moving_pattern(frames=2)
    with pytest.raises(ValueError, match="at least one clip"):
        sweep([], "h264", [10.0])
    with pytest.raises(ValueError, match="bitrate_kbps must be a positive number"):
        sweep([clip], "h264", [10.0, -1.0])
    with pytest.raises(ValueError, match="unknown codec"):
        sweep([clip], "mpeg2", [10.0])
    with pytest.raises(ValueError, match="metric must be 'psnr' or 'ssim'"):
        bitrate_at_quality(points((10, 25)), "vmaf", 90)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one rate point"):
        bitrate_at_quality([], "psnr", 30)
