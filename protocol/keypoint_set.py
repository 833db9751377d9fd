"""The keypoint set both sides agree on: one frame's FOMM keypoints as a ``kp6`` array.

A keypoint set is float32 ``(K, 6)``: row k is keypoint k as ``[x, y, j00, j01, j10, j11]``,
its position (x to the right, y down, both in [-1, 1] across the frame) and its 2x2 jacobian
row by row. Detectors, codecs, predictors and the synthesis all read and write this layout;
:func:`to_kp6` and :func:`from_kp6` convert to and from the networks' ``value`` / ``jacobian``
pair. Distances in keypoint units become pixels of a 256x256 frame with :data:`PX_PER_UNIT`.
"""

from __future__ import annotations

import numpy as np

KP6_COLUMNS = 6  # x, y, j00, j01, j10, j11
PX_PER_UNIT = 128.0  # positions span [-1, 1]: pixels of a 256 x 256 frame per unit


def to_kp6(value: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """FOMM keypoints (``value`` (K, 2), ``jacobian`` (K, 2, 2)) -> float32 ``(K, 6)``."""
    value = np.asarray(value, dtype=np.float32)
    jacobian = np.asarray(jacobian, dtype=np.float32)
    if value.ndim != 2 or value.shape[1] != 2 or jacobian.shape != (value.shape[0], 2, 2):
        raise ValueError(f"expected value (K, 2) and jacobian (K, 2, 2), got {value.shape} and "
                         f"{jacobian.shape}")
    return np.concatenate([value, jacobian.reshape(-1, 4)], axis=1)


def from_kp6(kp6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(K, 6)`` -> (``value`` (K, 2), ``jacobian`` (K, 2, 2)), both float32 copies."""
    kp6 = check_kp6(kp6)
    return kp6[:, :2].copy(), kp6[:, 2:].reshape(-1, 2, 2).copy()


def check_kp6(kp6: np.ndarray) -> np.ndarray:
    """``kp6`` as a float32 ``(K, 6)`` array; ValueError for any other shape."""
    kp6 = np.asarray(kp6, dtype=np.float32)
    if kp6.ndim != 2 or kp6.shape[1] != KP6_COLUMNS or kp6.shape[0] == 0:
        raise ValueError(f"expected a keypoint set of shape (K, {KP6_COLUMNS}), got {kp6.shape}")
    return kp6


def position_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean keypoint position distance of two ``(K, 6)`` sets, in keypoint units."""
    return float(np.linalg.norm(a[:, :2] - b[:, :2], axis=-1).mean())
