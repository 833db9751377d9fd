"""The source image: JPEG/WebP coding, and its transfer in SourceImageChunk messages."""

from __future__ import annotations

import logging
import math
import struct
import zlib

import cv2
import numpy as np

from .errors import InvalidField, MalformedMessage
from .messages import (
    IMAGE_FORMATS,
    MAX_CHUNK_DATA_BYTES,
    MAX_CHUNKS,
    MAX_IMAGE_BYTES,
    SourceImageChunk,
    validate_message,
)

log = logging.getLogger(__name__)

MAX_SOURCE_PIXELS = 4096 * 4096  # width * height; larger images are refused before decoding
_CV2_EXTENSION = {"jpeg": ".jpg", "webp": ".webp"}
_CV2_QUALITY = {"jpeg": cv2.IMWRITE_JPEG_QUALITY, "webp": cv2.IMWRITE_WEBP_QUALITY}
# JPEG start-of-frame markers (all but DHT C4, JPG C8 and DAC CC in C0..CF).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])


def _check_format(fmt: str) -> None:
    if fmt not in IMAGE_FORMATS:
        raise InvalidField(f"format: unknown {fmt!r} (known: {', '.join(IMAGE_FORMATS)})")


def encode_source_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """HxWx3 uint8 RGB -> JPEG or WebP bytes. ``quality`` 1..100."""
    _check_format(fmt)
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
            or rgb.shape[2] != 3 or rgb.size == 0:
        raise InvalidField(f"image: expected an HxWx3 uint8 array, got "
                           f"{getattr(rgb, 'dtype', type(rgb).__name__)} "
                           f"{getattr(rgb, 'shape', '')}")
    height, width = rgb.shape[:2]
    if width * height > MAX_SOURCE_PIXELS:
        raise InvalidField(f"image: {width}x{height} is more than {MAX_SOURCE_PIXELS} pixels")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidField(f"quality: expected an integer in [1, 100], got {quality!r}")
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    try:
        ok, buffer = cv2.imencode(_CV2_EXTENSION[fmt], bgr, [_CV2_QUALITY[fmt], quality])
    except cv2.error as exc:
        raise InvalidField(f"image: {fmt} encoding failed: {exc}") from None
    if not ok:
        raise InvalidField(f"image: {fmt} encoding failed for a {width}x{height} image")
    return buffer.tobytes()


def _jpeg_size(data: bytes) -> tuple[int, int]:
    if not data.startswith(b"\xff\xd8"):
        raise MalformedMessage("not a JPEG image (no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, pos + 5)
            return width, height
        else:
            (length,) = struct.unpack_from(">H", data, pos + 2)
            if length < 2 or marker in (0xD9, 0xDA):  # end of image, start of scan
                break
            pos += 2 + length
    raise MalformedMessage("JPEG image without a readable frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise MalformedMessage("not a WebP image (no RIFF/WEBP header)")
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit sizes minus one
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    raise MalformedMessage(f"WebP image with an unreadable first chunk {chunk!r}")


def decode_source_image(data: bytes, fmt: str) -> np.ndarray:
    """JPEG or WebP bytes -> HxWx3 uint8 RGB. MalformedMessage if the bytes are not an image
    of that format, InvalidField if it is too large or not 3-channel."""
    _check_format(fmt)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidField(f"image: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    width, height = _jpeg_size(data) if fmt == "jpeg" else _webp_size(data)
    if width * height > MAX_SOURCE_PIXELS:
        raise InvalidField(f"image: {width}x{height} is more than {MAX_SOURCE_PIXELS} pixels")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise MalformedMessage(f"image: {len(data)} bytes of undecodable {fmt} data")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        channels = 1 if image.ndim == 2 else image.shape[2]
        raise InvalidField(f"image: expected 3 channels of 8 bits, got {channels} of "
                           f"{image.dtype}")
    return np.ascontiguousarray(image[:, :, ::-1])


def split_source_image(image_id: int, data: bytes, fmt: str,
                       chunk_bytes: int = 12000) -> list[SourceImageChunk]:
    """Chunks of at most ``chunk_bytes`` (<= MAX_CHUNK_DATA_BYTES) of data each, so that every
    encoded chunk message fits in MAX_MESSAGE_BYTES. Use a new image_id for every send."""
    _check_format(fmt)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidField(f"image: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not 1 <= len(data) <= MAX_IMAGE_BYTES:
        raise InvalidField(f"image: {len(data)} bytes, out of range [1, {MAX_IMAGE_BYTES}]")
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) \
            or not 1 <= chunk_bytes <= MAX_CHUNK_DATA_BYTES:
        raise InvalidField(f"chunk_bytes: {chunk_bytes!r} out of range "
                           f"[1, {MAX_CHUNK_DATA_BYTES}]")
    count = math.ceil(len(data) / chunk_bytes)
    if count > MAX_CHUNKS:
        raise InvalidField(f"image: {len(data)} bytes need {count} chunks of {chunk_bytes} "
                           f"bytes, more than {MAX_CHUNKS}")
    crc = zlib.crc32(data)
    return [validate_message(SourceImageChunk(image_id, index, count, fmt, len(data), crc,
                                              data[index * chunk_bytes:(index + 1) * chunk_bytes]))
            for index in range(count)]


class SourceImageAssembler:
    """Puts one stream's source images back together from their chunks, in any order.

    A chunk of another image_id than the one being assembled discards the partial image.
    Repeated chunks, and chunks of the image just completed, are ignored, so each send of an
    image needs a new image_id. An inconsistent chunk or a CRC mismatch discards the partial
    image and raises InvalidField.
    """

    def __init__(self) -> None:
        self._header: tuple[int, int, str, int, int] | None = None  # id, count, fmt, total, crc
        self._parts: dict[int, bytes] = {}
        self._received = 0
        self._completed: int | None = None

    def _discard(self) -> None:
        self._header = None
        self._parts = {}
        self._received = 0

    def _fail(self, why: str) -> InvalidField:
        image_id = self._header[0] if self._header else None
        self._discard()
        return InvalidField(f"source image {image_id}: {why}")

    def add(self, chunk: SourceImageChunk) -> bytes | None:
        """The whole image's bytes once its last chunk is in and its CRC matches, else None."""
        if not isinstance(chunk, SourceImageChunk):
            raise TypeError(f"expected a SourceImageChunk, got {type(chunk).__name__}")
        chunk = validate_message(chunk)
        if chunk.image_id == self._completed:
            return None
        header = (chunk.image_id, chunk.count, chunk.format, chunk.total_bytes, chunk.crc32)
        if self._header is None or self._header[0] != chunk.image_id:
            if self._parts:
                log.debug("source image %d discarded incomplete (%d of %d chunks) for image %d",
                          self._header[0], len(self._parts), self._header[1], chunk.image_id)
            self._discard()
            self._header = header
        elif header != self._header:
            raise self._fail(f"chunk {chunk.index} says (count, format, total_bytes, crc32) = "
                             f"{header[1:]}, earlier chunks said {self._header[1:]}")
        earlier = self._parts.get(chunk.index)
        if earlier is not None:
            if earlier != chunk.data:
                raise self._fail(f"chunk {chunk.index} repeated with different data")
            return None
        self._parts[chunk.index] = chunk.data
        self._received += len(chunk.data)
        if self._received > chunk.total_bytes:
            raise self._fail(f"chunks hold more than total_bytes {chunk.total_bytes}")
        if len(self._parts) < chunk.count:
            return None
        if self._received != chunk.total_bytes:
            raise self._fail(f"chunks hold {self._received} bytes, total_bytes says "
                             f"{chunk.total_bytes}")
        image = b"".join(self._parts[index] for index in range(chunk.count))
        if zlib.crc32(image) != chunk.crc32:
            raise self._fail(f"crc32 {zlib.crc32(image):#010x} of the image does not match "
                             f"{chunk.crc32:#010x}")
        self._discard()
        self._completed = chunk.image_id
        return image
