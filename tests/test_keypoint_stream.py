"""Per-stream keypoint coding: the delta codec's bits, its error bound, and loss, reordering
and garbage at the decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kpvid.protocol import InvalidField, KeypointDecoder, KeypointEncoder
from kpvid.protocol.bitstream import BitReader, BitWriter
from kpvid.protocol.delta_codec import JACOBIAN_STEP, POSITION_STEP

FAST = settings(max_examples=100, deadline=None)


def motion(frames: int, num_kp: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A face-like sequence: keypoints that move together plus a little on their own."""
    rng = np.random.default_rng(seed)
    shared = np.cumsum(rng.normal(0, 0.01, (frames, 1, 2)), axis=0)
    value = rng.uniform(-0.5, 0.5, (1, num_kp, 2)) + shared \
        + np.cumsum(rng.normal(0, 0.002, (frames, num_kp, 2)), axis=0)
    jacobian = np.eye(2) + np.cumsum(rng.normal(0, 0.01, (frames, num_kp, 2, 2)), axis=0)
    return value, jacobian


def within_half_a_step(decoded, value: np.ndarray, jacobian: np.ndarray) -> bool:
    return (np.abs(decoded.value - value).max() <= POSITION_STEP / 2 + 1e-6
            and np.abs(decoded.jacobian - jacobian).max() <= JACOBIAN_STEP / 2 + 1e-6)


def bits_of(write) -> str:
    writer = BitWriter()
    write(writer)
    return format(int.from_bytes(writer.to_bytes(), "big"), f"0{8 * len(writer.to_bytes())}b")[
        :len(writer)]


def test_integer_codes_match_the_spec_examples() -> None:
    assert [bits_of(lambda w, n=n: w.write_exp_golomb(n)) for n in range(4)] == \
        ["1", "010", "011", "00100"]
    assert [bits_of(lambda w, n=n: w.write_rice(n, 1)) for n in (0, 1, 2, 5)] == \
        ["00", "01", "100", "1101"]
    writer = BitWriter()
    for n in range(300):
        writer.write_exp_golomb(n)
        writer.write_rice(n, n % 5)
    reader = BitReader(writer.to_bytes())
    assert [(reader.read_exp_golomb(), reader.read_rice(n % 5)) for n in range(300)] == \
        [(n, n) for n in range(300)]


def test_delta_stream_stays_within_half_a_step_and_is_small() -> None:
    value, jacobian = motion(120)
    encoder, decoder = KeypointEncoder("delta", intra_interval=30), KeypointDecoder("delta", 10)
    sizes = []
    for i in range(0, 120, 2):  # M = N = 1: every other frame is sent
        payload = encoder.encode(i, value[i], jacobian[i])
        sizes.append(len(payload))
        (decoded,) = decoder.decode(i, payload)
        assert decoded.frame_index == i and decoded.value.dtype == np.float32
        assert within_half_a_step(decoded, value[i], jacobian[i])  # no drift over 60 payloads
    assert encoder.intra_payloads == 2  # packets 0 and 30
    assert np.mean(sizes) < 30 and max(sizes[1:30]) < sizes[0]  # deltas beat the intra one


@FAST
@given(arrays(np.float64, (7, 2), elements=st.floats(-8000, 8000)),
       arrays(np.float64, (7, 2, 2), elements=st.floats(-3e4, 3e4)),
       st.integers(1, 5))
def test_delta_round_trip_any_numbers_in_range(value, jacobian, distance: int) -> None:
    encoder, decoder = KeypointEncoder("delta"), KeypointDecoder("delta", 7)
    zero_v, eye = np.zeros((7, 2)), np.tile(np.eye(2), (7, 1, 1))
    decoder.decode(0, encoder.encode(0, zero_v, eye))
    (decoded,) = decoder.decode(distance, encoder.encode(distance, value, jacobian))
    assert within_half_a_step(decoded, value, jacobian)


def test_reordered_payloads_wait_for_their_reference() -> None:
    value, jacobian = motion(6)
    encoder, decoder = KeypointEncoder("delta"), KeypointDecoder("delta", 10)
    payloads = [encoder.encode(i, value[i], jacobian[i]) for i in range(6)]
    assert [d.frame_index for d in decoder.decode(0, payloads[0])] == [0]
    assert decoder.decode(3, payloads[3]) == [] and decoder.decode(2, payloads[2]) == []
    assert decoder.waiting == 2 and decoder.broken
    assert sorted(d.frame_index for d in decoder.decode(1, payloads[1])) == [1, 2, 3]
    assert decoder.waiting == 0 and decoder.decode(2, payloads[2]) == []  # a duplicate
    assert not decoder.broken


def test_the_chain_is_broken_while_the_newest_payload_waits() -> None:
    value, jacobian = motion(8)
    encoder, decoder = KeypointEncoder("delta"), KeypointDecoder("delta", 10)
    payloads = [encoder.encode(i, value[i], jacobian[i]) for i in range(5)]
    assert not decoder.broken
    decoder.decode(1, payloads[1])  # its reference, 0, not there (yet)
    assert decoder.broken
    decoder.decode(0, payloads[0])
    decoder.decode(3, payloads[3])  # 2 lost
    assert decoder.broken
    encoder.request_intra()
    assert [d.frame_index for d in decoder.decode(5, encoder.encode(5, value[5], jacobian[5]))
            ] == [5]
    assert not decoder.broken and decoder.undecodable == 1  # 3 given up
    decoder.decode(7, encoder.encode(7, value[7], jacobian[7]))  # a delta on 5
    decoder.decode(4, payloads[4])  # a straggler behind a newer decoded set: it waits ...
    assert decoder.waiting == 1 and not decoder.broken  # ... but the chain goes on


def test_a_lost_reference_is_felt_until_the_next_intra_payload() -> None:
    value, jacobian = motion(40)
    encoder = KeypointEncoder("delta", intra_interval=10)
    decoder = KeypointDecoder("delta", 10, max_pending=4)
    decoded = []
    for i in range(40):
        payload = encoder.encode(i, value[i], jacobian[i])
        if i != 12:  # lost
            decoded += [d.frame_index for d in decoder.decode(i, payload)]
    assert decoded == [*range(12), *range(20, 40)]
    assert decoder.undecodable == 7 and decoder.waiting == 0  # 13..19 given up
    # the receiver asks for an intra payload: the chain restarts at once
    encoder.request_intra()
    intra = encoder.encode(41, value[0], jacobian[0])
    assert [d.frame_index for d in decoder.decode(41, intra)] == [41]
    assert encoder.intra_payloads == 5 and decoder.decode(41, intra) == []  # a duplicate


def test_stateless_codecs_check_the_keypoint_count_and_values() -> None:
    value, jacobian = motion(1)
    payload = KeypointEncoder("q12").encode(0, value[0], jacobian[0])
    assert len(KeypointDecoder("q12", 10).decode(0, payload)) == 1
    with pytest.raises(InvalidField, match="10 keypoints, the stream has 9"):
        KeypointDecoder("q12", 9).decode(0, payload)
    with pytest.raises(InvalidField, match=r"value\[0, 0\] is nan"):
        KeypointDecoder("f16", 1).decode(0, b"\x00\x7e" + b"\x00" * 10)
    with pytest.raises(InvalidField, match="not 9 \\* K"):
        KeypointDecoder("q12", 10).decode(0, payload[:-1])


def test_delta_rejects_broken_payloads() -> None:
    value, jacobian = motion(1)
    payload = KeypointEncoder("delta").encode(0, value[0], jacobian[0])
    decoder = KeypointDecoder("delta", 10)
    with pytest.raises(InvalidField, match="does not end after 10 keypoints"):
        decoder.decode(0, payload + b"\x00")
    with pytest.raises(InvalidField, match="ends in the middle of a code"):
        decoder.decode(0, payload[:-3])
    with pytest.raises(InvalidField, match="empty"):
        decoder.decode(0, b"")
    with pytest.raises(InvalidField, match="prefix bits"):
        decoder.decode(0, b"\x80" + b"\xff" * 600)
    # found by scripts/fuzz-decoders.py: a column offset too long for an int64, and one that
    # fits but is far out of range
    for zeros, match in ((100, "exp-Golomb code of more than 62 bits"),
                         (40, "column offset beyond")):
        bits = BitWriter()
        bits.write(1, 1)  # reference distance 0 (intra)
        bits.write(1 << zeros, 2 * zeros + 1)  # offset code 2**zeros - 1
        bits.write(0b11111, 5)  # the other five offsets: 0
        with pytest.raises(InvalidField, match=match):
            decoder.decode(0, bits.to_bytes())
    with pytest.raises(InvalidField, match="beyond the 'delta' codec's range"):
        KeypointEncoder("delta").encode(0, value[0] * 1e5, jacobian[0])
    with pytest.raises(ValueError, match="unknown keypoint codec 'zip'"):
        KeypointDecoder("zip", 10)


@FAST
@given(st.binary(max_size=120), st.integers(0, 100))
def test_garbage_payloads_decode_or_raise_invalid_field(payload: bytes, index: int) -> None:
    decoder = KeypointDecoder("delta", 10)
    try:
        decoded = decoder.decode(index, payload)
    except InvalidField:
        return
    for keypoints in decoded:
        assert np.isfinite(keypoints.value).all() and keypoints.value.shape == (10, 2)
