"""Protocol messages, their msgpack layout and validation (protocol/README.md is the spec)."""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from .bitstream import read_varint, unzigzag, write_varint, zigzag
from .errors import (
    InvalidField,
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from .keypoint_codec import MAX_KEYPOINTS
from .keypoint_stream import CODEC_IDS, CODEC_NAMES, CODECS_BY_ID

PROTOCOL_VERSION: int = 4
MAX_MESSAGE_BYTES: int = 16384  # no encoded message may exceed this (SCTP-safe)

MAX_FRAME_INDEX = 2**53 - 1  # also the largest Feedback counter (exact in a JavaScript number)
MAX_FPS = 240.0
MAX_GROUP = MAX_KEYPOINTS  # observe + predict <= 64
MAX_RENDER_EVERY = 16
MIN_FRAME_SIZE, MAX_FRAME_SIZE = 16, 1024
MAX_MODEL_ID_CHARS = 128
MAX_REASON_CHARS = 256
MAX_CAPTURE_OFFSET_MS = 2**31 - 1  # |capture time - nominal time|: about 24 days
BINARY_MARKER = 0xC1  # first byte of a binary (Keypoints) message; never starts msgpack
IMAGE_FORMATS = ("jpeg", "webp")
MAX_IMAGE_ID = 2**32 - 1
MAX_CHUNKS = 1024
MAX_IMAGE_BYTES = 8 * 1024 * 1024
CHUNK_OVERHEAD_BYTES = 32  # the most a SourceImageChunk message adds to its data
MAX_CHUNK_DATA_BYTES = MAX_MESSAGE_BYTES - CHUNK_OVERHEAD_BYTES
STREAM_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a stream's name: what viewers ask for
STREAM_NAME_RULE = "1-64 characters of [A-Za-z0-9_.-]"


@dataclass(frozen=True)
class Hello:
    """Sender -> receiver, first on ctrl: what the stream is."""

    stream: str
    fps: float
    observe: int  # M: observed frames per group
    predict: int  # N: predicted (not sent) frames per group
    frame_size: int
    num_kp: int
    model_id: str
    codec: str  # keypoint codec name: "f16", "q12" or "delta"
    start_time: float  # sender wall clock at frame 0, seconds since the epoch

    def nominal_time(self, frame_index: int) -> float:
        """When frame ``frame_index`` is due by the stream's clock."""
        return self.start_time + frame_index / self.fps

    def capture_offset_ms(self, frame_index: int, capture_time: float) -> int:
        """A Keypoints ``capture_offset_ms``: capture time minus nominal time, in ms."""
        offset = round((capture_time - self.nominal_time(frame_index)) * 1000)
        return max(-MAX_CAPTURE_OFFSET_MS, min(MAX_CAPTURE_OFFSET_MS, offset))

    def capture_time(self, keypoints: Keypoints) -> float:
        """The sender's wall clock when ``keypoints``' frame was captured."""
        return self.nominal_time(keypoints.frame_index) + keypoints.capture_offset_ms / 1000


@dataclass(frozen=True)
class SourceImageChunk:
    image_id: int
    index: int
    count: int
    format: str  # "jpeg" | "webp"
    total_bytes: int
    crc32: int  # zlib.crc32 of the WHOLE image
    data: bytes


@dataclass(frozen=True)
class Keypoints:
    """One keypoint set, its payload coded by the stream's codec (a ``KeypointEncoder``;
    ``KeypointDecoder`` turns it back into a set)."""

    frame_index: int
    capture_offset_ms: int  # capture time - Hello.nominal_time(frame_index), milliseconds
    # frames the sender skips after this one before its next set: N after the last observed
    # frame of a group, 0 inside a run of observed frames
    skip_after: int
    codec: str
    payload: bytes


@dataclass(frozen=True)
class Feedback:
    """Receiver -> sender on ctrl: counters since the session started, and how many frames the
    receiver renders now (an overloaded one asks the sender to predict more)."""

    received: int
    lost: int
    predicted: int
    prediction_error: float | None
    late: int = 0  # sets that came after their frame was played from a prediction
    render_every: int = 1  # the receiver renders every k-th frame (1: all)


@dataclass(frozen=True)
class SourceRequest:
    """Receiver -> sender: (re)send the source image."""

    reason: str


@dataclass(frozen=True)
class IntraRequest:
    """Receiver -> sender: make the next keypoint payload self-contained (``delta`` codec: a
    reference was lost)."""

    reason: str


@dataclass(frozen=True)
class Bye:
    """Either side ends the session. From a sender, `last_frame_index` is the stream's last
    frame, so the edge plays (and predicts) through it before it stops."""

    reason: str
    last_frame_index: int | None = None


Message = (Hello | SourceImageChunk | Keypoints | Feedback | SourceRequest | Bye
           | IntraRequest)

_TYPE_CODES: dict[type, int] = {Hello: 1, SourceImageChunk: 2, Keypoints: 3, Feedback: 4,
                                SourceRequest: 5, Bye: 6, IntraRequest: 7}
_TYPES_BY_CODE = {code: cls for cls, code in _TYPE_CODES.items()}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    """Type and range checks of one message's fields. A wrong type raises ``bad_type``
    (MalformedMessage when decoding, InvalidField when encoding); a bad value InvalidField."""

    def __init__(self, message: str, bad_type: type[ProtocolError]) -> None:
        self.message = message
        self.bad_type = bad_type

    def _wrong_type(self, name: str, expected: str, value: Any) -> ProtocolError:
        return self.bad_type(f"{self.message}.{name}: expected {expected}, "
                             f"got {type(value).__name__} {_show(value)}")

    def invalid(self, name: str, why: str) -> InvalidField:
        return InvalidField(f"{self.message}.{name}: {why}")

    def integer(self, name: str, value: Any, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self._wrong_type(name, "an integer", value)
        value = int(value)
        if not lo <= value <= hi:
            raise self.invalid(name, f"{_show(value)} out of range [{lo}, {hi}]")
        return value

    def number(self, name: str, value: Any, lo: float, hi: float, *,
               lo_open: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self._wrong_type(name, "a number", value)
        try:
            number = float(value)
        except OverflowError:
            raise self.invalid(name, f"{_show(value)} is too large") from None
        if not math.isfinite(number):
            raise self.invalid(name, f"{number} is not a finite number")
        if not (lo < number if lo_open else lo <= number) or not number <= hi:
            interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
            raise self.invalid(name, f"{number} out of range {interval}")
        return number

    def text(self, name: str, value: Any, max_chars: int) -> str:
        if not isinstance(value, str):
            raise self._wrong_type(name, "a string", value)
        if len(value) > max_chars:
            raise self.invalid(name, f"{len(value)} characters, at most {max_chars} allowed")
        return value

    def binary(self, name: str, value: Any, lo: int, hi: int) -> bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise self._wrong_type(name, "bytes", value)
        value = bytes(value)
        if not lo <= len(value) <= hi:
            raise self.invalid(name, f"{len(value)} bytes, out of range [{lo}, {hi}]")
        return value

    def choice(self, name: str, value: Any, choices: tuple[str, ...] | dict[str, Any]) -> str:
        value = self.text(name, value, 64)
        if value not in choices:
            raise self.invalid(name, f"unknown {_show(value)} (known: {', '.join(choices)})")
        return value


def _group(observe: Any, predict: Any, c: _Checker) -> tuple[int, int]:
    observe = c.integer("observe", observe, 1, MAX_GROUP)
    predict = c.integer("predict", predict, 0, MAX_GROUP - 1)
    if observe + predict > MAX_GROUP:
        raise c.invalid("predict", f"observe + predict = {observe + predict} is more than "
                                   f"{MAX_GROUP}")
    return observe, predict


def _hello(m: Hello, c: _Checker) -> Hello:
    stream = c.text("stream", m.stream, 64)
    if not STREAM_NAME_RE.fullmatch(stream):
        raise c.invalid("stream", f"{_show(stream)} is not {STREAM_NAME_RULE}")
    observe, predict = _group(m.observe, m.predict, c)
    return Hello(stream=stream,
                 fps=c.number("fps", m.fps, 0.0, MAX_FPS, lo_open=True),
                 observe=observe, predict=predict,
                 frame_size=c.integer("frame_size", m.frame_size, MIN_FRAME_SIZE, MAX_FRAME_SIZE),
                 num_kp=c.integer("num_kp", m.num_kp, 1, MAX_KEYPOINTS),
                 model_id=c.text("model_id", m.model_id, MAX_MODEL_ID_CHARS),
                 codec=c.choice("codec", m.codec, CODEC_NAMES),
                 start_time=c.number("start_time", m.start_time, 0.0, math.inf))


def _chunk(m: SourceImageChunk, c: _Checker) -> SourceImageChunk:
    count = c.integer("count", m.count, 1, MAX_CHUNKS)
    index = c.integer("index", m.index, 0, MAX_CHUNKS - 1)
    if index >= count:
        raise c.invalid("index", f"{index} is not less than count {count}")
    total_bytes = c.integer("total_bytes", m.total_bytes, 1, MAX_IMAGE_BYTES)
    if count > total_bytes:
        raise c.invalid("count", f"{count} chunks for an image of {total_bytes} bytes")
    return SourceImageChunk(image_id=c.integer("image_id", m.image_id, 0, MAX_IMAGE_ID),
                            index=index, count=count,
                            format=c.choice("format", m.format, IMAGE_FORMATS),
                            total_bytes=total_bytes,
                            crc32=c.integer("crc32", m.crc32, 0, 2**32 - 1),
                            data=c.binary("data", m.data, 1,
                                         min(total_bytes, MAX_CHUNK_DATA_BYTES)))


def _feedback(m: Feedback, c: _Checker) -> Feedback:
    error = m.prediction_error
    return Feedback(received=c.integer("received", m.received, 0, MAX_FRAME_INDEX),
                    lost=c.integer("lost", m.lost, 0, MAX_FRAME_INDEX),
                    predicted=c.integer("predicted", m.predicted, 0, MAX_FRAME_INDEX),
                    prediction_error=None if error is None else
                    c.number("prediction_error", error, 0.0, math.inf),
                    late=c.integer("late", m.late, 0, MAX_FRAME_INDEX),
                    render_every=c.integer("render_every", m.render_every, 1, MAX_RENDER_EVERY))


def _source_request(m: SourceRequest, c: _Checker) -> SourceRequest:
    return SourceRequest(reason=c.text("reason", m.reason, MAX_REASON_CHARS))


def _bye(m: Bye, c: _Checker) -> Bye:
    last = m.last_frame_index
    return Bye(reason=c.text("reason", m.reason, MAX_REASON_CHARS),
               last_frame_index=None if last is None else
               c.integer("last_frame_index", last, 0, MAX_FRAME_INDEX))


def _intra_request(m: IntraRequest, c: _Checker) -> IntraRequest:
    return IntraRequest(reason=c.text("reason", m.reason, MAX_REASON_CHARS))


def _keypoints(m: Keypoints, c: _Checker) -> Keypoints:
    return Keypoints(
        frame_index=c.integer("frame_index", m.frame_index, 0, MAX_FRAME_INDEX),
        capture_offset_ms=c.integer("capture_offset_ms", m.capture_offset_ms,
                                    -MAX_CAPTURE_OFFSET_MS, MAX_CAPTURE_OFFSET_MS),
        skip_after=c.integer("skip_after", m.skip_after, 0, MAX_GROUP - 1),
        codec=c.choice("codec", m.codec, CODEC_NAMES),
        payload=c.binary("payload", m.payload, 1, MAX_MESSAGE_BYTES - KEYPOINTS_MAX_HEADER))


_CHECKS = {Hello: _hello, SourceImageChunk: _chunk, Keypoints: _keypoints, Feedback: _feedback,
           SourceRequest: _source_request, Bye: _bye, IntraRequest: _intra_request}
# marker, version and codec, frame_index (8), capture_offset_ms (5), skip_after
KEYPOINTS_MAX_HEADER = 1 + 1 + 8 + 5 + 1


def validate_message(msg: Message) -> Message:
    """The message with its scalar fields normalised to plain Python types (numpy scalars ->
    int, float; bytearray -> bytes); InvalidField if a receiver would reject it."""
    check = _CHECKS.get(type(msg))
    if check is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return check(msg, _Checker(type(msg).__name__, InvalidField))


def _encode_keypoints(m: Keypoints) -> bytes:
    return b"".join((bytes((BINARY_MARKER, PROTOCOL_VERSION << 4 | CODEC_IDS[m.codec])),
                     write_varint(m.frame_index), write_varint(zigzag(m.capture_offset_ms)),
                     bytes((m.skip_after,)), m.payload))


def encode_message(msg: Message) -> bytes:
    """Keypoints: the binary layout; any other message: msgpack array [PROTOCOL_VERSION, type
    code, fields...]. InvalidField for bad values."""
    msg = validate_message(msg)
    if isinstance(msg, Keypoints):
        return _encode_keypoints(msg)
    body = [getattr(msg, f.name) for f in fields(msg)]
    return msgpack.packb([PROTOCOL_VERSION, _TYPE_CODES[type(msg)], *body], use_bin_type=True)


def _decode_keypoints(data: bytes) -> Keypoints:
    if len(data) < 2:
        raise MalformedMessage("a binary message of 1 byte")
    version, codec_id = data[1] >> 4, data[1] & 0x0F
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {version}, this side speaks "
                                 f"{PROTOCOL_VERSION}")
    codec = CODECS_BY_ID.get(codec_id)
    if codec is None:
        raise InvalidField(f"Keypoints.codec: unknown codec id {codec_id} (known: " + ", ".join(
            f"{i} {name}" for i, name in CODECS_BY_ID.items()) + ")")
    try:
        frame_index, at = read_varint(data, 2, "frame_index")
        offset_code, at = read_varint(data, at, "capture_offset_ms", max_bytes=5)
    except InvalidField as exc:
        raise MalformedMessage(f"Keypoints.{exc}") from None
    if at >= len(data):
        raise MalformedMessage("Keypoints: the message ends before skip_after")
    message = Keypoints(frame_index, unzigzag(offset_code), data[at], codec, data[at + 1:])
    return _keypoints(message, _Checker("Keypoints", MalformedMessage))


def decode_message(data: bytes) -> Message:
    """Parse and validate one message. Raises MessageTooLarge, MalformedMessage,
    UnsupportedVersion or InvalidField (all ProtocolError) naming the field and value."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedMessage(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message of {len(data)} bytes, at most {MAX_MESSAGE_BYTES} "
                              "allowed")
    if data[:1] == bytes((BINARY_MARKER,)):
        return _decode_keypoints(data)
    try:
        obj = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise MalformedMessage(f"not a msgpack value ({why})") from None
    if not isinstance(obj, list) or not obj:
        raise MalformedMessage(f"expected a msgpack array [version, type, fields...], got "
                               f"{type(obj).__name__} {_show(obj)}")
    version = obj[0]
    if isinstance(version, bool) or not isinstance(version, int):
        raise MalformedMessage(f"version: expected an integer, got {_show(version)}")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {version}, this side speaks "
                                 f"{PROTOCOL_VERSION}")
    if len(obj) < 2:
        raise MalformedMessage("message has no type code")
    code = obj[1]
    if isinstance(code, bool) or not isinstance(code, int):
        raise MalformedMessage(f"type: expected an integer, got {_show(code)}")
    cls = _TYPES_BY_CODE.get(code)
    if cls is None or cls is Keypoints:
        why = "Keypoints are binary messages" if cls is Keypoints else "unknown"
        raise InvalidField(f"type: message type code {code} ({why})")
    body = obj[2:]
    if len(body) != len(fields(cls)):
        raise MalformedMessage(f"{cls.__name__}: expected {len(fields(cls))} fields after "
                               f"version and type, got {len(body)}")
    return _CHECKS[cls](cls(*body), _Checker(cls.__name__, MalformedMessage))
