"""The ``delta`` keypoint codec's payload: one quantised keypoint set coded against a reference
set (or, for an intra payload, against a fixed base) with a shared per-column offset and
Golomb-Rice codes. Stateless; :mod:`.keypoint_stream` keeps the references.
protocol/README.md ("`delta`") is the spec."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bitstream import BitReader, BitWriter, unzigzag, zigzag
from .errors import InvalidField

POSITION_STEP = 1 / 128  # x, y: half a step = 0.5 px at 256x256
JACOBIAN_STEP = 1 / 32
STEPS = np.array([POSITION_STEP] * 2 + [JACOBIAN_STEP] * 4)
MAX_CODE = 2**20  # |quantised number| bound: positions up to 8192, jacobian entries 32768
INTRA_BASE = np.rint(np.array([0, 0, 1, 0, 0, 1]) / STEPS).astype(np.int64)  # 0, identity
# Rice parameter groups, in kp6 columns: positions, jacobian diagonal, off-diagonal
GROUPS = ((0, 1), (2, 5), (3, 4))
K_BITS = 4
MAX_K = 2**K_BITS - 1
MAX_REFERENCE_DISTANCE = 2**16


@dataclass(frozen=True)
class DeltaPayload:
    """A parsed payload: the distance back to its reference frame (0 for intra) and the
    coded residual, to be added to the reference (or INTRA_BASE)."""

    reference_distance: int
    residual: np.ndarray  # (K, 6) int64


def quantise(kp6: np.ndarray) -> np.ndarray:
    """(K, 6) floats -> (K, 6) int64 codes, ``round(x / step)``; InvalidField beyond
    MAX_CODE steps."""
    q = np.rint(np.asarray(kp6, np.float64) / STEPS)
    big = np.argwhere(np.abs(q) > MAX_CODE)
    if len(big):
        kp, column = (int(i) for i in big[0])
        raise InvalidField(f"kp6[{kp}, {column}] = {kp6[kp, column]} is beyond the 'delta' "
                           f"codec's range (|x| <= {MAX_CODE * STEPS[column]:g})")
    return q.astype(np.int64)


def dequantise(q: np.ndarray) -> np.ndarray:
    return (q * STEPS).astype(np.float32)


def _best_k(codes: np.ndarray) -> int:
    """The Rice parameter that codes ``codes`` (>= 0) in the fewest bits."""
    costs = [int((codes >> k).sum()) + codes.size * (1 + k) for k in range(MAX_K + 1)]
    return int(np.argmin(costs))


def encode_payload(q: np.ndarray, reference: np.ndarray | None, distance: int) -> bytes:
    """Payload of the quantised set ``q`` against ``reference`` (``distance`` frames back), or
    intra when ``reference`` is None."""
    if reference is None:
        distance, residual = 0, q - INTRA_BASE
    else:
        if not 1 <= distance <= MAX_REFERENCE_DISTANCE:
            raise InvalidField(f"reference distance {distance} out of range "
                               f"[1, {MAX_REFERENCE_DISTANCE}]")
        residual = q - reference
    # shared per-column offset: most keypoints move together
    offset = np.rint(np.median(residual, axis=0)).astype(np.int64)
    rest = residual - offset
    codes = np.where(rest >= 0, 2 * rest, -2 * rest - 1)
    ks = [_best_k(codes[:, list(columns)]) for columns in GROUPS]
    column_k = np.empty(6, np.int64)
    for columns, k in zip(GROUPS, ks):
        column_k[list(columns)] = k
    bits = BitWriter()
    bits.write_exp_golomb(distance)
    for value in offset:
        bits.write_exp_golomb(zigzag(int(value)))
    for k in ks:
        bits.write(k, K_BITS)
    for row in codes:
        for code, k in zip(row, column_k):
            bits.write_rice(int(code), int(k))
    return bits.to_bytes()


def decode_payload(payload: bytes, num_kp: int) -> DeltaPayload:
    """Parse a payload of ``num_kp`` keypoints; InvalidField when it is not one."""
    if not payload:
        raise InvalidField("empty 'delta' payload")
    bits = BitReader(payload)
    distance = bits.read_exp_golomb()
    if distance > MAX_REFERENCE_DISTANCE:
        raise InvalidField(f"reference distance {distance} beyond {MAX_REFERENCE_DISTANCE}")
    offset = np.array([unzigzag(bits.read_exp_golomb()) for _ in range(6)], np.int64)
    if np.abs(offset).max() > 2 * MAX_CODE:
        raise InvalidField("a 'delta' column offset beyond the codec's range")
    column_k = np.empty(6, np.int64)
    for columns in GROUPS:
        column_k[list(columns)] = bits.read(K_BITS)
    codes = np.array([[bits.read_rice(int(k)) for k in column_k] for _ in range(num_kp)],
                     np.int64).reshape(num_kp, 6)
    if bits.remaining >= 8 or bits.read(bits.remaining):
        raise InvalidField(f"'delta' payload of {len(payload)} bytes does not end after "
                           f"{num_kp} keypoints (or its padding bits are not zero)")
    residual = np.where(codes % 2 == 0, codes // 2, -(codes + 1) // 2) + offset
    if np.abs(residual).max() > 2 * MAX_CODE:
        raise InvalidField("a 'delta' residual beyond the codec's range")
    return DeltaPayload(distance, residual)


def apply(payload: DeltaPayload, reference: np.ndarray | None) -> np.ndarray:
    """The quantised set a parsed payload stands for; InvalidField when out of range."""
    base = INTRA_BASE if payload.reference_distance == 0 else reference
    if base is None:
        raise InvalidField("a 'delta' payload needs its reference set")
    q = base + payload.residual
    if np.abs(q).max() > MAX_CODE:
        raise InvalidField("a decoded 'delta' keypoint beyond the codec's range")
    return q
