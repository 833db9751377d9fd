"""FOMM multi-scale patch discriminator (optional LSGAN + feature-matching training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import KeypointDict, kp2gaussian


class DownBlock2d(nn.Module):
    """Discriminator block: conv, optional instance norm, leaky ReLU, optional pooling."""

    def __init__(self, in_features: int, out_features: int, norm: bool = False,
                 kernel_size: int = 4, pool: bool = False, sn: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        if self.pool:
            out = F.avg_pool2d(out, (2, 2))
        return out


class Discriminator(nn.Module):
    """Pix2pix-like patch discriminator; returns its feature maps and a prediction map."""

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, num_blocks: int = 4,
                 max_features: int = 512, sn: bool = False, use_kp: bool = False,
                 num_kp: int = 10, kp_variance: float = 0.01, **kwargs):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(num_channels + num_kp * use_kp if i == 0
                        else min(max_features, block_expansion * (2**i)),
                        min(max_features, block_expansion * (2 ** (i + 1))),
                        norm=(i != 0), kernel_size=4, pool=(i != num_blocks - 1), sn=sn)
            for i in range(num_blocks)
        )
        last = min(max_features, block_expansion * (2**num_blocks))
        self.conv = nn.Conv2d(last, out_channels=1, kernel_size=1)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(self, x: torch.Tensor,
                kp: KeypointDict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        out = x
        if self.use_kp:
            out = torch.cat([out, kp2gaussian(kp, x.shape[2:], self.kp_variance)], dim=1)
        feature_maps = []
        for down_block in self.down_blocks:
            out = down_block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


class MultiScaleDiscriminator(nn.Module):
    """One discriminator per pyramid scale; reads ``x['prediction_<scale>']``."""

    def __init__(self, scales: tuple[float, ...] = (1,), **kwargs):
        super().__init__()
        self.scales = scales
        self.discs = nn.ModuleDict(
            {str(scale).replace(".", "-"): Discriminator(**kwargs) for scale in scales})

    def forward(self, x: dict[str, torch.Tensor],
                kp: KeypointDict | None = None) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        out: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        for key, disc in self.discs.items():
            scale = key.replace("-", ".")
            feature_maps, prediction_map = disc(x["prediction_" + scale], kp)
            out["feature_maps_" + scale] = feature_maps
            out["prediction_map_" + scale] = prediction_map
        return out
