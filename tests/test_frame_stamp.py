"""Glass-to-glass time stamps (receiver/frame_stamp.py): they read back as drawn, through
aiortc's own VP8 encoder (libvpx, via PyAV) at the bitrates it uses, and a frame without one
or with a damaged one reads as None. The viewer page reads them the same way in JavaScript
(tests/test_glass_to_glass.py)."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import MAX_BITRATE, MIN_BITRATE, Vp8Encoder, vp8_depayload

from kpvid.receiver.edge import StreamOutput
from kpvid.receiver.frame_stamp import (
    COLUMNS,
    FrameStamp,
    block_size,
    draw_stamp,
    ms_between,
    read_stamp,
    stamp_ms,
    strip_height,
)
from kpvid.synthetic import generate_video

STAMP = FrameStamp(capture_ms=stamp_ms(1_767_225_600.123), sent_ms=0xFFFFFFF0)


def test_a_stamp_reads_back_and_covers_only_the_bottom_strip():
    rng = np.random.default_rng(0)
    for size in (64, 128, 256):
        frame = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        stamped = draw_stamp(frame, STAMP)
        assert read_stamp(stamped) == STAMP
        assert read_stamp(frame) is None
        strip = strip_height(size)
        assert np.array_equal(stamped[:size - strip], frame[:size - strip])
        assert not np.array_equal(stamped[size - strip:], frame[size - strip:])
    assert block_size(256) == (8, 4) and block_size(64) == (2, 2)


def test_stamp_times_wrap_at_32_bits():
    assert stamp_ms(2**32 / 1000 + 0.005) == 5
    assert ms_between(2**32 - 10, 5) == 15
    assert ms_between(5, 2**32 - 10) == -15
    assert ms_between(100, 142) == 42


def test_no_stamp_or_a_damaged_one_reads_as_none():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for plain in (frame, np.zeros_like(frame), np.full_like(frame, 255)):
        assert read_stamp(plain) is None
    stamped = draw_stamp(frame, STAMP)
    width, height = block_size(256)
    for bit in (0, 20, 60, 95):  # marker, capture time, sent time, checksum
        damaged = stamped.copy()
        row, column = divmod(bit, COLUMNS)
        top = 256 - strip_height(256) + row * height
        block = damaged[top:top + height, column * width:(column + 1) * width]
        block[:] = 255 - block
        assert read_stamp(damaged) is None, bit
    assert read_stamp(stamped[:, :48]) is None  # too small to carry one
    with pytest.raises(ValueError, match="too small"):
        draw_stamp(frame[:32, :32], STAMP)


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("bitrate", [MIN_BITRATE, MAX_BITRATE])
def test_stamps_survive_aiortcs_vp8_encoder(size: int, bitrate: int):
    """What a viewer gets: frames VP8-encoded by aiortc's encoder (its denoiser on, at the
    lowest and highest bitrate its congestion control picks), decoded by libvpx."""
    frames = generate_video("photos", seed=5, size=size, frames=30)
    rng = np.random.default_rng(size)
    encoder = Vp8Encoder()
    encoder.target_bitrate = bitrate
    decoder = av.CodecContext.create("libvpx", "r")
    read = 0
    for index, picture in enumerate(frames):
        stamp = FrameStamp(int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)))
        frame = av.VideoFrame.from_ndarray(draw_stamp(picture, stamp), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = index * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=index == 0)
        packet = av.Packet(b"".join(vp8_depayload(payload) for payload in payloads))
        for decoded in decoder.decode(packet):
            got = read_stamp(decoded.to_ndarray(format="rgb24"))
            assert got in (stamp, None)  # never a wrong time
            read += got == stamp
    assert read >= 0.95 * len(frames), f"{read} of {len(frames)} stamps read"


def _through_output(stamp_frames: bool, capture_times: list[float | None]
                    ) -> list[FrameStamp | None]:
    """Push a frame with each capture time through a StreamOutput; the stamps its viewers get."""
    async def run() -> list[FrameStamp | None]:
        output = StreamOutput("s", stamp_frames=stamp_frames)
        push = output.sink(20.0)
        picture = generate_video("photos", seed=5, size=64, frames=2)[0]
        for index, capture_time in enumerate(capture_times):
            push(index, picture, capture_time)
        frames = [await output.track.recv() for _ in capture_times]
        output.close()
        return [read_stamp(frame.to_ndarray(format="rgb24")) for frame in frames]

    return asyncio.run(run())


def test_the_edge_stamps_the_viewers_frames_that_have_a_capture_time_when_asked():
    before = time.time()
    stamped, unstamped = _through_output(True, [before - 0.25, None])
    assert unstamped is None  # no keypoint set yet: nothing to stamp
    assert stamped is not None and stamped.capture_ms == stamp_ms(before - 0.25)
    assert 0 <= ms_between(stamp_ms(before), stamped.sent_ms) < 1000
    assert _through_output(False, [before]) == [None]
