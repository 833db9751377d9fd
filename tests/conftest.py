"""Shared fixtures: a tiny FOMM config that builds and runs in milliseconds."""

from __future__ import annotations

import copy

import pytest
import torch

from kpvid.models import load_config

torch.set_num_threads(2)


@pytest.fixture()
def tiny_config() -> dict:
    """The shipped CPU config shrunk to a few thousand parameters, frame size 32."""
    config = copy.deepcopy(load_config("kpvid-faces-64"))
    model = config["model_params"]
    model["common_params"]["num_kp"] = 4
    model["kp_detector_params"].update(block_expansion=4, max_features=16, num_blocks=2)
    model["generator_params"].update(block_expansion=4, max_features=16,
                                     num_bottleneck_blocks=1)
    model["generator_params"]["dense_motion_params"].update(block_expansion=4, max_features=16,
                                                            num_blocks=2)
    model["discriminator_params"].update(block_expansion=4, max_features=16, num_blocks=2)
    config["dataset_params"]["frame_shape"] = [32, 32, 3]
    train = config["train_params"]
    train.update(batch_size=4, num_epochs=1, num_repeats=2, scales=[1, 0.5])
    return config
