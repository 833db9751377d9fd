"""FOMM occlusion-aware generator: warps source features by the dense motion and decodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ALIGN_CORNERS, DownBlock2d, KeypointDict, ResBlock2d, SameBlock2d, UpBlock2d
from .dense_motion import DenseMotionNetwork


def deform_input(inp: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``inp`` (B x C x H x W) by ``deformation`` (B x h x w x 2), resized to fit."""
    _, h_old, w_old, _ = deformation.shape
    _, _, h, w = inp.shape
    if h_old != h or w_old != w:
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
        deformation = deformation.permute(0, 2, 3, 1)
    return F.grid_sample(inp, deformation, align_corners=ALIGN_CORNERS)


class OcclusionAwareGenerator(nn.Module):
    """Encoder -> warp by dense motion -> mask by occlusion -> residual bottleneck -> decoder."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int,
                 estimate_occlusion_map: bool = False, dense_motion_params: dict | None = None,
                 estimate_jacobian: bool = False):
        super().__init__()
        if dense_motion_params is not None:
            self.dense_motion_network = DenseMotionNetwork(
                num_kp=num_kp, num_channels=num_channels,
                estimate_occlusion_map=estimate_occlusion_map, **dense_motion_params)
        else:
            self.dense_motion_network = None

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3))
        down_blocks = []
        for i in range(num_down_blocks):
            in_features = min(max_features, block_expansion * (2**i))
            out_features = min(max_features, block_expansion * (2 ** (i + 1)))
            down_blocks.append(DownBlock2d(in_features, out_features, kernel_size=(3, 3),
                                           padding=(1, 1)))
        self.down_blocks = nn.ModuleList(down_blocks)

        up_blocks = []
        for i in range(num_down_blocks):
            in_features = min(max_features, block_expansion * (2 ** (num_down_blocks - i)))
            out_features = min(max_features, block_expansion * (2 ** (num_down_blocks - i - 1)))
            up_blocks.append(UpBlock2d(in_features, out_features, kernel_size=(3, 3),
                                       padding=(1, 1)))
        self.up_blocks = nn.ModuleList(up_blocks)

        self.bottleneck = nn.Sequential()
        in_features = min(max_features, block_expansion * (2**num_down_blocks))
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(in_features, kernel_size=(3, 3),
                                                           padding=(1, 1)))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.estimate_occlusion_map = estimate_occlusion_map
        self.num_channels = num_channels

    def encode_source(self, source_image: torch.Tensor) -> torch.Tensor:
        """Source features before warping; they depend on the source image only."""
        out = self.first(source_image)
        for down_block in self.down_blocks:
            out = down_block(out)
        return out

    def decode(self, source_features: torch.Tensor, source_image: torch.Tensor,
               kp_driving: KeypointDict, kp_source: KeypointDict) -> dict[str, torch.Tensor]:
        """Everything that changes per driving frame, given precomputed source features."""
        out = source_features
        output_dict: dict[str, torch.Tensor] = {}
        if self.dense_motion_network is not None:
            dense_motion = self.dense_motion_network(source_image=source_image,
                                                     kp_driving=kp_driving, kp_source=kp_source)
            output_dict["mask"] = dense_motion["mask"]
            output_dict["sparse_deformed"] = dense_motion["sparse_deformed"]
            if "occlusion_map" in dense_motion:
                output_dict["occlusion_map"] = dense_motion["occlusion_map"]
            out = self.warp_features(out, dense_motion)
            output_dict["deformed"] = deform_input(source_image, dense_motion["deformation"])
        output_dict["prediction"] = self.decode_features(out)
        return output_dict

    def warp_features(self, source_features: torch.Tensor,
                      dense_motion: dict[str, torch.Tensor]) -> torch.Tensor:
        """Source features warped by the dense motion's deformation, times its occlusion map
        when it has one."""
        out = deform_input(source_features, dense_motion["deformation"])
        occlusion_map = dense_motion.get("occlusion_map")
        if occlusion_map is not None:
            if out.shape[2:] != occlusion_map.shape[2:]:
                occlusion_map = F.interpolate(occlusion_map, size=out.shape[2:], mode="bilinear")
            out = out * occlusion_map
        return out

    def decode_features(self, features: torch.Tensor) -> torch.Tensor:
        """Bottleneck, up blocks and final convolution: (warped) features to the frame
        (B x C x H x W in [0, 1])."""
        out = self.bottleneck(features)
        for up_block in self.up_blocks:
            out = up_block(out)
        return torch.sigmoid(self.final(out))

    def forward(self, source_image: torch.Tensor, kp_driving: KeypointDict,
                kp_source: KeypointDict) -> dict[str, torch.Tensor]:
        return self.decode(self.encode_source(source_image), source_image, kp_driving, kp_source)
