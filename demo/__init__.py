"""``kpvid-demo``: the whole system on this machine (see :mod:`kpvid.demo.streaming`). The
package imports nothing heavy itself, so :mod:`kpvid.demo.viewer_peer` starts without torch."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """``kpvid-demo`` (:func:`kpvid.demo.streaming.main`)."""
    from .streaming import main as streaming_main

    return streaming_main(argv)
