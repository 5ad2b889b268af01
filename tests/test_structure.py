"""The package's structure, proved by tools/check_structure.py: no import cycles (function-local
ones included), no cross-module private imports, no module over 500 lines, no function over 80
lines without a reason. The checker itself is tested on small synthetic packages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOL = REPO / "tools" / "check_structure.py"


def check(root: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        cwd=root.parent,
    )
    return done.returncode, done.stdout + done.stderr


def package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "onnxprune"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_package_structure_holds():
    code, out = check(REPO / "onnxprune", "--quiet")
    assert code == 0, out


def test_a_clean_package_passes_and_prints_its_graph(tmp_path):
    root = package(
        tmp_path,
        {
            "a.py": "from onnxprune.b import f\n",
            "b.py": "def f():\n    return 1\n",
            "sub/__init__.py": "from . import c\n",
            "sub/c.py": "from ..b import f\n",
        },
    )
    code, out = check(root)
    assert code == 0, out
    assert "onnxprune.a -> onnxprune.b" in out
    assert "onnxprune.sub -> onnxprune.sub.c" in out
    assert "onnxprune.sub.c -> onnxprune.b" in out
    assert "OK: structure holds" in out


def test_a_cycle_through_a_function_local_import_fails(tmp_path):
    root = package(
        tmp_path,
        {
            "a.py": "from onnxprune.b import g\n\ndef f():\n    return g()\n",
            "b.py": "def g():\n    from onnxprune.a import f\n    return f\n",
        },
    )
    code, out = check(root)
    assert code == 1
    assert "onnxprune.a <-> onnxprune.b" in out
    assert "onnxprune.b:2 -> onnxprune.a (local)" in out


def test_type_checking_edges_are_shown_but_make_no_cycle(tmp_path):
    root = package(
        tmp_path,
        {
            "a.py": "from onnxprune.b import g\n",
            "b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from onnxprune.a import X\n"
                "def g():\n    return 1\n"
            ),
        },
    )
    code, out = check(root)
    assert code == 0, out
    assert "onnxprune.b -> onnxprune.a (typing)" in out


def test_private_names_across_modules_fail(tmp_path):
    root = package(
        tmp_path,
        {
            "a.py": "def _h():\n    return 1\n__version__ = '1'\n",
            "b.py": "from onnxprune.a import _h, __version__\n",
            "c.py": "import onnxprune.a as a\n\ndef f():\n    return a._h()\n",
            "d.py": "from onnxprune import a\n\nX = a._h\n",
            "e.py": "import onnxprune.a\n\nY = onnxprune.a._h\n",
        },
    )
    code, out = check(root, "--quiet")
    assert code == 1
    assert "cross-module private imports: 4" in out
    for line in (
        "onnxprune.b line 1: from onnxprune.a import _h",
        "onnxprune.c line 4: onnxprune.a._h",
        "onnxprune.d line 3: onnxprune.a._h",
        "onnxprune.e line 3: onnxprune.a._h",
    ):
        assert line in out
    assert "__version__" not in out


def test_long_modules_and_unexplained_long_functions_fail(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(85))
    explained = '    """Long because it is a test.\n\n    More text."""\n'
    root = package(
        tmp_path,
        {
            "ok.py": f"def f():\n{explained}{body}",
            "bad.py": f"def g():\n{body}",
            "big.py": "X = 1\n" * 501,
        },
    )
    code, out = check(root, "--quiet")
    assert code == 1
    assert "onnxprune.big: 501" in out
    assert "onnxprune.bad.g (line 1): 86 lines  <- no reason" in out
    assert "onnxprune.ok.f (line 1): 89 lines\n" in out
    assert "FAIL: 2 violation(s)" in out
