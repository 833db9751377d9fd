"""What every benchmark does with its results: print the tables, write the JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path


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
