"""The element algebra of run-time shape values (see ``onnxprune.graph.shape_values``).

An element is a ``Term`` (``coef * product of dims``, dims as ``(tensor, axis)``, with the
``Origin`` of a constant) or an ``Opaque`` value known only by the dims it may depend on; the
rules read that symbolic form. Every element also carries ``known``: what ``GraphView``
reads, the resolved number (int or float) where this model's inferred shapes give one, a
run-time dimension ``("dim", tensor, axis)`` the view looks up, or None. An ``Opaque`` can
hold a number (``Add(dim, 1)`` with the dim inferred) that the rules must not trust, because
they could not trace it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING

import onnx
from onnx import numpy_helper

from onnxprune.graph.proto import attr, normalize_axis

if TYPE_CHECKING:
    from onnxprune.graph.view import GraphView

Ref = tuple[str, int]
"""A dimension read at run time: ``Shape(tensor)[axis]``; axis -1 when the rank is unknown."""

SMALL = 4096
"""Shape values with more elements than this are not evaluated."""

ShapeElem = int | float | tuple[str, str, int] | None
"""An element of a shape computed in the graph; see ``GraphView.shape_expr``."""


def int_div(a: int, b: int) -> int | None:
    """ONNX integer division, which truncates toward zero; None for a zero divisor."""
    if b == 0:
        return None
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def broadcast(parts: list[list]) -> list[list] | None:
    """Element lists of a broadcast op made one length (1-element ones repeated), or None
    when the lengths do not broadcast."""
    n = max(len(p) for p in parts)
    if any(len(p) not in (1, n) for p in parts):
        return None
    return [p * n if len(p) == 1 else p for p in parts]


def shape_range(node: onnx.NodeProto, rank: int) -> range:
    """The axes a ``Shape`` node with ``start``/``end`` returns for an input of ``rank``."""
    start = normalize_axis(int(attr(node, "start", 0)), rank)
    end = attr(node, "end", None)
    end = rank if end is None else min(normalize_axis(int(end), rank), rank)
    return range(max(start, 0), end)


def int_fill(node: onnx.NodeProto) -> int | None:
    """The integer a ``ConstantOfShape`` node fills with; None when its ``value`` is absent
    (the default fill is not assumed) or not an integer."""
    value = attr(node, "value", None)
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else None
    if fill is None or fill.dtype.kind not in "iu":
        return None
    return int(fill[0])


def slice_bounds(view: GraphView, node: onnx.NodeProto) -> slice | None:
    """A ``Slice`` of a 1-D value with constant starts/ends (and steps), as a Python slice."""
    # known_value: torch's unflatten computes a bound from constants (Reshape(Mod(2, 3)))
    bounds = [view.known_value(n) if n else None for n in node.input[1:5]]
    if len(bounds) < 2 or bounds[0] is None or bounds[1] is None:
        return None
    step = int(bounds[3][0]) if len(bounds) > 3 and bounds[3] is not None else 1
    return slice(int(bounds[0][0]), int(bounds[1][0]), step)


@dataclass(frozen=True)
class Origin:
    """Where a constant element lives: element ``index`` (flat) of input ``input`` of node
    ``node`` (an index into ``GraphView.nodes``); ``path`` lists the tensors the value passed
    through on its way to where it is used (each must have one reader for a private rewrite)."""

    node: int
    input: int
    index: int
    path: tuple[str, ...] = ()


@dataclass(frozen=True)
class Term:
    """``coef * product of refs``; a constant when ``refs`` is empty. ``known`` is what the
    view reads (module docstring); it takes no part in equality."""

    coef: Fraction
    refs: tuple[Ref, ...] = ()
    origin: Origin | None = None
    known: ShapeElem = field(default=None, compare=False, repr=False)

    @property
    def const(self) -> int | None:
        """The integer value of a constant term, else None."""
        if self.refs or self.coef.denominator != 1:
            return None
        return int(self.coef)


@dataclass(frozen=True)
class Opaque:
    """A value the rules cannot trace, known only by the dims it may depend on; as an
    element it may still carry the number the view resolves (``known``)."""

    refs: frozenset[Ref] = frozenset()
    known: ShapeElem = field(default=None, compare=False, repr=False)


Elem = Term | Opaque
Expr = list[Elem] | Opaque
"""A shape value element by element, or ``Opaque`` when even its length is unknown."""


def refs(x: Elem | Expr) -> frozenset[Ref]:
    """Every dimension an element or a whole value may depend on."""
    if isinstance(x, Opaque):
        return x.refs
    if isinstance(x, Term):
        return frozenset(x.refs)
    out: set[Ref] = set()
    for e in x:
        out |= refs(e)
    return frozenset(out)


def const(v: int) -> Term:
    return Term(Fraction(int(v)))


def arith(op: str, a: Elem, b: Elem) -> Elem:
    if isinstance(a, Opaque) or isinstance(b, Opaque):
        return Opaque(refs(a) | refs(b))
    if op == "Mul":
        return Term(a.coef * b.coef, tuple(sorted(a.refs + b.refs)))
    if op in ("Add", "Sub"):
        coef = a.coef + b.coef if op == "Add" else a.coef - b.coef
        if a.refs == b.refs:
            return Term(coef, a.refs if coef else ())
        return Opaque(refs(a) | refs(b))
    if op == "Div":
        if b.coef == 0:
            return Opaque(refs(a) | refs(b))
        if not a.refs and not b.refs and a.const is not None and b.const is not None:
            return const(int_div(a.const, b.const))
        rest = Counter(a.refs)
        rest.subtract(Counter(b.refs))
        quotient = a.coef / b.coef
        if any(n < 0 for n in rest.values()) or quotient.denominator != 1:
            return Opaque(refs(a) | refs(b))  # exact only when the divisor divides out
        return Term(quotient, tuple(sorted(rest.elements())))
    if op in ("Max", "Min") and a.const is not None and b.const is not None:
        return const(max(a.const, b.const) if op == "Max" else min(a.const, b.const))
    # torch's unflatten computes an index as Mod(2, 3); fmod or not, the same for a >= 0
    if op == "Mod" and a.const is not None and b.const is not None and a.const >= 0 < b.const:
        return const(a.const % b.const)
    return Opaque(refs(a) | refs(b))


def equal(a: Elem, b: Elem) -> Elem:
    """Decided when it is for every input: a dimension (never negative) differs from a
    negative number, which is how torch's ``expand`` finds its ``-1`` sizes."""
    if isinstance(a, Term) and isinstance(b, Term):
        if a.refs == b.refs and a.coef == b.coef:
            return const(1)
        if not a.refs and not b.refs:
            return const(0)
        for x, y in ((a, b), (b, a)):
            if x.refs and x.coef > 0 and not y.refs and y.coef < 0:
                return const(0)
    return Opaque(refs(a) | refs(b))


def _as_elem(e: ShapeElem) -> Elem:
    if isinstance(e, tuple):
        return Term(Fraction(1), ((e[1], e[2]),))
    return const(e) if isinstance(e, int) else Opaque()


def equal_elems(a: ShapeElem, b: ShapeElem) -> int | None:
    """``Equal`` of two elements as the view reads them, decided as ``equal`` decides it."""
    out = equal(_as_elem(a), _as_elem(b))
    return out.const if isinstance(out, Term) else None


ARITH: dict[str, Callable[[int, int], int | None]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": int_div,
    "Mod": lambda a, b: a % b if a >= 0 < b else None,  # fmod or not: the same here
}
"""The arithmetic the view does on resolved numbers."""
