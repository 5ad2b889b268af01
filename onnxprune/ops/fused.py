"""Fused transformer ops of onnxruntime's optimizer (com.microsoft) and ONNX's Attention.

``Attention`` (com.microsoft) takes the hidden states and one packed weight ``[D_in, 3*D]``
(Q, K, V thirds, ``qkv_hidden_sizes`` when they differ) with its bias; ``num_heads`` splits
each third into heads of ``d = D / num_heads``. A head is one slot: its ``d`` columns in each
third of the weight and bias go together, the output keeps the V columns, and the rewrite
writes the kept head count into ``num_heads`` (``d`` and the default scale ``1/sqrt(d)``
stay). ``MultiHeadAttention`` (com.microsoft) and ``Attention`` (ONNX, opset 23) take Q, K
and V already projected ``[B, S, H*d]``: the three inputs' heads are tied position by
position, an optional packed bias ``[3*D]`` (MultiHeadAttention) is sliced with them, and
``num_heads`` (``q_num_heads``/``kv_num_heads``) is rewritten. Past/present key-value
caches, rotary embeddings, packed or 4-D Q/K/V forms, unequal Q/K/V widths and grouped
query heads block with their reason before anything is rewritten.

Pass-through ops: ``Gelu`` and ``FastGelu`` (com.microsoft) are element-wise (FastGelu's
optional bias ``[D]`` is added first, sliced with the channels); ``BiasGelu(A, B)`` is
``Gelu(A + B)`` with a bias ``[D]``. ``SkipLayerNormalization(input, skip, gamma, beta,
bias)`` is ``LayerNormalization(input + skip + bias)`` over the last axis: the sum couples
input and skip channel by channel, and the normalization blocks channels on the last axis
(removing one changes the statistics of the others), exactly as LayerNormalization does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.view import GraphView, attr
from onnxprune.ops.base import Rule, claim_constants
from onnxprune.ops.macs import Dims, Shape, UnknownShape, in_shape
from onnxprune.ops.spec import OpSpec

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context
    from onnxprune.structured.rewrite import RewriteContext

MS = "com.microsoft"


def _name(node: onnx.NodeProto) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain else node.op_type


def _tie_heads(ctx: Context, ids: np.ndarray, heads: int) -> np.ndarray:
    """Tie the ``d`` positions of each head; returns ``ids`` (per position, unchanged)."""
    grid = ids.reshape(heads, -1)
    ctx.unify(grid[:, 1:].ravel(), np.repeat(grid[:, 0], grid.shape[1] - 1))
    return ids


def _bind_bias(ctx: Context, k: int, ids: np.ndarray) -> None:
    """A bias ``[D]`` (input ``k``) added along the channel axis: sliced with ``ids``."""
    if k >= ctx.n_inputs() or not ctx.input_name(k):
        return
    if not ctx.is_const(k):
        ctx.inp(k)
        ctx.block(ids, f"the bias of {ctx.node.op_type} is computed at run time")
        return
    shape = ctx.in_shape(k)
    if shape is None or len(shape) != 1 or shape[0] != len(ids):
        ctx.claim(k)
        ctx.block(ids, f"the bias of {ctx.node.op_type} does not span the channels")
        return
    ctx.bind(k, 0, ids, "chan")


class GeluRule(Rule):
    """``Gelu`` / ``FastGelu(X, bias)`` / ``BiasGelu(A, B)``: element-wise after the bias."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        if x is None:
            claim_constants(ctx)
            return
        if ctx.n_inputs() > 1 and ctx.input_name(1):
            if x.axis != x.rank - 1:
                claim_constants(ctx)
                ctx.block(x.ids, f"{_name(node)} adds its bias on the last axis, not the channels'")
                return
            _bind_bias(ctx, 1, x.ids)
        ctx.set_out(0, x.axis, x.ids, x.rank)


class SkipLayerNormRule(Rule):
    """``LayerNormalization(input + skip + bias)`` over the last axis (module docstring)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        chans = [c for c in (ctx.inp(0), ctx.inp(1)) if c is not None]
        claim_constants(ctx, 2)
        for c in chans:
            ctx.block(
                c.ids,
                f"{_name(node)} normalizes over the channel axis: removing a channel would "
                "change the others"
                if c.axis == c.rank - 1
                else f"{_name(node)} adds input and skip on the last axis, not the channels'",
            )


_ATTENTION_ATTRS = {
    "com.microsoft.Attention": {
        "num_heads",
        "qkv_hidden_sizes",
        "unidirectional",
        "scale",
        "mask_filter_value",
    },
    "com.microsoft.MultiHeadAttention": {
        "num_heads",
        "unidirectional",
        "scale",
        "mask_filter_value",
    },
    "Attention": {
        "q_num_heads",
        "kv_num_heads",
        "is_causal",
        "scale",
        "softmax_precision",
        "qk_matmul_output_mode",
    },
}


def _fused_refusal(node: onnx.NodeProto, view: GraphView) -> str | None:
    """Why onnxprune does not prune heads through this fused node, or None."""
    op = _name(node)
    extra = sorted({a.name for a in node.attribute} - _ATTENTION_ATTRS[op])
    if extra:
        return f"{op} with {', '.join(extra)} is not followed"
    if any(view.uses(o) or o in view.graph_outputs for o in node.output[1:] if o):
        return f"{op} with a present key/value cache (or qk output) is not followed"
    if op == "com.microsoft.Attention":
        if len(node.input) > 4 and any(node.input[4:]):
            return f"{op} with past state or an attention bias is not followed"
        sizes = attr(node, "qkv_hidden_sizes", None)
        if sizes and len(set(sizes)) != 1:
            return f"{op} with unequal Q/K/V widths (qkv_hidden_sizes) is not followed"
        return None
    if op == "com.microsoft.MultiHeadAttention":
        if len(node.input) < 3 or not node.input[1] or not node.input[2] or any(node.input[6:]):
            return f"{op} with packed Q/K/V or past key/value inputs is not followed"
    else:
        if any(node.input[4:]):
            return f"{op} with past key/value inputs is not followed"
        q, kv = attr(node, "q_num_heads", 0), attr(node, "kv_num_heads", 0)
        if q != kv:
            return f"{op} with grouped query heads (q_num_heads != kv_num_heads) is not followed"
    ranks = {view.rank(node.input[k]) for k in range(3)}
    if ranks != {3}:
        return f"{op} with 4-D or 5-D (already split) Q/K/V is not followed"
    return None


def fused_heads(node: onnx.NodeProto) -> int:
    """The head count attribute of a fused attention node (0 for other nodes)."""
    op = _name(node)
    if op not in _ATTENTION_ATTRS:
        return 0
    return int(attr(node, "q_num_heads" if op == "Attention" else "num_heads", 0))


class FusedAttentionRule(Rule):
    """Heads through fused attention (module docstring)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        heads = fused_heads(node)
        reason = (
            _fused_refusal(node, ctx.view) if heads > 1 else f"{_name(node)} without a head count"
        )
        if reason is not None:
            packed = _name(node) == "com.microsoft.Attention" and ctx.is_const(1)
            claim_constants(ctx, 0)
            ctx.block_inputs(reason)
            if packed and ctx.view.rank(node.input[1]) == 2:  # name the heads it keeps
                ctx.block(ctx.source(1, 1), reason)
            return
        if _name(node) == "com.microsoft.Attention":
            self._packed(node, ctx, heads)
        else:
            self._separate(node, ctx, heads)

    @staticmethod
    def _packed(node: onnx.NodeProto, ctx: Context, heads: int) -> None:
        x = ctx.inp(0)
        claim_constants(ctx, 3)
        for k in range(3, ctx.n_inputs()):
            ctx.inp(k)
        if not ctx.is_const(1):
            ctx.block_inputs(f"{_name(node)} with a computed weight is not followed")
            return
        if x is not None and x.axis == x.rank - 1:
            ctx.bind(1, 0, x.ids, "in")
        else:
            if x is not None:
                ctx.block(x.ids, f"{_name(node)} reads channels off the hidden axis")
            ctx.claim(1)
        ids = ctx.source(1, 1)
        if len(ids) % (3 * heads):
            ctx.block(
                ids, f"{_name(node)}: the packed weight does not split into 3 x {heads} heads"
            )
            return
        thirds = ids.reshape(3, -1)
        ctx.unify(thirds[1:].ravel(), np.tile(thirds[0], 2))
        _tie_heads(ctx, thirds[0], heads)
        _bind_bias(ctx, 2, ids)
        ctx.set_out(0, 2, np.ascontiguousarray(thirds[2]), 3)

    @staticmethod
    def _separate(node: onnx.NodeProto, ctx: Context, heads: int) -> None:
        parts = [ctx.inp_or_pseudo(k, 2) for k in range(3)]
        claim_constants(ctx, 3)
        for k in range(3, ctx.n_inputs()):
            if not ctx.is_const(k):
                ctx.inp(k)
        if any(p is None for p in parts) or len({len(p) for p in parts}) != 1:
            ctx.block_inputs(f"{_name(node)}: Q, K and V do not have one known width")
            return
        q, k, v = parts
        if len(q) % heads:
            ctx.block(q, f"{_name(node)}: {len(q)} channels do not split into {heads} heads")
            return
        ctx.unify(q, k)
        ctx.unify(q, v)
        _tie_heads(ctx, q, heads)
        if node.op_type == "MultiHeadAttention" and ctx.n_inputs() > 3 and ctx.input_name(3):
            _bind_bias(ctx, 3, np.concatenate([q, k, v]))
        ctx.set_out(0, 2, v, 3)

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        cut = rw.cut(node.output[0])
        heads = fused_heads(node)
        if cut is None or heads < 2:
            return
        d = cut.size // heads
        kept = len(cut.kept) // d
        if _name(node) == "Attention":
            rw.set_attr(node, "q_num_heads", kept)
            rw.set_attr(node, "kv_num_heads", kept)
            return
        rw.set_attr(node, "num_heads", kept)
        if attr(node, "qkv_hidden_sizes", None):
            rw.set_attr(node, "qkv_hidden_sizes", [kept * d] * 3)


def attention_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], dims: Dims) -> int:
    """com.microsoft.Attention: the packed projection plus ``q @ k^T`` and ``@ v``."""
    x, w = _static(node, shapes, (3, 2))
    b, s, _ = x
    hidden = w[1] // 3
    return b * s * w[0] * w[1] + 2 * b * s * s * hidden


def separate_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], dims: Dims) -> int:
    """MultiHeadAttention / Attention on projected Q, K, V: ``q @ k^T`` and ``@ v``."""
    q, k = _static(node, shapes, (3, 3))
    return 2 * q[0] * q[1] * k[1] * q[2]


def _static(node: onnx.NodeProto, shapes: Mapping[str, Shape], ranks: tuple[int, ...]) -> list:
    """The shapes of the first inputs, of those ranks and all known; else ``UnknownShape``."""
    got = [in_shape(node, shapes, i) for i in range(len(ranks))]
    if any(s is None or len(s) != r or not all(isinstance(v, int) for v in s)
           for s, r in zip(got, ranks, strict=True)):  # fmt: skip
        raise UnknownShape(node.name)
    return got


_RULE = FusedAttentionRule()
SPECS: list[OpSpec] = [
    OpSpec("Attention", MS, rule=_RULE, macs=attention_macs),
    OpSpec("MultiHeadAttention", MS, rule=_RULE, macs=separate_macs),
    OpSpec("Attention", rule=_RULE, macs=separate_macs, since=23),
    OpSpec("Gelu", MS, rule=GeluRule()),
    OpSpec("FastGelu", MS, rule=GeluRule()),
    OpSpec("BiasGelu", MS, rule=GeluRule()),
    OpSpec("SkipLayerNormalization", MS, rule=SkipLayerNormRule()),
]
"""What fused.py adds to the registry; attention.FUSED keeps the ops that still block."""
