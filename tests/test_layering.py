"""The packages import each other in one direction only: what both ends share at the bottom,
the commands that put everything together at the top. An import against the direction (or a
cycle) fails here, naming the file."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# each package and the kpvid packages it may import (at module level or inside a function)
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "models": {"protocol"},
    "synthetic": {"models"},
    "sender": {"protocol", "models", "synthetic"},
    "receiver": {"protocol", "models"},
    "training": {"protocol", "models", "synthetic", "sender", "receiver"},
    "bench": {"protocol", "models", "synthetic", "sender", "receiver", "training"},
    "demo": {"protocol", "models", "synthetic", "sender", "receiver", "training"},
}


def imported_packages(path: Path, package: str) -> set[str]:
    """The kpvid packages other than ``package`` that the module at ``path`` imports."""
    module_parts = path.relative_to(ROOT).with_suffix("").parts  # e.g. ("training", "cli")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's own package path
                base = list(module_parts[:-node.level])
                names = [".".join(["kpvid", *base, *([node.module] if node.module else [])])]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "kpvid" and len(parts) > 1 and parts[1] != package:
                found.add(parts[1])
    return found


def test_every_package_has_a_place():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(ALLOWED), "a package was added or removed: give it its place"


def test_imports_follow_the_layers():
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for imported in sorted(imported_packages(path, package) - allowed):
                wrong.append(f"{path.relative_to(ROOT)} imports kpvid.{imported}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_layers_have_no_cycle():
    done: set[str] = set()

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, " -> ".join((*path, package))
        if package in done:
            return
        for lower in ALLOWED[package]:
            visit(lower, (*path, package))
        done.add(package)

    for package in ALLOWED:
        visit(package, ())
