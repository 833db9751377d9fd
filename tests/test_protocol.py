"""kpvid.protocol: message round trips and validation, keypoint codecs, source image transfer."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kpvid.protocol import (
    CODEC_NAMES,
    KEYPOINT_CODECS,
    MAX_CHUNK_DATA_BYTES,
    MAX_MESSAGE_BYTES,
    Bye,
    Feedback,
    Hello,
    IntraRequest,
    InvalidField,
    Keypoints,
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    SourceImageAssembler,
    SourceImageChunk,
    SourceRequest,
    UnsupportedVersion,
    decode_message,
    decode_source_image,
    encode_message,
    encode_source_image,
    split_source_image,
    validate_message,
)

README = Path(__file__).resolve().parents[1] / "protocol" / "README.md"
FAST = settings(max_examples=150, deadline=None)
# Documented worst-case errors (protocol/README.md).
Q12_VALUE_ERROR, Q12_JACOBIAN_ERROR = 1.25 / 4095, 8.0 / 4095
F16_UNIT_ERROR = 2.0**-12  # |x| <= 1

HELLO = Hello(stream="cam-1", fps=30.0, observe=1, predict=1, frame_size=64, num_kp=10,
              model_id="kpvid-faces-64", codec="q12", start_time=1.7e9)
RNG = np.random.default_rng(0)
VALUE = RNG.uniform(-1, 1, (10, 2))
JACOBIAN = RNG.uniform(-4, 4, (10, 2, 2))
Q12_PAYLOAD = KEYPOINT_CODECS["q12"].encode(VALUE, JACOBIAN)
KEYPOINTS = Keypoints(frame_index=1234, capture_offset_ms=-3, skip_after=0, codec="q12",
                      payload=Q12_PAYLOAD)
CHUNK = SourceImageChunk(image_id=3, index=1, count=2, format="jpeg", total_bytes=7,
                         crc32=123456, data=b"\x00\x01\x02")
FEEDBACK = Feedback(received=100, lost=2, predicted=98, prediction_error=0.0125)
EXAMPLES = [HELLO, KEYPOINTS, CHUNK, FEEDBACK, Feedback(0, 0, 0, None),
            SourceRequest("decode failed"), SourceRequest(""), Bye("user closed the tab"),
            Bye("end of clip", last_frame_index=299), IntraRequest("lost frame 7")]
MESSAGE_TYPES = (Hello, SourceImageChunk, Keypoints, Feedback, SourceRequest, Bye, IntraRequest)


def raw(*fields: object) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def wire(msg: object) -> list:
    return msgpack.unpackb(encode_message(msg), raw=False)


# --- strategies -----------------------------------------------------------------------------

stream_names = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)
uint53 = st.integers(0, 2**53 - 1)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    observe = draw(st.integers(1, 64))
    return Hello(stream=draw(stream_names),
                 fps=draw(st.floats(0, 240, exclude_min=True)),
                 observe=observe, predict=draw(st.integers(0, 64 - observe)),
                 frame_size=draw(st.integers(16, 1024)), num_kp=draw(st.integers(1, 64)),
                 model_id=draw(st.text(max_size=128)), codec=draw(st.sampled_from(CODEC_NAMES)),
                 start_time=draw(st.floats(0, 1e12)))


@st.composite
def chunks(draw: st.DrawFn) -> SourceImageChunk:
    count = draw(st.integers(1, 1024))
    total = draw(st.integers(count, 8 * 1024 * 1024))
    return SourceImageChunk(image_id=draw(st.integers(0, 2**32 - 1)),
                            index=draw(st.integers(0, count - 1)), count=count,
                            format=draw(st.sampled_from(["jpeg", "webp"])), total_bytes=total,
                            crc32=draw(st.integers(0, 2**32 - 1)),
                            data=draw(st.binary(min_size=1, max_size=min(total, 300))))


@st.composite
def keypoint_sets(draw: st.DrawFn, codec: str) -> tuple[np.ndarray, np.ndarray]:
    """value/jacobian of any float dtype; q12 sets include numbers outside its ranges."""
    num_kp = draw(st.integers(1, 64))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    width = np.finfo(dtype).bits
    limit = 2.0 if codec == "q12" else 1.0
    value = draw(arrays(dtype, (num_kp, 2), elements=st.floats(-limit, limit, width=width)))
    jacobian = draw(arrays(dtype, (num_kp, 2, 2), elements=st.floats(-20, 20, width=width)))
    return value, jacobian


keypoints = st.builds(Keypoints, uint53, st.integers(-(2**31) + 1, 2**31 - 1),
                      st.integers(0, 63), st.sampled_from(CODEC_NAMES),
                      st.binary(min_size=1, max_size=300))
messages = st.one_of(
    hellos(), chunks(), keypoints, st.builds(IntraRequest, st.text(max_size=256)),
    st.builds(Feedback, uint53, uint53, uint53, st.none() | st.floats(0, 1e300)),
    st.builds(SourceRequest, st.text(max_size=256)), st.builds(Bye, st.text(max_size=256),
              st.none() | st.integers(0, 2**53 - 1)))
msgpack_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
                   | st.text(max_size=80) | st.binary(max_size=80))
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: (st.lists(children, max_size=8)
                      | st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12)


def decodes_or_rejects(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except ProtocolError:
        return
    assert isinstance(msg, MESSAGE_TYPES)
    assert decode_message(encode_message(msg)) == msg


# --- round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_every_message_type(msg: object) -> None:
    data = encode_message(msg)
    assert isinstance(data, bytes) and len(data) <= MAX_MESSAGE_BYTES
    assert decode_message(data) == msg
    assert decode_message(bytearray(data)) == msg


@FAST
@given(messages)
def test_round_trip_random_messages(msg: object) -> None:
    data = encode_message(msg)
    assert len(data) <= MAX_MESSAGE_BYTES
    decoded = decode_message(data)
    assert decoded == msg
    assert encode_message(decoded) == data  # decoding loses nothing the encoding kept


def test_wire_layout_is_a_compact_array() -> None:
    assert wire(HELLO) == [4, 1, "cam-1", 30.0, 1, 1, 64, 10, "kpvid-faces-64", "q12", 1.7e9]
    assert wire(CHUNK) == [4, 2, 3, 1, 2, "jpeg", 7, 123456, b"\x00\x01\x02"]
    assert wire(FEEDBACK) == [4, 4, 100, 2, 98, 0.0125, 0, 1]
    assert wire(SourceRequest("x")) == [4, 5, "x"] and wire(Bye("y")) == [4, 6, "y", None]
    assert wire(IntraRequest("z")) == [4, 7, "z"]


def test_keypoints_binary_layout_matches_the_spec() -> None:
    # marker, version 4 | codec 2, frame_index 1234 as LEB128, zigzag(-3) = 5, skip_after 0
    assert encode_message(KEYPOINTS) == b"\xc1\x42\xd2\x09\x05\x00" + Q12_PAYLOAD
    data = encode_message(Keypoints(2**53 - 1, 2**31 - 1, 63, "delta", b"\x80"))
    assert data[:2] == b"\xc1\x43" and data[-2:] == b"\x3f\x80" and len(data) == 2 + 8 + 5 + 2


def test_capture_time_travels_as_an_offset_from_the_nominal_time() -> None:
    offset = HELLO.capture_offset_ms(1234, 1.7e9 + 1234 / 30 - 0.003)
    assert offset == -3
    assert HELLO.capture_time(KEYPOINTS) == pytest.approx(1.7e9 + 1234 / 30 - 0.003, abs=1e-6)
    assert HELLO.capture_offset_ms(0, 0.0) == -(2**31 - 1)  # clamped to the wire range


def test_encode_normalises_numpy_scalars_and_array_likes() -> None:
    hello = Hello("s", np.float32(25), np.int64(2), np.int32(1), np.int16(64), np.uint8(10), "",
                  "f16", np.float64(5))
    decoded = decode_message(encode_message(hello))
    assert decoded == Hello("s", 25.0, 2, 1, 64, 10, "", "f16", 5.0) == validate_message(hello)
    assert type(decoded.observe) is int and type(decoded.fps) is float
    kp = Keypoints(np.int64(5), np.int16(-2), np.uint8(1), "f16", bytearray(b"ab"))
    normalised = validate_message(kp)
    assert decode_message(encode_message(kp)) == normalised == Keypoints(5, -2, 1, "f16", b"ab")
    assert type(normalised.frame_index) is int and type(normalised.payload) is bytes
    chunk = SourceImageChunk(0, 0, 1, "webp", 2, 0, bytearray(b"ab"))
    assert decode_message(encode_message(chunk)).data == b"ab"


def test_decoder_accepts_integers_and_float32_for_float_fields() -> None:
    # JavaScript msgpack encoders write 30.0 as the integer 30.
    assert decode_message(raw(4, 1, "a", 30, 1, 0, 64, 10, "m", "f16", 0)).fps == 30.0
    rest = b"".join(msgpack.packb(x) for x in (1, 0, 64, 10, "m", "f16", 0))
    data = b"\x9b\x04\x01\xa1a\xca" + np.array(12.5, ">f4").tobytes() + rest
    assert decode_message(data).fps == 12.5
    assert decode_message(raw(4, 4, 0, 0, 0, 0, 0, 1)).prediction_error == 0.0


# --- rejections -----------------------------------------------------------------------------

GOOD_HELLO = [4, 1, "cam", 30.0, 1, 1, 64, 10, "m", "q12", 1.7e9]
GOOD_CHUNK = wire(CHUNK)


def with_field(fields: list, position: int, value: object) -> bytes:
    fields = list(fields)
    fields[position] = value
    return raw(*fields)


@pytest.mark.parametrize(("data", "error", "match"), [
    (raw(1, 1, "cam"), UnsupportedVersion, "version 1"),
    (raw(0), UnsupportedVersion, "version 0"),
    (raw(True, 1), MalformedMessage, "version"),
    (raw("2", 1), MalformedMessage, "version"),
    (b"\x00" * (MAX_MESSAGE_BYTES + 1), MessageTooLarge, "16385"),
    (raw(4, 8, 120, 1, 4), InvalidField, "type code 8"),  # ScheduleChange, retired in 3
    (raw(4, 3, 0, 0, 0, 2, b"x"), InvalidField, "Keypoints are binary"),
    (raw(4, True), MalformedMessage, "type"),
    (raw(4), MalformedMessage, "type"),
    (raw(), MalformedMessage, "array"),
    (msgpack.packb({"version": 1}), MalformedMessage, "array"),
    (msgpack.packb(1), MalformedMessage, "array"),
    (b"", MalformedMessage, "msgpack"),
    (b"\xc1", MalformedMessage, "a binary message of 1 byte"),
    (b"\x91" * 5000 + b"\x00", MalformedMessage, "msgpack"),  # nested too deep
    (b"\x92\x01\x81\x91\x00\x00", MalformedMessage, "msgpack"),  # a list as a map key
    (b"\x93\x04\x01\xd4\xff\x00", MalformedMessage, "msgpack"),  # bad timestamp extension
    (b"\x93\x04\x05\xd6\xff\x00\x00\x00\x01", MalformedMessage, "reason"),  # timestamp
    (raw(*GOOD_HELLO) + b"\x00", MalformedMessage, "msgpack"),
    (raw(*GOOD_HELLO)[:-1], MalformedMessage, "msgpack"),
    (b"\x9b\x04\x01\xa3\xff\xfe\xfd" + raw(*GOOD_HELLO)[7:], MalformedMessage, "msgpack"),
    (raw(*GOOD_HELLO[:-1]), MalformedMessage, "expected 9 fields"),
    (raw(*GOOD_HELLO, "extra"), MalformedMessage, "expected 9 fields"),
    (with_field(GOOD_HELLO, 2, ""), InvalidField, "stream"),
    (with_field(GOOD_HELLO, 2, "a b"), InvalidField, "'a b'"),
    (with_field(GOOD_HELLO, 2, "a/b"), InvalidField, "stream"),
    (with_field(GOOD_HELLO, 2, "é"), InvalidField, "stream"),
    (with_field(GOOD_HELLO, 2, "a\n"), InvalidField, "stream"),
    (with_field(GOOD_HELLO, 2, "a" * 65), InvalidField, "stream"),
    (with_field(GOOD_HELLO, 2, b"cam"), MalformedMessage, "stream: expected a string"),
    (with_field(GOOD_HELLO, 3, 0.0), InvalidField, r"fps: 0.0 out of range \(0.0, 240.0\]"),
    (with_field(GOOD_HELLO, 3, 241), InvalidField, "fps: 241"),
    (with_field(GOOD_HELLO, 3, float("nan")), InvalidField, "fps: nan"),
    (with_field(GOOD_HELLO, 3, float("inf")), InvalidField, "fps: inf"),
    (with_field(GOOD_HELLO, 3, True), MalformedMessage, "fps: expected a number, got bool"),
    (with_field(GOOD_HELLO, 3, "30"), MalformedMessage, "fps"),
    (with_field(GOOD_HELLO, 4, 0), InvalidField, "observe: 0"),
    (with_field(GOOD_HELLO, 4, True), MalformedMessage, "observe: expected an integer, got bool"),
    (with_field(GOOD_HELLO, 4, 1.0), MalformedMessage, "observe"),
    (with_field(GOOD_HELLO, 5, -1), InvalidField, "predict: -1"),
    (with_field(GOOD_HELLO, 5, 64), InvalidField, "predict"),
    (with_field(GOOD_HELLO, 5, 2**64 - 1), InvalidField, "predict"),
    (raw(4, 1, "cam", 30.0, 40, 30, 64, 10, "m", "q12", 0), InvalidField,
     "observe \\+ predict = 70"),
    (with_field(GOOD_HELLO, 6, 15), InvalidField, "frame_size: 15"),
    (with_field(GOOD_HELLO, 6, 1025), InvalidField, "frame_size: 1025"),
    (with_field(GOOD_HELLO, 7, 0), InvalidField, "num_kp: 0"),
    (with_field(GOOD_HELLO, 7, 65), InvalidField, "num_kp: 65"),
    (with_field(GOOD_HELLO, 8, "m" * 129), InvalidField, "model_id: 129 characters"),
    (with_field(GOOD_HELLO, 8, None), MalformedMessage, "model_id"),
    (with_field(GOOD_HELLO, 9, "q99"), InvalidField, "codec: unknown 'q99'"),
    (with_field(GOOD_HELLO, 10, -1.0), InvalidField, "start_time: -1.0"),
    (with_field(GOOD_HELLO, 10, float("nan")), InvalidField, "start_time: nan"),
    (with_field(GOOD_HELLO, 10, None), MalformedMessage, "start_time"),
    (with_field(GOOD_CHUNK, 2, 2**32), InvalidField, "image_id"),
    (with_field(GOOD_CHUNK, 3, 2), InvalidField, "index: 2 is not less than count 2"),
    (with_field(GOOD_CHUNK, 4, 0), InvalidField, "count: 0"),
    (with_field(GOOD_CHUNK, 4, 1025), InvalidField, "count: 1025"),
    (with_field(GOOD_CHUNK, 4, 8), InvalidField, "count: 8 chunks for an image of 7 bytes"),
    (with_field(GOOD_CHUNK, 5, "png"), InvalidField, "format: unknown 'png'"),
    (with_field(GOOD_CHUNK, 6, 8 * 1024 * 1024 + 1), InvalidField, "total_bytes"),
    (with_field(GOOD_CHUNK, 6, 2), InvalidField, "data: 3 bytes"),
    (with_field(GOOD_CHUNK, 7, -5), InvalidField, "crc32: -5"),
    (with_field(GOOD_CHUNK, 8, b""), InvalidField, "data: 0 bytes"),
    (with_field(GOOD_CHUNK, 8, "abc"), MalformedMessage, "data"),
    (raw(4, 4, -1, 0, 0, None, 0, 1), InvalidField, "received: -1"),
    (raw(4, 4, 0, 0, False, None, 0, 1), MalformedMessage, "predicted"),
    (raw(4, 4, 0, 0, 0, -0.5, 0, 1), InvalidField, "prediction_error: -0.5"),
    (raw(4, 4, 0, 0, 0, float("nan"), 0, 1), InvalidField, "prediction_error: nan"),
    (raw(4, 4, 0, 0, 0, None, -1, 1), InvalidField, "late: -1"),
    (raw(4, 4, 0, 0, 0, None, 0, 0), InvalidField, "render_every: 0"),
    (raw(4, 4, 0, 0, 0, None), MalformedMessage, "expected 6 fields"),  # version 3's Feedback
    (raw(4, 5, "r" * 257), InvalidField, "reason: 257 characters"),
    (raw(4, 6, 1, None), MalformedMessage, "reason"),
    (raw(4, 6, "r", -1), InvalidField, "last_frame_index"),
    (raw(4, 7, 5), MalformedMessage, "reason"),
    (b"\xc1\x12\x00\x00\x00\x01", UnsupportedVersion, "version 1"),
    (b"\xc1\x47\x00\x00\x00\x01", InvalidField, "unknown codec id 7"),
    (b"\xc1\x42" + b"\x80" * 7 + b"\x10\x00\x00\x01", InvalidField, "frame_index: " + str(2**53)),
    (b"\xc1\x42\x80\x00\x00\x00\x01", MalformedMessage, "frame_index: not in its shortest"),
    (b"\xc1\x42\x80", MalformedMessage, "frame_index: the message ends"),
    (b"\xc1\x42" + b"\xff" * 9, MalformedMessage, "frame_index: longer than 8 bytes"),
    (b"\xc1\x42\x00\x80\x80\x80\x80\x10\x00\x01", InvalidField, "capture_offset_ms"),
    (b"\xc1\x42\x00\x00", MalformedMessage, "ends before skip_after"),
    (b"\xc1\x42\x00\x00\x40\x01", InvalidField, "skip_after: 64"),
    (b"\xc1\x42\x00\x00\x00", InvalidField, "payload: 0 bytes"),
])
def test_decode_rejects(data: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        decode_message(data)


def test_decode_rejects_non_bytes() -> None:
    for data in ("text", None, 5, [1, 1]):
        with pytest.raises(MalformedMessage, match="expected bytes"):
            decode_message(data)  # type: ignore[arg-type]


@pytest.mark.parametrize(("msg", "match"), [
    (Hello("bad name", 30, 1, 1, 64, 10, "m", "q12", 0), "stream: 'bad name'"),
    (Hello("s", True, 1, 1, 64, 10, "m", "q12", 0), "fps: expected a number, got bool"),
    (Hello("s", 30, 1.0, 1, 64, 10, "m", "q12", 0), "observe: expected an integer"),
    (Hello("s", 30, 1, 1, 64, 10, "m", "png", 0), "codec"),
    (Hello("s", 30, 1, 1, 64, 10**400, "m", "q12", 0), "num_kp"),
    (Hello("s", 10**400, 1, 1, 64, 10, "m", "q12", 0), "fps"),
    (Hello("s", 30, 1, 1, 64, 10, "m", "q12", float("inf")), "start_time: inf"),
    (Keypoints(True, 0, 0, "q12", b"x"), "frame_index"),
    (Keypoints(2**53, 0, 0, "q12", b"x"), "frame_index"),
    (Keypoints(0, 0.5, 0, "q12", b"x"), "capture_offset_ms: expected an integer"),
    (Keypoints(0, 2**31, 0, "q12", b"x"), "capture_offset_ms"),
    (Keypoints(0, 0, 64, "q12", b"x"), "skip_after: 64"),
    (Keypoints(0, 0, 0, "q8", b"x"), "codec: unknown 'q8'"),
    (Keypoints(0, 0, 0, "q12", b""), "payload: 0 bytes"),
    (Keypoints(0, 0, 0, "q12", "x"), "payload: expected bytes"),
    (Keypoints(0, 0, 0, "q12", b"x" * MAX_MESSAGE_BYTES), "payload"),
    (SourceImageChunk(0, 0, 1, "jpeg", 10, 0, b"x" * 11), "data: 11 bytes"),
    (SourceImageChunk(0, 0, 1, "jpeg", 2**23, 0, b"x" * (MAX_CHUNK_DATA_BYTES + 1)), "data"),
    (Feedback(0, -1, 0, None), "lost: -1"),
    (Feedback(0, 0, 0, float("inf")), "prediction_error: inf"),
    (Bye(None), "reason: expected a string"),  # type: ignore[arg-type]
])
def test_encode_rejects(msg: object, match: str) -> None:
    with pytest.raises(InvalidField, match=match):
        encode_message(msg)


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_message({"type": "hello"})  # type: ignore[arg-type]


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    decodes_or_rejects(data)


@FAST
@given(st.sampled_from([0, 1, 2, 3]), st.integers(0, 8), st.lists(msgpack_values, max_size=10))
def test_arbitrary_msgpack_arrays_decode_or_raise_protocol_error(version: int, code: int,
                                                                  body: list) -> None:
    decodes_or_rejects(msgpack.packb([version, code, *body], use_bin_type=True))


@FAST
@given(messages, st.data())
def test_mutated_messages_decode_or_raise_protocol_error(msg: object, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(msg))
    decodes_or_rejects(bytes(encoded[:data.draw(st.integers(0, len(encoded) - 1))]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        action = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if action == "flip":
            encoded[position] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set":
            encoded[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            encoded.insert(position, data.draw(st.integers(0, 255)))
        elif len(encoded) > 1:
            del encoded[position]
    decodes_or_rejects(bytes(encoded))


@FAST
@given(st.builds(Hello, stream_names | st.text(max_size=70), st.floats() | st.integers(-5, 300),
                 st.integers(-2, 70), st.integers(-2, 70), st.integers(0, 2000),
                 st.integers(-1, 70), st.text(max_size=130),
                 st.sampled_from([*CODEC_NAMES, "x"]), st.floats() | st.integers(-1, 5))
       | st.builds(Feedback, st.integers(-2, 2**54), st.integers(-2, 5), st.integers(-2, 5),
                   st.none() | st.floats()))
def test_what_the_encoder_accepts_the_decoder_accepts(msg: object) -> None:
    try:
        data = encode_message(msg)
    except InvalidField:
        return
    assert decode_message(data) == validate_message(msg)


# --- keypoint codecs ------------------------------------------------------------------------

def test_codec_sizes() -> None:
    assert KEYPOINT_CODECS["f16"].payload_bytes(10) == 120
    assert KEYPOINT_CODECS["q12"].payload_bytes(10) == 90
    for codec in KEYPOINT_CODECS.values():
        assert len(codec.encode(VALUE, JACOBIAN)) == codec.payload_bytes(10)
        with pytest.raises(InvalidField):
            codec.payload_bytes(65)


def test_bytes_per_packet_match_readme() -> None:
    """The K=10 table in protocol/README.md is what the encoder produces."""
    text = README.read_text()
    frame_indexes = [0, 200, 100_000]  # one per column of the table
    for codec in KEYPOINT_CODECS:
        row = re.search(rf"^\| `?{codec}`? \|(( \d+ \|)+)$", text, re.MULTILINE)
        assert row, f"no K=10 size row for {codec} in the README"
        payload, *sizes = (int(n) for n in re.findall(r"\d+", row.group(1)))
        assert payload == KEYPOINT_CODECS[codec].payload_bytes(10)
        data = KEYPOINT_CODECS[codec].encode(VALUE, JACOBIAN)
        measured = [len(encode_message(Keypoints(i, -5, 1, codec, data))) for i in frame_indexes]
        assert measured == sizes


@pytest.mark.parametrize("codec", ["f16", "q12"])
def test_codec_error_within_documented_bounds(codec: str) -> None:
    rng = np.random.default_rng(1)
    value = rng.uniform(-1, 1, (64, 2))
    jacobian = rng.uniform(-8, 8, (64, 2, 2))
    c = KEYPOINT_CODECS[codec]
    decoded_value, decoded_jacobian = c.decode(c.encode(value, jacobian))
    value_error = np.abs(decoded_value - value).max()
    jacobian_error = np.abs(decoded_jacobian - jacobian).max()
    if codec == "q12":
        # plus rounding the decoded number to float32
        assert Q12_VALUE_ERROR / 2 < value_error <= Q12_VALUE_ERROR + 1.25 * 2**-24
        assert Q12_JACOBIAN_ERROR / 2 < jacobian_error <= Q12_JACOBIAN_ERROR + 8 * 2**-24
    else:
        assert F16_UNIT_ERROR / 2 < value_error <= F16_UNIT_ERROR
        assert jacobian_error <= 8 * F16_UNIT_ERROR


@FAST
@given(st.sampled_from(["f16", "q12"]).flatmap(
    lambda codec: st.tuples(st.just(codec), keypoint_sets(codec))))
def test_codec_error_bound_holds(case: tuple[str, tuple[np.ndarray, np.ndarray]]) -> None:
    codec, (value, jacobian) = case
    c = KEYPOINT_CODECS[codec]
    payload = c.encode(value, jacobian)
    assert len(payload) == c.payload_bytes(len(value))
    decoded_value, decoded_jacobian = c.decode(payload)
    assert decoded_value.shape == value.shape and decoded_jacobian.shape == jacobian.shape
    value_bound, jacobian_bound = c.error_bound(value, jacobian)
    assert (np.abs(decoded_value - value.astype(np.float64)) <= value_bound).all()
    assert (np.abs(decoded_jacobian - jacobian.astype(np.float64)) <= jacobian_bound).all()
    assert c.encode(decoded_value, decoded_jacobian) == payload


def test_q12_clamps_out_of_range_numbers() -> None:
    value = np.array([[2.0, -7.0]])
    jacobian = np.array([[[100.0, -8.5], [8.0, -8.0]]])
    decoded_value, decoded_jacobian = KEYPOINT_CODECS["q12"].decode(
        KEYPOINT_CODECS["q12"].encode(value, jacobian))
    np.testing.assert_allclose(decoded_value, [[1.25, -1.25]], rtol=1e-6)
    np.testing.assert_allclose(decoded_jacobian, [[[8, -8], [8, -8]]], rtol=1e-6)


def test_q12_bit_layout_matches_the_spec() -> None:
    """An independent implementation of the README's q12 description."""
    rng = np.random.default_rng(2)
    value, jacobian = rng.uniform(-1.3, 1.3, (10, 2)), rng.uniform(-9, 9, (10, 2, 2))
    kp6 = np.concatenate([value, jacobian.reshape(10, 4)], axis=1)
    ranges = np.array([1.25, 1.25, 8, 8, 8, 8])
    codes = np.rint((np.clip(kp6, -ranges, ranges) + ranges) * 4095 / (2 * ranges)).astype(int)
    expected = bytearray()
    for a, b in codes.reshape(-1, 2):
        expected += bytes([a >> 4, ((a & 0xF) << 4) | (b >> 8), b & 0xFF])
    payload = KEYPOINT_CODECS["q12"].encode(value, jacobian)
    assert payload == bytes(expected)
    decoded_value, decoded_jacobian = KEYPOINT_CODECS["q12"].decode(payload)
    np.testing.assert_allclose(decoded_value, codes[:, :2] * (2.5 / 4095) - 1.25, atol=1e-7)
    np.testing.assert_allclose(decoded_jacobian.reshape(10, 4), codes[:, 2:] * (16 / 4095) - 8,
                               atol=1e-6)


def test_f16_layout_matches_the_spec() -> None:
    kp6 = np.concatenate([VALUE, JACOBIAN.reshape(10, 4)], axis=1)
    assert KEYPOINT_CODECS["f16"].encode(VALUE, JACOBIAN) == kp6.astype("<f2").tobytes()


def test_codec_accepts_dtypes_and_returns_float32() -> None:
    for codec in KEYPOINT_CODECS.values():
        for dtype in (np.float16, np.float32, np.float64, np.int32):
            value, jacobian = codec.decode(codec.encode(VALUE.astype(dtype),
                                                        JACOBIAN.astype(dtype)))
            assert value.dtype == jacobian.dtype == np.float32
            assert value.shape == (10, 2) and jacobian.shape == (10, 2, 2)
            assert value.flags.c_contiguous and jacobian.flags.c_contiguous


# --- source image ---------------------------------------------------------------------------

def gradient_image() -> np.ndarray:
    """A smooth 48x64 RGB image with a distinct colour per channel."""
    y, x = np.mgrid[0:48, 0:64]
    return np.stack([x * 4, y * 5, 255 - x * 2], axis=-1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_source_image_round_trip_keeps_rgb_order(fmt: str) -> None:
    image = gradient_image()
    data = encode_source_image(image, fmt, quality=95)
    assert data.startswith(b"\xff\xd8" if fmt == "jpeg" else b"RIFF")
    decoded = decode_source_image(data, fmt)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).mean() < 3
    red = np.zeros((16, 16, 3), np.uint8)
    red[:, :, 0] = 255
    data = encode_source_image(red, fmt)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, 2].min() > 200
    decoded = decode_source_image(data, fmt)
    assert decoded[:, :, 0].min() > 200 and decoded[:, :, 2].max() < 50


@pytest.mark.parametrize(("data", "fmt", "error"), [
    (b"", "jpeg", MalformedMessage),
    (b"not an image", "jpeg", MalformedMessage),
    (b"not an image at all, not at all, no", "webp", MalformedMessage),
    (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x10\x00\x10\x03" + b"\x00" * 40, "jpeg", MalformedMessage),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 30, "webp", MalformedMessage),
])
def test_decode_source_image_rejects_garbage(data: bytes, fmt: str, error: type) -> None:
    with pytest.raises(error):
        decode_source_image(data, fmt)


def test_decode_source_image_checks_format_channels_and_size() -> None:
    image = gradient_image()
    jpeg = encode_source_image(image, "jpeg")
    with pytest.raises(MalformedMessage, match="WebP"):
        decode_source_image(jpeg, "webp")
    with pytest.raises(MalformedMessage, match="JPEG"):
        decode_source_image(encode_source_image(image, "webp"), "jpeg")
    with pytest.raises(InvalidField, match="format"):
        decode_source_image(jpeg, "png")
    gray = cv2.imencode(".jpg", image[:, :, 0])[1].tobytes()
    with pytest.raises(InvalidField, match="3 channels"):
        decode_source_image(gray, "jpeg")
    rgba = cv2.imencode(".webp", np.dstack([image, image[:, :, :1]]))[1].tobytes()
    with pytest.raises(InvalidField, match="3 channels"):
        decode_source_image(rgba, "webp")
    sof = jpeg.index(b"\xff\xc0")  # claim 5000 x 5000 pixels
    huge = jpeg[:sof + 5] + (5000).to_bytes(2, "big") * 2 + jpeg[sof + 9:]
    with pytest.raises(InvalidField, match="5000x5000"):
        decode_source_image(huge, "jpeg")


def test_encode_source_image_rejects_bad_input() -> None:
    image = gradient_image()
    for bad in (image.astype(np.float32), image[:, :, 0], np.zeros((0, 4, 3), np.uint8),
                [[[0, 0, 0]]]):
        with pytest.raises(InvalidField, match="image"):
            encode_source_image(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidField, match="quality"):
        encode_source_image(gradient_image(), quality=0)
    with pytest.raises(InvalidField, match="format"):
        encode_source_image(gradient_image(), "png")


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_images_decode_or_raise_protocol_error(data: st.DataObject) -> None:
    fmt = data.draw(st.sampled_from(["jpeg", "webp"]))
    encoded = bytearray(encode_source_image(gradient_image()[:16, :16], fmt))
    for _ in range(data.draw(st.integers(1, 3))):
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    encoded = encoded[:data.draw(st.integers(1, len(encoded)))]
    try:
        image = decode_source_image(bytes(encoded), fmt)
    except ProtocolError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


# --- chunking and reassembly ----------------------------------------------------------------

def image_bytes(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes()


def test_split_and_assemble_out_of_order_with_duplicates() -> None:
    data = image_bytes(50_000)
    chunks = split_source_image(7, data, "webp", chunk_bytes=12_000)
    assert [len(c.data) for c in chunks] == [12_000] * 4 + [2_000]
    assert {(c.image_id, c.count, c.format, c.total_bytes, c.crc32) for c in chunks} \
        == {(7, 5, "webp", 50_000, zlib.crc32(data))}
    wires = [encode_message(c) for c in chunks]
    assert max(len(w) for w in wires) <= MAX_MESSAGE_BYTES
    order = [3, 0, 4, 0, 2, 4]
    assembler = SourceImageAssembler()
    assert all(assembler.add(decode_message(wires[i])) is None for i in order)
    assert assembler.add(decode_message(wires[1])) == data
    assert all(assembler.add(c) is None for c in chunks)  # the image just completed: ignored


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.integers(1, 700), st.randoms())
def test_split_and_assemble_any_order(data: bytes, chunk_bytes: int, rnd: random.Random) -> None:
    chunks = split_source_image(1, data, "jpeg", chunk_bytes)
    rnd.shuffle(chunks)
    assembler = SourceImageAssembler()
    results = [assembler.add(decode_message(encode_message(c))) for c in chunks]
    assert results[-1] == data and all(r is None for r in results[:-1])


def test_largest_chunk_message_fits() -> None:
    data = image_bytes(8 * 1024 * 1024)
    chunks = split_source_image(2**32 - 1, data, "jpeg", chunk_bytes=MAX_CHUNK_DATA_BYTES)
    assert len(chunks) == 514
    worst = SourceImageChunk(2**32 - 1, 1023, 1024, "webp", 8 * 1024 * 1024, 2**32 - 1,
                             data[:MAX_CHUNK_DATA_BYTES])
    assert len(encode_message(worst)) == MAX_MESSAGE_BYTES
    assert max(len(encode_message(c)) for c in chunks[:2]) <= MAX_MESSAGE_BYTES


def test_split_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidField, match="chunk_bytes"):
        split_source_image(0, b"abc", "jpeg", chunk_bytes=MAX_CHUNK_DATA_BYTES + 1)
    with pytest.raises(InvalidField, match="1025 chunks"):
        split_source_image(0, bytes(1025), "jpeg", chunk_bytes=1)
    with pytest.raises(InvalidField, match="0 bytes"):
        split_source_image(0, b"", "jpeg")
    with pytest.raises(InvalidField, match="image_id"):
        split_source_image(-1, b"abc", "jpeg")
    with pytest.raises(InvalidField, match="format"):
        split_source_image(0, b"abc", "gif")


def test_assembler_rejects_a_corrupted_chunk_then_takes_a_resend() -> None:
    data = image_bytes(30_000)
    chunks = split_source_image(1, data, "jpeg", chunk_bytes=10_000)
    corrupted = bytearray(encode_message(chunks[1]))
    corrupted[-1] ^= 0xFF  # last byte of its data
    assembler = SourceImageAssembler()
    assembler.add(chunks[0])
    assembler.add(decode_message(bytes(corrupted)))
    with pytest.raises(InvalidField, match="crc32"):
        assembler.add(chunks[2])
    assert assembler.add(chunks[2]) is None  # the failed image was discarded: a fresh start
    resend = split_source_image(2, data, "jpeg", chunk_bytes=10_000)
    assert [assembler.add(c) for c in resend][-1] == data


def test_assembler_rejects_inconsistent_chunks() -> None:
    data = image_bytes(3_000)
    a, b, c = split_source_image(4, data, "jpeg", chunk_bytes=1_000)
    cases = [
        [a, SourceImageChunk(4, 1, 4, "jpeg", 3_000, a.crc32, b.data)],  # count
        [a, SourceImageChunk(4, 1, 3, "webp", 3_000, a.crc32, b.data)],  # format
        [a, SourceImageChunk(4, 1, 3, "jpeg", 3_001, a.crc32, b.data)],  # total
        [a, SourceImageChunk(4, 1, 3, "jpeg", 3_000, a.crc32 ^ 1, b.data)],  # crc
        [a, SourceImageChunk(4, 0, 3, "jpeg", 3_000, a.crc32, b.data)],  # index 0 twice
        [a, b, SourceImageChunk(4, 2, 3, "jpeg", 3_000, a.crc32, c.data[:-1])],  # short
        [a, b, SourceImageChunk(4, 2, 3, "jpeg", 3_000, a.crc32, c.data * 2)],  # long
    ]
    for sequence in cases:
        assembler = SourceImageAssembler()
        with pytest.raises(InvalidField, match="source image 4"):
            for chunk in sequence:
                assembler.add(chunk)
        assert [assembler.add(x) for x in (a, b, c)][-1] == data  # recovers
    with pytest.raises(InvalidField, match="index"):
        SourceImageAssembler().add(SourceImageChunk(4, 3, 3, "jpeg", 3_000, a.crc32, b.data))
    with pytest.raises(TypeError):
        SourceImageAssembler().add(HELLO)  # type: ignore[arg-type]


def test_new_image_replaces_a_partial_one() -> None:
    old, new = image_bytes(3_000, seed=1), image_bytes(2_500, seed=2)
    old_chunks = split_source_image(1, old, "jpeg", chunk_bytes=1_000)
    new_chunks = split_source_image(2, new, "jpeg", chunk_bytes=1_000)
    assembler = SourceImageAssembler()
    assert assembler.add(old_chunks[0]) is None and assembler.add(old_chunks[1]) is None
    assert [assembler.add(c) for c in new_chunks][-1] == new
    assert assembler.add(old_chunks[2]) is None  # the old image's rest starts it afresh


def test_protocol_does_not_import_torch() -> None:
    code = "import sys, kpvid.protocol; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
