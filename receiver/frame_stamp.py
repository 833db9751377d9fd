"""A machine-readable time stamp drawn into a video frame, for measuring glass-to-glass latency.

``kpvid-receive --stamp-frames`` draws one into every frame its viewers get (never into the
recording): a strip of black and white blocks along the bottom of the picture, ``ROWS`` rows of
``COLUMNS`` blocks, one bit each, row by row, left to right, most significant bit first. A block
is ``width // COLUMNS`` pixels wide and half that high, at least 2 (8x4 at 256x256, 2x2 at
64x64): low enough that the strip fills no 16x16 macroblock of the picture by itself (aiortc's
VP8 encoder, with its temporal denoiser on, left some blocks of a 24-pixel strip stale on about
one frame in ten at 256x256):

- ``MARKER`` (16 bits), a fixed pattern;
- the sender's capture time of the frame (32 bits: milliseconds since the epoch, low 32 bits);
- the edge's wall-clock time when the frame left it (32 bits, the same way);
- a CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF) of the 10 bytes before it.

A block is white (255 on every channel) for 1 and black for 0; a reader averages the middle of
each block and thresholds it at mid-grey. A frame whose marker or checksum does not match has
no stamp (unstamped, or damaged by the codec). The viewer page (static/viewer.html) reads the
stamp the same way in JavaScript; the two must change together.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import numpy as np

COLUMNS = 32
ROWS = 3
MARKER = 0xC5A3
BITS = COLUMNS * ROWS  # 16 marker + 32 + 32 + 16 checksum
_WRAP = 1 << 32


@dataclass(frozen=True)
class FrameStamp:
    """What a stamp carries: two wall-clock times in milliseconds, low 32 bits."""

    capture_ms: int  # the sender's capture time of the frame
    sent_ms: int  # when the frame left the edge


def stamp_ms(seconds: float) -> int:
    """Wall-clock ``seconds`` since the epoch as a stamp's milliseconds (low 32 bits)."""
    return round(seconds * 1000) % _WRAP


def ms_between(earlier: int, later: int) -> int:
    """``later - earlier`` for two stamp times, across the 32-bit wrap (-2**31 .. 2**31-1)."""
    return (later - earlier + (1 << 31)) % _WRAP - (1 << 31)


def block_size(width: int) -> tuple[int, int]:
    """(width, height) of a stamp block in pixels for frames ``width`` wide."""
    block_width = width // COLUMNS
    return block_width, max(2, block_width // 2)


def strip_height(width: int) -> int:
    """How many rows at the bottom of a frame ``width`` wide the stamp covers."""
    return ROWS * block_size(width)[1]


def can_stamp(width: int, height: int) -> bool:
    """Whether a ``width`` x ``height`` frame is large enough to carry a stamp."""
    return width >= 2 * COLUMNS and height >= 2 * strip_height(width)


def _checksum(payload: bytes) -> int:
    return binascii.crc_hqx(payload, 0xFFFF)


def _bits(stamp: FrameStamp) -> np.ndarray:
    payload = (MARKER.to_bytes(2, "big") + (stamp.capture_ms % _WRAP).to_bytes(4, "big")
               + (stamp.sent_ms % _WRAP).to_bytes(4, "big"))
    data = payload + _checksum(payload).to_bytes(2, "big")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8))


def draw_stamp(rgb: np.ndarray, stamp: FrameStamp) -> np.ndarray:
    """A copy of uint8 H x W x 3 ``rgb`` with ``stamp`` drawn along its bottom rows.
    ValueError for a frame too small to carry one (under 2 * COLUMNS pixels wide, or not as
    high as the strip)."""
    height, width = rgb.shape[:2]
    if not can_stamp(width, height):
        raise ValueError(f"a {width}x{height} frame is too small for a stamp "
                         f"(at least {2 * COLUMNS} pixels wide)")
    block_width, block_height = block_size(width)
    blocks = _bits(stamp).reshape(ROWS, COLUMNS) * np.uint8(255)
    strip = np.repeat(np.repeat(blocks, block_height, axis=0), block_width, axis=1)
    out = rgb.copy()
    out[height - strip.shape[0]:, :strip.shape[1]] = strip[:, :, None]
    return out


def read_stamp(rgb: np.ndarray) -> FrameStamp | None:
    """The stamp of uint8 H x W x 3 ``rgb`` (as decoded), or None when it carries none or
    the stamp is damaged."""
    height, width = rgb.shape[:2]
    if not can_stamp(width, height):
        return None
    block_width, block_height = block_size(width)
    strip = rgb[height - ROWS * block_height:, :COLUMNS * block_width]
    cells = strip.astype(np.float32).mean(axis=2).reshape(ROWS, block_height, COLUMNS,
                                                          block_width)
    # the middle of each block: codec ringing is at its edges
    across, down = block_width // 4, block_height // 4
    cells = cells[:, down:block_height - down, :, across:block_width - across]
    bits = (cells.mean(axis=(1, 3)) > 127.5).astype(np.uint8).ravel()
    data = np.packbits(bits).tobytes()
    if int.from_bytes(data[:2], "big") != MARKER or \
            _checksum(data[:10]) != int.from_bytes(data[10:], "big"):
        return None
    return FrameStamp(capture_ms=int.from_bytes(data[2:6], "big"),
                      sent_ms=int.from_bytes(data[6:10], "big"))
