"""Build the FOMM networks from a config and load official-layout checkpoints into them."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .config import ConfigError, load_config, validate_config
from .facemesh import FaceMeshUnavailable
from .generator import OcclusionAwareGenerator
from .keypoint_detector import KPDetector
from .mesh_keypoints import FaceMeshDetector, MeshKeypoints

log = logging.getLogger(__name__)

Detector = KPDetector | FaceMeshDetector  # what turns frames into keypoints

WEIGHTS_DIR = Path(__file__).parent / "weights"
SHIPPED_CHECKPOINT = WEIGHTS_DIR / "kpvid-heads-256.pth.tar"
# configs of the official first-order-model releases, recognised in a checkpoint that carries
# none by the shapes of its weights (official files hold state dicts only)
OFFICIAL_CONFIGS = ("vox-256",)


class CheckpointError(ValueError):
    """A checkpoint does not fit the networks its config describes."""


def build_networks(config: dict) -> tuple[KPDetector | MeshKeypoints, OcclusionAwareGenerator]:
    """Instantiate the keypoint detector and generator exactly as the official code does; a
    config with ``mesh_keypoints`` gets keypoints from FaceMesh landmarks instead."""
    params = config["model_params"]
    if "mesh_keypoints" in params:
        kp_detector = MeshKeypoints(params["common_params"]["num_kp"],
                                    **params["mesh_keypoints"])
    else:
        kp_detector = KPDetector(**params["kp_detector_params"], **params["common_params"])
    generator = OcclusionAwareGenerator(**params["generator_params"], **params["common_params"])
    return kp_detector, generator


def describe_mismatch(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable list of missing, unexpected and mis-shaped keys (empty when they fit)."""
    expected = module.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(state_dict[k].shape)} != model {tuple(v.shape)}"
                 for k, v in expected.items()
                 if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys ({len(misshaped)}): {'; '.join(misshaped)}")
    return problems


def load_state_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists every mismatch."""
    problems = describe_mismatch(module, state_dict)
    if problems:
        raise CheckpointError(f"checkpoint '{name}' does not fit the configured network:\n  "
                              + "\n  ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def load_file(path: Path, what: str = "checkpoint") -> object:
    """``torch.load`` on the CPU, with clear errors for missing or broken files."""
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from exc


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load`` a checkpoint dict, with clear errors for missing or broken files."""
    path = Path(path)
    checkpoint = load_file(path)
    if not isinstance(checkpoint, dict) or "kp_detector" not in checkpoint \
            or "generator" not in checkpoint:
        raise CheckpointError(f"{path} is not a FOMM checkpoint: expected a dict with "
                              "'kp_detector' and 'generator' state dicts")
    return checkpoint


def export_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy of a training checkpoint with only what inference reads: the ``kp_detector`` and
    ``generator`` state dicts (official layout), the config, epoch and step."""
    checkpoint = read_checkpoint(src)
    kept = {key: checkpoint[key] for key in ("kp_detector", "generator", "config", "epoch", "step")
            if key in checkpoint}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, dst)
    return dst


def load_checkpoint(path: str | Path = SHIPPED_CHECKPOINT, config_path: str | Path | None = None,
                    device: str | torch.device = "cpu",
                    ) -> tuple[Detector, OcclusionAwareGenerator]:
    """Load ``(kp_detector, generator)`` in eval mode from an official ``.pth.tar`` or a kpvid
    checkpoint. Without ``config_path`` the config is the one embedded in a kpvid checkpoint, or
    a ``<name>.yaml`` beside it, or the official config its weights fit (official vox-256
    files, which carry none: :func:`recognise_config`)."""
    kp_detector, generator, _ = load_checkpoint_with_config(path, config_path, device)
    return kp_detector, generator


def model_id(path: str | Path) -> str:
    """The name senders and edges compare to agree on a model: the file name without
    ``.pth.tar`` / ``.pth`` (``kpvid-heads-256`` for the shipped checkpoint)."""
    return Path(path).name.removesuffix(".tar").removesuffix(".pth")


def frame_size(config: dict) -> int:
    """Square frame size the config's networks were trained at (``dataset_params.frame_shape``)."""
    return int(config.get("dataset_params", {}).get("frame_shape", [256])[0])


def load_checkpoint_with_config(path: str | Path = SHIPPED_CHECKPOINT,
                                config_path: str | Path | None = None,
                                device: str | torch.device = "cpu",
                                ) -> tuple[Detector, OcclusionAwareGenerator, dict]:
    """:func:`load_checkpoint`, also returning the config the networks were built from. A
    FaceMesh-driven model's detector is a :class:`FaceMeshDetector` (MediaPipe must be
    installed)."""
    checkpoint = read_checkpoint(path)
    if config_path is not None:
        config = load_config(config_path)
    elif "config" in checkpoint:
        config = load_config_dict(checkpoint["config"], source=str(path))
    else:
        beside = Path(str(path).removesuffix(".tar").removesuffix(".pth") + ".yaml")
        config = load_config(beside) if beside.exists() else recognise_config(checkpoint, path)
    kp_detector, generator = build_networks(config)
    load_state_strict(kp_detector, checkpoint["kp_detector"], "kp_detector")
    load_state_strict(generator, checkpoint["generator"], "generator")
    log.info("loaded %s (epoch %s)", path, checkpoint.get("epoch", "?"))
    if isinstance(kp_detector, MeshKeypoints):
        try:
            kp_detector = FaceMeshDetector(kp_detector)
        except FaceMeshUnavailable as exc:
            raise CheckpointError(f"{path} takes its keypoints from MediaPipe FaceMesh: "
                                  f"{exc}") from None
    return kp_detector.to(device).eval(), generator.to(device).eval(), config


def recognise_config(checkpoint: dict, path: str | Path) -> dict:
    """The official config (:data:`OFFICIAL_CONFIGS`) whose networks have exactly the shapes of
    a checkpoint's weights; CheckpointError when none does."""
    for name in OFFICIAL_CONFIGS:
        config = load_config(name)
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            kp_detector, generator = build_networks(config)
        if not describe_mismatch(kp_detector, checkpoint["kp_detector"]) \
                and not describe_mismatch(generator, checkpoint["generator"]):
            log.info("%s carries no config; its weights fit the official %s config", path, name)
            return config
    raise CheckpointError(f"{path} carries no config and its weights fit none of the official "
                          f"configs ({', '.join(OFFICIAL_CONFIGS)}): pass --config FILE.yaml")


def load_config_dict(config: dict, source: str) -> dict:
    """Validate a config that travelled inside a checkpoint."""
    try:
        return validate_config(config)
    except ConfigError as exc:
        raise CheckpointError(f"config embedded in {source}: {exc}") from None
