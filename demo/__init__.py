"""``kpvid-demo``: the whole system on this machine (see :mod:`kpvid.demo.streaming`)."""

from .streaming import main

__all__ = ["main"]
