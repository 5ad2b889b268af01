"""Conv and ConvTranspose: the producers and consumers of image channels.

Plain convolution (group 1): input channels are the weight's input axis (a consumer slice),
output channels are fresh filters (a producer). Grouped convolution (group g > 1), depthwise
included: input channel c only reaches the outputs of its group, and ONNX requires equal
groups, so onnxprune removes *whole groups*: the input channels of a group become one channel
slot tied to that group's outputs, the weight loses those filters and ``group`` is updated.
For depthwise convolution (one input channel per group) this is exactly "channel c passes
through"; for ResNeXt-style groups of 4 it removes 4 channels at a time upstream too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.view import attr
from onnxprune.ops import register
from onnxprune.ops.base import Rule

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context
    from onnxprune.structured.rewrite import RewriteContext


def _weight_axes(op: str) -> tuple[int, int]:
    """(input-channel axis, output-channel axis) of the weight."""
    return (1, 0) if op == "Conv" else (0, 1)


@register("Conv", "ConvTranspose")
class ConvRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        op = node.op_type
        x = ctx.inp(0)
        if not ctx.is_const(1):
            ctx.block_inputs(f"{op} weight '{ctx.input_name(1)}' is computed at run time")
            return
        if ctx.n_inputs() > 2 and ctx.input_name(2) and not ctx.is_const(2):
            ctx.block_inputs(f"{op} bias '{ctx.input_name(2)}' is computed at run time")
            return
        if x is not None and x.axis != 1:
            ctx.block(x.ids, f"{op} reads its channels on axis 1, but they are on axis {x.axis}")
            x = None
        w_in, w_out = _weight_axes(op)
        wshape = ctx.in_shape(1)
        g = int(attr(node, "group", 1))
        if g == 1:
            if x is not None:
                ctx.bind(1, w_in, x.ids, "in")
            else:
                ctx.claim(1)
            ids = ctx.source(1, w_out)
        else:
            cin = wshape[1] * g if op == "Conv" else wshape[0]
            cpg_out = wshape[0] // g if op == "Conv" else wshape[1]
            xin = x.ids if x is not None else ctx.inp_or_pseudo(0, 1)
            if xin is None or len(xin) != cin or cin % g:
                ctx.block(xin, f"{op}: {cin} input channels do not split into {g} groups")
                ctx.claim(1)
                return
            per_group = xin.reshape(g, cin // g)
            if per_group.shape[1] > 1:
                ctx.unify(
                    per_group[:, 1:].ravel(), np.repeat(per_group[:, 0], per_group.shape[1] - 1)
                )
            ids = np.repeat(per_group[:, 0], cpg_out)
            if op == "Conv":
                ctx.bind(1, 0, ids, "out")
            else:
                ctx.bind(1, 0, xin, "out")
        if ctx.n_inputs() > 2 and ctx.input_name(2):
            ctx.bind(2, 0, ids, "chan")
        ctx.set_out(0, 1, ids)

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        g = int(attr(node, "group", 1))
        if g == 1:
            return
        cut = rw.cut(node.input[0])
        if cut is None:
            return
        cpg_in = cut.size // g
        rw.set_attr(node, "group", len(cut.kept) // cpg_in)
