"""Quantized ops: pruned through their quantization, never re-quantized.

Four forms, one rule each, all reusing the float op's rule through :class:`Remapped` (the
quantized op's inputs renumbered as the float op's), plus what the float op does not have:

* **static QDQ**: an integer weight read through ``DequantizeLinear`` is a constant of the
  analysis (``onnxprune.graph.quant``), so the float Conv/Gemm/MatMul rule slices it; the
  rewrite slices its integers and per-channel scales and zero points. ``QuantizeLinear`` and
  ``DequantizeLinear`` on activations pass channels through (:class:`QDQRule`); a per-channel
  activation scale is sliced with the channels, a per-tensor one stays.
* **QOperator** (``QLinearConv``, ``QLinearMatMul``, ``com.microsoft`` ``QGemm``,
  ``QLinearAdd``...): the weight, its per-channel scale and zero point and the int32 bias are
  sliced; activation scales are per-tensor by the spec and stay.
* **dynamic** (``DynamicQuantizeLinear`` + ``ConvInteger``/``MatMulInteger``): the integer
  weight and a per-channel weight zero point are sliced.
* **weight-only 4-bit** ``com.microsoft.MatMulNBits`` (``onnxprune.ops.quantized_nbits``).

An op listed in ``BLOCKED`` keeps its channels with a reason naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.graph.quant import QuantWeight
from onnxprune.graph.view import attr
from onnxprune.ops.base import Rule, claim_constants
from onnxprune.ops.conv import ConvRule, conv_weight
from onnxprune.ops.elementwise import Broadcast, Unary
from onnxprune.ops.linear import GemmRule, MatMulRule, gemm_macs, gemm_weight, matmul_weight
from onnxprune.ops.macs import Dims, Shape, conv_macs, matmul_macs
from onnxprune.ops.pool import AlongAxis, Pool
from onnxprune.ops.quantized_nbits import MatMulNBitsRule, nbits_macs
from onnxprune.ops.spec import OpSpec

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context
    from onnxprune.structured.rewrite import RewriteContext

MS = "com.microsoft"


class Remapped:
    """A rule's Context with the inputs renumbered: input ``k`` of the float op is input
    ``inputs[k]`` of the quantized one. Everything else is the real Context."""

    def __init__(self, ctx: Context, inputs: tuple[int, ...]) -> None:
        self._ctx = ctx
        self._map = inputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def _k(self, k: int) -> int:
        return self._map[k] if k < len(self._map) else 1 << 20

    def n_inputs(self) -> int:
        present = [k for k, r in enumerate(self._map) if r < self._ctx.n_inputs()]
        return present[-1] + 1 if present else 0

    def inp(self, k: int) -> Any:
        return self._ctx.inp(self._k(k))

    def input_name(self, k: int) -> str:
        return self._ctx.input_name(self._k(k))

    def is_const(self, k: int) -> bool:
        return self._ctx.is_const(self._k(k))

    def in_shape(self, k: int) -> tuple | None:
        return self._ctx.in_shape(self._k(k))

    def bind(self, k: int, axis: int, ids: np.ndarray, role: str) -> None:
        self._ctx.bind(self._k(k), axis, ids, role)

    def claim(self, k: int) -> None:
        self._ctx.claim(self._k(k))

    def source(self, k: int, axis: int, size: int | None = None) -> np.ndarray:
        return self._ctx.source(self._k(k), axis, size)

    def inp_or_pseudo(self, k: int, axis: int) -> np.ndarray | None:
        return self._ctx.inp_or_pseudo(self._k(k), axis)


def as_float(node: onnx.NodeProto, op_type: str) -> onnx.NodeProto:
    """A copy of ``node`` named as the float op, for the float rule's op-type checks."""
    twin = onnx.NodeProto()
    twin.CopyFrom(node)
    twin.op_type = op_type
    twin.domain = ""
    return twin


def _size(ctx: Context, k: int) -> int | None:
    shape = ctx.in_shape(k)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def bind_per_channel(ctx: Context, k: int, ids: np.ndarray | None, what: str) -> None:
    """Slice constant input ``k`` (a weight scale or zero point) with the output channels
    ``ids`` when it has one entry per channel; claim it when it is per-tensor."""
    if k >= ctx.n_inputs() or not ctx.input_name(k):
        return
    n = _size(ctx, k)
    if not ctx.is_const(k):
        if ids is not None:
            ctx.block(ids, f"{ctx.node.op_type} {what} '{ctx.input_name(k)}' is computed")
        return
    if n == 1 or ids is None:
        ctx.claim(k)
    elif n == len(ids) and len(ctx.in_shape(k)) == 1:
        ctx.bind(k, 0, ids, "stat")  # sliced, not scored: a scale is no importance
    else:
        ctx.claim(k)
        ctx.block(ids, f"{ctx.node.op_type} {what} '{ctx.input_name(k)}' has {n} entries "
                       f"for {len(ids)} channels")  # fmt: skip


def _out_ids(ctx: Context, node: onnx.NodeProto) -> np.ndarray | None:
    ch = ctx.tracked(node.output[0]) if node.output else None
    return ch.ids if ch is not None else None


class QDQRule(Rule):
    """QuantizeLinear / DequantizeLinear on an activation: channel c stays channel c.

    A DequantizeLinear of integer initializers is a weight (a constant of the analysis):
    nothing flows through it here, its reader slices it."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        if x is None:
            claim_constants(ctx, 0)
            return
        op = node.op_type
        n = _size(ctx, 1)
        block = int(attr(node, "block_size", 0))
        axis = int(attr(node, "axis", 1))
        axis = axis + x.rank if axis < 0 else axis
        if n is None:
            ctx.block(x.ids, f"{op} scale '{ctx.input_name(1)}' has an unknown shape")
            claim_constants(ctx)
            return
        if not all(ctx.is_const(k) for k in (1, 2) if ctx.input_name(k)):
            ctx.block(x.ids, f"{op} scale or zero point is computed at run time")
        elif n > 1 and block:
            ctx.block(x.ids, f"{op} quantizes activations in blocks of {block}; not followed")
            claim_constants(ctx)
        elif n > 1 and axis == x.axis:
            for k in (1, 2):
                if ctx.input_name(k):
                    ctx.bind(k, 0, x.ids, "stat")
        else:
            claim_constants(ctx)
        ctx.set_out(0, x.axis, x.ids, x.rank)


class DynamicQuantizeRule(Rule):
    """DynamicQuantizeLinear: output 0 is input 0 in uint8 (channels pass); its scale and
    zero point (outputs 1, 2) are scalars computed over the whole tensor. Removing channels
    changes that range, so the rule is only exact where the removed channels' values do
    not set it: the oracle zeroes consumers, not this op's input (see the README)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        if x is not None:
            ctx.block(
                x.ids,
                "DynamicQuantizeLinear computes one scale from every channel of its input: "
                "removing channels would change the quantization of the kept ones",
            )
            ctx.set_out(0, x.axis, x.ids, x.rank)


class FloatTwin(Rule):
    """A quantized op computed as a float op on renumbered inputs (``inputs``), plus its
    per-channel weight parameters (``per_channel``: input index -> what it is)."""

    def __init__(
        self, rule: Rule, float_op: str, inputs: tuple[int, ...],
        per_channel: Mapping[int, str] | None = None, weighted: bool = True,
        dequant: tuple[int, int, Any] | None = None,
    ) -> None:  # fmt: skip
        self.rule = rule
        self.float_op = float_op
        self.inputs = inputs
        self.per_channel = dict(per_channel or {})
        self.weighted = weighted
        self.dequant = dequant
        """(scale input, zero-point input, axis of the weight the scale runs along, or a
        function of the node giving it): the weight is scored dequantized."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        self.rule.propagate(as_float(node, self.float_op), Remapped(ctx, self.inputs))  # type: ignore[arg-type]
        ids = _out_ids(ctx, node)
        w = self.inputs[1] if self.weighted else None
        for k, what in self.per_channel.items():
            bind_per_channel(ctx, k, ids, what)
        claim_constants(ctx, 0)
        if self.dequant is not None and w is not None:
            bias = self.inputs[2] if len(self.inputs) > 2 else None
            scored_dequantized(node, ctx, w, *self.dequant, bias_input=bias)

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        self.rule.rewrite(node, rw)


def scored_dequantized(
    node: onnx.NodeProto, ctx: Context, w: int, s: int, z: int, axis: Any,
    bias_input: int | None = None,
) -> None:  # fmt: skip
    """Let criteria score weight input ``w`` as the floats it stands for (scale input ``s``,
    zero point ``z``): per-channel scales differ, integer magnitudes do not compare."""
    name = ctx.input_name(w)
    scale = ctx.input_name(s) if s is not None else ""
    inits = ctx.view.initializers
    if name not in inits or (scale and scale not in inits):
        return
    per = inits[scale] if scale else inits.get(ctx.input_name(z))
    n = int(np.prod(per.dims)) if per is not None and per.dims else 1
    on = axis(node) if callable(axis) else axis
    zp = ctx.input_name(z) if ctx.input_name(z) in inits else ""
    ctx.view.dequantized_reads[name] = QuantWeight(name, scale, zp, on, 0, per_tensor=n == 1)
    bias = ctx.input_name(bias_input) if bias_input is not None else ""
    x_scale = ctx.view.constant(ctx.input_name(1))
    if bias in inits and x_scale is not None and x_scale.size == 1 and (n == 1 or on == 0):
        # the int32 bias is quantized with scale x_scale * w_scale (per output channel)
        ctx.view.dequantized_reads[bias] = QuantWeight(
            bias, scale, "", 0, 0, per_tensor=n == 1, factor=float(x_scale.reshape(()))
        )


class QLinearConcatRule(Rule):
    """com.microsoft QLinearConcat(Y_scale, Y_zp, (X, X_scale, X_zp)...): a Concat of the
    tensors at inputs 2, 5, 8, ..."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        from onnxprune.ops.routing import ConcatRule

        n = (ctx.n_inputs() - 2) // 3
        ConcatRule().propagate(node, Remapped(ctx, tuple(2 + 3 * i for i in range(n))))  # type: ignore[arg-type]
        claim_constants(ctx, 0)


class Refused(Rule):
    """A quantized op onnxprune does not follow: it keeps every channel, and says why."""

    def __init__(self, why: str) -> None:
        self.why = why

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        name = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        ctx.block_inputs(f"{name} {self.why}")
        claim_constants(ctx, 0)


def twin_macs(fn: Any, inputs: tuple[int, ...]) -> Any:
    """The float op's MAC formula on the quantized node with its inputs renumbered."""

    def macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims) -> int:
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        del twin.input[:]
        twin.input.extend(node.input[k] if k < len(node.input) else "" for k in inputs)
        return fn(twin, shapes, d)

    return macs


def twin_weight(fn: Any, inputs: tuple[int, ...]) -> Any:
    """The float op's weight finder on the quantized node (its integer weight is then
    reported by unstructured pruning as not a float tensor, and left as it is)."""

    def weight(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> Any:
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        del twin.input[:]
        twin.input.extend(node.input[k] if k < len(node.input) else "" for k in inputs)
        return fn(twin, inits)

    return weight


_QDQ = QDQRule()
_CONV, _GEMM, _MATMUL = ConvRule(), GemmRule(), MatMulRule()
_W_SCALE = {4: "weight scale", 5: "weight zero point"}

#: Ops that stay blocked, and why (named in every refusal).
BLOCKED = {
    (MS, "DynamicQuantizeLSTM"): "is not followed (recurrent quantized weights)",
    (MS, "DynamicQuantizeMatMul"): "is not followed (its weight scale is computed with it)",
    (MS, "QAttention"): "is not followed (quantized fused attention)",
    (MS, "QEmbedLayerNormalization"): "is not followed (quantized fused embedding)",
    (MS, "QOrderedMatMul"): "is not followed (CUDA ordered layouts)",
}


def _specs() -> list[OpSpec]:
    out = [
        OpSpec("QuantizeLinear", rule=_QDQ),
        OpSpec("DequantizeLinear", rule=_QDQ),
        OpSpec("QuantizeLinear", MS, rule=_QDQ),
        OpSpec("DequantizeLinear", MS, rule=_QDQ),
        OpSpec("DynamicQuantizeLinear", rule=DynamicQuantizeRule()),
        OpSpec("QLinearConv", rule=FloatTwin(_CONV, "Conv", (0, 3, 8), _W_SCALE,
                                             dequant=(4, 5, 0)),
               macs=twin_macs(conv_macs, (0, 3)), weight=twin_weight(conv_weight, (0, 3))),
        OpSpec("QLinearMatMul", rule=FloatTwin(_MATMUL, "MatMul", (0, 3), _W_SCALE,
                                               dequant=(4, 5, 1)),
               macs=twin_macs(matmul_macs, (0, 3)), weight=twin_weight(matmul_weight, (0, 3))),
        OpSpec("QGemm", MS, rule=FloatTwin(_GEMM, "Gemm", (0, 3, 6), _W_SCALE,
                                           dequant=(4, 5, lambda n: 0 if attr(n, "transB", 0) else 1)),
               macs=twin_macs(gemm_macs, (0, 3)), weight=twin_weight(gemm_weight, (0, 3))),
        OpSpec("ConvInteger", rule=FloatTwin(_CONV, "Conv", (0, 1), {3: "weight zero point"},
                                             dequant=(None, 3, 0)),
               macs=conv_macs, weight=twin_weight(conv_weight, (0, 1))),
        OpSpec("MatMulInteger", rule=FloatTwin(_MATMUL, "MatMul", (0, 1),
                                               {3: "weight zero point"}, dequant=(None, 3, 1)),
               macs=matmul_macs, weight=twin_weight(matmul_weight, (0, 1))),
        OpSpec("MatMulNBits", MS, rule=MatMulNBitsRule(), macs=nbits_macs),
        OpSpec("QLinearConcat", MS, rule=QLinearConcatRule()),
    ]  # fmt: skip
    for op in ("QLinearAdd", "QLinearMul"):
        out.append(OpSpec(op, MS, rule=FloatTwin(Broadcast(), op[7:], (0, 3), weighted=False)))
    for op in ("QLinearGlobalAveragePool", "QLinearAveragePool"):
        out.append(OpSpec(op, MS, rule=FloatTwin(Pool(), op[7:], (0,), weighted=False)))
    out.append(OpSpec("QLinearSoftmax", MS, rule=FloatTwin(AlongAxis(), "Softmax", (0,),
                                                        weighted=False)))  # fmt: skip
    for op in ("QLinearSigmoid", "QLinearLeakyRelu"):
        out.append(OpSpec(op, MS, rule=FloatTwin(Unary(), op[7:], (0,), weighted=False)))
    for (domain, op), why in BLOCKED.items():
        out.append(OpSpec(op, domain, rule=Refused(why), quantized=True))
    return out


SPECS = _specs()
