"""Image quality metrics on B x C x H x W tensors in [0, 1]: L1, PSNR, SSIM, keypoint distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute error (B,)."""
    return (pred - target).abs().flatten(1).mean(1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for a peak of 1 (B,)."""
    mse = ((pred - target) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g.view(-1, 1) * g.view(1, -1)).expand(channels, 1, size, size).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (B,): Gaussian window 11/1.5, K1 0.01, K2 0.03 (Wang et al. 2004), mean
    over channels and valid positions."""
    c = pred.shape[1]
    w = _gaussian_window(window, sigma, c, pred.dtype, pred.device)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=c)

    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) \
        / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1)


def keypoint_distance(kp_a: torch.Tensor, kp_b: torch.Tensor, size: int) -> torch.Tensor:
    """Mean pixel distance (B,) of B x K x 2 keypoints in [-1, 1] on a size x size frame."""
    return ((kp_a - kp_b) * (size - 1) / 2).norm(dim=-1).mean(-1)
