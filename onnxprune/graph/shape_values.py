"""Run-time shape values: the one evaluator of Shape/Gather/Concat/Slice arithmetic.

Exporters compute Reshape targets, Expand sizes and Slice bounds at run time from ``Shape``.
``ShapeValues`` evaluates them without running the model, in one pass over the ops, into
elements that carry two readings (``onnxprune.graph.shape_algebra``):

* the symbolic form the rules read (``of``/``input_of``): a ``Term`` is a product of
  dimensions with the constant's ``Origin`` (so the rewrite can change that one number),
  an ``Opaque`` lists the dims it may depend on. Pruning heads needs it: grouped-query
  attention reshapes to ``Shape(k)[1] * 4`` heads, and a rule must tell "follows the pruned
  head count", "does not depend on it" and "depends on it in a way nobody checked" apart;
* what the view reads (``seen``, behind ``GraphView.shape_expr``/``static_ints``): each
  element's ``known`` number (arithmetic done on this model's inferred numbers, float
  constants such as Resize scales kept) or run-time dim; where the rules see one opaque
  value but its length is fixed (a Concat with an unevaluated part) the view keeps the
  known elements.

A value is a list of elements or one ``Opaque`` for the rules; the view's reading is kept
beside it (``Value.seen``) because the two differ where the rules must not trust a number
they could not trace. Only shape-sized values (0-D or 1-D) are evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import onnx

from onnxprune.graph.proto import attr
from onnxprune.graph.shape_algebra import (
    ARITH,
    SMALL,
    Elem,
    Expr,
    Opaque,
    Origin,
    Ref,
    ShapeElem,
    Term,
    arith,
    broadcast,
    const,
    equal,
    equal_elems,
    int_div,
    int_fill,
    refs,
    shape_range,
    slice_bounds,
)

if TYPE_CHECKING:
    from onnxprune.graph.view import GraphView

__all__ = [
    "SMALL",
    "Elem",
    "Expr",
    "Opaque",
    "Origin",
    "Ref",
    "ShapeElem",
    "ShapeValues",
    "Term",
    "Value",
    "broadcast",
    "equal_elems",
    "exprs",
    "int_div",
    "private",
    "refs",
    "set_origin",
]

_equal = equal  # the name tests/test_ops_attention.py reads

Seen = list[ShapeElem] | None
_T = TypeVar("_T")


class Value:
    """One tensor's value: ``expr`` for the rules, ``seen`` for the view (None when the view
    does not know its length). The rules' reading of an op nothing evaluates is computed
    only when asked (``later``): the view, which does not read it, must not touch its
    inputs."""

    __slots__ = ("_expr", "_later", "seen")

    def __init__(self, expr: Expr, seen: Seen, later: Callable[[], Expr] | None = None) -> None:
        self._expr, self._later, self.seen = expr, later, seen

    @property
    def expr(self) -> Expr:
        if self._later is not None:
            later, self._later = self._later, None
            self._expr = Opaque()  # what it stays if ``later`` raises (a broken constant)
            self._expr = later()
        return self._expr


_PASS = ("Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Reshape")
_COMBINE = ("Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Equal", "Where")


def _merge(expr: Expr, seen: Seen) -> Value:
    """Pair the rules' elements with the view's numbers, element by element (an element's
    ``known`` is None where the view does not read it)."""
    if isinstance(expr, list):
        known = seen if seen is not None and len(seen) == len(expr) else [None] * len(expr)
        expr = [replace(e, known=k) for e, k in zip(expr, known, strict=True)]
    return Value(expr, seen)


def _through(e: Elem, out: str) -> Elem:
    """``e`` as it reaches tensor ``out``: a constant's ``Origin`` records the tensor."""
    if isinstance(e, Term) and e.origin is not None:
        return replace(e, origin=replace(e.origin, path=(*e.origin.path, out)))
    return e


def _opaque(ins: list[Value]) -> Opaque:
    """An unevaluated value that may depend on every dimension its inputs depend on."""
    found: set[Ref] = set()
    for x in ins:
        found |= refs(x.expr)
    return Opaque(frozenset(found))


def _pick(items: list, picks: list[int]) -> list | None:
    """``items`` at the indices ``picks`` (a Gather); None when one is out of range."""
    try:
        return [items[j] for j in picks]
    except IndexError:
        return None


def _unknown(shape: tuple | None) -> Seen:
    """The view's reading of a value it does not evaluate: unknown elements, as many as
    inference says."""
    if shape == ():
        return [None]
    if shape and len(shape) == 1 and isinstance(shape[0], int):
        return [None] * shape[0]
    return None


class ShapeValues:
    """Evaluates the shape values of one graph (memoized); see the module docstring."""

    def __init__(self, view: GraphView) -> None:
        self.view = view
        self._memo: dict[str, Value] = {}
        self._busy: set[str] = set()
        self._failed: dict[str | None, set[str]] = {}
        self._active: str | None = None
        self._ops: dict[str, Callable[[onnx.NodeProto, list[Value]], Value]] = {
            "Shape": self._shape,
            "Size": self._size,
            "Concat": self._concat,
            "Gather": self._gather,
            "Slice": self._slice,
            "ConstantOfShape": self._constant_of_shape,
            **{op: self._pass for op in _PASS},
            **{op: self._combine for op in _COMBINE},
        }

    # ---------------------------------------------------------------- readings
    def of(self, name: str) -> Expr:
        """The value of tensor ``name`` as the rules read it; ``Opaque`` for what is not a
        small integer value."""
        return self._reading("rules", lambda: self.value(name).expr)

    def seen(self, name: str) -> Seen:
        """The value of tensor ``name`` as the view reads it (``GraphView.shape_expr``)."""
        return self._reading("view", lambda: self.value(name).seen)

    def input_of(self, node: int, k: int) -> Expr:
        """The value of input ``k`` of node ``node`` (an index into ``GraphView.nodes``); a
        constant input's elements carry their ``Origin`` so the rewrite can change them."""
        return self._reading("rules", lambda: self._input(node, k).expr)

    def value(self, name: str) -> Value:
        """Both readings of tensor ``name`` (memoized). A value whose evaluation raised (a
        constant that does not decode) reads as unknown afterwards, to the reading that
        met the error only, as each reading had its own memo before they were one."""
        if name in self._busy or name in self._failed.get(self._active, ()):
            return Value(Opaque(), None)  # a cycle cannot happen in a valid graph; be safe
        shape = self.view.shape(name)
        if self._active == "rules" and shape is not None and len(shape) > 1:
            return Value(Opaque(), None)  # the rules never decode a weight or read an activation
        found = self._memo.get(name)
        if found is None:
            self._busy.add(name)
            try:
                found = self._memo[name] = self._eval(name)
            except Exception:
                self._failed.setdefault(self._active, set()).add(name)
                raise
            finally:
                self._busy.discard(name)
        return found

    def _reading(self, reading: str, read: Callable[[], _T]) -> _T:
        """Run ``read`` as ``reading`` (``"view"`` or ``"rules"``) unless a reading runs."""
        if self._active is not None:
            return read()
        self._active = reading
        try:
            return read()
        finally:
            self._active = None

    # ---------------------------------------------------------------- evaluation
    def _constant(self, value: np.ndarray, node: int, k: int) -> Value:
        if value.ndim > 1 or value.size > SMALL or value.dtype.kind not in "iuf":
            return Value(Opaque(), None)
        flat = value.reshape(-1)
        if value.dtype.kind == "f":  # the view keeps float values; the rules do not
            return Value(Opaque(), [float(v) for v in flat])
        terms = [Term(Fraction(int(v)), (), Origin(node, k, i), int(v)) for i, v in enumerate(flat)]
        return Value(terms, [int(v) for v in flat])

    def _input(self, node: int, k: int) -> Value:
        n = self.view.nodes[node]
        name = n.input[k] if k < len(n.input) else ""
        if not name:
            return Value(Opaque(), None)
        if self._active == "view" and name in self._failed.get("view", ()):
            return Value(Opaque(), None)  # the view reads inputs through its memo
        value = self.view.constant(name)
        if value is not None:
            return self._constant(value, node, k)
        return self.value(name)

    def _eval(self, name: str) -> Value:
        view = self.view
        value = view.constant(name)
        prod = view.producer.get(name)
        if value is not None:
            return self._constant(value, prod[0] if prod else -1, -1)
        shape = view.shape(name)
        if prod is None:
            return Value(Opaque(), _unknown(shape))
        i = prod[0]
        node = view.nodes[i]
        handler = self._ops.get(node.op_type)
        if handler is None and shape is not None and len(shape) > 1:
            return Value(Opaque(), None)  # an activation: neither reading evaluates it
        if handler is None:
            return Value(Opaque(), _unknown(shape), lambda: self._unevaluated(i))
        ins = [self._input(i, k) for k in range(len(node.input))]
        out = handler(node, ins)
        expr = out.expr
        if node.domain not in ("", "ai.onnx"):
            expr = _opaque(ins)  # the view reads the op type alone; the rules do not
        if shape is not None and len(shape) > 1:
            expr = Opaque()  # activations: their values carry no dimensions
        return Value(expr, out.seen if out.seen is not None else _unknown(shape))

    def _unevaluated(self, i: int) -> Opaque:
        """The rules' reading of an op nothing evaluates: any dim of its inputs."""
        return _opaque([self._input(i, k) for k in range(len(self.view.nodes[i].input))])

    def _shape(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        data = node.input[0]
        rank = self.view.rank(data)
        if rank is None:
            return Value(Opaque(frozenset({(data, -1)})), None)
        inner = self.value(data) if rank == 1 else None
        # a shape vector's length is structural, not a dimension
        counted = inner is not None and isinstance(inner.expr, list)
        seen_len = (
            inner is not None
            and inner.seen is not None
            and None not in inner.seen
            and attr(node, "start", 0) in (0, -1)
        )
        terms = []
        for a in shape_range(node, rank):
            known = len(inner.seen) if seen_len else ("dim", data, a)
            if counted:
                terms.append(Term(Fraction(len(inner.expr)), (), None, known))
            else:
                terms.append(Term(Fraction(1), ((data, a),), None, known))
        return Value(terms, [t.known for t in terms])

    def _size(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        return Value([Opaque(frozenset({(node.input[0], -1)}))], None)

    def _pass(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        """Ops that keep the elements: Identity, Cast, Squeeze, Unsqueeze, and Flatten and
        Reshape (which the view follows only for a 0-D or 1-D input)."""
        data, out = ins[0], node.output[0]
        expr = [_through(e, out) for e in data.expr] if isinstance(data.expr, list) else data.expr
        op = node.op_type
        follows = op not in ("Flatten", "Reshape") or (
            op == "Reshape" and self.view.rank(node.input[0]) in (0, 1)
        )
        return _merge(expr, data.seen if follows and data.seen else None)

    def _concat(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        out = node.output[0]
        if any(isinstance(x.expr, Opaque) for x in ins):
            expr: Expr = _opaque(ins)
        else:
            expr = [_through(e, out) for x in ins for e in x.expr]
        if attr(node, "axis", 0) not in (0, -1) or any(x.seen is None for x in ins):
            return Value(expr, None)
        return _merge(expr, [e for x in ins for e in x.seen])

    def _gather(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        idx = self.view.constant(node.input[1]) if len(node.input) > 1 else None
        if int(attr(node, "axis", 0)) != 0 or idx is None or idx.ndim > 1:
            return Value(_opaque(ins), None)
        picks = [int(j) for j in idx.reshape(-1)]
        data, out = ins[0], node.output[0]
        picked = _pick(data.expr, picks) if isinstance(data.expr, list) else None
        expr = _opaque(ins) if picked is None else [_through(e, out) for e in picked]
        return _merge(expr, None if data.seen is None else _pick(data.seen, picks))

    def _slice(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        bounds = slice_bounds(self.view, node) if len(node.input) >= 3 else None
        data, out = ins[0], node.output[0]
        if bounds is None:
            return Value(_opaque(ins), None)
        expr: Expr = _opaque(ins)
        if isinstance(data.expr, list):
            expr = [_through(e, out) for e in data.expr[bounds]]
        return _merge(expr, None if data.seen is None else data.seen[bounds])

    def _constant_of_shape(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        size, fill = ins[0], int_fill(node)
        expr: Expr = _opaque(ins)
        e = size.expr[0] if isinstance(size.expr, list) and len(size.expr) == 1 else None
        if (
            isinstance(e, Term)
            and e.const is not None
            and 0 <= e.const <= SMALL
            and fill is not None
        ):
            expr = [const(fill)] * e.const
        n = size.seen[0] if size.seen is not None and len(size.seen) == 1 else None
        if not isinstance(n, int) or fill is None or n > SMALL:
            return Value(expr, None)
        return _merge(expr, [fill] * n)

    def _combine(self, node: onnx.NodeProto, ins: list[Value]) -> Value:
        """A broadcasting op of shape values: arithmetic (the view's on the resolved
        numbers, the rules' on the symbols), Equal or Where."""
        op, out = node.op_type, node.output[0]
        if len(ins) != (3 if op == "Where" else 2):
            return Value(_opaque(ins), None)
        return _merge(_combine_exprs(op, out, ins), self._combine_seen(op, ins))

    def _combine_seen(self, op: str, ins: list[Value]) -> Seen:
        if op in ("Max", "Min") or any(x.seen is None for x in ins):
            return None
        parts = [x.seen for x in ins]
        if op in ARITH:
            parts = [
                [self.view.dim(e[1], e[2]) if isinstance(e, tuple) else e for e in p] for p in parts
            ]
        parts = broadcast(parts)
        if parts is None:
            return None
        if op == "Equal":
            return [equal_elems(x, y) for x, y in zip(*parts, strict=True)]
        if op == "Where":
            return [x if k == 1 else y if k == 0 else None for k, x, y in zip(*parts, strict=True)]
        fn = ARITH[op]
        return [None if x is None or y is None else fn(x, y) for x, y in zip(*parts, strict=True)]


def _combine_exprs(op: str, out: str, ins: list[Value]) -> Expr:
    """The rules' reading of arithmetic, Equal or Where: exact on products of dims only."""
    exprs_ = [x.expr for x in ins]
    if any(isinstance(x, Opaque) for x in exprs_):
        return _opaque(ins)
    parts = broadcast(exprs_)
    if parts is None:
        return _opaque(ins)
    if op == "Equal":
        return [equal(a, b) for a, b in zip(*parts, strict=True)]
    if op != "Where":
        return [arith(op, a, b) for a, b in zip(*parts, strict=True)]
    picked: list[Elem] = []
    for c, a, b in zip(*parts, strict=True):
        if isinstance(c, Term) and c.const is not None:
            picked.append(_through(a if c.const else b, out))
        else:
            picked.append(Opaque(refs(c) | refs(a) | refs(b)))
    return picked


def exprs(view: GraphView) -> ShapeValues:
    """The evaluator of ``view`` (one per view and shape inference: analysis, rewrite and
    the view itself share it)."""
    return view.shape_values


def private(view: GraphView, origin: Origin) -> bool:
    """Whether changing the constant at ``origin`` changes only the value that reached the
    caller: every tensor on its way has this one reader and is no graph output, or the other
    readers feed nothing but that value (``_confined``)."""
    if origin.input < 0 or any(t in view.graph_outputs for t in origin.path):
        return False
    return all(len(view.uses(t)) == 1 for t in origin.path) or _confined(view, origin.path)


_CONFINED_MAX = 64
"""Tensors a changed constant may reach before ``_confined`` gives up (a shape expression
is a handful of nodes; past that the value feeds the model itself)."""


def _confined(view: GraphView, path: tuple[str, ...]) -> bool:
    """Every tensor computed from the path's first one flows only into its last one, which
    has one reader: torch's ``Where(Equal(s, -1), 1, s)`` around a size ``s`` reads ``s``
    twice, and load-time folding turns the sizes of Llama's ``repeat_kv`` into constants.
    A forward walk from the changed value; reaching a graph output or more than
    ``_CONFINED_MAX`` tensors means the change shows elsewhere."""
    if not path or len(view.uses(path[-1])) != 1:
        return False
    reached: set[str] = set()
    stack = [path[0]]
    while stack:
        t = stack.pop()
        if t in reached or t == path[-1]:
            continue
        reached.add(t)
        if t in view.graph_outputs or len(reached) > _CONFINED_MAX:
            return False
        for u in view.uses(t):
            stack.extend(o for o in view.nodes[u.node].output if o)
    return True


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
