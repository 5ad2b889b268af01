"""Prove the package's structure from its source: import graph, cycles, private imports, sizes.

Reads every module of ``onnxprune/`` with ``ast`` (nothing is imported, so a broken module is
still checked) and prints:

* the import graph: each module and the onnxprune modules it imports, function-local imports
  included (marked ``(local)``) and ``if TYPE_CHECKING:`` imports marked ``(typing)``;
* import cycles, ignoring typing-only edges (they never run);
* cross-module private imports: ``from onnxprune.x import _name``, or ``x._name`` read on an
  imported onnxprune module (``import onnxprune.x as x``; ``from onnxprune import x``);
  dunder names such as ``__version__`` are public;
* module sizes in lines, and the functions over 80 lines.

Exits 1 if there is a cycle, a private cross-module import, a module over 500 lines, or a
function over 80 lines whose docstring gives no reason. The convention for the reason: a line
of the function's docstring starting with ``Long because`` (for example ``Long because the
twelve ONNX attribute cases read best side by side.``).

Usage: ``python tools/check_structure.py [--root onnxprune] [--quiet]``
(``--quiet``: violations and the summary only, no graph and no size table).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
REASON = "Long because"


@dataclass
class Edge:
    target: str
    line: int
    local: bool = False  # inside a function body
    typing: bool = False  # under ``if TYPE_CHECKING:``


@dataclass
class Module:
    name: str
    path: Path
    lines: int
    is_package: bool
    edges: list[Edge] = field(default_factory=list)
    private: list[str] = field(default_factory=list)  # "line N: from onnxprune.x import _y"
    long_functions: list[tuple[str, int, int, bool]] = field(default_factory=list)
    # (qualified name, first line, length, reason given)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Collect the imports of one module with their context (local, typing-only)."""

    def __init__(self, mod: Module, known: set[str], package: str) -> None:
        self.mod = mod
        self.known = known
        self.package = package
        self.depth = 0  # function nesting
        self.typing = 0  # TYPE_CHECKING nesting
        self.aliases: dict[str, str] = {}  # local name -> onnxprune module it stands for

    def _resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.mod.name.split(".")
        if not self.mod.is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, node.module] if node.module else base)

    def _edge(self, target: str, line: int) -> None:
        while target and target not in self.known:  # onnxprune.x.y -> deepest known module
            target = target.rpartition(".")[0]
        if target and target != self.mod.name:
            self.mod.edges.append(Edge(target, line, self.depth > 0, self.typing > 0))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.typing += 1
            for child in node.body:
                self.visit(child)
            self.typing -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == self.package or alias.name.startswith(self.package + "."):
                self._edge(alias.name, node.lineno)
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:  # "import onnxprune.x" binds "onnxprune"; attribute chains resolve below
                    self.aliases[alias.name.split(".")[0]] = self.package

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self._resolve(node)
        if not (source == self.package or source.startswith(self.package + ".")):
            return
        for alias in node.names:
            full = f"{source}.{alias.name}"
            if full in self.known:  # "from onnxprune.ops import conv": a module
                self._edge(full, node.lineno)
                self.aliases[alias.asname or alias.name] = full
                continue
            self._edge(source, node.lineno)
            if _is_private(alias.name) and source != self.mod.name:
                self.mod.private.append(f"line {node.lineno}: from {source} import {alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        target = _dotted(node.value, self.aliases)
        known = target is not None and target in self.known and target != self.mod.name
        if known and _is_private(node.attr):
            self.mod.private.append(f"line {node.lineno}: {target}.{node.attr}")
        self.generic_visit(node)


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The onnxprune module an expression like ``x`` or ``onnxprune.graph.view`` names."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base is not None else None
    return None


def _long_functions(mod: Module, tree: ast.Module) -> None:
    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = node.end_lineno - first + 1
                if length > MAX_FUNCTION_LINES:
                    doc = ast.get_docstring(node) or ""
                    reason = any(ln.strip().startswith(REASON) for ln in doc.splitlines())
                    mod.long_functions.append((prefix + node.name, first, length, reason))
                walk(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")

    walk(tree.body, "")


def load(root: Path) -> dict[str, Module]:
    paths = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    mods = {}
    for p in paths:
        text = p.read_text(encoding="utf-8")
        name = module_name(p, root)
        mods[name] = Module(name, p, len(text.splitlines()), p.name == "__init__.py")
    known = set(mods)
    for mod in mods.values():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))
        _Imports(mod, known, root.name).visit(tree)
        _long_functions(mod, tree)
    return mods


def cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a self loop), typing-only
    edges left out; each listed from its smallest name (Tarjan's algorithm)."""
    graph = {m: sorted({e.target for e in mod.edges if not e.typing}) for m, mod in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for v in graph:
        if v not in index:
            strong(v)
    return sorted(found)


def report(mods: dict[str, Module], quiet: bool, out=sys.stdout) -> int:
    problems = 0

    def say(line: str = "") -> None:
        print(line, file=out)

    if not quiet:
        say("== import graph (module -> onnxprune modules it imports) ==")
        for name, mod in mods.items():
            seen: dict[str, list[str]] = {}
            for e in mod.edges:
                marks = seen.setdefault(e.target, [])
                for flag, word in ((e.local, "local"), (e.typing, "typing")):
                    if flag and word not in marks:
                        marks.append(word)
                if not (e.local or e.typing) and "top" not in marks:
                    marks.append("top")
            parts = []
            for target, marks in seen.items():
                extra = [m for m in marks if m != "top"]
                parts.append(target + (f" ({', '.join(extra)})" if "top" not in marks else ""))
            say(f"{name} -> {', '.join(sorted(parts)) or '-'}")
        say()

    found = cycles(mods)
    say(f"== cycles (typing-only edges excluded): {len(found)} ==")
    for comp in found:
        members = set(comp)
        detail = []
        for m in comp:
            for e in mods[m].edges:
                if e.target in members and not e.typing:
                    detail.append(f"{m}:{e.line} -> {e.target}" + (" (local)" if e.local else ""))
        say(f"  {' <-> '.join(comp)}")
        for d in sorted(set(detail)):
            say(f"      {d}")
    problems += len(found)

    private = [(m, p) for m, mod in mods.items() for p in mod.private]
    say(f"== cross-module private imports: {len(private)} ==")
    for m, p in private:
        say(f"  {m} {p}")
    problems += len(private)

    big = [mod for mod in mods.values() if mod.lines > MAX_MODULE_LINES]
    say(f"== modules over {MAX_MODULE_LINES} lines: {len(big)} ==")
    for mod in sorted(big, key=lambda m: -m.lines):
        say(f"  {mod.name}: {mod.lines}")
    problems += len(big)

    longs = [(m, f) for m, mod in mods.items() for f in mod.long_functions]
    bad = [(m, f) for m, f in longs if not f[3]]
    say(
        f"== functions over {MAX_FUNCTION_LINES} lines: {len(longs)}, "
        f"without a '{REASON}' line in the docstring: {len(bad)} =="
    )
    for m, (qual, line, length, reason) in longs:
        say(f"  {m}.{qual} (line {line}): {length} lines{'' if reason else '  <- no reason'}")
    problems += len(bad)

    if not quiet:
        say()
        say("== module sizes (lines) ==")
        for name, mod in mods.items():
            say(f"  {mod.lines:5d}  {name}")
        say(f"  {sum(m.lines for m in mods.values()):5d}  total, {len(mods)} modules")

    say()
    say("OK: structure holds" if problems == 0 else f"FAIL: {problems} violation(s)")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parent.parent / "onnxprune"
    parser.add_argument("--root", type=Path, default=default, help="the package folder")
    parser.add_argument("--quiet", action="store_true", help="violations and summary only")
    args = parser.parse_args(argv)
    return report(load(args.root.resolve()), args.quiet)


if __name__ == "__main__":
    sys.exit(main())
