"""Keypoint detection on the sender: one RGB frame in, FOMM keypoints and jacobians out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from kpvid.models import SHIPPED_CHECKPOINT, frame_size, load_checkpoint_with_config, model_id


class KeypointExtractor:
    """Runs a model's keypoint detector (a FOMM ``KPDetector``, or FaceMesh for a
    FaceMesh-driven model) on single frames.

    ``detect`` returns ``value`` (K, 2) in [-1, 1] (x, y) and ``jacobian`` (K, 2, 2), both
    float32; a detector without a jacobian head yields identity jacobians.
    """

    def __init__(self, kp_detector: nn.Module, device: str | torch.device = "cpu",
                 model_id: str = "custom", frame_size: int | None = None):
        self.device = torch.device(device)
        self.kp_detector = kp_detector.to(self.device).eval()
        self.model_id = model_id
        self.frame_size = frame_size
        self.num_kp = int(kp_detector.num_kp)

    @classmethod
    def from_checkpoint(cls, path: str | Path = SHIPPED_CHECKPOINT,
                        device: str | torch.device = "cpu",
                        config: str | Path | None = None) -> KeypointExtractor:
        """Load a checkpoint's detector (``config``: for a checkpoint that carries none, see
        :func:`~kpvid.models.load_checkpoint`); ``model_id`` is the file name without
        ``.pth.tar``."""
        kp_detector, _, config = load_checkpoint_with_config(path, config, device=device)
        return cls(kp_detector, device, model_id=model_id(path), frame_size=frame_size(config))

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints of one H x W x 3 uint8 RGB frame -> (value (K, 2), jacobian (K, 2, 2))."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 frame, got {rgb.shape} {rgb.dtype}")
        with torch.inference_mode():
            x = torch.tensor(rgb, device=self.device).permute(2, 0, 1)[None].float().div(255)
            out = self.kp_detector(x)
            value = out["value"][0].float().cpu().numpy()
            if "jacobian" in out:
                jacobian = out["jacobian"][0].float().cpu().numpy()
            else:
                jacobian = np.broadcast_to(np.eye(2, dtype=np.float32), (self.num_kp, 2, 2))
        return (np.ascontiguousarray(value, dtype=np.float32),
                np.ascontiguousarray(jacobian, dtype=np.float32))
