"""Training-time clip augmentation in numpy/cv2, following FOMM's ``augmentation_params`` schema.

A clip is a float32 array ``T x H x W x 3`` with values in ``[0, 1]``. Every random choice is drawn
from ``np.random`` once per clip, so all frames of a clip (FOMM's source and driving frame) receive
exactly the same transformation.

Schema (as in FOMM's YAML configs)::

    flip_param:   {horizontal_flip: bool, time_flip: bool}
    jitter_param: {brightness: float, contrast: float, saturation: float, hue: float}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import cv2
import numpy as np

FLIP_KEYS = ("horizontal_flip", "time_flip")
JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")
AUGMENTATION_KEYS = ("flip_param", "jitter_param")

# ITU-R 601 luma weights, as used by torchvision's rgb_to_grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_keys(params: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """Raise ValueError naming the first key of `params` that is not in `allowed`."""
    if not isinstance(params, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(params).__name__}")
    for key in params:
        if key not in allowed:
            raise ValueError(
                f"unknown key {key!r} in {where}; expected one of {', '.join(allowed)}"
            )


def _grayscale(clip: np.ndarray) -> np.ndarray:
    """Luma of every pixel, ``T x H x W x 1``."""
    return (clip @ _LUMA)[..., None]


def _blend(clip: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    """``factor * clip + (1 - factor) * other``, clipped to [0, 1]."""
    return np.clip(factor * clip + (1.0 - factor) * other, 0.0, 1.0).astype(np.float32, copy=False)


def adjust_brightness(clip: np.ndarray, factor: float) -> np.ndarray:
    """Scale intensities by `factor` (0 gives black, 1 the original)."""
    return _blend(clip, 0.0, factor)


def adjust_contrast(clip: np.ndarray, factor: float) -> np.ndarray:
    """Blend every frame with its mean grey level (0 gives flat grey, 1 the original)."""
    mean = _grayscale(clip).mean(axis=(1, 2, 3), keepdims=True)
    return _blend(clip, mean, factor)


def adjust_saturation(clip: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the greyscale image (0 gives greyscale, 1 the original)."""
    return _blend(clip, _grayscale(clip), factor)


def adjust_hue(clip: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by `shift` turns of the colour wheel (`shift` in [-0.5, 0.5])."""
    frames, height, width, _ = clip.shape
    # cv2 converts pixelwise, so the frames can be stacked into one tall image.
    rgb = np.ascontiguousarray(clip, dtype=np.float32).reshape(frames * height, width, 3)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)  # float input: H in [0, 360), S, V in [0, 1]
    hsv[..., 0] = np.mod(hsv[..., 0] + shift * 360.0, 360.0)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(clip.shape)
    return np.clip(out, 0.0, 1.0)


class RandomFlip:
    """With probability 1/2 each: reverse the clip in time, mirror it horizontally."""

    def __init__(self, horizontal_flip: bool = False, time_flip: bool = False) -> None:
        self.horizontal_flip = bool(horizontal_flip)
        self.time_flip = bool(time_flip)

    def __call__(self, clip: np.ndarray) -> np.ndarray:
        return self.with_points(clip)[0]

    def with_points(self, clip: np.ndarray, points: np.ndarray | None = None,
                    mirror: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Flip the clip and, alike, its ``points`` (T x K x 2 pixels, x right): a left-right
        flip mirrors x and swaps the slots ``mirror`` pairs (left eye corner for right...)."""
        if self.time_flip and np.random.rand() < 0.5:
            clip = clip[::-1]
            points = None if points is None else points[::-1]
        if self.horizontal_flip and np.random.rand() < 0.5:
            clip = clip[:, :, ::-1]
            if points is not None:
                points = points[:, mirror] * [-1, 1] + [clip.shape[2] - 1, 0]
        return clip, points


class ColorJitter:
    """Random brightness, contrast, saturation and hue change, applied in random order.

    Factors are drawn like torchvision's ColorJitter: brightness, contrast and saturation from
    ``U(max(0, 1 - v), 1 + v)``, the hue shift from ``U(-hue, hue)``; a zero value disables a term.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
    ) -> None:
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"jitter_param.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"jitter_param.hue must be in [0, 0.5], got {self.hue}")

    def __call__(self, clip: np.ndarray) -> np.ndarray:
        ops: list[Callable[[np.ndarray], np.ndarray]] = []
        for amount, op in (
            (self.brightness, adjust_brightness),
            (self.contrast, adjust_contrast),
            (self.saturation, adjust_saturation),
        ):
            if amount > 0:
                factor = float(np.random.uniform(max(0.0, 1.0 - amount), 1.0 + amount))
                ops.append(partial(op, factor=factor))
        if self.hue > 0:
            ops.append(partial(adjust_hue, shift=float(np.random.uniform(-self.hue, self.hue))))
        for i in np.random.permutation(len(ops)):
            clip = ops[i](clip)
        return clip


class Augmentation:
    """All augmentations of a FOMM ``augmentation_params`` dict: flips first, then colour jitter.

    Raises ValueError naming any unknown key (top level or inside a ``*_param`` block).
    """

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        params = params or {}
        _check_keys(params, AUGMENTATION_KEYS, "augmentation_params")
        self.transforms: list[Callable[[np.ndarray], np.ndarray]] = []
        flip_param = params.get("flip_param")
        if flip_param is not None:
            _check_keys(flip_param, FLIP_KEYS, "flip_param")
            self.transforms.append(RandomFlip(**flip_param))
        jitter_param = params.get("jitter_param")
        if jitter_param is not None:
            _check_keys(jitter_param, JITTER_KEYS, "jitter_param")
            self.transforms.append(ColorJitter(**jitter_param))

    def __call__(self, clip: np.ndarray) -> np.ndarray:
        """Augment a float32 ``T x H x W x 3`` clip in [0, 1]; the result may be a view of it."""
        return self.with_points(clip)[0]

    def with_points(self, clip: np.ndarray, points: np.ndarray | None = None,
                    mirror: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment a clip and its landmark points alike (see :meth:`RandomFlip.with_points`)."""
        for transform in self.transforms:
            if isinstance(transform, RandomFlip):
                clip, points = transform.with_points(clip, points, mirror)
            else:
                clip = transform(clip)
        return clip, points
