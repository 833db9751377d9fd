"""Pictures of what the model does: keypoints drawn on frames, training grids, side-by-sides."""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B x 3 x H x W in [0, 1] -> B x H x W x 3 uint8."""
    array = images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return (array * 255 + 0.5).astype(np.uint8)


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, radius: int = 2) -> np.ndarray:
    """Copy of an H x W x 3 image with K x 2 keypoints in [-1, 1] drawn in rainbow colours."""
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    for k, (x, y) in enumerate(keypoints):
        r, g, b = colorsys.hsv_to_rgb(k / max(len(keypoints), 1), 1.0, 1.0)
        centre = (int(round((x + 1) * (w - 1) / 2)), int(round((y + 1) * (h - 1) / 2)))
        cv2.circle(out, centre, radius, (int(r * 255), int(g * 255), int(b * 255)), -1,
                   cv2.LINE_AA)
    return out


def training_grid(source: torch.Tensor, driving: torch.Tensor, generated: dict,
                  kp_source: torch.Tensor, kp_driving: torch.Tensor,
                  max_rows: int = 6) -> np.ndarray:
    """Rows of (source+kp, driving+kp, prediction+kp, deformed source, occlusion map)."""
    n = min(max_rows, source.shape[0])
    columns = [
        [draw_keypoints(im, kp) for im, kp in zip(to_uint8(source[:n]),
                                                  kp_source[:n].detach().cpu().numpy())],
        [draw_keypoints(im, kp) for im, kp in zip(to_uint8(driving[:n]),
                                                  kp_driving[:n].detach().cpu().numpy())],
        [draw_keypoints(im, kp) for im, kp in zip(to_uint8(generated["prediction"][:n]),
                                                  kp_driving[:n].detach().cpu().numpy())],
    ]
    size = source.shape[2:]
    if "deformed" in generated:
        columns.append(list(to_uint8(generated["deformed"][:n])))
    if "occlusion_map" in generated:
        occlusion = torch.nn.functional.interpolate(generated["occlusion_map"][:n], size=size)
        columns.append(list(to_uint8(occlusion.repeat(1, 3, 1, 1))))
    rows = [np.concatenate([col[i] for col in columns], axis=1) for i in range(n)]
    return np.concatenate(rows, axis=0)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
