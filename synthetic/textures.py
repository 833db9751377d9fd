"""Shared helpers for the synthetic generators.

Smooth random motion, procedural textures, sub-pixel anti-aliased drawing and alpha compositing.
Images are H x W x 3 uint8 RGB unless stated otherwise; colours are RGB tuples of floats in 0..255.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np

SHIFT = 4  # fractional bits of the fixed-point coordinates passed to cv2 drawing calls
_ONE = float(1 << SHIFT)
_AA = cv2.LINE_AA

Color = tuple[float, float, float]


# ----------------------------------------------------------------------------- motion


def damped_motion(
    rng: np.random.Generator, frames: int, periods: np.ndarray, damping: np.ndarray
) -> np.ndarray:
    """Stationary damped-spring processes driven by white noise: (frames, len(periods)).

    Each column obeys x'' = -w^2 x - 2 z w x' + noise with w = 2 pi / period (periods in frames,
    z = damping ratio), is scaled to unit stationary std and starts from the stationary
    distribution. The result is smooth and has momentum, so the recent past predicts the near
    future, yet every sequence is different.
    """
    omega = 2.0 * np.pi / np.asarray(periods, dtype=np.float64)
    c = 2.0 * np.asarray(damping, dtype=np.float64) * omega
    k = omega**2
    sigma = np.sqrt(2.0 * c * k)  # stationary var(x) = sigma^2 / (2 c k) = 1
    substeps = 4
    dt = 1.0 / substeps
    x = rng.standard_normal(omega.shape)
    v = rng.standard_normal(omega.shape) * omega  # stationary var(v) = k
    kicks = rng.standard_normal((frames, substeps, omega.size)) * (sigma * np.sqrt(dt))
    out = np.empty((frames, omega.size))
    for t in range(frames):
        out[t] = x
        for s in range(substeps):
            v += dt * (-k * x - c * v) + kicks[t, s]
            x += dt * v
    return out


def soft_limit(x: np.ndarray, limit: float) -> np.ndarray:
    """Squash values smoothly into (-limit, limit); nearly the identity for |x| << limit."""
    return limit * np.tanh(np.asarray(x) / limit)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic ease-in/ease-out of x clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ----------------------------------------------------------------------------- colours


def hsv_color(h: float, s: float, v: float) -> Color:
    """RGB colour (0..255) from hue, saturation, value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))
    return (255.0 * r, 255.0 * g, 255.0 * b)


def random_color(
    rng: np.random.Generator,
    sat: tuple[float, float] = (0.0, 1.0),
    val: tuple[float, float] = (0.0, 1.0),
) -> Color:
    """Colour with uniform random hue and saturation/value drawn from the given ranges."""
    return hsv_color(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))


def scale_color(color: Sequence[float], factor: float | Sequence[float]) -> Color:
    """Colour multiplied per channel (e.g. 0.7 darkens), clipped to 0..255."""
    c = np.clip(np.asarray(color, dtype=np.float64) * np.asarray(factor), 0.0, 255.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def mix_color(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    """Linear interpolation between two colours (t = 0 gives a)."""
    c = np.asarray(a, dtype=np.float64) * (1.0 - t) + np.asarray(b, dtype=np.float64) * t
    return (float(c[0]), float(c[1]), float(c[2]))


# ----------------------------------------------------------------------------- textures


def fractal_noise(
    rng: np.random.Generator,
    shape: int | tuple[int, int],
    cells: int = 4,
    octaves: int = 4,
    channels: int = 1,
    persistence: float = 0.5,
) -> np.ndarray:
    """Smooth value noise, float32 of `shape` (square if an int) [x channels], about unit std.

    Octave i is a (cells * 2^i)^2 grid of Gaussian values upsampled with bicubic interpolation.
    """
    height, width = (shape, shape) if isinstance(shape, int) else shape
    total = np.zeros((height, width, channels), np.float32)
    amp, norm = 1.0, 0.0
    for i in range(octaves):
        n = min(cells * 2**i, max(height, width))
        grid = rng.standard_normal((n, n, channels)).astype(np.float32)
        up = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        total += amp * up.reshape(height, width, channels)
        norm += amp**2
        amp *= persistence
    total /= np.sqrt(norm)
    return total[..., 0] if channels == 1 else total


def coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate grids (x, y) in [0, 1], float32."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(t, t)


def linear_gradient(size: int, angle: float) -> np.ndarray:
    """Ramp from 0 to 1 across the image along direction `angle` (radians)."""
    x, y = coords(size)
    d = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
    return np.clip(d / np.sqrt(0.5) + 0.5, 0.0, 1.0)


def stripes(size: int, angle: float, period: float, sharpness: float = 1.0) -> np.ndarray:
    """Periodic stripes in [0, 1] along `angle`; `period` in image widths; sharper when larger."""
    x, y = coords(size)
    d = x * np.cos(angle) + y * np.sin(angle)
    wave = np.sin(2.0 * np.pi * d / period)
    return 0.5 + 0.5 * np.tanh(sharpness * wave) / np.tanh(sharpness)


def colorize(weight: np.ndarray, c0: Sequence[float], c1: Sequence[float]) -> np.ndarray:
    """Float32 H x W x 3 image lerping from colour c0 (weight 0) to c1 (weight 1)."""
    a = np.asarray(c0, np.float32)
    b = np.asarray(c1, np.float32)
    return a + weight[..., None].astype(np.float32) * (b - a)


def blend_float(base: np.ndarray, color: np.ndarray | Sequence[float], alpha: np.ndarray) -> None:
    """In place: float image `base` <- lerp(base, color, alpha) with alpha H x W in [0, 1]."""
    base += alpha[..., None] * (np.asarray(color, np.float32) - base)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to uint8."""
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def blur_sigma(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels (no-op for sigma < 0.3)."""
    if sigma < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma)


# ----------------------------------------------------------------------------- drawing


def fixed(points: np.ndarray | Sequence) -> np.ndarray:
    """Float pixel coordinates -> int32 fixed point for cv2 drawing with shift=SHIFT."""
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


def fill_poly(img: np.ndarray, points: np.ndarray, color: Sequence[float] | float) -> None:
    """Anti-aliased filled polygon with sub-pixel float vertices (N x 2)."""
    cv2.fillPoly(img, [fixed(points)], color, _AA, SHIFT)


def polyline(
    img: np.ndarray,
    points: np.ndarray,
    color: Sequence[float] | float,
    thickness: float,
    closed: bool = False,
) -> None:
    """Anti-aliased polyline; thickness in pixels (rounded, at least 1)."""
    cv2.polylines(img, [fixed(points)], closed, color, max(1, round(thickness)), _AA, SHIFT)


def _cv_thickness(thickness: float) -> int:
    """OpenCV thickness: -1 (filled) for negative values, else whole pixels, at least 1."""
    return -1 if thickness < 0 else max(1, round(thickness))


def circle(
    img: np.ndarray,
    center: Sequence[float],
    radius: float,
    color: Sequence[float] | float,
    thickness: float = -1,
) -> None:
    """Anti-aliased circle (filled when thickness < 0)."""
    c = fixed(center)
    cv2.circle(img, (int(c[0]), int(c[1])), int(round(radius * _ONE)), color,
               _cv_thickness(thickness), _AA, SHIFT)


def ellipse(
    img: np.ndarray,
    center: Sequence[float],
    axes: Sequence[float],
    angle_deg: float,
    color: Sequence[float] | float,
    thickness: float = -1,
) -> None:
    """Anti-aliased ellipse (filled when thickness < 0); axes are semi-axes in pixels."""
    c, a = fixed(center), fixed(axes)
    cv2.ellipse(img, (int(c[0]), int(c[1])), (int(a[0]), int(a[1])), angle_deg, 0, 360, color,
                _cv_thickness(thickness), _AA, SHIFT)


def ellipse_points(
    center: Sequence[float], axes: Sequence[float], start: float, stop: float, n: int = 32
) -> np.ndarray:
    """N x 2 points on an ellipse arc from angle `start` to `stop` (radians, image y down)."""
    t = np.linspace(start, stop, n)
    return np.stack([center[0] + axes[0] * np.cos(t), center[1] + axes[1] * np.sin(t)], axis=1)


def capsule(a: np.ndarray, b: np.ndarray, radius: float, n: int = 8) -> np.ndarray:
    """Polygon of a stadium (segment a-b thickened by `radius`, round caps)."""
    d = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    ang = np.arctan2(d[1], d[0])
    cap_b = ellipse_points(b, (radius, radius), ang - np.pi / 2, ang + np.pi / 2, n)
    cap_a = ellipse_points(a, (radius, radius), ang + np.pi / 2, ang + 1.5 * np.pi, n)
    return np.concatenate([cap_b, cap_a])


def rotated_rect(center: Sequence[float], half: Sequence[float], angle: float) -> np.ndarray:
    """4 x 2 corners of a rectangle with half-sizes `half` rotated by `angle` radians."""
    c, s = np.cos(angle), np.sin(angle)
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * np.asarray(half)
    return local @ np.array([[c, s], [-s, c]]) + np.asarray(center, np.float64)


# ----------------------------------------------------------------------------- compositing


def over(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Porter-Duff "over" for uint8 images: premultiplied src + dst * (1 - alpha).

    `alpha` is float32 H x W in [0, 1]; src must already be multiplied by it (black where 0).
    """
    kept = cv2.blendLinear(dst, np.zeros_like(dst), 1.0 - alpha, alpha)
    return cv2.add(kept, src)


def downsample(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average a supersampled square image down to size x size."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def supersample_factor(size: int) -> int:
    """Render scale: about 256 px internally, between 2x and 4x of the output size."""
    return int(np.clip(np.ceil(256 / size), 2, 4))
