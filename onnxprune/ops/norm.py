"""Normalizations: per-channel ones are sliced; ones whose statistics span channels block.

BatchNormalization and InstanceNormalization normalize each channel on its own, so their
parameters are per-channel and slice exactly. LayerNormalization over the channel axis (as in
ConvNeXt), LRN and GroupNormalization compute statistics across channels: removing one
channel changes every other one, so the result could not equal the original and they block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxprune.graph.view import attr, normalize_axis
from onnxprune.ops.base import Rule, claim_constants, data_input

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context


class PerChannelNorm(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        op = node.op_type
        if x is None:
            claim_constants(ctx)
            return
        if x.axis != 1:
            ctx.block(x.ids, f"{op} normalizes axis 1, but the channels are on axis {x.axis}")
            claim_constants(ctx)
            return
        if any(not ctx.is_const(k) for k in range(1, ctx.n_inputs()) if ctx.input_name(k)):
            ctx.block_inputs(f"{op} parameters are computed at run time")
            return
        if op == "BatchNormalization" and (ctx.out_used(1) or ctx.out_used(2)):
            ctx.block(x.ids, "BatchNormalization in training mode is not followed")
            claim_constants(ctx)
            return
        roles = ("chan", "chan", "stat", "stat")
        for k in range(1, ctx.n_inputs()):
            ctx.bind(k, 0, x.ids, roles[k - 1])
        ctx.set_out(0, 1, x.ids, x.rank)


class SpanNorm(Rule):
    """Normalizes over a set of axes: passthrough when the channel axis is not among them."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = data_input(ctx)
        if x is None:
            return
        if node.op_type == "LayerNormalization":
            start = normalize_axis(int(attr(node, "axis", -1)), x.rank)
            axes = set(range(start, x.rank))
            if ctx.out_used(1) or ctx.out_used(2):
                ctx.block(x.ids, "LayerNormalization statistics outputs are not followed")
                return
        else:
            axes = {normalize_axis(int(a), x.rank) for a in attr(node, "axes", [0, 2, 3])}
        if x.axis in axes:
            ctx.block(
                x.ids,
                f"{node.op_type} normalizes over the channel axis: removing a channel would change the others",
            )
            return
        ctx.set_out(0, x.axis, x.ids, x.rank)


class CrossChannelNorm(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        claim_constants(ctx)
        ctx.block_inputs(
            f"{node.op_type} mixes neighbouring channels: removing one would change the others"
        )
