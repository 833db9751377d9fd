"""Every command's ``--help`` reads as plain text: no reStructuredText markup from the module
docstrings it is made of (a new user saw ``kpvid-receive`` in double backticks)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from kpvid.bench.cli import BENCHMARKS
from kpvid.bench.cli import main as bench_main
from kpvid.demo import main as demo_main
from kpvid.receiver.cli import main as receive_main
from kpvid.sender.cli import main as send_main
from kpvid.training.cli import data_main, eval_main, train_main
from kpvid.training.extract import extract_main

MARKUP = re.compile(r"``|:(class|func|meth|mod|data|attr):`")

COMMANDS: list[tuple[Callable[[list[str]], int], list[str]]] = [
    (receive_main, []), (send_main, []), (demo_main, []), (extract_main, []),
    (data_main, ["synth"]), (train_main, ["fomm"]), (train_main, ["predictor"]),
    (eval_main, ["reconstruct"]), (eval_main, ["predict"]), (bench_main, []),
    *((bench_main, [name]) for name in BENCHMARKS)]


@pytest.mark.parametrize("command, argv", COMMANDS,
                         ids=[f"{c.__module__}:{' '.join(a)}" for c, a in COMMANDS])
def test_help_is_plain_text(command, argv, capsys):
    try:
        code = command([*argv, "--help"])
    except SystemExit as stop:  # argparse exits after printing the help
        code = stop.code
    assert code in (0, None)
    text = capsys.readouterr().out
    assert "usage" in text.lower()
    assert not MARKUP.search(text), MARKUP.search(text)
