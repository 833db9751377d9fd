"""FOMM YAML configs in the official schema; unknown or missing keys raise ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"

# Required keys: a nested dict is a sub-section, ``None`` a plain value. ``_OPTIONAL`` lists the
# keys a section may carry besides (the official code's keyword defaults, kpvid's extensions).
_REQUIRED: dict[str, Any] = {
    "model_params": {
        "common_params": dict.fromkeys(["num_kp", "num_channels", "estimate_jacobian"]),
        "kp_detector_params": dict.fromkeys(["temperature", "block_expansion", "max_features",
                                             "scale_factor", "num_blocks"]),
        "generator_params": {
            **dict.fromkeys(["block_expansion", "max_features", "num_down_blocks",
                             "num_bottleneck_blocks", "estimate_occlusion_map"]),
            "dense_motion_params": dict.fromkeys(["block_expansion", "max_features",
                                                  "num_blocks", "scale_factor"]),
        },
        "discriminator_params": dict.fromkeys(["scales", "block_expansion", "max_features",
                                               "num_blocks"]),
    },
}
_OPTIONAL: dict[str, set[str]] = {
    "": {"dataset_params", "train_params", "reconstruction_params", "animate_params",
         "visualizer_params"},
    # kpvid: keypoints from FaceMesh landmarks (models/mesh_keypoints.py) instead of the detector
    "model_params": {"mesh_keypoints"},
    "model_params.mesh_keypoints": {"neighbours"},
    "model_params.kp_detector_params": {"single_jacobian_map", "pad"},
    # kpvid: the decoder also reads the warped encoder features of every scale (generator.py)
    "model_params.generator_params": {"skip_connections"},
    "model_params.generator_params.dense_motion_params": {"kp_variance"},
    "model_params.discriminator_params": {"sn", "use_kp", "kp_variance"},
    "dataset_params": {"root_dir", "frame_shape", "id_sampling", "pairs_list",
                       "augmentation_params"},
    "train_params": {"num_epochs", "num_repeats", "epoch_milestones", "lr_generator",
                     "lr_discriminator", "lr_kp_detector", "batch_size", "scales",
                     "checkpoint_freq", "transform_params", "loss_weights", "num_workers",
                     # kpvid: modules never trained; steps in which a grown model trains only
                     # its new blocks (kpvid-train fomm --grow)
                     "frozen", "grow_warmup_steps"},
    "train_params.transform_params": {"sigma_affine", "sigma_tps", "points_tps"},
    "train_params.loss_weights": {"generator_gan", "discriminator_gan", "feature_matching",
                                  "perceptual", "reconstruction", "ssim", "equivariance_value",
                                  "equivariance_jacobian", "keypoint_separation",
                                  "keypoint_landmarks"},
    "reconstruction_params": {"num_videos", "format"},
    "animate_params": {"num_pairs", "format", "normalization_params"},
    "animate_params.normalization_params": {"adapt_movement_scale", "use_relative_movement",
                                            "use_relative_jacobian"},
    "visualizer_params": {"kp_size", "draw_border", "colormap"},
}


# the --config flag's help, the same in every command that loads a checkpoint
CONFIG_FLAG_HELP = ("FOMM config for a --checkpoint that carries none; official vox-256 weights "
                    "are recognised without it (default: the checkpoint's own)")


class ConfigError(ValueError):
    """A config file is unreadable, or has an unknown or missing key."""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_section(section: Any, path: str, required: dict[str, Any]) -> None:
    if not isinstance(section, dict):
        raise ConfigError(f"config section '{path or '<top level>'}' must be a mapping, "
                          f"got {type(section).__name__}")
    allowed = set(required) | _OPTIONAL.get(path, set())
    for key in section:
        if key not in allowed:
            raise ConfigError(f"unknown config key '{_join(path, key)}'")
    for key in required:
        if key not in section:
            raise ConfigError(f"missing config key '{_join(path, key)}'")
    for key, value in section.items():
        sub_path = _join(path, key)
        sub_required = required.get(key)
        if isinstance(sub_required, dict) or sub_path in _OPTIONAL:
            _check_section(value, sub_path, sub_required or {})


def validate_config(config: Any) -> dict:
    """Check ``config`` against the official FOMM schema; returns it unchanged."""
    _check_section(config, "", _REQUIRED)
    return config


def load_config(path: str | Path) -> dict:
    """Read and validate a YAML config. A bare name like ``vox-256`` means a shipped config."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / f"{path.name}.yaml").exists():
        path = CONFIG_DIR / f"{path.name}.yaml"
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    try:
        return validate_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
