"""Argument types and shared flags of the training and evaluation command lines."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from kpvid.models import SHIPPED_CHECKPOINT
from kpvid.models.config import CONFIG_FLAG_HELP


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def device(text: str) -> str:
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device '{text}' asked for but CUDA is not available")
    return text


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` (default: the shipped FOMM checkpoint) and ``--config``."""
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT, metavar="FILE",
                        help="FOMM checkpoint (default: the shipped one)")
    parser.add_argument("--config", default=None, metavar="NAME|FILE",
                        help=CONFIG_FLAG_HELP)
