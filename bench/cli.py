"""``kpvid-bench``: the project's benchmarks, one subcommand each."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module in kpvid.bench with a ``main(argv) -> int``, one-line summary)
BENCHMARKS = {
    "predictor": ("predictor_step", "what one keypoint-prediction step costs the edge, per stream"),
    "bandwidth": ("bandwidth", "bytes and quality of each keypoint codec and schedule, "
                               "against video codecs"),
    "speed": ("speed", "detector, synthesis, predictor and end-to-end speed"),
    "loss": ("loss", "rebuilt quality against packet loss, concealed by the predictor"),
    "adapt": ("adapt", "the sender adapting N to the edge's feedback, against fixed schedules"),
    "soak": ("soak", "two streams for minutes: RSS, descriptors, latency, frame rate over time"),
}
USAGE = ("usage: kpvid-bench {" + ",".join(BENCHMARKS) + "} [--help]\n\n"
         + "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in BENCHMARKS.items()))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in BENCHMARKS:
        module = importlib.import_module(f"{__package__}.{BENCHMARKS[argv[0]][0]}")
        return module.main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE, file=sys.stderr)
    return 2
