"""FOMM motion-transfer networks (official-compatible) and their checkpoints."""

from .checkpoint import (
    SHIPPED_CHECKPOINT,
    WEIGHTS_DIR,
    CheckpointError,
    Detector,
    build_networks,
    export_checkpoint,
    frame_size,
    load_checkpoint,
    load_checkpoint_with_config,
    model_id,
    read_checkpoint,
)
from .config import ConfigError, load_config, validate_config
from .dense_motion import DenseMotionNetwork
from .discriminator import MultiScaleDiscriminator
from .generator import OcclusionAwareGenerator, SourceFeatures, repeat_features
from .keypoint_detector import KPDetector
from .keypoint_dict import kp6_from_dict, kp_dict_from_kp6
from .mesh_keypoints import FaceMeshDetector, MeshKeypoints
from .relative_motion import normalize_kp
from .synthesizer import PreparedSource, Synthesizer, optimize_for_inference

__all__ = [
    "SHIPPED_CHECKPOINT",
    "WEIGHTS_DIR",
    "CheckpointError",
    "ConfigError",
    "DenseMotionNetwork",
    "Detector",
    "FaceMeshDetector",
    "KPDetector",
    "MeshKeypoints",
    "MultiScaleDiscriminator",
    "OcclusionAwareGenerator",
    "PreparedSource",
    "SourceFeatures",
    "Synthesizer",
    "build_networks",
    "export_checkpoint",
    "kp6_from_dict",
    "kp_dict_from_kp6",
    "frame_size",
    "load_checkpoint",
    "load_checkpoint_with_config",
    "load_config",
    "model_id",
    "normalize_kp",
    "optimize_for_inference",
    "read_checkpoint",
    "repeat_features",
    "validate_config",
]
