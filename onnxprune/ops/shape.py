"""Reading a shape at run time: Shape (and Size) of a tensor whose channels are cut.

After pruning, ``Shape(x)`` returns the new channel count, which is right wherever the value
sizes something that is cut the same way and wrong anywhere else. The rule follows the
channel count through shape arithmetic to where it is used and blocks unless every use is
checked: a Reshape target or Resize sizes (their rules verify them), or the bounds of a
Slice/Split of ``x`` itself (torch's ``chunk``, rewritten as constants).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxprune.graph.view import GraphView, ShapeElem, attr, normalize_axis
from onnxprune.ops.base import Rule

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context


def block_tracked_dims(ctx: Context, expr: list[ShapeElem] | None, what: str) -> None:
    """A shape computed from a tracked channel count sizes something we do not cut: block."""
    for e in expr or ():
        if isinstance(e, tuple):
            ch = ctx.tracked(e[1])
            if ch is not None and ch.axis == e[2]:
                ctx.block(ch.ids, f"the channel count of '{e[1]}' sizes {what}")


class ShapeRule(Rule):
    """Reading a shape is fine unless the channel count flows somewhere we do not check."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        if x is None:
            return
        start = normalize_axis(int(attr(node, "start", 0)), x.rank)
        end = attr(node, "end", None)
        end = x.rank if end is None else min(normalize_axis(int(end), x.rank), x.rank)
        if not start <= x.axis < end:
            return
        bad = follow_dim(ctx.view, node.output[0], ("dim", node.input[0], x.axis), node.input[0])
        if bad:
            ctx.block(x.ids, f"the channel count of '{node.input[0]}' is read at run time by {bad}")


_SHAPE_OPS = ("Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Identity")
_NUMERIC = ("Add", "Sub", "Mul", "Div")
_CHECKED_SINKS = {("Reshape", 1), ("Resize", 3), ("Expand", 1)}
_VERIFIED = ("Reshape", "Expand")
"""Sinks whose rules evaluate every element with ``onnxprune.graph.shape_values``, arithmetic included
(``Shape(k)[1] * 4`` heads after Llama's ``repeat_kv``)."""
_VALUE_OPS = ("Reshape", "Equal", "Where")
"""Ops torch's ``expand`` sizes pass through: ``Where(Equal(s, -1), 1, s)`` over ``s``."""
_BOUNDS = {("Slice", 1), ("Slice", 2), ("Split", 1)}


def follow_dim(view: GraphView, tensor: str, elem: tuple, source: str) -> str | None:
    """Where a run-time channel count goes; returns the first place we cannot check, or None.

    Indexing and concatenating shapes are followed exactly; a Reshape target or Resize sizes
    that still hold the plain dimension are checked by their own rules; arithmetic on it is
    accepted only on its way to the bounds of a Slice or Split of ``source`` itself (torch's
    ``chunk``), which the rewrite replaces by the pruned constants. Anything else
    (ConstantOfShape, a graph output, ...) could size a tensor we do not cut.
    """
    todo, seen = [(tensor, True)], set()
    while todo:
        t, plain = todo.pop()
        if (t, plain) in seen:
            continue
        seen.add((t, plain))
        if t in view.graph_outputs:
            return f"the graph output '{t}'"
        for use in view.uses(t):
            n = view.nodes[use.node]
            key = (n.op_type, use.index)
            where = f"'{view.label(use.node)}' ({n.op_type})"
            if key in _BOUNDS:
                if n.input[0] != source:
                    return where
            elif key in _CHECKED_SINKS:
                if not plain and n.op_type not in _VERIFIED:
                    return where
            elif n.op_type in _NUMERIC:
                todo.append((n.output[0], False))
            elif n.op_type in _SHAPE_OPS and (use.index == 0 or n.op_type == "Concat"):
                if not plain:
                    todo.append((n.output[0], False))
                    continue
                expr = view.shape_expr(n.output[0])
                if expr is None:
                    return where
                if elem in expr:
                    todo.append((n.output[0], True))
            elif n.op_type in _VALUE_OPS and (
                n.op_type != "Reshape" or (use.index == 0 and view.rank(n.input[0]) in (0, 1))
            ):
                expr = view.shape_expr(n.output[0])
                if expr is None or None in expr:
                    return where
                if not plain:
                    todo.append((n.output[0], False))
                elif elem in expr:
                    todo.append((n.output[0], True))
            elif n.op_type == "Shape" and view.rank(n.input[0]) == 1:
                continue  # the length of a shape vector, not the dimensions it holds
            else:
                return where
    return None


class SizeRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        ctx.block_inputs("Size counts every element, channels included")
