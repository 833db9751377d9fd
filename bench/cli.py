"""``kpvid-bench``: the project's benchmarks, one subcommand each."""

from __future__ import annotations

import sys

from . import predictor_step

BENCHMARKS = {"predictor": predictor_step.main}
USAGE = ("usage: kpvid-bench {" + ",".join(BENCHMARKS) + "} [--help]\n\n"
         "  predictor  what one keypoint-prediction step costs the edge, per stream")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in BENCHMARKS:
        return BENCHMARKS[argv[0]](argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2
