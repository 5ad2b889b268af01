"""Gemm and MatMul: dense layers, and (later) attention and MLP blocks.

Channel axis of a MatMul output: its last axis. With a constant weight B [K, N]: input channel
k is row k (a consumer slice), output channel n is column n (a producer). Gemm follows its
``transA``/``transB`` attributes and slices a bias C that spans N. When both operands are
computed (attention), the contraction axis ties A's last axis to B's second-to-last, and the
free axes pass through — exactly what head and neuron pruning need later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.graph.view import attr
from onnxprune.ops.base import Rule
from onnxprune.ops.macs import Dims, Shape, UnknownShape, in_shape, matmul_macs, out_shape
from onnxprune.ops.spec import LinearView, OpSpec, weight_dims

if TYPE_CHECKING:
    from onnxprune.graph.view import GraphView
    from onnxprune.structured.dependency import Chan, Context


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


# --------------------------------------------------------------------------------------------
# Weights and MACs
# --------------------------------------------------------------------------------------------


def gemm_weight(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]):
    """B [K, N] reduces over K (axis 0); with ``transB`` B is [N, K] (axis 1)."""
    if len(node.input) > 1 and node.input[1] in inits:
        return node.input[1], (1 if attr(node, "transB", 0) else 0)
    return None


def matmul_weight(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]):
    """A constant right operand [..., K, N] reduces over K; a constant left one over its last."""
    inputs = list(node.input)
    if len(inputs) > 1:
        if inputs[1] in inits and len(inits[inputs[1]].dims) >= 2:
            return inputs[1], len(inits[inputs[1]].dims) - 2
        if inputs[0] in inits and len(inits[inputs[0]].dims) >= 2:
            return inputs[0], len(inits[inputs[0]].dims) - 1
    return None


def gemm_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims) -> int:
    a, b, y = in_shape(node, shapes, 0), in_shape(node, shapes, 1), out_shape(node, shapes)
    an, bn, yn = node.input[0], node.input[1], node.output[0]
    ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    a = a if a is not None and len(a) == 2 else None
    b = b if b is not None and len(b) == 2 else None
    y = y if y is not None and len(y) == 2 else None
    m_c = [(a[1 if ta else 0], an)] if a else []
    k_c = ([(a[0 if ta else 1], an)] if a else []) + ([(b[1 if tb else 0], bn)] if b else [])
    n_c = [(b[0 if tb else 1], bn)] if b else []
    if y:
        m_c.append((y[0], yn))
        n_c.append((y[1], yn))
    if not (m_c and k_c and n_c):
        raise UnknownShape
    return d.pick(*m_c) * d.pick(*k_c) * d.pick(*n_c)


# --------------------------------------------------------------------------------------------
# Linear-layer views for recovery
# --------------------------------------------------------------------------------------------


class DenseLinear(LinearView):
    """A weight ``[in, out]`` (``[out, in]`` with ``trans_b``) applied to rows of x: the view
    of any dense layer (subclass it with a ``layer`` method for a new op)."""

    def out_axis(self, layer: Any) -> int:
        return 0 if layer.trans_b else 1

    def in_axis(self, layer: Any) -> int:
        return 1 if layer.trans_b else 0

    def matrix(self, layer: Any, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        return w[None] if layer.trans_b else w.T[None]

    def unmatrix(self, layer: Any, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        w = m[0] if layer.trans_b else m[0].T
        return np.ascontiguousarray(w.astype(like.dtype))

    def positions(self, layer: Any, x_shape: tuple[int, ...]) -> int:
        return int(np.prod(x_shape[:-1])) if self.token_rows else x_shape[0]

    def rows(self, layer: Any, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, x.shape[-1]) if self.token_rows else x
        return np.asarray(flat[picks], dtype=np.float32)[:, None, :]


class GemmLinear(DenseLinear):
    """Gemm without transA and with alpha 1; C is a bias only when it is [N] with beta 1."""

    bias_input = 2

    def layer(
        self, node: onnx.NodeProto, view: GraphView, inits: Mapping[str, onnx.TensorProto],
        bias: str | None,
    ) -> dict[str, Any] | None:  # fmt: skip
        dims = weight_dims(node, inits, 2)
        if dims is None or attr(node, "transA", 0) or float(attr(node, "alpha", 1.0)) != 1.0:
            return None
        n_out = dims[0] if attr(node, "transB", 0) else dims[1]
        if bias is not None and (
            list(inits[bias].dims) != [n_out] or float(attr(node, "beta", 1.0)) != 1.0
        ):
            bias = None  # a broadcast matrix C or scaled C: not a per-output bias
            if len(node.input) > 2:
                return None
        return {"bias": bias, "trans_b": bool(attr(node, "transB", 0))}


class MatMulLinear(DenseLinear):
    """x @ W with a 2-D constant W; its bias is the [N] constant of the Add that alone reads
    the output, as exporters write biases."""

    token_rows = True

    def layer(
        self, node: onnx.NodeProto, view: GraphView, inits: Mapping[str, onnx.TensorProto],
        bias: str | None,
    ) -> dict[str, Any] | None:  # fmt: skip
        dims = weight_dims(node, inits, 2)
        if dims is None:
            return None
        bias, add = _bias_add(view, node.output[0], dims[1], inits)
        return {"bias": bias, "bias_add": add}


def _bias_add(
    view: GraphView, y: str, n: int, inits: Mapping[str, onnx.TensorProto]
) -> tuple[str | None, str | None]:
    """The [n] constant added to ``y`` by its only reader, an Add, as exporters write biases."""
    uses = view.uses(y)
    if len(uses) != 1 or y in view.graph_outputs:
        return None, None
    add = view.nodes[uses[0].node]
    if add.op_type != "Add" or add.domain or len(add.input) != 2:
        return None, None
    other = add.input[1 - uses[0].index]
    if (
        other in inits
        and list(inits[other].dims) == [n]
        and other not in view.graph_inputs
        and len(view.uses(other)) == 1
    ):
        return other, add.output[0]
    return None, None


SPECS = [
    OpSpec("Gemm", rule=GemmRule(), weight=gemm_weight, macs=gemm_macs, linear=GemmLinear()),
    OpSpec(
        "MatMul", rule=MatMulRule(), weight=matmul_weight, macs=matmul_macs, linear=MatMulLinear()
    ),
]
