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

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.graph.view import attr
from onnxprune.ops.base import Rule
from onnxprune.ops.macs import Dims, Shape, UnknownShape, conv_macs, in_shape, text
from onnxprune.ops.spec import LinearView, OpSpec, weight_dims

if TYPE_CHECKING:
    from onnxprune.graph.view import GraphView
    from onnxprune.structured.dependency import Context
    from onnxprune.structured.rewrite import RewriteContext


def _weight_axes(op: str) -> tuple[int, int]:
    """(input-channel axis, output-channel axis) of the weight."""
    return (1, 0) if op == "Conv" else (0, 1)


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


def conv_weight(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]):
    """Conv weight [Cout, Cin/g, k...] reduces over Cin (axis 1); ConvTranspose weight
    [Cin, Cout/g, k...] reduces over its input channels (axis 0)."""
    if len(node.input) > 1 and node.input[1] in inits:
        return node.input[1], _weight_axes(node.op_type)[0]
    return None


def conv_transpose_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims) -> int:
    x, w = in_shape(node, shapes, 0), in_shape(node, shapes, 1)
    xn, wn = node.input[0], node.input[1]
    if x is None or w is None or len(w) < 3 or len(x) != len(w):
        raise UnknownShape
    batch = d.int(x[0], xn)
    cin = d.pick((x[1], xn), (w[0], wn))
    in_spatial = [d.int(s, xn) for s in x[2:]]
    per_input = [d.int(s, wn) for s in w[1:]]  # Cout/group, then the kernel
    return batch * cin * math.prod(in_spatial) * math.prod(per_input)


class ConvLinear(LinearView):
    """A 2-D Conv over im2col patches. Columns run kernel position first and input channel
    last (``kh, kw, c``): consecutive columns are consecutive input channels, which is the
    axis N:M patterns follow. 1-D/3-D Conv is left out (no patch extraction here yet)."""

    bias_input = 2
    x_channel_axis = 1

    def layer(
        self, node: onnx.NodeProto, view: GraphView, inits: Mapping[str, onnx.TensorProto],
        bias: str | None,
    ) -> dict[str, Any] | None:  # fmt: skip
        dims = weight_dims(node, inits, 4)
        if dims is None:
            return None
        return {
            "bias": bias,
            "groups": int(attr(node, "group", 1)),
            "kernel": (dims[2], dims[3]),
            "strides": tuple(attr(node, "strides", None) or (1, 1)),
            "dilations": tuple(attr(node, "dilations", None) or (1, 1)),
            "pads": tuple(attr(node, "pads", None) or (0, 0, 0, 0)),
            "auto_pad": text(attr(node, "auto_pad", "NOTSET")),
        }

    def out_axis(self, layer: Any) -> int:
        return 0

    def in_axis(self, layer: Any) -> int:
        return 1

    def matrix(self, layer: Any, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        o = w.shape[0]
        m = w.transpose(0, 2, 3, 1).reshape(o, -1)  # columns (kh, kw, c)
        return m.reshape(layer.groups, o // layer.groups, -1)

    def unmatrix(self, layer: Any, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        g, opg, d = m.shape
        kh, kw = like.shape[2], like.shape[3]
        w = m.reshape(g * opg, kh, kw, d // (kh * kw)).transpose(0, 3, 1, 2)
        return np.ascontiguousarray(w.astype(like.dtype))

    def positions(self, layer: Any, x_shape: tuple[int, ...]) -> int:
        oh, ow = _out_hw(layer, x_shape)
        return x_shape[0] * oh * ow

    def rows(self, layer: Any, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
        c = x.shape[1]
        oh, ow = _out_hw(layer, x.shape)
        t, left, b, r = _pads(layer, x.shape)
        if t or left or b or r:
            x = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)))
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
        img, rest = np.divmod(picks, oh * ow)
        row, col = np.divmod(rest, ow)
        # [rows, kh, kw] pixel coordinates of each patch, gathered without an im2col copy.
        ys = row[:, None] * sh + np.arange(kh)[None, :] * dh
        xs = col[:, None] * sw + np.arange(kw)[None, :] * dw
        p = x[img[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # [rows, kh, kw, c]
        g = layer.groups
        p = p.reshape(len(picks), kh, kw, g, c // g).transpose(0, 3, 1, 2, 4)
        return np.ascontiguousarray(p.reshape(len(picks), g, -1), dtype=np.float32)

    def feature_scale(
        self, layer: Any, norm: np.ndarray, w_shape: tuple[int, ...]
    ) -> np.ndarray | None:
        """Input channel c's norm at every kernel position of every filter of its group."""
        g, cpg = layer.groups, w_shape[1]
        if len(norm) != g * cpg:
            return None
        per = norm.reshape(g, 1, cpg).repeat(w_shape[0] // g, axis=1).reshape(w_shape[0], cpg)
        return per[:, :, None, None]


def _pads(layer: Any, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    if layer.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for k, s, d, n in zip(
            layer.kernel, layer.strides, layer.dilations, x_shape[2:], strict=True
        ):
            total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
            lo = total // 2 if layer.auto_pad == "SAME_UPPER" else total - total // 2
            out.append((lo, total - lo))
        return out[0][0], out[1][0], out[0][1], out[1][1]
    if layer.auto_pad == "VALID":
        return 0, 0, 0, 0
    return layer.pads


def _out_hw(layer: Any, x_shape: tuple[int, ...]) -> tuple[int, int]:
    t, left, b, r = _pads(layer, x_shape)
    h, w = x_shape[2] + t + b, x_shape[3] + left + r
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel, layer.strides, layer.dilations
    return (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1


_RULE = ConvRule()

SPECS = [
    OpSpec("Conv", rule=_RULE, weight=conv_weight, macs=conv_macs, linear=ConvLinear()),
    OpSpec("ConvTranspose", rule=_RULE, weight=conv_weight, macs=conv_transpose_macs),
]
