"""Normalizations: per-channel ones are sliced; ones whose statistics span channels block.

BatchNormalization and InstanceNormalization normalize each channel on its own, so their
parameters are per-channel and slice exactly. LayerNormalization over the channel axis (as in
ConvNeXt), LRN and GroupNormalization compute statistics across channels: removing one
channel changes every other one, so the result could not equal the original and they block.

With ``--hidden`` (``Context.hidden``) a LayerNormalization or RMSNormalization over the
channel axis instead joins the residual stream it normalizes into one group (a *hidden
stream*): its scale and bias are sliced with the stream and it then normalizes over the kept
channels. That is approximate, never exact; ``onnxprune.testing.stream_oracle`` checks it
against that formula and recovery (``--calib``) repairs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxprune.graph.view import attr, normalize_axis
from onnxprune.ops.base import Rule, claim_constants

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Chan, Context


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


#: Normalizations with a scale (and a bias) over the trailing axes from ``axis`` on.
TRAILING = ("LayerNormalization", "RMSNormalization")


class SpanNorm(Rule):
    """Normalizes over a set of axes: passthrough when the channel axis is not among them;
    over the channel axis it blocks, or with ``--hidden`` joins the stream (module doc)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        if x is None:
            claim_constants(ctx)
            return
        if node.op_type in TRAILING:
            start = normalize_axis(int(attr(node, "axis", -1)), x.rank)
            axes = set(range(start, x.rank))
            if ctx.out_used(1) or ctx.out_used(2):
                claim_constants(ctx)
                ctx.block(x.ids, f"{node.op_type} statistics outputs are not followed")
                return
        else:
            axes = {normalize_axis(int(a), x.rank) for a in attr(node, "axes", [0, 2, 3])}
        if x.axis not in axes:
            claim_constants(ctx)
            ctx.set_out(0, x.axis, x.ids, x.rank)
            return
        reason = f"{node.op_type} normalizes over the channel axis: removing a channel would change the others"
        if node.op_type not in TRAILING or not ctx.approximate(x.ids, reason):
            claim_constants(ctx)
            if node.op_type not in TRAILING:
                ctx.block(x.ids, reason)
            return
        _bind_stream_params(ctx, x)
        ctx.set_out(0, x.axis, x.ids, x.rank)


def _bind_stream_params(ctx: Context, x: Chan) -> None:
    """Scale and bias of a stream normalization lose the stream's removed channels; ones that
    broadcast over the channel axis (size 1 there) are kept whole."""
    for k in range(1, ctx.n_inputs()):
        if not ctx.input_name(k):
            continue
        if not ctx.is_const(k):
            ctx.inp(k)
            ctx.block(x.ids, f"{ctx.node.op_type} scale or bias is computed at run time")
            continue
        dims = ctx.in_shape(k) or ()
        axis = x.axis - (x.rank - len(dims))
        if axis < 0 or dims[axis] == 1:
            ctx.claim(k)
        else:
            ctx.bind(k, axis, x.ids, "chan")


class CrossChannelNorm(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        claim_constants(ctx)
        ctx.block_inputs(
            f"{node.op_type} mixes neighbouring channels: removing one would change the others"
        )
