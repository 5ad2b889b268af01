"""Gemm and MatMul: dense layers, and (later) attention and MLP blocks.

Channel axis of a MatMul output: its last axis. With a constant weight B [K, N]: input channel
k is row k (a consumer slice), output channel n is column n (a producer). Gemm follows its
``transA``/``transB`` attributes and slices a bias C that spans N. When both operands are
computed (attention), the contraction axis ties A's last axis to B's second-to-last, and the
free axes pass through — exactly what head and neuron pruning need later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.view import attr
from onnxprune.ops import register
from onnxprune.ops.base import Rule

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Chan, Context


@register("Gemm")
class GemmRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        a = ctx.inp(0)
        if not ctx.is_const(1) or ctx.is_const(0):
            ctx.block_inputs("Gemm without a constant weight B is not followed")
            for k in range(3):
                if ctx.is_const(k):
                    ctx.claim(k)
            return
        k_axis = 0 if attr(node, "transA", 0) else 1
        b_in, b_out = (1, 0) if attr(node, "transB", 0) else (0, 1)
        if a is not None and a.axis == k_axis:
            ctx.bind(1, b_in, a.ids, "in")
        else:
            if a is not None:
                ctx.block(a.ids, "Gemm reads channels on its row axis")
            ctx.claim(1)
        ids = ctx.source(1, b_out)
        if ctx.n_inputs() > 2 and ctx.input_name(2):
            c_shape = ctx.in_shape(2)
            if not ctx.is_const(2):
                ctx.inp(2)
                ctx.block(ids, "Gemm bias C is computed at run time")
            elif c_shape and c_shape[-1] == len(ids) and len(ids) > 1:
                ctx.bind(2, len(c_shape) - 1, ids, "chan")
            else:
                ctx.claim(2)
        ctx.set_out(0, 1, ids, 2)


@register("MatMul")
class MatMulRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        sa, sb, so = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
        a, b = ctx.inp(0), ctx.inp(1)
        if sa is None or sb is None or so is None or len(sa) < 2 or len(sb) < 2:
            ctx.block_inputs("MatMul with unknown or vector operands is not followed")
            for k in (0, 1):
                if ctx.is_const(k):
                    ctx.claim(k)
            return
        ra, rb, ro = len(sa), len(sb), len(so)
        if ctx.is_const(1):  # x @ W: a dense layer
            if a is not None and a.axis == ra - 1:
                ctx.bind(1, rb - 2, a.ids, "in")
            else:
                if a is not None:
                    ctx.block(
                        a.ids, "MatMul with a constant weight reads channels on a row or batch axis"
                    )
                ctx.claim(1)
            ctx.set_out(0, ro - 1, ctx.source(1, rb - 1), ro)
            return
        if ctx.is_const(0):  # W @ x: the weight mixes x's rows
            ctx.claim(0)
            if b is None:
                return
            if b.axis == rb - 1:
                ctx.set_out(0, ro - 1, b.ids, ro)
            elif b.axis == rb - 2:
                ctx.bind(0, ra - 1, b.ids, "in")
            else:
                ctx.block(
                    b.ids, "MatMul with a constant left operand reads channels on a batch axis"
                )
            return
        # Both computed: contraction ties A[..., k] to B[..., k, :]; free axes pass through.
        outs = []
        if (a is not None and a.axis == ra - 1) or (b is not None and b.axis == rb - 2):
            ka, kb = ctx.inp_or_pseudo(0, ra - 1), ctx.inp_or_pseudo(1, rb - 2)
            if ka is None or kb is None:
                for c in (a, b):
                    if c is not None:
                        ctx.block(c.ids, "MatMul: the contracted axis has an unknown size")
                return
            ctx.unify(ka, kb)
        if a is not None and a.axis == ra - 2:
            outs.append((ro - 2, a.ids))
        if b is not None and b.axis == rb - 1:
            outs.append((ro - 1, b.ids))
        batch = _batch_axis(ctx, (a, b), (sa, sb), ro)
        if batch is not None:
            outs.append(batch)
        if len(outs) == 1:
            ctx.set_out(0, outs[0][0], outs[0][1], ro)
        elif len(outs) >= 2:
            for _, ids in outs:
                ctx.block(ids, "MatMul output would carry channels on two axes")


def _batch_axis(
    ctx: Context, chans: tuple[Chan | None, Chan | None], shapes: tuple[tuple, tuple], ro: int
) -> tuple[int, np.ndarray] | None:
    """Channels on a batch axis (the heads of ``q @ k^T`` and ``probs @ v``): each output
    batch entry reads only the same entry of both operands, so the axis passes through and
    the operands' channels there are the same channels (or one operand broadcasts it)."""
    batch = [
        (c, ro - len(s) + c.axis)
        for c, s in zip(chans, shapes, strict=True)
        if c is not None and c.axis < len(s) - 2
    ]
    if not batch:
        return None
    axis, ids = batch[0][1], batch[0][0].ids
    if any(o != axis for _, o in batch):
        for c, _ in batch:
            ctx.block(c.ids, "MatMul reads channels on different batch axes of its operands")
        return None
    for k, (c, s) in enumerate(zip(chans, shapes, strict=True)):
        j = axis - (ro - len(s))
        if c is not None and c.axis == j:
            ctx.unify(ids, c.ids)
        elif j >= 0 and s[j] != 1:
            other = ctx.inp_or_pseudo(k, j)
            if other is None or len(other) != len(ids):
                ctx.block(ids, f"MatMul operand {k} has another batch size where channels are")
                return None
            ctx.unify(ids, other)
    return axis, ids
