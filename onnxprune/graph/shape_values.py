"""Run-time shape values as products of dimensions, with where each number comes from.

``GraphView.shape_expr`` says what a shape value is, element by element: a number or a plain
dimension ``Shape(t)[a]``. Pruning heads needs two more answers about a Reshape target or the
sizes of an Expand, because exporters compute them at run time:

* which dimensions an element depends on, also through arithmetic (grouped-query attention
  reshapes to ``n_kv_heads * n_rep`` heads, read as ``Shape(k)[1] * 4``) and through ops this
  module cannot evaluate (then the element is ``Opaque`` but still lists its dimensions), so
  that a rule can tell "follows the pruned head count", "does not depend on it" and "depends
  on it in a way nobody checked" apart;
* for a constant element (the ``4`` of ``Concat(B, S, [4], [64])``), which constant input of
  which node holds it and whether that constant feeds only this value, so that the rewrite
  can change that one number.

An element is a ``Term`` (``coef * product of dims``, dims as ``(tensor, axis)``) or an
``Opaque`` value known only by the dims it may depend on. Only shape-sized values (0-D or 1-D
integers) are evaluated; the values of activations carry no dimensions.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph.view import GraphView, attr, normalize_axis

Ref = tuple[str, int]
"""A dimension read at run time: ``Shape(tensor)[axis]``; axis -1 when the rank is unknown."""

_SMALL = 4096


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
    """``coef * product of refs``; a constant when ``refs`` is empty."""

    coef: Fraction
    refs: tuple[Ref, ...] = ()
    origin: Origin | None = None

    @property
    def const(self) -> int | None:
        """The integer value of a constant term, else None."""
        if self.refs or self.coef.denominator != 1:
            return None
        return int(self.coef)


@dataclass(frozen=True)
class Opaque:
    """A value this module does not evaluate, known only by the dims it may depend on."""

    refs: frozenset[Ref] = frozenset()


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


def _const(v: int) -> Term:
    return Term(Fraction(int(v)))


def _arith(op: str, a: Elem, b: Elem) -> Elem:
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
            q = abs(a.const) // abs(b.const)  # ONNX integer division truncates toward zero
            return _const(q if (a.const >= 0) == (b.const > 0) else -q)
        rest = Counter(a.refs)
        rest.subtract(Counter(b.refs))
        quotient = a.coef / b.coef
        if any(n < 0 for n in rest.values()) or quotient.denominator != 1:
            return Opaque(refs(a) | refs(b))  # exact only when the divisor divides out
        return Term(quotient, tuple(sorted(rest.elements())))
    if op in ("Max", "Min") and a.const is not None and b.const is not None:
        return _const(max(a.const, b.const) if op == "Max" else min(a.const, b.const))
    return Opaque(refs(a) | refs(b))


def _equal(a: Elem, b: Elem) -> Elem:
    """Decided when it is for every input: a dimension (never negative) differs from a
    negative number, which is how torch's ``expand`` finds its ``-1`` sizes."""
    if isinstance(a, Term) and isinstance(b, Term):
        if a.refs == b.refs and a.coef == b.coef:
            return _const(1)
        if not a.refs and not b.refs:
            return _const(0)
        for x, y in ((a, b), (b, a)):
            if x.refs and x.coef > 0 and not y.refs and y.coef < 0:
                return _const(0)
    return Opaque(refs(a) | refs(b))


def _broadcast(parts: list[list[Elem]]) -> list[list[Elem]] | None:
    n = max(len(p) for p in parts)
    if any(len(p) not in (1, n) for p in parts):
        return None
    return [p * n if len(p) == 1 else p for p in parts]


_PASS = ("Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Reshape")


class DimExprs:
    """Evaluates shape values of one graph (memoized); see the module docstring."""

    def __init__(self, view: GraphView) -> None:
        self.view = view
        self._memo: dict[str, Expr] = {}

    def of(self, name: str) -> Expr:
        """The value of tensor ``name``; ``Opaque`` for what is not a small integer value."""
        if name not in self._memo:
            self._memo[name] = Opaque()  # a cycle cannot happen in a valid graph; be safe
            self._memo[name] = self._eval(name)
        return self._memo[name]

    def input_of(self, node: int, k: int) -> Expr:
        """The value of input ``k`` of node ``node`` (an index into ``GraphView.nodes``); a
        constant input's elements carry their ``Origin`` so the rewrite can change them."""
        return self._input(node, k)

    def _constant(self, value: np.ndarray, node: int, k: int) -> Expr:
        if value.ndim > 1 or value.size > _SMALL or value.dtype.kind not in "iu":
            return Opaque()
        return [
            Term(Fraction(int(v)), (), Origin(node, k, i)) for i, v in enumerate(value.reshape(-1))
        ]

    def _input(self, node: int, k: int) -> Expr:
        n = self.view.nodes[node]
        name = n.input[k] if k < len(n.input) else ""
        if not name:
            return Opaque()
        value = self.view.constant(name)
        if value is not None:
            return self._constant(value, node, k)
        return self.of(name)

    def _eval(self, name: str) -> Expr:
        view = self.view
        shape = view.shape(name)
        if shape is not None and len(shape) > 1:
            return Opaque()  # activations: their values carry no dimensions
        value = view.constant(name)
        prod = view.producer.get(name)
        if value is not None:
            return self._constant(value, prod[0] if prod else -1, -1)
        if prod is None:
            return Opaque()
        i = prod[0]
        node = view.nodes[i]
        op = node.op_type if node.domain in ("", "ai.onnx") else ""
        out = node.output[0]
        ins = [self._input(i, k) for k in range(len(node.input))]

        def through(e: Elem) -> Elem:
            if isinstance(e, Term) and e.origin is not None:
                return replace(e, origin=replace(e.origin, path=(*e.origin.path, out)))
            return e

        def opaque() -> Opaque:
            found: set[Ref] = set()
            for x in ins:
                found |= refs(x)
            return Opaque(frozenset(found))

        if op == "Shape":
            data = node.input[0]
            rank = view.rank(data)
            if rank is None:
                return Opaque(frozenset({(data, -1)}))
            inner = self.of(data) if rank == 1 else None
            if isinstance(inner, list):  # a shape vector's length is structural
                return [_const(len(inner))]
            start = normalize_axis(int(attr(node, "start", 0)), rank)
            end = attr(node, "end", None)
            end = rank if end is None else min(normalize_axis(int(end), rank), rank)
            return [Term(Fraction(1), ((data, a),)) for a in range(max(start, 0), end)]
        if op == "Size":
            return [Opaque(frozenset({(node.input[0], -1)}))]
        if op in _PASS:
            data = ins[0]
            return [through(e) for e in data] if isinstance(data, list) else data
        if op == "Concat":
            if any(isinstance(x, Opaque) for x in ins):
                return opaque()
            return [through(e) for x in ins for e in x]
        if op == "Gather" and int(attr(node, "axis", 0)) == 0:
            data, idx = ins[0], view.constant(node.input[1])
            if isinstance(data, Opaque) or idx is None or idx.ndim > 1:
                return opaque()
            try:
                return [through(data[int(j)]) for j in idx.reshape(-1)]
            except IndexError:
                return opaque()
        if op == "Slice" and len(node.input) >= 3:
            data = ins[0]
            bounds = [view.constant(n) if n else None for n in node.input[1:5]]
            if isinstance(data, Opaque) or bounds[0] is None or bounds[1] is None:
                return opaque()
            step = int(bounds[3][0]) if len(bounds) > 3 and bounds[3] is not None else 1
            start, end = int(bounds[0][0]), int(bounds[1][0])
            return [through(e) for e in data[start:end:step]]
        if op in ("Add", "Sub", "Mul", "Div", "Max", "Min") and len(ins) == 2:
            if any(isinstance(x, Opaque) for x in ins):
                return opaque()
            parts = _broadcast(ins)
            if parts is None:
                return opaque()
            return [_arith(op, a, b) for a, b in zip(*parts, strict=True)]
        if op == "Equal" and len(ins) == 2:
            parts = None if any(isinstance(x, Opaque) for x in ins) else _broadcast(ins)
            if parts is None:
                return opaque()
            return [_equal(a, b) for a, b in zip(*parts, strict=True)]
        if op == "Where" and len(ins) == 3:
            parts = None if any(isinstance(x, Opaque) for x in ins) else _broadcast(ins)
            if parts is None:
                return opaque()
            picked: list[Elem] = []
            for c, a, b in zip(*parts, strict=True):
                if isinstance(c, Term) and c.const is not None:
                    picked.append(through(a if c.const else b))
                else:
                    picked.append(Opaque(refs(c) | refs(a) | refs(b)))
            return picked
        if op == "ConstantOfShape":
            size = ins[0]
            fill = attr(node, "value", None)
            fill = numpy_helper.to_array(fill).reshape(-1) if fill is not None else None
            if (
                isinstance(size, list)
                and len(size) == 1
                and isinstance(size[0], Term)
                and size[0].const is not None
                and 0 <= size[0].const <= _SMALL
                and fill is not None
                and fill.dtype.kind in "iu"
            ):
                return [_const(int(fill[0]))] * size[0].const
        return opaque()


_CACHE: weakref.WeakKeyDictionary[GraphView, DimExprs] = weakref.WeakKeyDictionary()


def exprs(view: GraphView) -> DimExprs:
    """The evaluator of ``view`` (one per view: the analysis and the rewrite share it)."""
    found = _CACHE.get(view)
    if found is None:
        found = _CACHE[view] = DimExprs(view)
    return found


def private(view: GraphView, origin: Origin) -> bool:
    """Whether changing the constant at ``origin`` changes only the value that reached the
    caller: every tensor on its way has this one reader and is no graph output."""
    return all(len(view.uses(t)) == 1 and t not in view.graph_outputs for t in origin.path) and (
        origin.input >= 0
    )


def set_origin(
    origin: Origin,
    value: int,
    view: GraphView,
    model: onnx.ModelProto,
    set_input: Callable[[onnx.NodeProto, int, np.ndarray], None],
) -> None:
    """Write ``value`` at ``origin`` in ``model`` (the copy the rewrite works on), through
    ``set_input`` (``RewriteContext.set_input``: a shared constant gets a private copy)."""
    original = view.nodes[origin.node]
    node = next(n for n in model.graph.node if list(n.output) == list(original.output))
    old = view.constant(node.input[origin.input])
    new = np.array(old, copy=True)
    new.reshape(-1)[origin.index] = value
    set_input(node, origin.input, new)
