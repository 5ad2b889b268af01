"""Ops that route channels: Concat joins them, Split and Slice take parts, Gather picks.

Along the channel axis a Concat's output positions are its inputs' positions one after the
other (an offset map; each part keeps its own group), a Split output is a contiguous part
(its size is rewritten to the kept count), a Slice keeps ``start:end`` (bounds rewritten to
the kept positions). Along any other axis these ops pass the channels through, and every
input must then carry the same channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.view import attr, normalize_axis
from onnxprune.ops.base import Rule, claim_constants, data_input

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context
    from onnxprune.structured.rewrite import RewriteContext


class ConcatRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        n = ctx.n_inputs()
        chans = [ctx.inp(k) for k in range(n)]
        tracked = [c for c in chans if c is not None]
        if not tracked:
            claim_constants(ctx, 0)
            return
        rank = tracked[0].rank
        axis = normalize_axis(int(attr(node, "axis", 0)), rank)
        if any(c.axis == axis for c in tracked):
            self._along(ctx, axis, rank)
        else:
            self._across(ctx, tracked[0].axis, rank)

    @staticmethod
    def _along(ctx: Context, axis: int, rank: int) -> None:
        parts = []
        for k in range(ctx.n_inputs()):
            if ctx.is_const(k):
                ctx.claim(k)
                size = ctx.in_shape(k)[axis]
                parts.append(
                    ctx.pseudo(size, f"a constant is concatenated to the channels at {ctx.where}")
                )
                continue
            ids = ctx.inp_or_pseudo(k, axis)
            if ids is None:
                for c in (ctx.inp(j) for j in range(ctx.n_inputs())):
                    if c is not None:
                        ctx.block(
                            c.ids,
                            f"Concat input {k} has channels on another axis or of unknown count",
                        )
                return
            parts.append(ids)
        ctx.set_out(0, axis, np.concatenate(parts), rank)

    @staticmethod
    def _across(ctx: Context, axis: int, rank: int) -> None:
        ids = None
        for k in range(ctx.n_inputs()):
            c = ctx.inp(k)
            if c is not None and c.axis == axis:
                ids = c.ids if ids is None else ids
        for k in range(ctx.n_inputs()):
            if ctx.is_const(k):
                if ctx.in_shape(k)[axis] == len(ids):
                    ctx.bind(k, axis, ids, "chan")
                else:
                    ctx.claim(k)
                    ctx.block(ids, f"Concat input {k} has a different channel count")
                continue
            other = ctx.inp_or_pseudo(k, axis)
            if other is None or len(other) != len(ids):
                ctx.block(ids, f"Concat input {k} carries channels on another axis")
                return
            ctx.unify(ids, other)
        ctx.set_out(0, axis, ids, rank)


class SplitRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = data_input(ctx)
        if x is None:
            return
        outs = len(node.output)
        axis = normalize_axis(int(attr(node, "axis", 0)), x.rank)
        if axis != x.axis:
            for k in range(outs):
                ctx.set_out(k, x.axis, x.ids, x.rank)
            return
        sizes = _split_sizes(ctx.view, node, len(x.ids), ctx.opset)
        if isinstance(sizes, str):
            ctx.block(x.ids, sizes)
            return
        offset = 0
        for k, s in enumerate(sizes):
            ctx.set_out(k, axis, x.ids[offset : offset + s], x.rank)
            offset += s

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        cut = rw.cut(node.input[0])
        if cut is None:
            return
        axis = normalize_axis(int(attr(node, "axis", 0)), len(rw.view.shape(node.input[0])))
        if axis != cut.axis:
            return
        sizes = _split_sizes(rw.view, node, cut.size, rw.opset)
        kept, offset = [], 0
        for s in sizes:
            kept.append(int(np.count_nonzero((cut.kept >= offset) & (cut.kept < offset + s))))
            offset += s
        if rw.opset >= 13:
            rw.set_input(node, 1, np.array(kept, dtype=np.int64))
            rw.remove_attr(node, "num_outputs")
        else:
            rw.set_attr(node, "split", kept)


def _split_sizes(view, node: onnx.NodeProto, size: int, opset: int) -> list[int] | str:
    """The split sizes, or a reason why they are not known."""
    try:
        sizes = view.ints(node, "split", 1)
    except LookupError:
        return "Split sizes are computed at run time"
    outs = len(node.output)
    if sizes:
        return sizes
    if opset >= 18:
        outs = int(attr(node, "num_outputs", outs))
    step = -(-size // outs)
    return [min(step, size - i * step) for i in range(outs)]


def _slice_params(view, node: onnx.NodeProto, opset: int) -> tuple | str:
    """(starts, ends, axes, steps) as lists, or a reason why they are not known."""
    try:
        if opset < 10:
            starts = [int(v) for v in attr(node, "starts")]
            ends = [int(v) for v in attr(node, "ends")]
            axes = attr(node, "axes", None)
            steps = None
        else:
            starts, ends = view.input_ints(node, 1), view.input_ints(node, 2)
            axes, steps = view.input_ints(node, 3), view.input_ints(node, 4)
    except LookupError:
        return "Slice bounds are computed at run time"
    axes = list(axes) if axes else list(range(len(starts)))
    steps = list(steps) if steps else [1] * len(starts)
    return starts, ends, axes, steps


class SliceRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        for k in range(1, ctx.n_inputs()):
            if ctx.is_const(k):
                ctx.claim(k)
            elif ctx.input_name(k):
                ctx.inp(k)
        if x is None:
            return
        params = _slice_params(ctx.view, node, ctx.opset)
        if isinstance(params, str):
            ctx.block(x.ids, params)
            return
        starts, ends, axes, steps = params
        ids = x.ids
        for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
            if normalize_axis(int(a), x.rank) != x.axis:
                continue
            if st != 1:
                ctx.block(x.ids, "Slice with a step on the channel axis")
                return
            ids = x.ids[slice(*slice(s, e).indices(len(x.ids))[:2])]
        if not len(ids):
            ctx.block(x.ids, "Slice keeps no channel")
            return
        ctx.set_out(0, x.axis, ids, x.rank)

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        cut = rw.cut(node.input[0])
        if cut is None:
            return
        starts, ends, axes, _ = _slice_params(rw.view, node, rw.opset)
        rank = len(rw.view.shape(node.input[0]))
        for i, a in enumerate(axes):
            if normalize_axis(int(a), rank) != cut.axis:
                continue
            s, e, _ = slice(starts[i], ends[i]).indices(cut.size)
            new_s = int(np.count_nonzero(cut.kept < s))
            starts[i], ends[i] = (
                new_s,
                new_s + int(np.count_nonzero((cut.kept >= s) & (cut.kept < e))),
            )
        if rw.opset < 10:
            rw.set_attr(node, "starts", starts)
            rw.set_attr(node, "ends", ends)
        else:
            rw.set_input(node, 1, np.array(starts, dtype=rw.dtype_of(node.input[1])))
            rw.set_input(node, 2, np.array(ends, dtype=rw.dtype_of(node.input[2])))


class GatherRule(Rule):
    """Gathering along another axis passes the channels on (``x[:, 0]`` of a sequence)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        idx = ctx.inp(1)
        if ctx.is_const(1):
            ctx.claim(1)
        if idx is not None:
            ctx.block(idx.ids, "Gather indices carry channels")
        if x is None:
            return
        axis = normalize_axis(int(attr(node, "axis", 0)), x.rank)
        shape = ctx.in_shape(1)
        if axis == x.axis or shape is None:
            ctx.block(x.ids, "Gather along the channel axis is not followed")
            return
        new = x.axis if x.axis < axis else x.axis + len(shape) - 1
        ctx.set_out(0, new, x.ids, x.rank + len(shape) - 1)
