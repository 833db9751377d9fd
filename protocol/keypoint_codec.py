"""Keypoint codecs: one keypoint set (value (K,2), jacobian (K,2,2)) <-> payload bytes.

Both codecs lay a set out as K rows of six numbers in ``kp6`` order
``[x, y, j00, j01, j10, j11]``, keypoint after keypoint. protocol/README.md is the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from .errors import InvalidField
from .keypoint_set import from_kp6

MAX_KEYPOINTS = 64
_NAMES = ("x", "y", "j00", "j01", "j10", "j11")


class KeypointCodec(Protocol):
    name: str
    wire_id: int  # the codec's number in a Keypoints message

    def encode(self, value: ArrayLike, jacobian: ArrayLike) -> bytes: ...

    def decode(self, payload: bytes) -> tuple[np.ndarray, np.ndarray]: ...

    def payload_bytes(self, num_kp: int) -> int: ...

    def error_bound(self, value: ArrayLike, jacobian: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Per-element bound on |decode(encode(x)) - x| for these (valid) inputs."""
        ...


def _check_num_kp(num_kp: int) -> None:
    if not 1 <= num_kp <= MAX_KEYPOINTS:
        raise InvalidField(f"num_kp: {num_kp} out of range [1, {MAX_KEYPOINTS}]")


def _float_array(name: str, x: ArrayLike) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InvalidField(f"{name}: not an array of numbers ({exc})") from None
    if arr.dtype.kind not in "fiu":
        raise InvalidField(f"{name}: expected a real number array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _element(kp: int, column: int) -> str:
    if column < 2:
        return f"value[{kp}, {column}]"
    return f"jacobian[{kp}, {(column - 2) // 2}, {(column - 2) % 2}]"


def _check_finite(kp6: np.ndarray, where: str = "") -> None:
    bad = np.argwhere(~np.isfinite(kp6))
    if len(bad):
        kp, column = (int(i) for i in bad[0])
        raise InvalidField(f"{_element(kp, column)} is {kp6[kp, column]}{where}: "
                           "keypoints must be finite")


def checked_kp6(value: ArrayLike, jacobian: ArrayLike) -> np.ndarray:
    """Validated (K, 6) float64 rows [x, y, j00, j01, j10, j11]; InvalidField if not valid."""
    v = _float_array("value", value)
    j = _float_array("jacobian", jacobian)
    if v.ndim != 2 or v.shape[1] != 2:
        raise InvalidField(f"value: expected shape (K, 2), got {v.shape}")
    num_kp = v.shape[0]
    if j.shape != (num_kp, 2, 2):
        raise InvalidField(f"jacobian: expected shape ({num_kp}, 2, 2) to match value, "
                           f"got {j.shape}")
    if not 1 <= num_kp <= MAX_KEYPOINTS:
        raise InvalidField(f"value: {num_kp} keypoints, out of range [1, {MAX_KEYPOINTS}]")
    kp6 = np.concatenate([v, j.reshape(num_kp, 4)], axis=1)
    _check_finite(kp6)
    return kp6


def _num_kp_in(payload: bytes, bytes_per_kp: int, codec: str) -> int:
    num_kp, rest = divmod(len(payload), bytes_per_kp)
    if rest or not 1 <= num_kp <= MAX_KEYPOINTS:
        raise InvalidField(f"{len(payload)} bytes is not {bytes_per_kp} * K for K in "
                           f"[1, {MAX_KEYPOINTS}] (codec {codec!r})")
    return num_kp


@dataclass(frozen=True)
class Float16Codec:
    """IEEE 754 binary16, little endian: 12 bytes per keypoint, relative error <= 2**-11."""

    name: str = "f16"
    wire_id: int = 1

    def payload_bytes(self, num_kp: int) -> int:
        _check_num_kp(num_kp)
        return 12 * num_kp

    def encode(self, value: ArrayLike, jacobian: ArrayLike) -> bytes:
        kp6 = checked_kp6(value, jacobian)
        with np.errstate(over="ignore"):
            half = kp6.astype("<f2")
        if not np.isfinite(half).all():
            kp, column = (int(i) for i in np.argwhere(~np.isfinite(half))[0])
            raise InvalidField(f"{_element(kp, column)} is {kp6[kp, column]}: beyond the float16 "
                               "range (|x| <= 65504) of codec 'f16'")
        return half.tobytes()

    def decode(self, payload: bytes) -> tuple[np.ndarray, np.ndarray]:
        num_kp = _num_kp_in(payload, 12, self.name)
        kp6 = np.frombuffer(payload, "<f2").astype(np.float32).reshape(num_kp, 6)
        _check_finite(kp6, " in an 'f16' payload")
        return from_kp6(kp6)

    def error_bound(self, value: ArrayLike, jacobian: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        # Round to nearest: half a unit in the last place, at most |x| * 2**-11 for normal
        # numbers and 2**-25 for subnormal ones.
        bound = np.maximum(np.abs(checked_kp6(value, jacobian)) * 2.0**-11, 2.0**-25)
        return bound[:, :2], bound[:, 2:].reshape(-1, 2, 2)


@dataclass(frozen=True)
class QuantizedCodec:
    """Uniform quantisation of positions over [-value_range, value_range] with value_bits and
    jacobian entries over [-jacobian_range, jacobian_range] with jacobian_bits; values outside
    are clamped. Codes are packed MSB first with no padding between them."""

    name: str
    wire_id: int
    value_range: float
    value_bits: int
    jacobian_range: float
    jacobian_bits: int

    def __post_init__(self) -> None:
        if self._bits_per_kp % 8:
            raise ValueError("bits per keypoint must be a whole number of bytes")

    @property
    def _bits_per_kp(self) -> int:
        return 2 * self.value_bits + 4 * self.jacobian_bits

    @property
    def _columns(self) -> tuple[tuple[float, int], ...]:
        """(range, bits) of the six kp6 columns."""
        value = (self.value_range, self.value_bits)
        jacobian = (self.jacobian_range, self.jacobian_bits)
        return (value, value, jacobian, jacobian, jacobian, jacobian)

    def payload_bytes(self, num_kp: int) -> int:
        _check_num_kp(num_kp)
        return num_kp * self._bits_per_kp // 8

    def encode(self, value: ArrayLike, jacobian: ArrayLike) -> bytes:
        kp6 = checked_kp6(value, jacobian)
        bits = []
        for column, (r, nbits) in enumerate(self._columns):
            levels = 2**nbits - 1
            codes = np.rint((np.clip(kp6[:, column], -r, r) + r) * (levels / (2 * r)))
            shifts = np.arange(nbits - 1, -1, -1)
            bits.append((codes.astype(np.int64)[:, None] >> shifts) & 1)
        return np.packbits(np.concatenate(bits, axis=1).astype(np.uint8)).tobytes()

    def decode(self, payload: bytes) -> tuple[np.ndarray, np.ndarray]:
        num_kp = _num_kp_in(payload, self._bits_per_kp // 8, self.name)
        bits = np.unpackbits(np.frombuffer(payload, np.uint8)).reshape(num_kp, self._bits_per_kp)
        kp6 = np.empty((num_kp, 6), np.float64)
        start = 0
        for column, (r, nbits) in enumerate(self._columns):
            weights = 1 << np.arange(nbits - 1, -1, -1)
            codes = bits[:, start:start + nbits].astype(np.int64) @ weights
            kp6[:, column] = codes * (2 * r / (2**nbits - 1)) - r
            start += nbits
        return from_kp6(kp6)

    def error_bound(self, value: ArrayLike, jacobian: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        # Clamping error + half a step + rounding the decoded number to float32.
        kp6 = checked_kp6(value, jacobian)
        bound = np.empty_like(kp6)
        for column, (r, nbits) in enumerate(self._columns):
            x = kp6[:, column]
            bound[:, column] = (np.abs(x - np.clip(x, -r, r)) + r / (2**nbits - 1)
                                + r * 2.0**-24)
        return bound[:, :2], bound[:, 2:].reshape(-1, 2, 2)


F16 = Float16Codec()
Q12 = QuantizedCodec("q12", wire_id=2, value_range=1.25, value_bits=12, jacobian_range=8.0,
                     jacobian_bits=12)
KEYPOINT_CODECS: dict[str, KeypointCodec] = {codec.name: codec for codec in (F16, Q12)}
CODECS_BY_WIRE_ID: dict[int, KeypointCodec] = {c.wire_id: c for c in KEYPOINT_CODECS.values()}
