"""Run-time shape values: the one module that evaluates Shape/Gather/Concat/Slice arithmetic.

Exporters compute Reshape targets, Expand sizes and Slice bounds at run time from ``Shape``.
This module evaluates those values without running the model, at two depths that share one
set of op semantics (``SMALL``, integer division, broadcasting, ``Equal`` on dimensions,
``Shape`` start/end, ``ConstantOfShape`` fills, ``Slice`` bounds):

* ``shape_elems`` (behind ``GraphView.shape_expr`` / ``static_ints`` / ``known_value``): each
  element is a number, a plain dimension ``("dim", tensor, axis)`` or None; arithmetic is
  done on the numbers this model's inferred shapes give (``resolved``).
* ``DimExprs`` (``exprs(view)``, for the attention rules): each element is a product of
  dimensions with where its constant comes from, as below.

Pruning heads needs two more answers than ``shape_elems`` gives about a Reshape target or the
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
from typing import TYPE_CHECKING

import numpy as np
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
    bounds = [view.constant(n) if n else None for n in node.input[1:5]]
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
            return _const(int_div(a.const, b.const))
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


def _as_elem(e: ShapeElem) -> Elem:
    if isinstance(e, tuple):
        return Term(Fraction(1), ((e[1], e[2]),))
    return _const(e) if isinstance(e, int) else Opaque()


def equal_elems(a: ShapeElem, b: ShapeElem) -> int | None:
    """``Equal`` of two ``shape_elems`` elements, decided as ``_equal`` decides it."""
    out = _equal(_as_elem(a), _as_elem(b))
    return out.const if isinstance(out, Term) else None


_ARITH: dict[str, Callable[[int, int], int | None]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": int_div,
}


def resolved(view: GraphView, name: str) -> list[int | None] | None:
    """``view.shape_expr(name)`` with run-time dimensions replaced by their inferred numbers."""
    expr = view.shape_expr(name)
    if expr is None:
        return None
    return [view.dim(e[1], e[2]) if isinstance(e, tuple) else e for e in expr]


def shape_elems(view: GraphView, name: str) -> list[ShapeElem] | None:
    """The value of a small shape tensor element by element (see ``GraphView.shape_expr``,
    which memoizes it): a constant, ``("dim", tensor, axis)``, or None for an element computed
    some other way; None when not a 0-D/1-D value of known length."""
    v = view.constant(name)
    if v is not None:
        if v.ndim > 1 or v.dtype.kind not in "iuf" or v.size > SMALL:
            return None
        return [int(x) if v.dtype.kind in "iu" else float(x) for x in v.reshape(-1)]
    prod = view.producer.get(name)
    shape = view.shape(name)
    unknown = [None] * shape[0] if shape and len(shape) == 1 and isinstance(shape[0], int) else None
    if shape == ():
        unknown = [None]
    if prod is None:
        return unknown
    node = view.nodes[prod[0]]
    found = _elems_of_node(view, node)
    return unknown if found is None else found


def _elems_of_node(view: GraphView, node: onnx.NodeProto) -> list[ShapeElem] | None:
    """``shape_elems`` of a node's output; None for "unknown" (the caller's fallback)."""
    op = node.op_type
    if op == "Shape":
        r = view.rank(node.input[0])
        if r is None:
            return None
        inner = view.shape_expr(node.input[0]) if r == 1 else None
        if inner is not None and None not in inner and attr(node, "start", 0) in (0, -1):
            return [len(inner)]  # a shape vector's length is structural, not a dimension
        return [("dim", node.input[0], i) for i in shape_range(node, r)]
    if op in ("Cast", "Identity", "Unsqueeze", "Squeeze") or (
        op == "Reshape" and view.rank(node.input[0]) in (0, 1)
    ):
        return view.shape_expr(node.input[0]) or None
    if op == "ConstantOfShape":
        n, fill = view.shape_expr(node.input[0]), int_fill(node)
        if n is None or len(n) != 1 or not isinstance(n[0], int) or fill is None or n[0] > SMALL:
            return None
        return [fill] * n[0]
    if op in ("Equal", "Where", "Concat", *_ARITH) and node.input:
        return _elementwise(view, node)
    if op == "Gather" and attr(node, "axis", 0) == 0:
        data, idx = view.shape_expr(node.input[0]), view.constant(node.input[1])
        if data is None or idx is None or idx.ndim > 1:
            return None
        return [data[int(i)] for i in idx.reshape(-1)]
    if op == "Slice" and len(node.input) >= 3:
        data, bounds = view.shape_expr(node.input[0]), slice_bounds(view, node)
        return None if data is None or bounds is None else data[bounds]
    return None


def _elementwise(view: GraphView, node: onnx.NodeProto) -> list[ShapeElem] | None:
    """``shape_elems`` of Equal, Where, Concat and the integer arithmetic ops."""
    op = node.op_type
    if op == "Concat":
        if attr(node, "axis", 0) not in (0, -1):
            return None
        parts = [view.shape_expr(i) for i in node.input]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    arity = 3 if op == "Where" else 2
    if len(node.input) != arity:
        return None
    if op in _ARITH:
        parts = [resolved(view, i) for i in node.input]
    else:
        parts = [view.shape_expr(i) for i in node.input]
    parts = None if any(p is None for p in parts) else broadcast(parts)
    if parts is None:
        return None
    if op == "Equal":
        return [equal_elems(x, y) for x, y in zip(*parts, strict=True)]
    if op == "Where":
        return [x if k == 1 else y if k == 0 else None for k, x, y in zip(*parts, strict=True)]
    return [
        None if x is None or y is None else _ARITH[op](x, y) for x, y in zip(*parts, strict=True)
    ]


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
        if value.ndim > 1 or value.size > SMALL or value.dtype.kind not in "iu":
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
        ins = [self._input(i, k) for k in range(len(node.input))]
        op = node.op_type if node.domain in ("", "ai.onnx") else ""
        if op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Where"):
            return _combine(op, node.output[0], ins)
        return self._of_node(op, node, ins)

    def _of_node(self, op: str, node: onnx.NodeProto, ins: list[Expr]) -> Expr:
        """The value of a node's output for the ops that move elements around."""
        out = node.output[0]
        if op == "Shape":
            data = node.input[0]
            rank = self.view.rank(data)
            if rank is None:
                return Opaque(frozenset({(data, -1)}))
            inner = self.of(data) if rank == 1 else None
            if isinstance(inner, list):  # a shape vector's length is structural
                return [_const(len(inner))]
            return [Term(Fraction(1), ((data, a),)) for a in shape_range(node, rank)]
        if op == "Size":
            return [Opaque(frozenset({(node.input[0], -1)}))]
        if op in _PASS:
            data = ins[0]
            return [_through(e, out) for e in data] if isinstance(data, list) else data
        if op == "Concat":
            if any(isinstance(x, Opaque) for x in ins):
                return _opaque(ins)
            return [_through(e, out) for x in ins for e in x]
        if op == "Gather" and int(attr(node, "axis", 0)) == 0:
            data, idx = ins[0], self.view.constant(node.input[1])
            if isinstance(data, Opaque) or idx is None or idx.ndim > 1:
                return _opaque(ins)
            try:
                return [_through(data[int(j)], out) for j in idx.reshape(-1)]
            except IndexError:
                return _opaque(ins)
        if op == "Slice" and len(node.input) >= 3:
            data, bounds = ins[0], slice_bounds(self.view, node)
            if isinstance(data, Opaque) or bounds is None:
                return _opaque(ins)
            return [_through(e, out) for e in data[bounds]]
        if op == "ConstantOfShape":
            size, fill = ins[0], int_fill(node)
            if (
                isinstance(size, list)
                and len(size) == 1
                and isinstance(size[0], Term)
                and size[0].const is not None
                and 0 <= size[0].const <= SMALL
                and fill is not None
            ):
                return [_const(fill)] * size[0].const
        return _opaque(ins)


def _through(e: Elem, out: str) -> Elem:
    """``e`` as it reaches tensor ``out``: a constant's ``Origin`` records the tensor."""
    if isinstance(e, Term) and e.origin is not None:
        return replace(e, origin=replace(e.origin, path=(*e.origin.path, out)))
    return e


def _opaque(ins: list[Expr]) -> Opaque:
    """An unevaluated value that may depend on every dimension its inputs depend on."""
    found: set[Ref] = set()
    for x in ins:
        found |= refs(x)
    return Opaque(frozenset(found))


def _combine(op: str, out: str, ins: list[Expr]) -> Expr:
    """The value of a broadcasting op of shape values: arithmetic, Equal or Where."""
    arity = 3 if op == "Where" else 2
    if len(ins) != arity or any(isinstance(x, Opaque) for x in ins):
        return _opaque(ins)
    parts = broadcast(ins)
    if parts is None:
        return _opaque(ins)
    if op == "Equal":
        return [_equal(a, b) for a, b in zip(*parts, strict=True)]
    if op != "Where":
        return [_arith(op, a, b) for a, b in zip(*parts, strict=True)]
    picked: list[Elem] = []
    for c, a, b in zip(*parts, strict=True):
        if isinstance(c, Term) and c.const is not None:
            picked.append(_through(a if c.const else b, out))
        else:
            picked.append(Opaque(refs(c) | refs(a) | refs(b)))
    return picked


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
