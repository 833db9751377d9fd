"""FOMM dense motion network: K local affine motions + background -> dense flow and occlusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (
    ALIGN_CORNERS,
    AntiAliasInterpolation2d,
    Hourglass,
    KeypointDict,
    kp2gaussian,
    make_coordinate_grid,
)


class DenseMotionNetwork(nn.Module):
    """Combines the sparse motions around each keypoint into one backward deformation
    (B x H x W x 2, sampling grid into the source) with a softmax mask, and optionally an
    occlusion map (B x 1 x H x W) for the generator."""

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int,
                 num_channels: int, estimate_occlusion_map: bool = False,
                 scale_factor: float = 1, kp_variance: float = 0.01):
        super().__init__()
        self.hourglass = Hourglass(block_expansion=block_expansion,
                                   in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=max_features, num_blocks=num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=(7, 7),
                              padding=(3, 3))
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=(7, 7),
                                       padding=(3, 3))
        else:
            self.occlusion = None
        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def source_inputs(self, source_image: torch.Tensor, kp_source: KeypointDict
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`motion` needs of the source alone: the source at the motion resolution
        (B x C x h x w) and the gaussians of its keypoints there (B x K x h x w)."""
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        return source_image, kp2gaussian(kp_source, source_image.shape[2:], self.kp_variance)

    def create_heatmap_representations(self, source_heatmap: torch.Tensor,
                                       kp_driving: KeypointDict) -> torch.Tensor:
        """B x (K+1) x 1 x h x w: driving minus source gaussians, zero background first."""
        spatial_size = source_heatmap.shape[2:]
        heatmap = kp2gaussian(kp_driving, spatial_size, self.kp_variance) - source_heatmap
        zeros = heatmap.new_zeros(heatmap.shape[0], 1, *spatial_size)
        return torch.cat([zeros, heatmap], dim=1).unsqueeze(2)

    def create_sparse_motions(self, source_image: torch.Tensor, kp_driving: KeypointDict,
                              kp_source: KeypointDict) -> torch.Tensor:
        """B x (K+1) x H x W x 2: identity, then ``J_s inv(J_d) (z - kp_d) + kp_s`` per keypoint."""
        bs, _, h, w = source_image.shape
        identity_grid = make_coordinate_grid((h, w), kp_source["value"].dtype,
                                             source_image.device).view(1, 1, h, w, 2)
        coordinate_grid = identity_grid - kp_driving["value"].view(bs, self.num_kp, 1, 1, 2)
        if "jacobian" in kp_driving:
            jacobian = torch.matmul(kp_source["jacobian"], torch.inverse(kp_driving["jacobian"]))
            jacobian = jacobian.unsqueeze(-3).unsqueeze(-3)
            coordinate_grid = torch.matmul(jacobian, coordinate_grid.unsqueeze(-1)).squeeze(-1)
        driving_to_source = coordinate_grid + kp_source["value"].view(bs, self.num_kp, 1, 1, 2)
        return torch.cat([identity_grid.repeat(bs, 1, 1, 1, 1), driving_to_source], dim=1)

    def create_deformed_source_image(self, source_image: torch.Tensor,
                                     sparse_motions: torch.Tensor) -> torch.Tensor:
        """B x (K+1) x C x H x W: the source warped by each sparse motion."""
        bs, _, h, w = source_image.shape
        n = self.num_kp + 1
        source_repeat = source_image.unsqueeze(1).expand(bs, n, -1, h, w).reshape(bs * n, -1, h, w)
        deformed = F.grid_sample(source_repeat, sparse_motions.reshape(bs * n, h, w, -1),
                                 align_corners=ALIGN_CORNERS)
        return deformed.view(bs, n, -1, h, w)

    def forward(self, source_image: torch.Tensor, kp_driving: KeypointDict,
                kp_source: KeypointDict) -> dict[str, torch.Tensor]:
        return self.motion(*self.source_inputs(source_image, kp_source), kp_driving, kp_source)

    def motion(self, source_image: torch.Tensor, source_heatmap: torch.Tensor,
               kp_driving: KeypointDict, kp_source: KeypointDict) -> dict[str, torch.Tensor]:
        """The per-frame part of :meth:`forward`, given :meth:`source_inputs`."""
        bs, _, h, w = source_image.shape
        heatmap_representation = self.create_heatmap_representations(source_heatmap, kp_driving)
        sparse_motion = self.create_sparse_motions(source_image, kp_driving, kp_source)
        deformed_source = self.create_deformed_source_image(source_image, sparse_motion)
        out = {"sparse_deformed": deformed_source}
        net_input = torch.cat([heatmap_representation, deformed_source], dim=2).view(bs, -1, h, w)
        prediction = self.hourglass(net_input)
        mask = F.softmax(self.mask(prediction), dim=1)
        out["mask"] = mask
        deformation = (sparse_motion.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1)
        out["deformation"] = deformation.permute(0, 2, 3, 1)
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))
        return out
