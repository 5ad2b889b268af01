"""``onnxprune.testing`` as a rule author meets it: the docstring's example runs, the public
names are exported, and importing it pulls in neither pytest nor hypothesis."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import onnxprune.testing

PACKAGE = Path(onnxprune.__file__).resolve().parent


def test_docstring_example_runs():
    doc = onnxprune.testing.__doc__
    block = re.search(r"::\n\n((?:    .*\n|\n)+)", doc).group(1)
    exec(compile(textwrap.dedent(block), "onnxprune.testing example", "exec"), {})


def test_public_names_are_exported():
    for name in onnxprune.testing.__all__:
        assert getattr(onnxprune.testing, name).__doc__ or name == "OPSET", name
    for name in ("prune_exact", "assert_planted_dead", "assert_exact", "plant_dead", "Builder"):
        assert name in onnxprune.testing.__all__


def test_import_needs_no_test_framework():
    code = (
        "import sys, onnxprune.testing; "
        "print(sorted(m for m in ('pytest', '_pytest', 'hypothesis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_rest_of_package_never_imports_it():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "onnxprune.testing" or n.startswith("onnxprune.testing.") for n in names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


def test_oracle_failure_is_an_assertion_error_with_a_message():
    import numpy as np

    try:
        onnxprune.testing.assert_close([np.ones(3)], [np.zeros(3)])
    except AssertionError as e:
        assert "max error" in str(e)
    else:
        raise AssertionError("assert_close accepted different outputs")
