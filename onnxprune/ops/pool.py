"""Ops that work over spatial axes and leave each channel alone.

Pooling, spatial reductions, Resize/Upsample, Pad and Softmax pass the channel axis through
as long as they do not act *on* it: a reduction or a softmax over channels, padding or
resizing the channel axis, or MaxPool's flat indices (which count channels) block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.view import attr, normalize_axis
from onnxprune.ops.base import Rule, data_input

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Chan, Context
    from onnxprune.structured.rewrite import RewriteContext


def _spatial_only(ctx: Context, x: Chan, op: str) -> bool:
    """Pooling acts on axes 2..: the channels must be on axis 0 or 1."""
    if x.axis >= 2:
        ctx.block(x.ids, f"{op} pools over the axis that carries the channels")
        return False
    return True


POOL = (
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "MaxRoiPool", "SpaceToDepth", "DepthToSpace",
)  # fmt: skip


class Pool(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = data_input(ctx)
        if x is None:
            return
        op = node.op_type
        if op in ("MaxRoiPool", "SpaceToDepth", "DepthToSpace"):
            ctx.block(x.ids, f"{op} rearranges channels; not followed")
            return
        if op == "MaxPool" and ctx.out_used(1):
            ctx.block(x.ids, "MaxPool indices count channels and would change")
            return
        if _spatial_only(ctx, x, op):
            ctx.set_out(0, x.axis, x.ids, x.rank)


REDUCE = (
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)  # fmt: skip


class Reduce(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        op = node.op_type
        x = data_input(ctx)
        if x is None:
            return
        if op in ("ArgMax", "ArgMin"):
            axes = [int(attr(node, "axis", 0))]
        else:
            try:
                axes = ctx.view.ints(node, "axes", 1)
            except LookupError as exc:
                ctx.block(x.ids, f"{op}: {exc}")
                return
            if not axes:
                if attr(node, "noop_with_empty_axes", 0):
                    ctx.set_out(0, x.axis, x.ids, x.rank)
                else:
                    ctx.block(x.ids, f"{op} reduces over every axis, channels included")
                return
        axes = sorted(normalize_axis(a, x.rank) for a in axes)
        if x.axis in axes:
            reason = f"{op} reduces over the channel axis: channels are mixed"
            # a LayerNorm/RMSNorm spelled out: with --hidden, a statistic over kept channels
            if not (op == "ReduceMean" and attr(node, "keepdims", 1)
                    and ctx.approximate(x.ids, reason)):  # fmt: skip
                ctx.block(x.ids, reason)
            return
        if attr(node, "keepdims", 1):
            ctx.set_out(0, x.axis, x.ids, x.rank)
        else:
            ctx.set_out(0, x.axis - sum(a < x.axis for a in axes), x.ids, x.rank - len(axes))


class AlongAxis(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        op = node.op_type
        x = data_input(ctx)
        if x is None:
            return
        if op == "CumSum":
            v = ctx.view.known_value(ctx.input_name(1))
            if v is None:
                ctx.block(x.ids, "CumSum axis is computed at run time")
                return
            axis = normalize_axis(int(np.asarray(v).reshape(-1)[0]), x.rank)
            mixes = axis == x.axis
        else:
            default = -1 if ctx.opset >= 13 else 1
            axis = normalize_axis(int(attr(node, "axis", default)), x.rank)
            # Before opset 13 the input is flattened to 2-D from `axis` on.
            mixes = x.axis == axis if ctx.opset >= 13 else x.axis >= axis
        if mixes:
            ctx.block(x.ids, f"{op} normalizes across the channel axis")
            return
        ctx.set_out(0, x.axis, x.ids, x.rank)


class PadRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = data_input(ctx)
        if x is None:
            return
        for k in range(1, ctx.n_inputs()):
            if ctx.input_name(k) and not ctx.is_const(k):
                ctx.inp(k)
                ctx.block(x.ids, f"Pad input {k} is computed at run time")
                return
        try:
            pads = ctx.view.ints(node, "pads" if ctx.opset >= 2 else "paddings", 1)
            axes = ctx.view.ints(node, "axes", 3) if ctx.opset >= 18 else None
        except LookupError as exc:
            ctx.block(x.ids, f"Pad: {exc}")
            return
        pads = pads or []
        axes = [normalize_axis(a, x.rank) for a in axes] if axes else list(range(x.rank))
        n = len(axes)
        for i, a in enumerate(axes):
            if a == x.axis and (pads[i] != 0 or pads[i + n] != 0):
                ctx.block(x.ids, "Pad pads the channel axis")
                return
        ctx.set_out(0, x.axis, x.ids, x.rank)


class ResizeRule(Rule):
    """Scales must keep the channel axis; constant ``sizes`` are rewritten."""

    @staticmethod
    def _inputs(node: onnx.NodeProto, opset: int) -> tuple[int | None, int | None]:
        if node.op_type == "Upsample" or opset < 11:
            return 1, None
        return 2, 3

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = data_input(ctx)
        if x is None:
            return
        si, zi = self._inputs(node, ctx.opset)
        axes = attr(node, "axes", None)
        ch = x.axis
        if axes is not None:
            axes = [normalize_axis(int(a), x.rank) for a in axes]
            if x.axis not in axes:
                ctx.set_out(0, x.axis, x.ids, x.rank)
                return
            ch = axes.index(x.axis)
        scales = attr(node, "scales", None)
        if scales is None and si is not None and ctx.input_name(si):
            scales = ctx.view.known_value(ctx.input_name(si))
            if scales is None:
                ctx.inp(si)
                ctx.block(x.ids, f"{node.op_type} scales are computed at run time")
                return
        if scales is not None and len(scales) and float(np.asarray(scales).reshape(-1)[ch]) != 1.0:
            ctx.block(x.ids, f"{node.op_type} scales the channel axis")
            return
        if zi is not None and ctx.input_name(zi):
            sizes = ctx.view.known_value(ctx.input_name(zi))
            if sizes is None:
                ctx.inp(zi)
                expr = ctx.view.shape_expr(ctx.input_name(zi))
                if expr is None or expr[ch] != ("dim", node.input[0], x.axis):
                    ctx.block(
                        x.ids,
                        f"{node.op_type} sizes are computed at run time from something other than the input",
                    )
                    return
            elif int(np.asarray(sizes).reshape(-1)[ch]) != len(x.ids):
                ctx.block(x.ids, f"{node.op_type} sizes change the channel count")
                return
        ctx.set_out(0, x.axis, x.ids, x.rank)

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        _, zi = self._inputs(node, rw.opset)
        cut = rw.cut(node.input[0])
        if cut is None or zi is None or len(node.input) <= zi or not node.input[zi]:
            return
        sizes = rw.view.known_value(node.input[zi])
        if sizes is None:
            return  # computed from the input's shape at run time: follows the pruning
        axes = attr(node, "axes", None)
        rank = len(cut_shape) if (cut_shape := rw.view.shape(node.input[0])) else len(sizes)
        ch = (
            cut.axis
            if axes is None
            else [normalize_axis(int(a), rank) for a in axes].index(cut.axis)
        )
        sizes = np.array(sizes, copy=True)
        sizes[ch] = len(cut.kept)
        rw.set_input(node, zi, sizes)
