"""Conventional video codecs on the same frames as kpvid's keypoint stream: bytes and quality.

Each codec encodes a clip as a one-to-one real-time call would: one keyframe at the start (the
GOP is longer than the clip), then inter frames that reference only past frames (no B-frames, no
lookahead: no frame waits for a later one), constant-bitrate rate control at the target with a
one-second buffer (as real-time encoders run, and the only rate control SVT-AV1 has in low delay;
on the faces it matches or beats libvpx's VBR up to ~30 dB), 4:2:0 chroma, all frames flushed,
no frame dropped. The speed settings lean to quality rather than to a phone's CPU budget, so the
codecs are at their best for this latency.

- ``h264``: libx264, preset medium, tune zerolatency (no B-frames, lookahead or mb-tree), scene
  cuts off, one thread (one slice); x264 has no minimum rate, so its "CBR" is ABR capped by the
  buffer. x264's ~650-byte SEI message with its settings (5 kbps of a one-second clip, useless
  to a decoder) is dropped before counting.
- ``vp8`` / ``vp9``: libvpx / libvpx-vp9, deadline good, cpu-used 1, lag-in-frames 0 (no
  lookahead, no alt-ref frames), one thread.
- ``av1``: libsvtav1, preset 6, low-delay prediction structure (pred-struct 1), decoded by
  libdav1d; libaom-av1 (cpu-used 4, lag-in-frames 0) where SVT-AV1 is missing.

The bytes counted are the whole elementary bitstream (the sum of the packet sizes, the keyframe
and the in-band parameter sets included), without container or RTP overhead. Rate control on a
one-second clip is loose, and at low targets the encoders overshoot (they cannot spend less than
their coarsest quantiser costs: 4-8 kbps at 64 x 64, 30 fps), so a :class:`CodedClip` reports
the rate actually spent and a :class:`RatePoint` the mean of it. Frames go RGB -> YUV 4:2:0 ->
RGB through swscale (BT.601, chroma averaged over 2 x 2), which alone caps PSNR at about 37 dB on
the synthetic faces. Frames are padded by repeating their edge pixels to even sides (x264 needs
them) and to SVT-AV1's 64 x 64 minimum, and cropped back after decoding; the padding's bits are
counted, as a sender would have to spend them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import av
import cv2
import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

QualityFn = Callable[[np.ndarray, np.ndarray], tuple[float, float]]
Metric = Literal["psnr", "ssim"]

# Target bitrates (kbps) of the default sweep, about 1.6 apart. At 64 x 64, 30 fps on the synthetic
# faces they go from every encoder's floor (the cost of its coarsest quantiser: 4-7 kbps, 15-27 dB
# PSNR) to its top quality there (34-36 dB, near the 4:2:0 cap), bracketing 27-29 dB for each. At
# 256 x 256 they span about 15-38 dB (VP8's floor there: ~29 kbps at 28 dB).
DEFAULT_BITRATES_KBPS: tuple[float, ...] = (3.0, 5.0, 8.0, 13.0, 20.0, 32.0, 50.0, 80.0, 130.0,
                                            200.0)


@dataclass(frozen=True)
class EncoderSetting:
    """One encoder able to produce a codec, with the options of the call configuration."""

    encoder: str
    options: dict[str, str]
    min_side: int = 2  # smallest height and width the encoder accepts
    bitstream_filter: str | None = None  # applied to the packets before they are counted


@dataclass(frozen=True)
class CodecSpec:
    """A codec: its encoders and decoders in order of preference."""

    encoders: tuple[EncoderSetting, ...]
    decoders: tuple[str, ...]


CODECS: dict[str, CodecSpec] = {
    "h264": CodecSpec(
        # the filter drops x264's SEI message with its settings (see the module docstring)
        (EncoderSetting("libx264", {"preset": "medium", "tune": "zerolatency",
                                    "x264-params": "scenecut=0"},
                        bitstream_filter="filter_units=remove_types=6"),),
        ("h264",)),
    "vp8": CodecSpec(
        (EncoderSetting("libvpx", {"deadline": "good", "cpu-used": "1",
                                   "lag-in-frames": "0"}),),
        ("vp8", "libvpx")),
    "vp9": CodecSpec(
        (EncoderSetting("libvpx-vp9", {"deadline": "good", "cpu-used": "1",
                                       "lag-in-frames": "0"}),),
        ("vp9", "libvpx-vp9")),
    "av1": CodecSpec(
        (EncoderSetting("libsvtav1", {"preset": "6", "svtav1-params": "pred-struct=1"},
                        min_side=64),
         EncoderSetting("libaom-av1", {"cpu-used": "4", "lag-in-frames": "0"})),
        ("libdav1d", "libaom-av1", "av1")),
}


class CodecUnavailableError(RuntimeError):
    """This PyAV (its FFmpeg) cannot encode or decode the codec."""


@dataclass(frozen=True, eq=False)
class CodedClip:
    """A clip after encoding and decoding with one codec at one target bitrate."""

    codec: str
    encoder: str
    target_kbps: float
    total_bytes: int  # the encoded bitstream: sum of the packet sizes
    kbps: float  # actually spent: total_bytes * 8 / clip duration
    keyframes: int
    frames: np.ndarray = field(repr=False)  # decoded, T x H x W x 3 uint8 RGB


@dataclass(frozen=True)
class RatePoint:
    """One target bitrate of a sweep, averaged over the clips."""

    codec: str
    target_kbps: float
    kbps: float  # mean rate actually spent
    psnr: float  # dB
    ssim: float
    clips: int


@dataclass(frozen=True)
class BitrateEstimate:
    """The bitrate at which a codec reaches a target quality, or a bound on it.

    ``kbps`` is None when the target lies outside the sweep: then only ``upper_bound`` (the
    target is reached already at the lowest rate measured) or ``lower_bound`` (not reached at
    the highest) is set. Inside the sweep both bounds hold the measured rates around ``kbps``.
    """

    metric: str
    target: float
    kbps: float | None
    lower_bound: float | None = None
    upper_bound: float | None = None

    def describe(self) -> str:
        """E.g. ``"23.4 kbps"``, ``"< 8 kbps"`` or ``"> 400 kbps"``."""
        if self.kbps is not None:
            return f"{self.kbps:.3g} kbps"
        if self.upper_bound is not None:
            return f"< {self.upper_bound:.3g} kbps"
        return f"> {self.lower_bound:.3g} kbps"


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must be a non-empty T x H x W x 3 array, got shape "
                         f"{frames.shape}")


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _has(name: str, mode: Literal["r", "w"]) -> bool:
    try:
        av.Codec(name, mode)
    except av.codec.codec.UnknownCodecError:
        return False
    return True


@functools.cache
def _pick(codec: str) -> tuple[EncoderSetting, str]:
    """The first encoder and decoder of the codec that this PyAV has."""
    spec = CODECS[codec]
    encoders = [s for s in spec.encoders if _has(s.encoder, "w")]
    decoders = [d for d in spec.decoders if _has(d, "r")]
    if not encoders:
        listed = ", ".join(s.encoder for s in spec.encoders)
        raise CodecUnavailableError(f"{codec}: this PyAV has none of the encoders {listed}")
    if not decoders:
        raise CodecUnavailableError(f"{codec}: this PyAV has none of the decoders "
                                    f"{', '.join(spec.decoders)}")
    return encoders[0], decoders[0]


def _pad(frames: np.ndarray, min_side: int) -> np.ndarray:
    """Repeat the edge pixels to even sides of at least ``min_side``."""
    _, height, width, _ = frames.shape
    pad_h = max(min_side, height + height % 2) - height
    pad_w = max(min_side, width + width % 2) - width
    if not pad_h and not pad_w:
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


@contextlib.contextmanager
def _keeping_scheduling() -> Iterator[None]:
    """Put the calling thread's scheduling policy back as it was after the block.

    SVT-AV1 switches the thread that opens an encoder to real-time priority (SCHED_FIFO 99)
    where it is allowed to (as root): every thread and process started from that thread later
    inherits it. In a test run that made a headless Chromium spin at FIFO 99 on both cores of a
    2-core machine, starving everything else, pytest-timeout's thread included."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


def encode_decode(frames: np.ndarray, codec: str, bitrate_kbps: float,
                  fps: float = 30.0) -> CodedClip:
    """Encode T x H x W x 3 uint8 RGB frames with ``codec`` at a target bitrate, and decode them.

    Raises ValueError on bad arguments, CodecUnavailableError when this PyAV lacks the codec, and
    RuntimeError when the decoder does not return one frame per input frame. The calling
    thread's scheduling policy is left as it was (SVT-AV1 changes it).
    """
    _check_frames(frames)
    _check_codec(codec)
    _check_positive("bitrate_kbps", bitrate_kbps)
    _check_positive("fps", fps)
    with _keeping_scheduling():
        return _encode_decode(frames, codec, bitrate_kbps, fps)


def _encode_decode(frames: np.ndarray, codec: str, bitrate_kbps: float, fps: float
                   ) -> CodedClip:
    setting, decoder = _pick(codec)
    count, height, width, _ = frames.shape
    padded = _pad(frames, setting.min_side)
    if setting.encoder == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner unless told otherwise

    rate = Fraction(fps).limit_denominator(1_000_000)
    encoder = av.CodecContext.create(setting.encoder, "w")
    encoder.width, encoder.height = padded.shape[2], padded.shape[1]
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = 1 / rate
    encoder.framerate = rate
    bit_rate = str(max(1, round(bitrate_kbps * 1000)))
    encoder.bit_rate = int(bit_rate)
    encoder.gop_size = count + 1  # one keyframe, at the start
    encoder.thread_count = 1
    # CBR with a one-second buffer (x264 ignores minrate: ABR capped by its VBV, without filler)
    encoder.options = {**setting.options, "minrate": bit_rate, "maxrate": bit_rate,
                       "bufsize": bit_rate}
    packets = []
    for i, rgb in enumerate(padded):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", interpolation="AREA")
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    if setting.bitstream_filter:
        bsf = av.BitStreamFilterContext(setting.bitstream_filter, encoder.codec)
        packets = [out for packet in [*packets, None] for out in bsf.filter(packet)]

    decoding = av.CodecContext.create(decoder, "r")
    decoded = [f for packet in packets for f in decoding.decode(packet)]
    decoded += decoding.decode(None)
    if len(decoded) != count:
        raise RuntimeError(f"{codec} ({setting.encoder} -> {decoder}) returned {len(decoded)} "
                           f"frames for {count}")
    total = sum(packet.size for packet in packets)
    return CodedClip(
        codec=codec, encoder=setting.encoder, target_kbps=float(bitrate_kbps), total_bytes=total,
        kbps=total * 8 / (count / fps) / 1000,
        keyframes=sum(packet.is_keyframe for packet in packets),
        frames=np.stack([f.to_ndarray(format="rgb24")[:height, :width] for f in decoded]))


def _probe_clip() -> np.ndarray:
    """Four 64 x 64 frames of a moving gradient."""
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([np.stack([(x * 4 + t * 8) % 256, (y * 4) % 256, (x + y + t * 16) % 256], -1)
                     for t in range(4)]).astype(np.uint8)


@functools.cache
def _probe() -> dict[str, str | None]:
    """Codec -> None when it encodes and decodes a tiny clip here, else the reason it does not."""
    status: dict[str, str | None] = {}
    clip = _probe_clip()
    for codec in CODECS:
        try:
            encode_decode(clip, codec, 200.0)
            status[codec] = None
        except (av.FFmpegError, RuntimeError) as err:
            status[codec] = str(err)
            log.info("video codec %s is unavailable: %s", codec, err)
    return status


def available_codecs() -> list[str]:
    """The codecs of :data:`CODECS` that this PyAV can encode and decode (probed once)."""
    return [codec for codec, reason in _probe().items() if reason is None]


def unavailable_codecs() -> dict[str, str]:
    """Codec -> why this PyAV cannot encode and decode it (probed once)."""
    return {codec: reason for codec, reason in _probe().items() if reason is not None}


def _gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def frame_quality(decoded: np.ndarray, original: np.ndarray) -> tuple[float, float]:
    """Mean per-frame PSNR (dB) and SSIM of two T x H x W x 3 uint8 RGB clips.

    Both as :mod:`kpvid.training.metrics` defines them for kpvid's evaluation (PSNR for a peak of
    1 on [0, 1] frames; SSIM with a Gaussian window 11/1.5 over the valid positions, mean over the
    channels), but the window is applied as two 1-D filters with OpenCV, many times faster than
    the 2-D convolution of the torch version.
    """
    if decoded.shape != original.shape or decoded.ndim != 4 or min(decoded.shape[1:3]) < 11:
        raise ValueError(f"clips must be T x H x W x 3 with H, W >= 11 and the same shape, got "
                         f"{decoded.shape} and {original.shape}")
    kernel = _gaussian_kernel()
    half = len(kernel) // 2
    c1, c2 = 0.01**2, 0.03**2

    def blur(image: np.ndarray) -> np.ndarray:  # the valid part of the filtered image
        return cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel)[half:-half, half:-half]

    psnrs, ssims = [], []
    for x, y in zip(decoded.astype(np.float64) / 255, original.astype(np.float64) / 255):
        mse = max(float(np.mean((x - y) ** 2)), 1e-10)
        psnrs.append(-10 * math.log10(mse))
        mu_x, mu_y = blur(x), blur(y)
        sxx = blur(x * x) - mu_x**2
        syy = blur(y * y) - mu_y**2
        sxy = blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) \
            / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
        ssims.append(float(ssim_map.mean()))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def sweep(clips: Sequence[np.ndarray], codec: str,
          bitrates_kbps: Sequence[float] = DEFAULT_BITRATES_KBPS, fps: float = 30.0,
          quality_fn: QualityFn = frame_quality, progress: bool = True) -> list[RatePoint]:
    """Code every clip at every target bitrate; one point per bitrate, with the rate actually
    spent and ``quality_fn(decoded, original) -> (psnr, ssim)`` averaged over the clips.

    See :data:`DEFAULT_BITRATES_KBPS` for what the default bitrates span.
    """
    _check_codec(codec)
    if not clips:
        raise ValueError("sweep needs at least one clip")
    if not bitrates_kbps:
        raise ValueError("sweep needs at least one bitrate")
    for kbps in bitrates_kbps:
        _check_positive("bitrate_kbps", kbps)
    for clip in clips:
        _check_frames(clip)
    points = []
    with tqdm(total=len(clips) * len(bitrates_kbps), desc=codec, unit="clip",
              disable=not progress) as bar:
        for target in bitrates_kbps:
            rates, psnrs, ssims = [], [], []
            for clip in clips:
                coded = encode_decode(clip, codec, target, fps)
                psnr, ssim = quality_fn(coded.frames, clip)
                rates.append(coded.kbps)
                psnrs.append(psnr)
                ssims.append(ssim)
                bar.update()
            points.append(RatePoint(codec, float(target), float(np.mean(rates)),
                                    float(np.mean(psnrs)), float(np.mean(ssims)), len(clips)))
            log.debug("%s", points[-1])
    return points


def bitrate_at_quality(points: Sequence[RatePoint], metric: Metric,
                       target: float) -> BitrateEstimate:
    """The rate at which the codec of ``points`` first reaches ``target`` quality.

    The points are ordered by the rate actually spent and their quality made monotone (each point
    gets the best quality of any point at or below its rate); the target is then interpolated
    linearly in quality against log(bitrate). Outside the sweep this returns a bound, never an
    extrapolation.
    """
    if metric not in ("psnr", "ssim"):
        raise ValueError(f"metric must be 'psnr' or 'ssim', got {metric!r}")
    if not points:
        raise ValueError("bitrate_at_quality needs at least one rate point")
    if not math.isfinite(target):
        raise ValueError(f"target quality must be finite, got {target!r}")
    ordered = sorted(points, key=lambda p: p.kbps)
    rates = [p.kbps for p in ordered]
    quality = np.maximum.accumulate([getattr(p, metric) for p in ordered])
    if quality[0] >= target:
        if quality[0] == target:
            return BitrateEstimate(metric, target, rates[0], rates[0], rates[0])
        return BitrateEstimate(metric, target, None, upper_bound=rates[0])
    if quality[-1] < target:
        return BitrateEstimate(metric, target, None, lower_bound=rates[-1])
    i = int(np.argmax(quality >= target))  # quality[i - 1] < target <= quality[i]
    share = (target - quality[i - 1]) / (quality[i] - quality[i - 1])
    log_rate = math.log(rates[i - 1]) + share * (math.log(rates[i]) - math.log(rates[i - 1]))
    return BitrateEstimate(metric, target, math.exp(log_rate), rates[i - 1], rates[i])
