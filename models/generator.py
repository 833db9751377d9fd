"""FOMM occlusion-aware generator: warps source features by the dense motion and decodes.

With ``skip_connections`` (a kpvid extension; the official generator has none) the encoder's
output at every scale, not only the deepest, is warped and masked by the occlusion map, and the
decoder adds it to its own output at that scale, as the Thin-Plate Spline Motion Model's decoder
does: the source's fine detail reaches the output frame without passing through the bottleneck.
It adds no weights, and matters most where the bottleneck is small next to the frame (a
256x256 frame warped at 32x32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ALIGN_CORNERS, DownBlock2d, KeypointDict, ResBlock2d, SameBlock2d, UpBlock2d
from .dense_motion import DenseMotionNetwork

# The encoder's outputs for one source: without skip connections the deepest alone; with them
# every scale, finest first (``first``, then each down block), the deepest last.
SourceFeatures = tuple[torch.Tensor, ...]


def repeat_features(features: SourceFeatures, n: int) -> SourceFeatures:
    """One source's features (batch of one) as a batch of ``n``, without copying."""
    return tuple(f.expand(n, *f.shape[1:]) for f in features)


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
                 estimate_jacobian: bool = False, skip_connections: bool = False):
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
        self.skip_connections = skip_connections  # up block i's output has the channels and
        # the size of the encoder's scale num_down_blocks - 1 - i, so the sum needs no weights

    def encode_source(self, source_image: torch.Tensor) -> SourceFeatures:
        """Source features before warping (see :data:`SourceFeatures`); they depend on the
        source image only."""
        scales = [self.first(source_image)]
        for down_block in self.down_blocks:
            scales.append(down_block(scales[-1]))
        return tuple(scales) if self.skip_connections else (scales[-1],)

    def decode(self, source_features: SourceFeatures, source_image: torch.Tensor,
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

    def warp_features(self, source_features: SourceFeatures,
                      dense_motion: dict[str, torch.Tensor]) -> SourceFeatures:
        """Source features warped by the dense motion's deformation, times its occlusion map
        when it has one."""
        occlusion_map = dense_motion.get("occlusion_map")
        warped = []
        for features in source_features:
            out = deform_input(features, dense_motion["deformation"])
            if occlusion_map is not None:
                occlusion = occlusion_map if out.shape[2:] == occlusion_map.shape[2:] \
                    else F.interpolate(occlusion_map, size=out.shape[2:], mode="bilinear")
                out = out * occlusion
            warped.append(out)
        return tuple(warped)

    def decode_features(self, features: SourceFeatures) -> torch.Tensor:
        """Bottleneck, up blocks (each output plus the warped features of its scale, with skip
        connections) and final convolution: warped features to the frame (B x C x H x W in
        [0, 1])."""
        out = self.bottleneck(features[-1])
        skips = features[-2::-1]  # the scales the up blocks produce, coarsest first
        for i, up_block in enumerate(self.up_blocks):
            out = up_block(out)
            if i < len(skips):
                out = out + skips[i]
        return torch.sigmoid(self.final(out))

    def forward(self, source_image: torch.Tensor, kp_driving: KeypointDict,
                kp_source: KeypointDict) -> dict[str, torch.Tensor]:
        return self.decode(self.encode_source(source_image), source_image, kp_driving, kp_source)
