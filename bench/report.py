"""What the offline benchmarks share: their output flags, and running one to its report
(print the tables, write the JSON, markdown and plots; exit status 2 for bad input)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from kpvid.models import CheckpointError
from kpvid.training.arguments import positive_int

log = logging.getLogger(__name__)


def write_report(results: dict, tables: str, json_path: Path | None,
                 markdown_path: Path | None) -> None:
    """Print ``tables`` (markdown); write ``results`` to ``json_path`` and ``tables`` to
    ``markdown_path`` where given, making their folders."""
    print(tables)
    for path, text in ((json_path, json.dumps(results, indent=2) + "\n"),
                       (markdown_path, tables)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def add_output_arguments(parser: argparse.ArgumentParser, plots: str) -> None:
    """--threads, --json, --markdown, --plots (``plots``: what PNGs) and --quiet."""
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write all results here")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="write the tables here")
    parser.add_argument("--plots", type=Path, metavar="DIR", help=f"write {plots} here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_and_report(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict],
                   format_markdown: Callable[[dict], str],
                   plot: Callable[[dict, Path], Path | Iterable[Path]]) -> int:
    """``run(args)``, then its report; 2 (with the reason logged) when the checkpoint or the
    data will not do, else 0."""
    try:
        results = run(args)
    except (CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    write_report(results, format_markdown(results), args.json, args.markdown)
    if args.plots:
        made = plot(results, args.plots)
        for path in [made] if isinstance(made, Path) else made:
            log.info("wrote %s", path)
    return 0
