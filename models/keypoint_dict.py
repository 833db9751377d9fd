"""Keypoint sets between the networks' keypoint dicts (torch) and ``kp6`` arrays (numpy, the
layout of :mod:`kpvid.protocol.keypoint_set`), for batches of sets."""

from __future__ import annotations

import numpy as np
import torch

from .blocks import KeypointDict


def kp6_from_dict(kp: KeypointDict) -> np.ndarray:
    """Detector output (``value`` B x K x 2, optional ``jacobian`` B x K x 2 x 2) -> float32
    ``(B, K, 6)``; identity jacobians for detectors that estimate none."""
    value = kp["value"]
    jacobian = kp.get("jacobian")
    if jacobian is None:
        jacobian = torch.eye(2, dtype=value.dtype, device=value.device).expand(
            *value.shape[:2], 2, 2)
    flat = torch.cat([value, jacobian.reshape(*value.shape[:2], 4)], dim=-1)
    return flat.float().cpu().numpy()


def kp_dict_from_kp6(kp6: np.ndarray, device: str | torch.device = "cpu") -> KeypointDict:
    """float32 ``(B, K, 6)`` -> ``{'value': B x K x 2, 'jacobian': B x K x 2 x 2}`` tensors."""
    tensor = torch.as_tensor(np.asarray(kp6, dtype=np.float32), device=device)
    return {"value": tensor[..., :2].contiguous(),
            "jacobian": tensor[..., 2:].reshape(*tensor.shape[:-1], 2, 2).contiguous()}
