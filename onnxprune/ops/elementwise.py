"""Element-wise ops: channel c of the output depends only on channel c of the inputs.

Unary ops hand the channels on. Broadcasting ops (Add, Mul, ...) do too, and in addition:
a constant that spans the channel axis is a per-channel parameter (sliced with the channels),
and two computed inputs that both span it are the *same* channels (a residual connection, a
squeeze-and-excitation gate, x * sigmoid(x)), so they are unified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxprune.ops.base import Rule

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Erf", "Gelu", "Mish", "ThresholdedRelu", "Identity", "Cast", "Neg",
    "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Not", "IsNaN",
    "IsInf", "Sin", "Cos", "Clip", "Dropout", "CastLike", "Shrink",
)  # fmt: skip

BROADCAST = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "Equal",
    "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift",
)  # fmt: skip


class Unary(Rule):
    """Input 0 passes through; other inputs (Clip bounds, Dropout ratio) are scalars."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        for k in range(1, ctx.n_inputs()):
            if ctx.is_const(k):
                ctx.claim(k)
            else:
                other = ctx.inp(k)
                if other is not None and node.op_type != "CastLike":
                    ctx.block(other.ids, f"{node.op_type} input {k} carries channels")
        if x is None:
            return
        ctx.set_out(0, x.axis, x.ids, x.rank)
        if node.op_type == "Dropout" and ctx.out_used(1):
            ctx.set_out(1, x.axis, x.ids, x.rank)  # the mask has the shape of the input


def _rank(ctx: Context, k: int) -> int | None:
    s = ctx.in_shape(k)
    return None if s is None else len(s)


class Broadcast(Rule):
    """Numpy-style broadcasting over inputs aligned from the right."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        op = node.op_type
        names = [k for k in range(ctx.n_inputs()) if ctx.input_name(k)]
        tracked = {k: c for k in names if (c := ctx.inp(k)) is not None}
        if not tracked:
            for k in names:
                if ctx.is_const(k):
                    ctx.claim(k)
            return
        shapes = {k: ctx.in_shape(k) for k in names}
        if any(s is None for s in shapes.values()):
            for c in tracked.values():
                ctx.block(c.ids, f"{op}: an input shape is unknown")
            return
        out_shape = ctx.out_shape(0)
        out_rank = len(out_shape) if out_shape is not None else max(len(s) for s in shapes.values())
        axes = {k: c.axis + out_rank - c.rank for k, c in tracked.items()}
        sizes = {len(c.ids) for c in tracked.values()}
        width = max(sizes)
        # Tracked inputs with one channel broadcast over the others: read, nothing to couple.
        spanning = {k: c for k, c in tracked.items() if len(c.ids) == width}
        if len({axes[k] for k in spanning}) != 1 or not sizes <= {1, width}:
            for c in tracked.values():
                ctx.block(c.ids, f"{op} combines channels on different axes or of different counts")
            for k in names:
                if ctx.is_const(k):
                    ctx.claim(k)
            return
        first = next(iter(spanning))
        axis, ids = axes[first], spanning[first].ids
        for k in names:
            if k in tracked:
                if k in spanning:
                    ctx.unify(ids, tracked[k].ids)
                continue
            ax = axis - (out_rank - len(shapes[k]))
            d = shapes[k][ax] if ax >= 0 else 1
            if d == 1 and width != 1:
                if ctx.is_const(k):
                    ctx.claim(k)
            elif d != width:
                ctx.block(ids, f"{op}: input {k} has {d} entries on the channel axis, not {width}")
                if ctx.is_const(k):
                    ctx.claim(k)
            elif ctx.is_const(k):
                ctx.bind(k, ax, ids, "chan")
            else:
                other = ctx.inp_or_pseudo(k, ax)
                if other is None:
                    ctx.block(ids, f"{op}: the channels of input {k} are not known")
                else:
                    ctx.unify(ids, other)
        ctx.set_out(0, axis, ids, out_rank)
