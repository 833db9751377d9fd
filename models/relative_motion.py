"""FOMM's relative-motion normalisation for transfer mode (driving a different source image)."""

from __future__ import annotations

import numpy as np
import torch

from .blocks import KeypointDict


def convex_hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of N x 2 points (Andrew's monotone chain + shoelace)."""
    pts = sorted(map(tuple, np.asarray(points, dtype=np.float64)))
    if len(pts) < 3:
        return 0.0

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        hull: list[tuple[float, float]] = []
        for p in seq:
            while len(hull) >= 2:
                (ax, ay), (bx, by) = hull[-2], hull[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 0:
                    break
                hull.pop()
            hull.append(p)
        return hull

    hull = np.array(half(pts)[:-1] + half(pts[::-1])[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def normalize_kp(kp_source: KeypointDict, kp_driving: KeypointDict,
                 kp_driving_initial: KeypointDict, adapt_movement_scale: bool = False,
                 use_relative_movement: bool = False,
                 use_relative_jacobian: bool = False) -> KeypointDict:
    """Move the source keypoints by the driving motion since the first driving frame:
    ``kp = (kp_d - kp_d0) * scale + kp_s`` and ``J = J_d inv(J_d0) J_s``; ``scale`` is
    sqrt(hull area of source kp / hull area of first driving kp) when adapting, else 1."""
    scale = 1.0
    if adapt_movement_scale:
        source_area = convex_hull_area(kp_source["value"][0].detach().cpu().numpy())
        driving_area = convex_hull_area(kp_driving_initial["value"][0].detach().cpu().numpy())
        scale = float(np.sqrt(source_area) / np.sqrt(driving_area)) if driving_area > 0 else 1.0
    kp_new = dict(kp_driving)
    if use_relative_movement:
        kp_new["value"] = (kp_driving["value"] - kp_driving_initial["value"]) * scale \
            + kp_source["value"]
        if use_relative_jacobian:
            jacobian_diff = torch.matmul(kp_driving["jacobian"],
                                         torch.inverse(kp_driving_initial["jacobian"]))
            kp_new["jacobian"] = torch.matmul(jacobian_diff, kp_source["jacobian"])
    return kp_new
