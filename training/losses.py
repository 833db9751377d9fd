"""FOMM training losses: image pyramid, random warps for equivariance, optional VGG19 features."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kpvid.models.blocks import (
    ALIGN_CORNERS,
    AntiAliasInterpolation2d,
    KeypointDict,
    make_coordinate_grid,
)


class ImagePyramide(nn.Module):
    """Anti-aliased downscales of an image: ``{'prediction_<scale>': tensor}``."""

    def __init__(self, scales: list[float], num_channels: int):
        super().__init__()
        self.downs = nn.ModuleDict({
            str(scale).replace(".", "-"): AntiAliasInterpolation2d(num_channels, scale)
            for scale in scales})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction_" + key.replace("-", "."): down(x) for key, down in self.downs.items()}


class Transform:
    """A random affine + thin-plate-spline warp of the plane, per batch element (equivariance)."""

    def __init__(self, bs: int, sigma_affine: float, sigma_tps: float | None = None,
                 points_tps: int | None = None, device: torch.device | str = "cpu"):
        noise = torch.normal(mean=0, std=sigma_affine * torch.ones([bs, 2, 3], device=device))
        self.theta = noise + torch.eye(2, 3, device=device).view(1, 2, 3)
        self.bs = bs
        self.tps = sigma_tps is not None and points_tps is not None
        if self.tps:
            self.control_points = make_coordinate_grid((points_tps, points_tps),
                                                       device=device).unsqueeze(0)
            self.control_params = torch.normal(
                mean=0, std=sigma_tps * torch.ones([bs, 1, points_tps**2], device=device))

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """Warp a B x C x H x W frame (reflection padding)."""
        h, w = frame.shape[2:]
        grid = make_coordinate_grid((h, w), frame.dtype, frame.device).view(1, h * w, 2)
        grid = self.warp_coordinates(grid).view(self.bs, h, w, 2)
        return F.grid_sample(frame, grid, padding_mode="reflection",
                             align_corners=ALIGN_CORNERS)

    def warp_coordinates(self, coordinates: torch.Tensor) -> torch.Tensor:
        """Map B x N x 2 (or 1 x N x 2) coordinates through the warp."""
        theta = self.theta.to(coordinates.dtype).unsqueeze(1)
        transformed = torch.matmul(theta[:, :, :, :2], coordinates.unsqueeze(-1)) \
            + theta[:, :, :, 2:]
        transformed = transformed.squeeze(-1)
        if self.tps:
            control_points = self.control_points.to(coordinates.dtype)
            distances = coordinates.view(coordinates.shape[0], -1, 1, 2) \
                - control_points.view(1, 1, -1, 2)
            distances = torch.abs(distances).sum(-1)
            result = distances**2 * torch.log(distances + 1e-6) * self.control_params
            transformed = transformed + result.sum(dim=2).view(self.bs, coordinates.shape[1], 1)
        return transformed

    def jacobian(self, coordinates: torch.Tensor) -> torch.Tensor:
        """B x N x 2 x 2 jacobian of the warp at ``coordinates`` (which must require grad)."""
        new_coordinates = self.warp_coordinates(coordinates)
        grad_x = torch.autograd.grad(new_coordinates[..., 0].sum(), coordinates, create_graph=True)
        grad_y = torch.autograd.grad(new_coordinates[..., 1].sum(), coordinates, create_graph=True)
        return torch.cat([grad_x[0].unsqueeze(-2), grad_y[0].unsqueeze(-2)], dim=-2)


def equivariance_losses(kp_driving: KeypointDict, transformed_kp: KeypointDict,
                        transform: Transform) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean absolute errors of keypoint positions and jacobians under ``transform``: the
    keypoints of the warped frame, mapped back through the warp, must equal the originals."""
    value = torch.abs(kp_driving["value"]
                      - transform.warp_coordinates(transformed_kp["value"])).mean()
    jacobian_transformed = torch.matmul(transform.jacobian(transformed_kp["value"]),
                                        transformed_kp["jacobian"])
    product = torch.matmul(torch.inverse(kp_driving["jacobian"]), jacobian_transformed)
    eye = torch.eye(2, dtype=product.dtype, device=product.device).view(1, 1, 2, 2)
    return value, torch.abs(eye - product).mean()


SEPARATION_SIGMA = 0.15  # keypoints closer than about this (7 % of the frame) repel


def keypoint_separation(value: torch.Tensor, sigma: float = SEPARATION_SIGMA) -> torch.Tensor:
    """Mean Gaussian affinity exp(-d^2 / 2 sigma^2) over the pairs of one frame's keypoints
    (B x K x 2, in [-1, 1]): a prior against keypoints that sit on one another, which carry one
    motion twice and leave the rest of the face to none (kpvid extension)."""
    k = value.shape[1]
    d2 = torch.cdist(value, value).pow(2)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=value.device)
    return torch.exp(-d2 / (2 * sigma**2))[:, off_diagonal].mean()


def keypoint_landmark_error(value: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Mean absolute distance of keypoints (B x K x 2) from landmark points (B x K x 2, NaN rows
    for samples without them), in [-1, 1] units; 0 when no sample has landmarks (kpvid
    extension: a landmark prior, the FOMM authors' advice for keypoints that cluster)."""
    known = ~torch.isnan(landmarks).any(dim=2).any(dim=1)
    if not known.any():
        return value.sum() * 0
    return torch.abs(value[known] - landmarks[known]).mean()


class Vgg19(nn.Module):
    """VGG19 feature slices (relu1_1 ... relu5_1) for the perceptual loss.

    ImageNet weights cannot be downloaded here: pass a torchvision-layout ``vgg19`` state dict
    file (``features.N.weight`` / ``features.N.bias``)."""

    _CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
            512, 512, 512, 512]
    _SLICE_ENDS = (2, 7, 12, 21, 30)  # layer index after relu1_1, relu2_1, ... relu5_1

    def __init__(self, weights_path: str | Path):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for v in self._CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = v
        self.features = nn.Sequential(*layers)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        self.load_state_dict(state, strict=True)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = (x - self.mean) / self.std
        feats = []
        start = 0
        for end in self._SLICE_ENDS:
            out = self.features[start:end](out)
            feats.append(out)
            start = end
        return feats
