"""Shared fixtures: a tiny FOMM config that builds and runs in milliseconds; every test must
leave the test process's scheduling policy as it found it."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from kpvid.models import build_networks, load_config
from kpvid.synthetic import write_dataset

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _normal_scheduling():
    """Fail a test that leaves this thread at another scheduling policy (and put it back).

    A real-time policy (SVT-AV1 sets SCHED_FIFO 99 on the thread that opens an encoder, as
    root) is inherited by every thread and process started later: Chromium spinning at FIFO 99
    on both cores once starved a whole run, pytest-timeout's own thread included."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    yield
    after = (os.sched_getscheduler(0), os.sched_getparam(0))
    if after != before:
        os.sched_setscheduler(0, *before)
        pytest.fail(f"the test changed this thread's scheduling policy from {before[0]} "
                    f"(priority {before[1].sched_priority}) to {after[0]} (priority "
                    f"{after[1].sched_priority}); put back")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Six cartoon clips of 8 frames at 32x32 (4 train, 2 test), made once per test module."""
    out = tmp_path_factory.mktemp("faces")
    write_dataset("faces", out, videos=6, seed=0, size=32, frames=8, test_fraction=0.34,
                  progress=False)
    return out


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


@pytest.fixture()
def tiny_checkpoint(tmp_path, tiny_config) -> Path:
    """A kpvid checkpoint (config inside) of the tiny config's untrained networks."""
    torch.manual_seed(0)
    kp_detector, generator = build_networks(tiny_config)
    path = tmp_path / "tiny-model.pth.tar"
    torch.save({"kp_detector": kp_detector.state_dict(), "generator": generator.state_dict(),
                "config": tiny_config}, path)
    return path
