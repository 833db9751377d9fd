"""Synthetic talking heads: one random avatar per video in front of a static, textured backdrop.

The head is drawn once per video in a canonical frame (head units: face half-width = 1, y down,
origin at the face centre) as a premultiplied RGB canvas plus alpha. Every frame the animated
features (eyes with blinks and gaze, eyebrows, mouth with talking and smiling, smile folds) are
drawn on a copy, the front hair/glasses layer goes over them, and the canvas is placed in the
picture with one similarity transform (translation, in-plane rotation about the neck, scale).
The shoulders follow the head with half its translation. Everything is rendered supersampled
and area-downsampled to the output size.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .textures import (
    Color,
    blend_float,
    blur_sigma,
    circle,
    colorize,
    damped_motion,
    downsample,
    ellipse,
    ellipse_points,
    fill_poly,
    fractal_noise,
    linear_gradient,
    mix_color,
    over,
    polyline,
    random_color,
    scale_color,
    smoothstep,
    soft_limit,
    stripes,
    supersample_factor,
    to_uint8,
)

SKIN_TONES = np.array(
    [
        (255, 226, 204),
        (243, 204, 172),
        (230, 180, 140),
        (205, 150, 110),
        (170, 115, 80),
        (130, 86, 58),
        (92, 60, 42),
    ],
    np.float64,
)
HAIR_COLORS: tuple[Color, ...] = (
    (28, 22, 20),
    (52, 36, 28),
    (95, 62, 40),
    (140, 90, 55),
    (205, 170, 110),
    (180, 95, 45),
    (140, 140, 140),
    (222, 220, 214),
)
HAIR_WEIGHTS = np.array([0.22, 0.2, 0.16, 0.1, 0.1, 0.07, 0.07, 0.04])
IRIS_COLORS: tuple[Color, ...] = (
    (70, 42, 25),
    (110, 70, 35),
    (120, 110, 55),
    (70, 120, 80),
    (70, 115, 170),
    (120, 135, 145),
)
HAIR_STYLES = ("short", "bangs", "long", "afro", "bun", "bald", "buzz", "hat")
ACTIVITIES = ("steady", "varying")
BLINK = (0.55, 0.12, 0.0, 0.35, 0.8)  # eye openness over the frames of one blink
TAU = 2 * np.pi
CANVAS_X = 1.9  # canonical canvas spans x in [-1.9, 1.9], y in [-2.2, 3.0] head units
CANVAS_Y = (-2.2, 3.0)


@dataclass
class _Motion:
    """Per-frame animation parameters of one video (arrays of length T)."""

    tx: np.ndarray  # head translation, fraction of the frame
    ty: np.ndarray
    rot: np.ndarray  # radians
    scale: np.ndarray
    gaze: np.ndarray  # T x 2 in [-1, 1]
    openness: np.ndarray  # eyelids, 1 = open
    mouth: np.ndarray  # jaw opening in [0, 1]
    smile: np.ndarray  # [0, 1]
    brow: np.ndarray  # eyebrow raise in [-1, 1]


def _sample_motion(rng: np.random.Generator, frames: int, varying: bool = False) -> _Motion:
    """Smooth, momentum-driven head motion and facial animation for one clip; ``varying``:
    see :func:`_activity`."""
    liveliness = rng.uniform(0.35, 1.0)
    # columns: tx, ty, rot, scale, gaze x, gaze y, brow, talk, talk envelope, smile wobble
    periods = rng.uniform(
        [18, 18, 14, 24, 6, 8, 14, 4, 16, 20], [60, 60, 45, 70, 20, 24, 40, 9, 40, 50]
    )
    damping = rng.uniform(
        [0.4, 0.4, 0.35, 0.5, 0.5, 0.5, 0.4, 0.12, 0.5, 0.6],
        [0.9, 0.9, 0.9, 0.95, 0.95, 1, 0.9, 0.35, 1, 1],
    )
    x = damped_motion(rng, frames, periods, damping)
    tx = soft_limit(liveliness * 0.065 * x[:, 0], 0.15)
    ty = soft_limit(liveliness * 0.05 * x[:, 1], 0.12)
    rot = soft_limit(liveliness * 0.17 * x[:, 2], np.deg2rad(20))
    scale = np.exp(soft_limit(liveliness * 0.055 * x[:, 3], 0.14))
    gaze = soft_limit(rng.uniform(0.3, 0.7) * x[:, 4:6], 1.0)
    brow = soft_limit(rng.uniform(0.2, 0.6) * x[:, 6], 1.0)

    smile_onset = rng.uniform() < 0.45
    if smile_onset:  # neutral, then a smile builds up and is held (like the Nemo smile data set)
        start = rng.uniform(0.1, 0.5) * frames
        length = rng.uniform(0.2, 0.45) * frames
        t = np.arange(frames)
        smile = rng.uniform(0.6, 1.0) * smoothstep((t - start) / length)
        brow = brow + 0.25 * smile
    else:
        smile = np.clip(rng.uniform(0.0, 0.35) + 0.1 * x[:, 9], 0.0, 1.0)

    talking = rng.uniform() < (0.3 if smile_onset else 0.75)
    if talking:
        envelope = np.clip(0.65 + 0.7 * x[:, 8], 0.0, 1.0)
        mouth = np.clip(rng.uniform(0.5, 1.0) * (0.4 + 0.55 * x[:, 7]), 0.0, 1.0) * envelope
        brow = brow + 0.2 * mouth
    else:
        mouth = np.zeros(frames)

    openness = np.full(frames, rng.uniform(0.85, 1.0)) + 0.08 * np.clip(brow, 0, 1)
    onset = int(rng.integers(-4, 14))
    while onset < frames:
        for i, level in enumerate(BLINK):
            if 0 <= onset + i < frames:
                openness[onset + i] = min(openness[onset + i], level)
        onset += int(rng.integers(10, 45))
    openness, brow = np.clip(openness, 0, 1), np.clip(brow, -1, 1)
    if varying:  # drawn last: the steady clip of a seed stays what it was
        activity = _activity(rng, frames)
        tx, ty, rot = tx * activity, ty * activity, rot * activity
        scale = np.exp(np.log(scale) * activity)
        mouth = mouth * np.clip(2 * activity - 0.6, 0, 1)
    return _Motion(tx, ty, rot, scale, gaze, openness, mouth, smile, brow)


def _activity(rng: np.random.Generator, frames: int) -> np.ndarray:
    """A call's activity over time, (frames,) in (0, 1]: still phases (listening: 0.05-0.2,
    no talking) and lively ones (0.7-1, talking) of 1-4 s at 30 fps each, alternating, with
    half-second blends between them."""
    levels = np.empty(frames)
    lively = bool(rng.uniform() < 0.5)
    start = 0
    while start < frames:
        length = int(rng.integers(30, 121))
        levels[start:start + length] = rng.uniform(0.7, 1.0) if lively else rng.uniform(0.05, 0.2)
        lively, start = not lively, start + length
    kernel = np.ones(15) / 15
    return np.convolve(np.pad(levels, 7, mode="edge"), kernel, mode="valid")


def _skin_tone(rng: np.random.Generator) -> Color:
    """A skin colour interpolated along a light-to-dark palette with a little jitter."""
    pos = rng.uniform(0, len(SKIN_TONES) - 1)
    i = min(int(pos), len(SKIN_TONES) - 2)
    tone = SKIN_TONES[i] + (pos - i) * (SKIN_TONES[i + 1] - SKIN_TONES[i])
    return scale_color(tone, rng.uniform(0.94, 1.06, 3) * rng.uniform(0.92, 1.05))


class _Head:
    """One identity rendered in the canonical head frame (see module docstring)."""

    def __init__(self, rng: np.random.Generator, unit: float) -> None:
        self.u = unit  # canvas pixels per head unit
        self.width = int(np.ceil(2 * CANVAS_X * unit))
        self.height = int(np.ceil((CANVAS_Y[1] - CANVAS_Y[0]) * unit))
        self.origin = np.array([CANVAS_X * unit, -CANVAS_Y[0] * unit])
        self._sample_identity(rng)
        self._draw_static_layers(rng)

    # ------------------------------------------------------------------ identity
    def _sample_identity(self, rng: np.random.Generator) -> None:
        self.b = rng.uniform(1.18, 1.42)  # face half-height
        self.jaw = rng.uniform(0.0, 0.3)
        self.chin_flat = rng.uniform(0.0, 0.12)
        self.skin = _skin_tone(rng)
        self.ex = rng.uniform(0.35, 0.44)
        self.ey = rng.uniform(-0.12, 0.04)
        self.ew = rng.uniform(0.17, 0.22)
        self.eh = rng.uniform(0.075, 0.105)
        self.eye_tilt = rng.uniform(-0.015, 0.035)
        self.iris_r = rng.uniform(0.085, 0.1)
        self.iris = scale_color(IRIS_COLORS[rng.integers(len(IRIS_COLORS))], rng.uniform(0.85, 1.1))
        self.sclera = scale_color((238, 234, 226), rng.uniform(0.9, 1.0))
        self.brow_gap = rng.uniform(0.1, 0.17)
        self.brow_th = rng.uniform(0.035, 0.075)
        self.brow_arch = rng.uniform(0.02, 0.07)
        self.ny = rng.uniform(0.34, 0.44) * self.b
        self.nose_w = rng.uniform(0.08, 0.12)
        self.my = self.ny + rng.uniform(0.26, 0.34)
        self.mw = rng.uniform(0.27, 0.36)
        self.lip_up = rng.uniform(0.035, 0.065)
        self.lip_lo = rng.uniform(0.05, 0.085)
        self.bow = rng.uniform(0.0, 0.5) * self.lip_up
        self.teeth_smile = rng.uniform(0.0, 0.45)
        if rng.uniform() < 0.2:
            self.lips = random_color(rng, (0.55, 0.9), (0.35, 0.75))
            self.lips = mix_color(self.lips, (170, 30, 55), 0.6)
        else:
            self.lips = scale_color(
                self.skin, np.array([0.82, 0.58, 0.6]) * rng.uniform(0.85, 1.05)
            )
        self.ear = rng.uniform(0.9, 1.15)
        self.style = HAIR_STYLES[rng.integers(len(HAIR_STYLES))]
        self.hair = HAIR_COLORS[rng.choice(len(HAIR_COLORS), p=HAIR_WEIGHTS / HAIR_WEIGHTS.sum())]
        if rng.uniform() < 0.06:  # dyed
            self.hair = random_color(rng, (0.5, 0.9), (0.4, 0.8))
        self.hair = scale_color(self.hair, rng.uniform(0.85, 1.15))
        self.brows = mix_color(scale_color(self.hair, 0.7), (40, 30, 25), 0.4)
        self.lashes = scale_color(mix_color(self.hair, (20, 15, 15), 0.7), 0.8)
        self.light = rng.uniform(-1, 1, 2) * rng.uniform(0.05, 0.14)

    def px(self, points: np.ndarray) -> np.ndarray:
        """Head units -> canvas pixels."""
        return self.origin + np.asarray(points, np.float64) * self.u

    def _face_outline(self) -> np.ndarray:
        t = np.linspace(0, TAU, 80, endpoint=False)
        low = np.clip(np.sin(t), 0, 1)
        x = np.cos(t) * (1 - self.jaw * low**2)
        y = self.b * np.sin(t) * (1 - self.chin_flat * low**6)
        return np.stack([x, y], axis=1)

    # ------------------------------------------------------------------ static layers
    def _mask(self, polys: list[np.ndarray]) -> np.ndarray:
        """Float32 anti-aliased coverage (0..1) of polygons given in head units."""
        m = np.zeros((self.height, self.width), np.uint8)
        for p in polys:
            fill_poly(m, self.px(p), 255)
        return m.astype(np.float32) / 255.0

    def _hair_texture(self, rng: np.random.Generator, color: Color) -> np.ndarray:
        """Float image of hair colour with fine vertical streaks."""
        noise = rng.standard_normal((self.height, self.width)).astype(np.float32)
        streaks = cv2.GaussianBlur(noise, (0, 0), sigmaX=0.012 * self.u, sigmaY=0.12 * self.u)
        streaks /= streaks.std() + 1e-6
        clumps = fractal_noise(rng, (self.height, self.width), 6, 3)
        shade = 1 + 0.16 * streaks + 0.1 * clumps
        return np.asarray(color, np.float32) * shade[..., None]

    def _hair_regions(self, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Polygons (head units) of the hair behind the face and of the hair in front of it."""
        b = self.b
        volume = rng.uniform(0.04, 0.22)
        temple = self.ey - rng.uniform(0.12, 0.3)
        top = -b * rng.uniform(0.5, 0.66)
        part = rng.uniform(-0.35, 0.35)
        back: list[np.ndarray] = []
        front: list[np.ndarray] = []
        if self.style == "bangs":
            top = -b * rng.uniform(0.26, 0.38)
        if self.style == "buzz":
            volume = 0.02
        if self.style == "bun":
            bun_r = rng.uniform(0.3, 0.42)
            back.append(ellipse_points((0, -b - 0.55 * bun_r - volume), (bun_r, bun_r), 0, TAU))
        if self.style == "long":
            length = b * rng.uniform(1.2, 1.9)
            spread = rng.uniform(1.15, 1.4)
            arc = ellipse_points((0, -0.02 * b), (1.1 + volume, b * 1.05 + volume), np.pi, TAU)
            xs = np.linspace(spread, -spread, 15)
            hem = np.stack([xs, length + 0.06 * np.sin(7 * xs + rng.uniform(0, 6))], axis=1)
            back.append(
                np.concatenate([arc, [[spread * 0.95, 0.4 * b]], hem, [[-spread * 0.95, 0.4 * b]]])
            )
            for side in (-1, 1):
                lock = np.array(
                    [
                        [0.72, temple - 0.1],
                        [0.86, 0.3 * b],
                        [0.92, 0.9 * b],
                        [1.0, min(length, 1.45 * b)],
                        [spread, min(length, 1.45 * b)],
                        [spread - 0.05, 0.4 * b],
                        [1.12, temple],
                    ]
                )
                front.append(lock * [side, 1])
        if self.style == "afro":
            radius = rng.uniform(1.4, 1.6)
            t = np.linspace(0, TAU, 60, endpoint=False)
            r = radius * (1 + 0.035 * np.sin(9 * t + rng.uniform(0, 6)))
            back.append(np.stack([r * np.cos(t), -0.3 * b + 0.9 * r * np.sin(t)], axis=1))
            top = -b * rng.uniform(0.55, 0.68)
        if self.style == "hat":
            band = -b * rng.uniform(0.42, 0.55)
            dome = ellipse_points((0, -0.02 * b), (1.1, b * 1.08 + 0.12), np.pi, TAU)
            dome[:, 1] = np.minimum(dome[:, 1], band)
            front.append(dome)
            return back, front
        if self.style == "bald":
            for side in (-1, 1):
                front.append(
                    np.array(
                        [[0.9, -0.3 * b], [1.05, -0.25 * b], [1.06, 0.12 * b], [0.94, 0.1 * b]]
                    )
                    * [side, 1]
                )
            return back, front

        ax, ay = 1.06 + volume * 0.6, b * 1.03 + volume
        centre_y = -0.02 * b
        delta = float(np.arcsin(np.clip((centre_y - temple) / ay, -0.5, 0.95)))
        arc = ellipse_points((0, centre_y), (ax, ay), np.pi + delta, TAU - delta, 40)
        xt = ax * np.cos(delta)
        xs = np.linspace(xt, -xt, 31)
        rel = np.where(xs >= part, (xs - part) / (xt - part), (part - xs) / (xt + part))
        hairline = top + (temple - top) * np.clip(rel, 0, 1) ** rng.uniform(1.8, 3.5)
        if self.style == "bangs":
            hairline += 0.045 * (np.arange(xs.size) % 2) * (np.abs(xs) < 0.8 * xt)
        front.append(np.concatenate([arc, np.stack([xs, hairline], axis=1)]))
        return back, front

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Head-unit coordinates (x, y) of every canvas pixel centre."""
        xs = (np.arange(self.width, dtype=np.float32) + 0.5 - self.origin[0]) / self.u
        ys = (np.arange(self.height, dtype=np.float32) + 0.5 - self.origin[1]) / self.u
        return np.meshgrid(xs, ys)

    def _draw_static_layers(self, rng: np.random.Generator) -> None:
        """Base layer (behind the animated features) and front layer (over them), once per video."""
        back, front = self._hair_regions(rng)
        hair_tex = self._hair_texture(rng, self.hair)
        img = np.zeros((self.height, self.width, 3), np.float32)  # premultiplied by alpha
        alpha = np.zeros((self.height, self.width), np.float32)

        def paint(color: np.ndarray | Color, coverage: np.ndarray) -> None:
            blend_float(img, color, coverage)
            alpha[:] += coverage * (1 - alpha)

        b = self.b
        if back:
            paint(hair_tex * 0.85, self._mask(back))
        neck = np.array([[-0.46, 0.2 * b], [0.46, 0.2 * b], [0.56, 3], [-0.56, 3]])
        paint(self.skin, self._mask([neck]))
        for side in (-1, 1):
            centre = (side * 0.97, self.ey + 0.22)
            outer = ellipse_points(centre, (0.16 * self.ear, 0.3 * self.ear), 0, TAU)
            inner = ellipse_points(centre, (0.07 * self.ear, 0.18 * self.ear), 0, TAU)
            paint(self.skin, self._mask([outer]))
            paint(scale_color(self.skin, 0.72), 0.8 * self._mask([inner]))
        face = self._mask([self._face_outline()])
        paint(self.skin, face)
        self._shade_skin(rng, img, face)
        self._draw_nose(img)
        self._draw_beard(rng, img, face, hair_tex)

        front_img = np.zeros_like(img)
        front_alpha = np.zeros_like(alpha)
        if front:
            front_alpha[:] = self._draw_front_hair(rng, front, hair_tex, front_img)
            # the hair casts a soft shadow onto the forehead
            shifted = np.roll(front_alpha, int(0.05 * self.u), axis=0)
            shadow = blur_sigma(shifted, 0.05 * self.u) * (1 - front_alpha)
            img *= (1 - 0.3 * shadow * face)[..., None]
        if rng.uniform() < 0.25:
            self._draw_glasses(rng, front_img, front_alpha)

        self.base = to_uint8(img)
        self.front = to_uint8(front_img)
        self.front_alpha = front_alpha
        rows = np.flatnonzero(front_alpha.max(axis=1) > 0)
        self.front_rows = slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else slice(0, 0)
        self.alpha = alpha + front_alpha * (1 - alpha)
        neck_px = self.px([0, b + 0.5]).astype(int)
        self.neck_color = scale_color(self.base[neck_px[1], neck_px[0]], 1.0)

    def _shade_skin(self, rng: np.random.Generator, img: np.ndarray, face: np.ndarray) -> None:
        """Directional light with fall-off, soft shadows (nose, eye sockets, lips, jaw), blush."""
        b, u = self.b, self.u
        hx, hy = self._grid()
        r2 = hx**2 + (hy / b) ** 2
        light = 1 + self.light[0] * hx + self.light[1] * hy / b - 0.17 * np.clip(r2 - 0.45, 0, 2)
        img *= np.clip(light, 0.62, 1.15)[..., None]

        shade = np.zeros((self.height, self.width), np.uint8)
        for side in (-1, 1):
            bridge = [[side * 0.11, self.ey + 0.1], [side * 0.13, self.ny - 0.06]]
            polyline(shade, self.px(bridge), 70, 0.05 * u)
            socket = (self.ew * 1.3 * u, self.eh * 2.3 * u)
            ellipse(shade, self.px([side * self.ex, self.ey - 0.02]), socket, 0, 35)
        ellipse(shade, self.px([0, self.ny + 0.06]), (self.nose_w * u, 0.03 * u), 0, 90)
        chin_dimple = self.px([0, self.my + self.lip_lo + 0.09])
        ellipse(shade, chin_dimple, (self.mw * 0.6 * u, 0.035 * u), 0, 60)
        jaw = ellipse_points((0, 0), (0.95, b), 0.25 * np.pi, 0.75 * np.pi)
        polyline(shade, self.px(jaw), 70, 0.1 * u)
        img *= (1 - 0.35 * blur_sigma(shade.astype(np.float32) / 255, 0.05 * u) * face)[..., None]

        blush = np.zeros((self.height, self.width), np.uint8)
        for side in (-1, 1):
            ellipse(blush, self.px([side * 0.55, self.ny + 0.02]), (0.2 * u, 0.13 * u), 0, 255)
        strength = rng.uniform(0.05, 0.3)
        blush_a = blur_sigma(blush.astype(np.float32) / 255, 0.08 * u) * face * strength
        blend_float(img, scale_color(self.skin, (1.0, 0.62, 0.62)), blush_a)

    def _draw_front_hair(
        self,
        rng: np.random.Generator,
        front: list[np.ndarray],
        hair_tex: np.ndarray,
        img: np.ndarray,
    ) -> np.ndarray:
        """Hair (or a hat) over the forehead into the front layer; returns its coverage."""
        coverage = self._mask(front)
        if self.style == "hat":
            hat = random_color(rng, (0.3, 0.9), (0.25, 0.9))
            felt = 1 + 0.06 * fractal_noise(rng, coverage.shape, 8, 2)
            blend_float(img, np.asarray(hat, np.float32) * felt[..., None], coverage)
            brim_y = float(front[0][:, 1].max())
            brim = self._mask([ellipse_points((0, brim_y), (1.14, 0.1), 0, TAU)])
            blend_float(img, scale_color(hat, 0.75), brim)
            return np.maximum(coverage, brim)
        if self.style == "buzz":  # thin hair: the scalp shows through
            blend_float(img, 0.55 * hair_tex + 0.45 * np.asarray(self.skin, np.float32), coverage)
        else:
            blend_float(img, hair_tex, coverage)
        return coverage

    def _draw_nose(self, img: np.ndarray) -> None:
        """Nostrils, nose wings and a highlight on the tip, softened and blended into img."""
        u = self.u
        paint = np.zeros((self.height, self.width, 3), np.uint8)
        cover = np.zeros((self.height, self.width), np.uint8)
        for side in (-1, 1):
            nostril = self.px([side * self.nose_w * 0.55, self.ny])
            for target, value in ((paint, scale_color(self.skin, 0.35)), (cover, 200)):
                ellipse(target, nostril, (0.042 * u, 0.02 * u), side * 15, value)
            start = np.pi / 2 if side < 0 else -np.pi / 2
            wing = ellipse_points(
                (side * self.nose_w * 0.8, self.ny - 0.025),
                (0.05, 0.05),
                start,
                start + np.pi * side,
            )
            polyline(paint, self.px(wing), scale_color(self.skin, 0.68), 0.02 * u)
            polyline(cover, self.px(wing), 150, 0.02 * u)
        tip = self.px([0, self.ny - 0.06])
        ellipse(paint, tip, (0.05 * u, 0.035 * u), 0, scale_color(self.skin, 1.12))
        ellipse(cover, tip, (0.05 * u, 0.035 * u), 0, 90)
        coverage = blur_sigma(cover.astype(np.float32) / 255, 0.012 * u)
        blend_float(img, paint.astype(np.float32), coverage)

    def _draw_beard(
        self, rng: np.random.Generator, img: np.ndarray, face: np.ndarray, hair_tex: np.ndarray
    ) -> None:
        """Sometimes a full beard, stubble, goatee or moustache on the lower face."""
        if rng.uniform() >= 0.22:
            return
        kind = ("full", "stubble", "goatee", "moustache")[rng.integers(4)]
        side_y, mw = self.ey + 0.3, self.mw
        above = np.array(
            [
                [-1.3, -2.0],
                [1.3, -2.0],
                [1.3, side_y],
                [mw + 0.12, self.ny + 0.06],
                [0, self.ny + 0.07],
                [-mw - 0.12, self.ny + 0.06],
                [-1.3, side_y],
            ]
        )
        region = face * (1 - self._mask([above]))
        if kind == "goatee":
            chin = ellipse_points((0, self.my + 0.15), (mw + 0.1, self.b - self.my + 0.05), 0, TAU)
            region *= self._mask([chin])
        elif kind == "moustache":
            lip = np.array(
                [[-mw - 0.05, self.my], [mw + 0.05, self.my], [mw, self.ny], [-mw, self.ny]]
            )
            region *= self._mask([lip])
        strength = 0.35 if kind == "stubble" else rng.uniform(0.8, 0.95)
        beard = 0.4 * hair_tex + 0.6 * np.asarray(self.hair, np.float32)
        blend_float(img, beard * 0.8, blur_sigma(region, 0.015 * self.u) * strength)

    def _draw_glasses(self, rng: np.random.Generator, img: np.ndarray, alpha: np.ndarray) -> None:
        """Rims, bridge, temples and faintly tinted lenses into the front layer."""
        color = (
            random_color(rng, (0.0, 0.6), (0.05, 0.5)) if rng.uniform() < 0.7 else (190, 185, 170)
        )
        power = rng.uniform(2.0, 4.0)  # superellipse exponent: 2 = round, 4 = rectangular
        half = np.array([self.ew * rng.uniform(1.25, 1.45), self.eh * rng.uniform(2.0, 2.8)])
        t = np.linspace(0, TAU, 48, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        shape = np.stack(
            [np.sign(c) * np.abs(c) ** (2 / power), np.sign(s) * np.abs(s) ** (2 / power)], 1
        )
        shape *= half
        rims = np.zeros((self.height, self.width), np.uint8)
        lens = np.zeros_like(rims)
        thick = rng.uniform(0.025, 0.05) * self.u
        y = self.ey + 0.01
        hinge_y = y - 0.3 * half[1]
        for side in (-1, 1):
            ring = shape + [side * self.ex, y]
            fill_poly(lens, self.px(ring), 255)
            polyline(rims, self.px(ring), 255, thick, closed=True)
            temple = [[side * (self.ex + half[0]), hinge_y], [side * 1.0, y - 0.05]]
            polyline(rims, self.px(temple), 255, thick)
        polyline(
            rims, self.px([[half[0] - self.ex, hinge_y], [self.ex - half[0], hinge_y]]), 255, thick
        )
        for coverage, tint in (
            (lens.astype(np.float32) / 255 * rng.uniform(0.06, 0.2), (235, 240, 245)),
            (rims.astype(np.float32) / 255, color),
        ):
            blend_float(img, tint, coverage)
            alpha += coverage * (1 - alpha)

    # ------------------------------------------------------------------ animated features
    def render(
        self, openness: float, gaze: np.ndarray, mouth: float, smile: float, brow: float
    ) -> np.ndarray:
        """Premultiplied canvas of the head with the given expression (alpha is self.alpha)."""
        img = self.base.copy()
        for side in (-1, 1):
            self._draw_eye(img, side, openness, gaze, smile)
            self._draw_brow(img, side, brow)
        self._draw_mouth(img, mouth, smile)
        rows = self.front_rows
        img[rows] = over(img[rows], self.front[rows], self.front_alpha[rows])
        return img

    def _draw_eye(
        self, img: np.ndarray, side: int, openness: float, gaze: np.ndarray, smile: float
    ) -> None:
        """Almond-shaped eye: lids (blink, smile squint), iris and pupil following the gaze."""
        u = self.u
        t = np.linspace(-1, 1, 15)
        bend = 1 - t**2
        cx = side * self.ex
        tilt = -self.eye_tilt * t * side
        lower = self.eh * 0.6 * bend**0.9 * (1 - 0.45 * smile)
        upper = -self.eh * bend**0.75 * (1 - 0.15 * t * side)
        lid = lower + (upper - lower) * openness
        xs = cx + self.ew * t
        upper_px = self.px(np.stack([xs, self.ey + lid + tilt], 1))
        lower_px = self.px(np.stack([xs, self.ey + lower + tilt], 1))
        if openness > 0.06:
            poly = np.concatenate([upper_px, lower_px[::-1]])
            x0, y0 = np.floor(poly.min(0)).astype(int) - 1
            x1, y1 = np.ceil(poly.max(0)).astype(int) + 2
            roi = img[y0:y1, x0:x1]
            mask = np.zeros(roi.shape[:2], np.uint8)
            fill_poly(mask, poly - (x0, y0), 255)
            eye = np.empty_like(roi)
            eye[:] = self.sclera
            iris = self.px(
                [cx + gaze[0] * self.ew * 0.42, self.ey - 0.15 * self.eh + gaze[1] * self.eh * 0.35]
            ) - (x0, y0)
            r = self.iris_r * u
            circle(eye, iris, r, self.iris)
            circle(eye, iris, r, scale_color(self.iris, 0.55), 0.14 * r)
            circle(eye, iris, 0.42 * r, (15, 12, 12))
            circle(eye, iris + (0.35 * r, -0.35 * r), 0.18 * r, (250, 250, 250))
            polyline(eye, upper_px - (x0, y0), scale_color(self.sclera, 0.7), 0.04 * u)
            alpha = mask.astype(np.float32) / 255
            img[y0:y1, x0:x1] = over(roi, (eye * alpha[..., None]).astype(np.uint8), alpha)
            polyline(img, lower_px, scale_color(self.skin, 0.8), 0.012 * u)
        crease = self.px(
            np.stack([xs, self.ey + upper * (1.05 + 0.25 * openness) - 0.06 + tilt], 1)
        )
        polyline(img, crease[2:-2], scale_color(self.skin, 0.82), 0.015 * u)
        polyline(img, upper_px, self.lashes, 0.03 * u)

    def _draw_brow(self, img: np.ndarray, side: int, raise_: float) -> None:
        """Tapered, arched eyebrow, lifted by `raise_`."""
        t = np.linspace(0, 1, 12)
        xs = side * (self.ex - 1.05 * self.ew + t * 2.3 * self.ew)
        ys = self.ey - self.eh - self.brow_gap - self.brow_arch * np.sin(np.pi * t**0.8)
        ys -= 0.06 * raise_ * (1 - 0.3 * t)
        th = self.brow_th * (1 - 0.55 * t)
        poly = np.concatenate(
            [np.stack([xs, ys - th / 2], 1), np.stack([xs, ys + th / 2], 1)[::-1]]
        )
        fill_poly(img, self.px(poly), self.brows)

    def _draw_mouth(self, img: np.ndarray, mouth: float, smile: float) -> None:
        """Lips around an opening (jaw drop or toothy smile) with teeth, tongue and smile folds."""
        u = self.u
        t = np.linspace(-1, 1, 21)
        bend = 1 - t**2
        opening = max(mouth, self.teeth_smile * smile)
        xs = self.mw * (1 + 0.18 * smile + 0.05 * opening) * t
        line = self.my - 0.1 * smile * t**2 + 0.012 * bend
        h = 0.26 * opening
        up_in = line - 0.22 * h * bend**0.8
        lo_in = line + 0.78 * h * bend**0.8
        up_out = (
            up_in
            - self.lip_up * bend**0.6 * (1 - 0.3 * smile)
            + self.bow * np.exp(-((t / 0.18) ** 2))
        )
        lo_out = lo_in + self.lip_lo * bend**0.6 * (1 - 0.25 * smile)

        def pts(y: np.ndarray) -> np.ndarray:
            return self.px(np.stack([xs, y], 1))

        if smile > 0.05:  # smile folds from the nose wings to beyond the mouth corners
            for side in (-1, 1):
                s = np.linspace(0, 1, 8)[:, None]
                p0 = np.array([side * self.nose_w * 1.3, self.ny - 0.03])
                p1 = np.array([side * (self.mw + 0.2), (self.ny + self.my) / 2])
                p2 = np.array([side * (self.mw * 1.18 + 0.06), self.my + 0.1])
                curve = (1 - s) ** 2 * p0 + 2 * s * (1 - s) * p1 + s**2 * p2
                pix = self.px(curve)
                under = img[int(pix[4, 1]), int(pix[4, 0])].astype(float)
                polyline(img, pix, scale_color(under, 1 - 0.3 * smile), 0.025 * u)
        if h > 0.01:
            fill_poly(img, np.concatenate([pts(up_in), pts(lo_in)[::-1]]), (55, 18, 22))
            tongue = np.maximum(lo_in - 0.4 * h * bend, up_in)
            fill_poly(img, np.concatenate([pts(tongue), pts(lo_in)[::-1]]), (165, 70, 80))
            teeth = np.minimum(up_in + min(0.07, 0.6 * h) * bend**0.3, lo_in)
            inner = np.abs(t) < 0.8
            fill_poly(
                img, np.concatenate([pts(up_in)[inner], pts(teeth)[inner][::-1]]), (236, 232, 220)
            )
        fill_poly(img, np.concatenate([pts(up_out), pts(up_in)[::-1]]), self.lips)
        fill_poly(img, np.concatenate([pts(lo_in), pts(lo_out)[::-1]]), self.lips)
        polyline(img, pts(lo_out * 0.6 + lo_in * 0.4)[5:-5], scale_color(self.lips, 1.18), 0.02 * u)
        polyline(img, pts(line if h <= 0.01 else up_in), scale_color(self.lips, 0.45), 0.02 * u)


def _backdrop(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static, smooth-ish textured background (wallpaper, bokeh, room, clouds or tiles)."""
    c0 = random_color(rng, (0.05, 0.5), (0.3, 0.95))
    c1 = mix_color(c0, random_color(rng, (0.05, 0.6), (0.2, 0.95)), rng.uniform(0.2, 0.8))
    img = colorize(linear_gradient(size, rng.uniform(0, TAU)), c0, c1)
    kind = rng.integers(5)
    if kind == 0:  # wallpaper stripes
        angle = np.pi / 2 * rng.integers(2) + rng.normal(0, 0.1)
        w = stripes(size, angle, rng.uniform(0.06, 0.25), rng.uniform(0.5, 6))
        blend_float(img, random_color(rng, (0.05, 0.6), (0.2, 1.0)), w * rng.uniform(0.2, 0.6))
    elif kind == 1:  # out-of-focus lights
        layer = np.zeros((size, size, 3), np.uint8)
        cover = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(6, 22)):
            centre = rng.uniform(0, size, 2)
            radius = rng.uniform(0.03, 0.14) * size
            circle(layer, centre, radius, random_color(rng, (0.2, 0.9), (0.5, 1.0)))
            circle(cover, centre, radius, int(rng.integers(60, 200)))
        sigma = rng.uniform(0.005, 0.03) * size
        blend_float(
            img, blur_sigma(layer, sigma).astype(np.float32), blur_sigma(cover, sigma) / 255.0
        )
    elif kind == 2:  # a room: wall, a window or door, a shelf or sofa edge
        layer = np.zeros((size, size, 3), np.uint8)
        cover = np.zeros((size, size), np.uint8)
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.uniform(-0.1, 0.9, 2) * size
            w, h = rng.uniform(0.15, 0.6, 2) * size
            box = np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]])
            fill_poly(layer, box, random_color(rng, (0.0, 0.5), (0.3, 1.0)))
            fill_poly(cover, box, 255)
            polyline(
                layer, box, random_color(rng, (0.0, 0.3), (0.1, 0.9)), 0.012 * size, closed=True
            )
        floor = rng.uniform(0.55, 0.9) * size
        band = np.array(
            [[0, floor], [size, floor + rng.normal(0, 0.05) * size], [size, size], [0, size]]
        )
        fill_poly(layer, band, random_color(rng, (0.05, 0.6), (0.15, 0.7)))
        fill_poly(cover, band, 255)
        sigma = rng.uniform(0.002, 0.012) * size
        blend_float(
            img, blur_sigma(layer, sigma).astype(np.float32), blur_sigma(cover, sigma) / 255.0
        )
    elif kind == 3:  # coloured clouds
        img += rng.uniform(8, 25) * fractal_noise(rng, size, 3, 4, channels=3)
    else:  # tiles
        period = rng.uniform(0.08, 0.22)
        grid = stripes(size, 0.0, period, 8) * stripes(size, np.pi / 2, period, 8)
        blend_float(img, scale_color(c0, rng.uniform(0.5, 0.8)), (1 - grid) * rng.uniform(0.3, 0.7))
    img += rng.uniform(3, 10) * fractal_noise(rng, size, 6, 4, channels=3)
    return to_uint8(blur_sigma(img, 0.004 * size))


def _body_polygons(neckline: int) -> tuple[np.ndarray, np.ndarray]:
    """Shirt outline and chest-skin neckline in head units, relative to the base of the neck."""
    shoulder = ellipse_points((1.75, 0.75), (0.65, 0.55), -np.pi / 2, 0.0, 10)
    right = np.concatenate([[[0.6, -0.06], [1.2, 0.1]], shoulder, [[2.45, 3.5]]])
    shirt = np.concatenate([right, (right * [-1, 1])[::-1]])
    if neckline == 0:  # crew neck
        skin = ellipse_points((0, -0.06), (0.6, 0.28), 0, np.pi, 12)
    else:  # v-neck or open collar
        skin = np.array([[0.6, -0.06], [0.0, 0.5 + 0.2 * neckline], [-0.6, -0.06]])
    return shirt, skin


class _Avatar:
    """A head, shoulders and backdrop placed in the picture; renders frame i of a clip."""

    def __init__(self, rng: np.random.Generator, size: int, frames: int,
                 varying: bool = False) -> None:
        self.size = size
        self.s = size * supersample_factor(size)
        self.half_width = rng.uniform(0.19, 0.25)  # face half-width as a fraction of the frame
        self.head = _Head(rng, self.half_width * self.s)
        self.centre = np.array([0.5 + rng.uniform(-0.06, 0.06), 0.42 + rng.uniform(-0.03, 0.04)])
        self.background = _backdrop(rng, self.s)
        self.shirt = random_color(rng, (0.0, 0.8), (0.15, 0.9))
        self.neckline = int(rng.integers(3))
        self.collar = (
            scale_color(self.shirt, 0.75)
            if self.neckline < 2
            else random_color(rng, (0.0, 0.2), (0.85, 1))
        )
        self.motion = _sample_motion(rng, frames, varying)

    def frame(self, i: int) -> np.ndarray:
        """Frame i as size x size x 3 uint8 RGB."""
        m, head, s = self.motion, self.head, self.s
        canvas = head.render(m.openness[i], m.gaze[i], m.mouth[i], m.smile[i], m.brow[i])
        # similarity transform about the neck: canvas pixels -> picture pixels
        pivot_canvas = head.px([0, 0.75 * head.b])
        centre = (self.centre + (m.tx[i], m.ty[i])) * s
        pivot_frame = centre + np.array([0, 0.75 * head.b]) * head.u
        c, sn = np.cos(m.rot[i]) * m.scale[i], np.sin(m.rot[i]) * m.scale[i]
        lin = np.array([[c, -sn], [sn, c]])
        warp = np.hstack([lin, (pivot_frame - lin @ pivot_canvas)[:, None]])
        rgb = cv2.warpAffine(canvas, warp, (s, s), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(head.alpha, warp, (s, s), flags=cv2.INTER_LINEAR)
        img = over(self.background, rgb, alpha)
        self._draw_body(img, i)
        return downsample(img, self.size)

    def _draw_body(self, img: np.ndarray, i: int) -> None:
        """Shoulders and shirt: half the head's translation, a quarter of its tilt and zoom."""
        m, head = self.motion, self.head
        scale = 1 + 0.5 * (m.scale[i] - 1)
        base = (self.centre + 0.5 * np.array([m.tx[i], m.ty[i]])) * self.s
        base = base + np.array([0, head.b + 0.62]) * head.u * scale
        a = 0.25 * m.rot[i]
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * head.u * scale
        shirt, skin = _body_polygons(self.neckline)
        fill_poly(img, shirt @ rot + base, self.shirt)
        fill_poly(img, skin @ rot + base, head.neck_color)
        polyline(img, skin @ rot + base, self.collar, 0.07 * head.u)
        fold = np.array([[1.25, 0.6], [1.05, 1.6]])
        for side in (-1, 1):
            polyline(
                img, fold * [side, 1] @ rot + base, scale_color(self.shirt, 0.8), 0.03 * head.u
            )


def generate_faces(seed: int, size: int, frames: int, activity: str = "steady") -> np.ndarray:
    """A frames x size x size x 3 uint8 talking-head clip, deterministic in its arguments.

    ``activity`` "steady": one liveliness for the whole clip; "varying": a call, still and
    lively phases of a few seconds in turn (the steady clip of the same seed, its head motion
    and talking scaled over time)."""
    if activity not in ACTIVITIES:
        raise ValueError(f"unknown activity {activity!r}; expected one of {', '.join(ACTIVITIES)}")
    rng = np.random.default_rng(seed)
    avatar = _Avatar(rng, size, frames, activity == "varying")
    return np.stack([avatar.frame(i) for i in range(frames)])
