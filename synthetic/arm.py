"""Synthetic robot pushing (in the spirit of BAIR robot pushing), seen from above.

A static, cluttered table (wood, laminate, cutting mat or cloth, with papers, tape and stains)
holds a few small objects. A two-link arm with a rotating wrist and a two-finger gripper reaches
in from beyond one edge of the picture. Its joints chase smooth random targets (a damped spring
towards the inverse kinematics of a waypoint; most waypoints lie just past an object) and the
gripper pushes the objects it touches while it is down on the table (kinematic push: an object is
moved out of the gripper's capsules; objects then push each other apart). Coordinates are
fractions of the picture, y down.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .textures import (
    Color,
    blend_float,
    blur_sigma,
    capsule,
    circle,
    colorize,
    coords,
    damped_motion,
    downsample,
    ellipse_points,
    fill_poly,
    fractal_noise,
    hsv_color,
    polyline,
    random_color,
    rotated_rect,
    scale_color,
    stripes,
    supersample_factor,
    to_uint8,
)

SHAPES = ("block", "bar", "disc", "ring", "tri")
SUBSTEPS = 4  # physics steps per frame, so fast moves do not tunnel through objects
FINGER_WIDTH = 0.01  # half-width of a gripper finger
MAX_PUSH = 0.015  # largest displacement of an object in one substep (fraction of the picture)
ARM_COLORS: tuple[tuple[Color, Color], ...] = (  # (link colour, joint accent)
    ((200, 200, 205), (185, 40, 40)),  # grey and red
    ((235, 235, 232), (60, 60, 65)),  # white and black
    ((230, 120, 30), (70, 70, 75)),  # orange and grey
    ((70, 72, 78), (200, 200, 200)),  # dark and steel
    ((170, 185, 200), (40, 90, 170)),  # steel blue
)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.hypot(*v)), 1e-9)


def _opening(grip: float) -> float:
    """Distance from the hand's axis to each finger's centre line for grip 0 (closed) .. 1."""
    return 0.018 + 0.025 * grip


def _direction(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


# ----------------------------------------------------------------------------- table


def _table(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static table top: a base material, clutter lying flat on it and sometimes bin walls."""
    x, y = coords(size)
    kind = rng.integers(4)
    if kind == 0:  # wood planks
        base = hsv_color(rng.uniform(0.05, 0.11), rng.uniform(0.3, 0.7), rng.uniform(0.45, 0.85))
        angle = np.pi / 2 * rng.integers(2) + rng.normal(0, 0.03)
        along = x * np.cos(angle) + y * np.sin(angle)
        warp = rng.uniform(0.01, 0.04) * fractal_noise(rng, size, 3, 3)
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (along + warp) / rng.uniform(0.012, 0.04))
        img = colorize(grain**3, base, scale_color(base, rng.uniform(0.7, 0.85)))
        plank = rng.uniform(0.15, 0.35)
        seams = stripes(size, angle, plank, 25) < 0.03
        img[seams] *= 0.7
    elif kind == 1:  # laminate or painted top, mottled
        base = random_color(rng, (0.0, 0.25), (0.55, 0.95))
        img = colorize(np.zeros((size, size), np.float32), base, base)
        img += rng.uniform(4, 12) * fractal_noise(rng, size, 4, 5, channels=3)
    elif kind == 2:  # cutting mat with a grid
        base = hsv_color(
            rng.choice([0.38, 0.55, 0.62, 0.0]), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.6)
        )
        img = colorize(np.zeros((size, size), np.float32), base, base)
        period = rng.uniform(0.06, 0.12)
        lines = (stripes(size, 0, period, 30) > 0.985) | (
            stripes(size, np.pi / 2, period, 30) > 0.985
        )
        img[lines] = img[lines] * 0.5 + 0.5 * np.asarray(scale_color(base, 1.6), np.float32)
    else:  # cloth
        base = random_color(rng, (0.1, 0.6), (0.3, 0.8))
        weave = stripes(size, np.pi / 4, 0.01, 1) * stripes(size, -np.pi / 4, 0.01, 1)
        img = colorize(weave, scale_color(base, 0.9), scale_color(base, 1.08))
        img += rng.uniform(3, 8) * fractal_noise(rng, size, 8, 3)[..., None]
    img += rng.uniform(2, 8) * fractal_noise(rng, size, 3, 3)[..., None]
    _clutter(rng, img, size)
    if rng.uniform() < 0.5:  # walls of a bin along some edges, darker towards the edge
        for side in rng.permutation(4)[: rng.integers(1, 4)]:
            depth = rng.uniform(0.03, 0.08)
            dist = (x, 1 - x, y, 1 - y)[side]
            wall = np.clip(1 - dist / depth, 0, 1)
            img *= (1 - 0.5 * np.sqrt(wall))[..., None]
    return to_uint8(blur_sigma(img, 0.002 * size))


def _clutter(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Flat, static clutter: sheets of paper, tape strips, stains, coins and marker scribbles."""
    for _ in range(rng.integers(2, 9)):
        layer = np.zeros((size, size, 3), np.uint8)
        cover = np.zeros((size, size), np.uint8)
        centre = rng.uniform(0, size, 2)
        kind = rng.integers(5)
        if kind == 0:  # paper
            color = random_color(rng, (0.0, 0.15), (0.85, 1.0))
            corners = rotated_rect(centre, rng.uniform(0.08, 0.2, 2) * size, rng.uniform(0, np.pi))
            fill_poly(layer, corners, color)
            fill_poly(cover, corners, 255)
            opacity = 0.95
        elif kind == 1:  # tape
            color = random_color(rng, (0.3, 0.9), (0.5, 1.0))
            corners = rotated_rect(
                centre, (rng.uniform(0.1, 0.3) * size, 0.015 * size), rng.uniform(0, np.pi)
            )
            fill_poly(layer, corners, color)
            fill_poly(cover, corners, 255)
            opacity = 0.6
        elif kind == 2:  # stain
            axes = rng.uniform(0.03, 0.1, 2) * size
            blob = (
                ellipse_points(centre, axes, 0, 2 * np.pi, 24) + rng.normal(0, 0.1, (24, 2)) * axes
            )
            fill_poly(layer, blob, random_color(rng, (0.2, 0.6), (0.1, 0.5)))
            fill_poly(cover, blob, 255)
            opacity = rng.uniform(0.1, 0.3)
        elif kind == 3:  # coins or screws
            for _ in range(rng.integers(1, 4)):
                p = centre + rng.normal(0, 0.04, 2) * size
                circle(
                    layer,
                    p,
                    rng.uniform(0.008, 0.015) * size,
                    random_color(rng, (0.0, 0.5), (0.4, 0.9)),
                )
                circle(cover, p, rng.uniform(0.008, 0.015) * size, 255)
            opacity = 0.9
        else:  # marker scribble
            steps = np.cumsum(rng.normal(0, 0.03, (10, 2)), axis=0) * size + centre
            polyline(layer, steps, random_color(rng, (0.5, 1.0), (0.2, 0.7)), 0.006 * size)
            polyline(cover, steps, 255, 0.006 * size)
            opacity = 0.8
        blend_float(img, layer.astype(np.float32), cover.astype(np.float32) / 255 * opacity)


# ----------------------------------------------------------------------------- scene


@dataclass
class _Objects:
    """Pushable objects: positions and angles change over time, the rest is fixed."""

    pos: np.ndarray  # n x 2
    angle: np.ndarray  # n
    radius: np.ndarray  # n, collision radius
    shape: list[str]
    color: list[Color]


def _place_objects(rng: np.random.Generator) -> _Objects:
    """3-6 objects at non-overlapping random places."""
    pos: list[np.ndarray] = []
    radius: list[float] = []
    for _ in range(int(rng.integers(3, 7))):
        r = rng.uniform(0.05, 0.085)
        for _ in range(20):
            p = rng.uniform(0.15, 0.85, 2)
            if all(np.hypot(*(p - q)) > r + s + 0.01 for q, s in zip(pos, radius, strict=True)):
                pos.append(p)
                radius.append(r)
                break
    n = len(pos)
    colors = [random_color(rng, (0.45, 1.0), (0.45, 1.0)) for _ in range(n)]
    return _Objects(
        pos=np.array(pos),
        angle=rng.uniform(0, 2 * np.pi, n),
        radius=np.array(radius),
        shape=[SHAPES[i] for i in rng.integers(len(SHAPES), size=n)],
        color=colors,
    )


def _push_out(
    pos: np.ndarray, radius: np.ndarray, a: np.ndarray, b: np.ndarray, r: float
) -> np.ndarray:
    """Move objects overlapping the capsule a-b (radius r) out of it; returns the hit mask.

    A move is at most MAX_PUSH, so an object under a gripper that comes down on it slides out
    over a few frames instead of jumping.
    """
    ab = b - a
    t = np.clip((pos - a) @ ab / max(float(ab @ ab), 1e-12), 0, 1)
    closest = a + t[:, None] * ab
    away = pos - closest
    dist = np.hypot(away[:, 0], away[:, 1])
    need = radius + r
    hit = dist < need
    if hit.any():
        normal = away[hit] / np.maximum(dist[hit], 1e-9)[:, None]
        step = np.minimum(need[hit] - dist[hit], MAX_PUSH)
        pos[hit] += normal * step[:, None]
    return hit


def _separate(pos: np.ndarray, radius: np.ndarray) -> None:
    """Push overlapping objects apart symmetrically (a couple of relaxation passes)."""
    for _ in range(2):
        d = pos[:, None] - pos[None]
        dist = np.maximum(np.hypot(d[..., 0], d[..., 1]), 1e-9)
        overlap = np.clip(radius[:, None] + radius[None] - dist, 0, None)
        np.fill_diagonal(overlap, 0)
        pos += 0.5 * np.sum(d / dist[..., None] * overlap[..., None], axis=1)


class _ArmScene:
    """Samples a scene, simulates the whole clip once, then renders frames."""

    def __init__(self, rng: np.random.Generator, size: int, frames: int) -> None:
        self.size = size
        self.s = size * supersample_factor(size)
        self.table = _table(rng, self.s)
        side = rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])  # top, right, bottom, left
        along = rng.uniform(0.25, 0.75)
        self.base = np.array([[along, -0.12], [1.12, along], [along, 1.12], [-0.12, along]][side])
        self.l1, self.l2 = rng.uniform(0.5, 0.6), rng.uniform(0.42, 0.52)
        self.wrist_len, self.finger_len = rng.uniform(0.05, 0.07), rng.uniform(0.06, 0.08)
        self.elbow = rng.choice([-1.0, 1.0])
        self.color, self.accent = ARM_COLORS[rng.integers(len(ARM_COLORS))]
        self.color = scale_color(self.color, rng.uniform(0.85, 1.05))
        self.shadow = rng.uniform(-1, 1, 2) * 0.012 + 0.008  # shadow offset per unit of height
        self.objects = _place_objects(rng)
        self._simulate(rng, frames)

    def _ik(self, target: np.ndarray) -> np.ndarray:
        """Shoulder and elbow angles putting the wrist at `target` (clamped to the reach)."""
        d = target - self.base
        dist = np.clip(np.hypot(*d), abs(self.l1 - self.l2) + 1e-3, self.l1 + self.l2 - 1e-3)
        cos_q2 = (dist**2 - self.l1**2 - self.l2**2) / (2 * self.l1 * self.l2)
        q2 = self.elbow * np.arccos(np.clip(cos_q2, -1, 1))
        q1 = np.arctan2(d[1], d[0]) - np.arctan2(
            self.l2 * np.sin(q2), self.l1 + self.l2 * np.cos(q2)
        )
        return np.array([q1, q2])

    def _waypoint(self, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """Next wrist target: usually just past an object (a push), else anywhere on the table."""
        objects = self.objects
        if len(objects.radius) and rng.uniform() < 0.7:
            j = rng.integers(len(objects.radius))
            reach = _unit(objects.pos[j] - self.base)
            push = _unit(rng.normal(size=2)) * rng.uniform(0.04, 0.16)
            return objects.pos[j] + push - (self.wrist_len + 0.5 * self.finger_len) * reach, True
        return rng.uniform(0.12, 0.88, 2), False

    def joints(self, q: np.ndarray, wrist: float) -> tuple[np.ndarray, ...]:
        """Elbow, wrist, palm and finger-tip centre positions for joint angles q and wrist angle."""
        elbow = self.base + self.l1 * _direction(q[0])
        wrist_pos = elbow + self.l2 * _direction(q[0] + q[1])
        hand = _direction(q[0] + q[1] + wrist)
        palm = wrist_pos + self.wrist_len * hand
        return elbow, wrist_pos, palm, palm + self.finger_len * hand

    def _simulate(self, rng: np.random.Generator, frames: int) -> None:
        """Joint-space damped spring towards the waypoint IK; kinematic pushes at every substep."""
        omega = 2 * np.pi / rng.uniform(10, 16)
        damping = rng.uniform(0.7, 1.0)
        noise = rng.uniform(0.0, 0.02)
        slow = damped_motion(
            rng, frames, rng.uniform([16, 20], [40, 50]), rng.uniform([0.6, 0.6], [1, 1])
        )
        self.wrist = 0.5 * np.tanh(slow[:, 0])
        self.lift = np.clip(0.55 * slow[:, 1] - 0.35, 0, 1)  # 0 = gripper down on the table
        target, _ = self._waypoint(rng)
        q = self._ik(target + rng.normal(0, 0.08, 2))
        qd = np.zeros(2)
        grip = grip_target = rng.uniform(0.2, 1.0)
        switch = int(rng.integers(0, 6))
        dt = 1.0 / SUBSTEPS
        objects = self.objects
        self.q = np.empty((frames, 2))
        self.grip = np.empty(frames)
        self.pos = np.empty((frames, *objects.pos.shape))
        self.angle = np.empty((frames, objects.angle.size))
        palm = self.joints(q, self.wrist[0])[2]
        for t in range(frames):
            if t == switch:
                target, pushing = self._waypoint(rng)
                grip_target = 1.0 if pushing else float(rng.choice([0.1, 0.9]))
                switch += int(rng.integers(6, 13))
            goal = self._ik(target)
            for _ in range(SUBSTEPS):
                error = (goal - q + np.pi) % (2 * np.pi) - np.pi
                qd += dt * (
                    omega**2 * error - 2 * damping * omega * qd + noise * rng.normal(size=2)
                )
                qd = np.clip(qd, -0.08, 0.08)
                q = q + dt * qd
                _, wrist_pos, new_palm, tip = self.joints(q, self.wrist[t])
                if self.lift[t] < 0.15:
                    self._contact(wrist_pos, new_palm, tip, new_palm - palm, grip)
                palm = new_palm
            grip += 0.3 * (grip_target - grip)
            self.q[t], self.grip[t] = q, grip
            self.pos[t], self.angle[t] = objects.pos, objects.angle

    def _contact(
        self, wrist: np.ndarray, palm: np.ndarray, tip: np.ndarray, motion: np.ndarray, grip: float
    ) -> None:
        """Objects touched by the lowered hand are pushed out of it (and turned if off-centre)."""
        objects = self.objects
        hits = _push_out(objects.pos, objects.radius, wrist, palm, 0.03)
        hits |= _push_out(objects.pos, objects.radius, palm, tip, _opening(grip) + FINGER_WIDTH)
        lever = objects.pos[hits] - palm
        objects.angle[hits] += 40.0 * (lever[:, 0] * motion[1] - lever[:, 1] * motion[0])
        _separate(objects.pos, objects.radius)
        low, high = objects.radius[:, None], 1 - objects.radius[:, None]
        np.clip(objects.pos, low, high, out=objects.pos)

    # ------------------------------------------------------------------ rendering
    def frame(self, t: int) -> np.ndarray:
        """Frame t as size x size x 3 uint8 RGB."""
        s = self.s
        img = self.table.copy()
        shadow = np.zeros((s, s), np.uint8)
        self._draw_objects(shadow, t, self.shadow * 0.5, shadow_only=True)
        self._draw_arm(shadow, t, shadow_only=True)
        dark = blur_sigma(shadow, 0.01 * s).astype(np.float32) / 255 * 0.45
        img = cv2.blendLinear(img, np.zeros_like(img), 1 - dark, dark)
        self._draw_objects(img, t, np.zeros(2), shadow_only=False)
        self._draw_arm(img, t, shadow_only=False)
        return downsample(img, self.size)

    def _draw_objects(self, img: np.ndarray, t: int, offset: np.ndarray, shadow_only: bool) -> None:
        """Objects with a lit top face, or just their silhouettes (shifted by offset) as shadow."""
        s = self.s
        objects = self.objects
        for i, shape in enumerate(objects.shape):
            centre = (self.pos[t, i] + offset) * s
            r = objects.radius[i] * s
            angle = self.angle[t, i]
            color = objects.color[i]
            body = 255 if shadow_only else scale_color(color, 0.8)
            if shape in ("disc", "ring"):
                circle(img, centre, 0.95 * r, body)
                if not shadow_only:
                    circle(img, centre - self.shadow * s * 0.4, 0.82 * r, color)
                    if shape == "ring":
                        circle(img, centre, 0.4 * r, scale_color(color, 0.55))
                        circle(img, centre, 0.3 * r, scale_color(color, 0.4))
                continue
            if shape == "tri":
                outline = ellipse_points(centre, (r, r), angle, angle + 2 * np.pi, 4)[:3]
            else:
                half = (0.75 * r, 0.75 * r) if shape == "block" else (r, 0.45 * r)
                outline = rotated_rect(centre, half, angle)
            fill_poly(img, outline, body)
            if not shadow_only:
                top = centre + 0.72 * (outline - centre) - self.shadow * s * 0.4
                fill_poly(img, top, color)

    def _draw_arm(self, img: np.ndarray, t: int, shadow_only: bool) -> None:
        """Links, joints and gripper, or just the arm's silhouette shifted as its shadow."""
        s = self.s
        lift = self.lift[t]
        hand_scale = 1 + 0.35 * lift  # a raised gripper is closer to the camera
        elbow, wrist, palm, tip = self.joints(self.q[t], self.wrist[t])
        hand = _unit(tip - palm)
        across = np.array([-hand[1], hand[0]])
        opening = _opening(self.grip[t]) * hand_scale
        links = ((self.base, elbow, 0.04), (elbow, wrist, 0.03))
        if shadow_only:
            off = self.shadow * (2.5 + 2 * lift)
            for a, b, r in links:
                fill_poly(img, capsule((a + off) * s, (b + off) * s, r * s), 255)
            fill_poly(img, capsule((wrist + off) * s, (tip + off) * s, opening * s), 255)
            return
        dark = scale_color(self.color, 0.45)
        shine = scale_color(self.color, 1.2)
        for a, b, r in links:
            fill_poly(img, capsule(a * s, b * s, (r + 0.005) * s), dark)
            fill_poly(img, capsule(a * s, b * s, r * s), self.color)
            ridge = -0.4 * r * _unit(self.shadow)  # highlight on the lit side
            polyline(img, np.array([a + ridge, b + ridge]) * s, shine, 0.25 * r * s)
            circle(img, b * s, 0.75 * r * s, self.accent)
            circle(img, b * s, 0.4 * r * s, scale_color(self.accent, 0.7))
        polyline(img, np.array([elbow, wrist]) * s + across * 0.012 * s, (30, 30, 30), 0.004 * s)
        finger = np.array([0.5 * self.finger_len, FINGER_WIDTH]) * hand_scale
        finger_angle = float(np.arctan2(hand[1], hand[0]))
        for side in (-1, 1):
            centre = (palm + 0.5 * self.finger_len * hand + side * opening * across) * s
            fill_poly(img, rotated_rect(centre, finger * s + 0.004 * s, finger_angle), (25, 25, 28))
            fill_poly(img, rotated_rect(centre, finger * s, finger_angle), (110, 112, 118))
        polyline(img, np.array([wrist, palm]) * s, (45, 45, 50), 0.024 * hand_scale * s)
        palm_half = np.array([0.012, opening + 0.012]) * s
        fill_poly(img, rotated_rect(palm * s, palm_half, finger_angle), (45, 45, 50))
        circle(img, wrist * s, 0.03 * hand_scale * s, dark)
        circle(img, wrist * s, 0.022 * hand_scale * s, self.accent)


def generate_arm(seed: int, size: int, frames: int) -> np.ndarray:
    """A frames x size x size x 3 uint8 robot-pushing clip, deterministic in its arguments."""
    rng = np.random.default_rng(seed)
    scene = _ArmScene(rng, size, frames)
    return np.stack([scene.frame(t) for t in range(frames)])
