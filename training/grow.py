"""Start a model for larger frames from a trained one for smaller frames (``kpvid-train fomm
--grow``), as progressive growing does: what works at the small size is kept, and the blocks
that only the larger frames need are new.

Where the small model's weights go in the grown one:

* the keypoint detector and the dense motion network: every weight, under the same name. They
  work on a downscaled frame; a grown config whose ``scale_factor`` gives them the frame size
  they had (0.125 of 256 = 0.5 of 64) runs them unchanged. Their anti-aliasing kernels
  (``down.weight``) are not weights but the fixed blur of each model's own scale, so the grown
  model keeps its own;
* the generator's bottleneck, and its down and up blocks nearest to it: its last ``n`` down
  blocks are the small model's ``n`` down blocks, its first ``n`` up blocks the small model's;
* new: the first and final convolutions (they read and write full-size pixels) and the extra
  down and up blocks between them and the core.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from kpvid.models import CheckpointError

log = logging.getLogger(__name__)

_FIXED_BLUR = re.compile(r"(^|\.)down\.weight$")  # AntiAliasInterpolation2d's kernel
_NEW_ENDS = ("generator.first.", "generator.final.")
_BLOCK = re.compile(r"^generator\.(down|up)_blocks\.(\d+)\.(.*)$")


@dataclass(frozen=True)
class GrownWeights:
    """Which of the grown model's weights came from the small model (``carried``, names as
    ``kp_detector.*`` / ``generator.*``) and which start fresh (``new``)."""

    carried: tuple[str, ...]
    new: tuple[str, ...]


def _named_tensors(kp_detector: nn.Module, generator: nn.Module
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    for prefix, module in (("kp_detector", kp_detector), ("generator", generator)):
        for name, tensor in module.state_dict().items():
            yield f"{prefix}.{name}", tensor


def _grown_name(name: str, extra_down_blocks: int) -> str:
    """Where the small model's tensor ``name`` goes in a generator with ``extra_down_blocks``
    more down blocks (and as many more up blocks)."""
    block = _BLOCK.match(name)
    if block and block.group(1) == "down":
        return f"generator.down_blocks.{int(block.group(2)) + extra_down_blocks}.{block.group(3)}"
    return name


def grow_into(kp_detector: nn.Module, generator: nn.Module, small: dict) -> GrownWeights:
    """Load the small model's weights (a checkpoint dict with ``kp_detector`` and ``generator``
    state dicts) into the grown networks, in place; CheckpointError when a weight of the small
    model has no place of its shape in the grown one."""
    small_down = sum(1 for name in small["generator"]
                     if re.match(r"^down_blocks\.\d+\.conv\.weight$", name))
    grown_down = len(generator.down_blocks)
    if grown_down < small_down:
        raise CheckpointError(f"cannot grow a generator of {small_down} down blocks into one of "
                              f"{grown_down}")
    extra = grown_down - small_down
    target = dict(_named_tensors(kp_detector, generator))
    placed: dict[str, torch.Tensor] = {}
    problems = []
    for prefix in ("kp_detector", "generator"):
        for name, tensor in small[prefix].items():
            full = f"{prefix}.{name}"
            if _FIXED_BLUR.search(full) or full.startswith(_NEW_ENDS):
                continue
            grown = _grown_name(full, extra)
            if grown not in target:
                problems.append(f"{full}: no {grown} in the grown model")
            elif target[grown].shape != tensor.shape:
                problems.append(f"{full}: {tuple(tensor.shape)} != grown "
                                f"{tuple(target[grown].shape)}")
            else:
                placed[grown] = tensor
    if problems:
        raise CheckpointError("the small model does not fit the grown one: "
                              + "; ".join(problems))
    for prefix, module in (("kp_detector", kp_detector), ("generator", generator)):
        state = module.state_dict()
        state.update({name.removeprefix(prefix + "."): tensor for name, tensor in placed.items()
                      if name.startswith(prefix + ".")})
        module.load_state_dict(state, strict=True)
    new = tuple(name for name in target if name not in placed and not _FIXED_BLUR.search(name))
    log.info("grew the model: %d tensors carried over, %d new (%s)", len(placed), len(new),
             ", ".join(sorted({".".join(name.split(".")[:3]) for name in new})))
    return GrownWeights(carried=tuple(sorted(placed)), new=new)
