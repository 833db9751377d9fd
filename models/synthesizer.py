"""Frame synthesis for live streams: the source-only work once per source, the rest per frame.

A plain ``generator(source, kp_driving, kp_source)`` call recomputes, for every frame, the
encoder features of the source, the source at the dense motion's resolution and its keypoints'
gaussians, and warps the full-size source for a ``deformed`` picture nobody shows.
:class:`Synthesizer` computes the source-only parts once (:meth:`Synthesizer.prepare`) and per
frame only the dense motion, the warp and the decoder, for any number of streams in one batched
call (:meth:`Synthesizer.render_many`).

With ``optimize`` (the default) it runs an inference copy of the generator whose arithmetic is
rearranged, not changed: batch norms that follow a convolution are folded into it, and every
nearest x2 upsampling followed by a 3x3 convolution (:class:`~kpvid.models.blocks.UpBlock2d`) is
one 4x4 transposed convolution of stride 2 (the same sums with 16 instead of 36 multiplies per
output pixel and channel pair), the remaining 3x3 convolutions are
:class:`~kpvid.models.fast_conv.FastConv2d` (Winograd on large maps, one matrix product on small
ones), and activations are kept channels-last. Frames equal the plain call's to float rounding
(about 1e-5). docs/speed.md has what these give.

With ``half`` it renders under ``torch.autocast`` in float16 (the keypoint arithmetic, the
jacobians' inverses among it, stays in float32): on a GPU about twice the speed, frames within a
level or two of 8-bit video of the float32 ones. :func:`half_precision_error` measures that for
a given model, so that an edge uses float16 only where it holds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .blocks import DownBlock2d, KeypointDict, ResBlock2d, SameBlock2d, UpBlock2d
from .checkpoint import Detector
from .fast_conv import FastConv2d, is_fast_convertible
from .generator import OcclusionAwareGenerator, SourceFeatures

# Row t: the taps of a 3x3 kernel (columns) summed into tap t of the equivalent 4x4 kernel of a
# stride-2, padding-1 transposed convolution, along one axis. Nearest x2 upsampling then the 3x3
# convolution reads x[i-1], x[i], x[i] (taps 0, 1, 2) for output row 2i, and x[i], x[i], x[i+1]
# for row 2i+1; the transposed convolution reads x[i-1] through its tap 3 and x[i] through tap 1
# for row 2i, x[i] through tap 2 and x[i+1] through tap 0 for row 2i+1.
_UPSAMPLE_TAPS = torch.tensor([[0.0, 0.0, 1.0],
                               [0.0, 1.0, 1.0],
                               [1.0, 1.0, 0.0],
                               [1.0, 0.0, 0.0]])


class TransposedUpBlock2d(nn.Module):
    """:class:`~kpvid.models.blocks.UpBlock2d` (eval mode) with its batch norm folded in, as
    one stride-2 transposed convolution, then ReLU. Inputs under ``MIN_PIXELS`` pixels keep
    the upsampling and 3x3 convolution: there the (16/9 times larger) weights, not the
    multiplies, cost the time."""

    MIN_PIXELS = 64

    def __init__(self, block: UpBlock2d) -> None:
        super().__init__()
        self.conv = fuse_conv_bn_eval(block.conv, block.norm)
        taps = _UPSAMPLE_TAPS.to(self.conv.weight)
        weight = torch.einsum("ay,bx,oiyx->ioab", taps, taps, self.conv.weight)
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] * x.shape[3] < self.MIN_PIXELS:
            return F.relu(self.conv(F.interpolate(x, scale_factor=2)))
        return F.relu(F.conv_transpose2d(x, self.weight, self.conv.bias, stride=2, padding=1))


def _transposable(module: nn.Module) -> bool:
    """Whether ``module`` is an up block that :class:`TransposedUpBlock2d` reproduces."""
    if not isinstance(module, UpBlock2d):
        return False
    conv = module.conv
    return conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1) \
        and conv.dilation == (1, 1) and conv.groups == 1


def optimize_for_inference(network: nn.Module, fast_conv: bool = True) -> nn.Module:
    """An eval-mode copy of a FOMM network with the same outputs to float rounding: batch norms
    after convolutions folded into them, up blocks as transposed convolutions, other 3x3
    convolutions as :class:`~kpvid.models.fast_conv.FastConv2d` (unless ``fast_conv`` is
    false), weights in channels-last layout (so that the activations are too)."""
    network = copy.deepcopy(network).eval()
    for module in list(network.modules()):
        if isinstance(module, (SameBlock2d, DownBlock2d)):
            module.conv = fuse_conv_bn_eval(module.conv, module.norm)
            module.norm = nn.Identity()
        elif isinstance(module, ResBlock2d):  # norm1 comes before conv1: only norm2 folds
            module.conv1 = fuse_conv_bn_eval(module.conv1, module.norm2)
            module.norm2 = nn.Identity()
        for name, child in module.named_children():
            if _transposable(child):
                setattr(module, name, TransposedUpBlock2d(child))
    for module in list(network.modules()) if fast_conv else []:
        for name, child in module.named_children():
            if is_fast_convertible(child):
                setattr(module, name, FastConv2d(child))
    return network.to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class PreparedSource:
    """Everything about one source image that driving keypoints do not change (batch of one,
    on the synthesizer's device). Made by :meth:`Synthesizer.prepare`."""

    image: torch.Tensor  # 1 x C x H x W in [0, 1]
    kp: KeypointDict  # the source keypoints: value 1 x K x 2, jacobian 1 x K x 2 x 2
    features: SourceFeatures  # generator encoder output
    motion_image: torch.Tensor | None  # the source at the dense motion's resolution
    heatmap: torch.Tensor | None  # gaussians of the source keypoints at that resolution

    @property
    def num_kp(self) -> int:
        return self.kp["value"].shape[1]


class Synthesizer:
    """Renders driving keypoints into frames against prepared sources, many streams per call.

    ``render_many(sources, kp_driving)`` returns the same frames as
    ``generator(source.image, kp_driving, source.kp)["prediction"]`` row by row. The networks
    are used in eval mode; with ``optimize`` the generator's weights are copied when the
    synthesizer is made, so later changes to them are not seen. Keypoint dicts follow the
    networks' layout (``value`` B x K x 2, optional ``jacobian`` B x K x 2 x 2).
    """

    def __init__(self, kp_detector: Detector, generator: OcclusionAwareGenerator,
                 optimize: bool = True, fast_conv: bool = True, half: bool = False) -> None:
        self.kp_detector = kp_detector.eval()
        self.generator = optimize_for_inference(generator, fast_conv) if optimize \
            else generator.eval()
        self.device = next(generator.parameters()).device
        self.half = half
        self.source: PreparedSource | None = None

    def _precision(self) -> AbstractContextManager:
        """The generator's arithmetic: float16 autocast with ``half``, else float32."""
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half)

    @torch.inference_mode()
    def prepare(self, image: torch.Tensor) -> PreparedSource:
        """The source-only work for ``image`` (1 x C x H x W in [0, 1]): keypoints (identity
        jacobians where the detector estimates none), encoder features and the dense motion's
        source inputs."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"source image must be 1 x C x H x W, got {tuple(image.shape)}")
        image = image.to(self.device)
        kp = self.kp_detector(image)
        value = kp["value"]
        jacobian = kp.get("jacobian")
        if jacobian is None:  # identity jacobians: the same motion as none
            jacobian = torch.eye(2, device=value.device).expand(*value.shape[:2], 2, 2)
        kp = {"value": value, "jacobian": jacobian.contiguous()}
        motion_image = heatmap = None
        dense_motion = self.generator.dense_motion_network
        with self._precision():
            if dense_motion is not None:
                motion_image, heatmap = dense_motion.source_inputs(image, kp)
            features = self.generator.encode_source(image)
        return PreparedSource(image, kp, features, motion_image, heatmap)

    def set_source(self, image: torch.Tensor) -> PreparedSource:
        """Prepare ``image`` and make it the source :meth:`render` uses."""
        self.source = self.prepare(image)
        return self.source

    def render(self, kp_driving: KeypointDict) -> torch.Tensor:
        """Frames (B x C x H x W in [0, 1]) of the current source for B driving keypoint sets."""
        if self.source is None:
            raise RuntimeError("no source: call set_source first")
        return self.render_many([self.source] * kp_driving["value"].shape[0], kp_driving)

    @torch.inference_mode()
    def render_many(self, sources: Sequence[PreparedSource], kp_driving: KeypointDict
                    ) -> torch.Tensor:
        """One frame per row of ``kp_driving``, row i against ``sources[i]``, in one batch."""
        if len(sources) != kp_driving["value"].shape[0] or not sources:
            raise ValueError(f"{len(sources)} sources for {kp_driving['value'].shape[0]} "
                             "driving keypoint sets")
        kp_driving = {key: value.to(self.device) for key, value in kp_driving.items()}

        def batch(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
            return tensors[0] if len(tensors) == 1 else torch.cat(tensors)  # type: ignore[arg-type]

        out = tuple(batch([source.features[i] for source in sources])
                    for i in range(len(sources[0].features)))
        dense_motion = self.generator.dense_motion_network
        with self._precision():
            if dense_motion is not None:
                kp_source = {key: batch([source.kp[key] for source in sources])
                             for key in ("value", "jacobian")}
                motion = dense_motion.motion(batch([source.motion_image for source in sources]),
                                             batch([source.heatmap for source in sources]),
                                             kp_driving, kp_source)
                out = self.generator.warp_features(out, motion)
            return self.generator.decode_features(out).float()


# Frames become 8-bit video: float16 may differ from float32 by this much (two levels)
HALF_TOLERANCE = 2 / 255


def half_precision_error(kp_detector: Detector, generator: OcclusionAwareGenerator,
                         size: int, sets: int = 4, seed: int = 0) -> float:
    """Largest difference (pixel values in [0, 1]) between frames rendered in float16 and in
    float32 by these networks, on their device: a smooth random source of ``size`` x ``size``
    driven by its own keypoints moved at random, ``sets`` frames."""
    device = next(generator.parameters()).device
    generator_rng = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 8, 8, generator=generator_rng)
    image = F.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1).to(device)
    full = Synthesizer(kp_detector, generator)
    half = Synthesizer(kp_detector, generator, half=True)
    source = full.prepare(image)
    kp = source.kp
    moved = kp["value"] + 0.1 * torch.randn(sets, *kp["value"].shape[1:],
                                            generator=generator_rng).to(device)
    driving = {"value": moved, "jacobian": kp["jacobian"].expand(sets, -1, -1, -1)}
    difference = full.render_many([source] * sets, driving) \
        - half.render_many([half.prepare(image)] * sets, driving)
    return float(difference.abs().max())
