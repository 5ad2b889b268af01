"""Fixtures shared by more than one test file.

Shared graph builders and the oracles are not here: they are the public package
``onnxprune.testing`` (``from onnxprune.testing.graphs import small_cnn``), so that a test
never imports another test file and nothing depends on ``tests/`` being on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from onnxprune.cli import main


def _run_cli(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def run_cli() -> Callable[[Sequence[object], pytest.CaptureFixture[str]], tuple[int, str, str]]:
    """The command line run in-process: ``run_cli(args, capsys)`` -> (exit code, stdout,
    stderr); arguments may be paths or numbers."""
    return _run_cli
