"""Attention heads: the Reshape to [B, S, H, D] and back, grouped-query repeats, fused ops.

Exporters write multi-head attention as ``x @ Wq + bq -> Reshape [B, S, H, D] -> Transpose
-> q @ k^T -> Softmax -> @ v -> Transpose -> Reshape [B, S, H*D] -> @ Wo``. A Reshape that
splits the channel axis into its last two axes ``[H, D]`` is a head split: the tracked axis
becomes H and the D positions of each head are tied into one slot (a head is removed whole,
its Q, K and V columns and its rows of Wo). The MatMul rule carries the head axis through the
attention products as a batch axis, and the Reshape that merges ``[H, D]`` back hands every
head's D positions to the output projection. Grouped-query attention repeats each key/value
head for a group of query heads (``expand`` + ``reshape`` as in Llama's ``repeat_kv``); the
merge of ``[H_kv, n_rep]`` ties each query head to its key/value head, so a slot is a whole
key/value group with its query heads.

Targets are often computed at run time (``Concat(Shape(x)[0], Shape(x)[1], [4], [64])``);
``onnxprune.graph.shape_values`` evaluates them with provenance. A head-axis element is accepted when it
is ``-1``, a constant that feeds only this target (rewritten to the kept count), or a
run-time count that follows the pruning (``Shape(k)[1] * 4`` for the repeated keys); any
other element that depends on a pruned count blocks, in every Reshape and Expand.

Packed Q/K/V and heads folded into the batch (``nn.MultiheadAttention``, Swin) are in
``onnxprune.ops.attention_packed``; fused ``Attention``/``MultiHeadAttention`` and ONNX's
``Attention`` in ``onnxprune.ops.fused``; the other fused attention ops (``FUSED``) block.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.shape_values import Opaque, Term, exprs, private, refs, set_origin
from onnxprune.graph.view import GraphView, attr
from onnxprune.ops.attention_packed import concrete_shapes as concrete_shapes  # re-exported
from onnxprune.ops.attention_packed import (
    probe_segments,
    replaceable,
    reshape_packed,
    rewrite_piece,
)
from onnxprune.ops.attention_packed import reshape_segments as reshape_segments  # re-exported
from onnxprune.ops.base import Rule, claim_constants

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Chan, Context
    from onnxprune.structured.rewrite import RewriteContext


def head_segment(
    view: GraphView, node: onnx.NodeProto, axis: int
) -> tuple[str, int, tuple[int, ...]] | None:
    """How a Reshape moves input ``axis``, when that is a head split or merge:
    ``("split", out_axis, (H, D))`` when the axis becomes the output's last two axes, or
    ``("merge", out_axis, (H, D))`` when the axis and the next one become one; None otherwise.

    The shapes are aligned on concrete numbers (the probes when dims are symbolic); the
    segment must come out the same for every probe, so it cannot depend on batch or sequence.
    """
    segs = probe_segments(view, node, axis)
    if not segs or len({(f[0], f[1], f[2], f[3]) for f in segs}) != 1:
        return None
    found = segs[0][:4]
    rank_out = segs[0][4]
    seg_in, seg_out, din, dout = found
    if len(seg_in) == 1 and len(seg_out) == 2 and seg_out.stop == rank_out and min(dout) > 1:
        return "split", seg_out.start, dout
    if len(seg_in) == 2 and len(seg_out) == 1 and axis == seg_in.start and min(din) > 1:
        return "merge", seg_out.start, din
    return None


def reshape_heads(node: onnx.NodeProto, ctx: Context, x: Chan) -> bool:
    """Follow a head split or merge (see the module docstring); False leaves the Reshape to
    the general rule."""
    if reshape_packed(node, ctx, x, check_target):
        return True
    seg = head_segment(ctx.view, node, x.axis)
    if seg is None:
        return False
    kind, out_axis, (h, d) = seg
    if kind == "split":
        if h * d != len(x.ids):
            return False
        grid = x.ids.reshape(h, d)
        ctx.unify(grid[:, 1:].ravel(), np.repeat(grid[:, 0], d - 1))
        out_ids = np.ascontiguousarray(grid[:, 0])
    else:
        if h != len(x.ids):
            return False
        out_ids = np.repeat(x.ids, d)
    if check_target(ctx, node, x, out_axis, out_ids, own_only=True):
        rank = ctx.view.rank(node.output[0])
        ctx.set_out(0, out_axis, out_ids, rank)
    return True


def _live(ctx: Context, ref: tuple[str, int]) -> Chan | None:
    """The tracked channels a run-time dimension counts (they may be pruned), or None."""
    ch = ctx.tracked(ref[0])
    return ch if ch is not None and (ref[1] == -1 or ch.axis == ref[1]) else None


def _block_live(ctx: Context, found: frozenset, x: Chan | None, reason: str) -> None:
    for ref in found:
        ch = _live(ctx, ref)
        if ch is not None:
            ctx.block(ch.ids, reason.format(tensor=ref[0]))
    if x is not None and len(x.ids):
        ctx.block(x.ids, reason.format(tensor=next(iter(found))[0] if found else "?"))


def _follows(ctx: Context, e: Term | Opaque, out_ids: np.ndarray) -> bool:
    """Whether target element ``e`` stays right when the channels ``out_ids`` are cut."""
    if isinstance(e, Opaque):
        return False
    c = e.const
    if c == -1:
        return True
    if c is not None:
        return c == len(out_ids) and e.origin is not None and private(ctx.view, e.origin)
    if len(e.refs) != 1 or e.coef.denominator != 1 or e.coef < 1:
        return False
    ch = _live(ctx, e.refs[0])
    if ch is None:
        return False
    # the run-time count times coef equals the kept positions for every set of kept slots
    return Counter(out_ids.tolist()) == Counter(np.repeat(ch.ids, int(e.coef)).tolist())


def private_constant_follows(
    ctx: Context, node: onnx.NodeProto, out_axis: int, out_ids: np.ndarray
) -> bool:
    """Whether element ``out_axis`` of a Reshape target computed at run time is a constant
    that feeds only this target (ViT's ``Concat(batch, [768], [196])``), so that
    ``rewrite_reshape`` can write the kept count into it."""
    index = ctx.view.producer[node.output[0]][0]
    expr = exprs(ctx.view).input_of(index, 1)
    if isinstance(expr, Opaque) or out_axis >= len(expr):
        return False
    e = expr[out_axis]
    return isinstance(e, Term) and (e.const or 0) > 0 and _follows(ctx, e, out_ids)


def check_target(
    ctx: Context,
    node: onnx.NodeProto,
    x: Chan | None,
    out_axis: int | None,
    out_ids: np.ndarray | None,
    *,
    own_only: bool = False,
) -> bool:
    """Verify a Reshape target against the pruning; block and return False when it fails.

    The element at ``out_axis`` (the channels ``out_ids``) must follow the kept count
    (``_follows``) or be rewritable as ``-1`` (``attention_packed.replaceable``); no other
    element may depend on a count that can be pruned. Called for every Reshape (``x`` None
    when its data carries no channels): the Shape rule lets run-time counts flow into
    Reshape targets because this check sees them. ``own_only``: another count that sizes an
    axis (``d = D / 12`` read from the residual stream) blocks that count, not ``x``.
    """
    view = ctx.view
    index = view.producer[node.output[0]][0]
    expr = exprs(view).input_of(index, 1)
    allowzero = bool(attr(node, "allowzero", 0))
    if isinstance(expr, Opaque):
        found = frozenset(r for r in expr.refs if _live(ctx, r) is not None)
        if found:
            _block_live(
                ctx,
                found,
                x,
                "the Reshape target depends on the channel count of "
                "'{tensor}' in a way onnxprune does not follow",
            )
            return False
        if out_axis is not None and x is not None:
            ctx.block(x.ids, "Reshape target is computed in a way onnxprune does not follow")
            return False
        return True
    for i, e in enumerate(expr):
        if out_axis is not None and i == out_axis:
            if _follows(ctx, e, out_ids) or (own_only and replaceable(view, node, i)):
                continue
            if isinstance(e, Term) and e.const == 0 and not allowzero and x is not None:
                same = i == x.axis and Counter(x.ids.tolist()) == Counter(out_ids.tolist())
                if same:
                    continue
            found = frozenset(r for r in refs(e) if _live(ctx, r) is not None)
            _block_live(
                ctx,
                found,
                x,
                "the Reshape target fixes the head or channel count where it cannot be rewritten",
            )
            return False
        copies = isinstance(e, Term) and e.const == 0 and not allowzero
        if copies and x is not None and i == x.axis:
            ctx.block(x.ids, "Reshape copies the channel count (0) to another axis")
            return False
        found = frozenset(r for r in refs(e) if _live(ctx, r) is not None)
        if found and own_only:
            mine = x is not None and any(np.isin(_live(ctx, r).ids, x.ids).any() for r in found)
            _block_live(
                ctx,
                found,
                x if mine else None,
                "the channel count of '{tensor}' sizes another axis of a Reshape target",
            )
            if mine:
                return False
        elif found:
            _block_live(
                ctx,
                found,
                x,
                "the channel count of '{tensor}' sizes another axis of a Reshape target",
            )
            return False
    return True


def rewrite_reshape(node: onnx.NodeProto, rw: RewriteContext) -> bool:
    """Write the kept count into a constant that a computed target reads (the ``[4]`` of
    ``Concat(B, S, [4], [64])``); False when the general rule's rewrite applies (the whole
    target is constant) or nothing needs writing (``-1``, a run-time count)."""
    cut = rw.cut(node.output[0])
    if cut is None or rw.view.known_value(node.input[1]) is not None:
        return False
    index = rw.view.producer[node.output[0]][0]
    expr = exprs(rw.view).input_of(index, 1)
    if isinstance(expr, Opaque) or cut.axis >= len(expr):
        return False
    e = expr[cut.axis]
    if isinstance(e, Term) and e.const == -1:
        return True
    if not isinstance(e, Term) or e.origin is None or (e.const or 0) <= 0:
        if isinstance(e, Term) and any((c := rw.cut(t)) and c.axis == a for t, a in e.refs):
            return False  # a run-time count of a cut tensor: it follows by itself
        return rewrite_piece(node, rw, cut.axis)
    set_origin(e.origin, len(cut.kept), rw.view, rw.model, rw.set_input)
    return True


def expand_heads(node: onnx.NodeProto, ctx: Context, x: Chan) -> bool:
    """Follow an Expand whose sizes are computed at run time (torch's ``expand``, Llama's
    ``repeat_kv``): the channel axis must keep its own count (1, -1 or the run-time count of
    the same channels) and no other size may depend on a count that can be pruned."""
    view = ctx.view
    index = view.producer[node.output[0]][0]
    expr = exprs(view).input_of(index, 1)
    if isinstance(expr, Opaque):
        ctx.block(x.ids, "Expand sizes are computed in a way onnxprune does not follow")
        return True
    rank = max(x.rank, len(expr))
    axis = x.axis + rank - x.rank
    j = axis - (rank - len(expr))
    for i, e in enumerate(expr):
        found = frozenset(r for r in refs(e) if _live(ctx, r) is not None)
        if i == j:
            keeps = isinstance(e, Term) and e.const in (1, -1)
            # the count folded into a constant only this Expand reads (load folds the static
            # shape arithmetic of repeat_kv): ``rewrite_expand`` writes the kept count there
            written = (isinstance(e, Term) and e.const == len(x.ids) and e.origin is not None
                       and private(view, e.origin))  # fmt: skip
            follows = (
                isinstance(e, Term)
                and e.coef == 1
                and len(e.refs) == 1
                and (ch := _live(ctx, e.refs[0])) is not None
                and Counter(ch.ids.tolist()) == Counter(x.ids.tolist())
            )
            if keeps or written or follows:
                continue
            _block_live(ctx, found, x, "Expand sets the channel count at run time")
            return True
        if found:
            _block_live(
                ctx, found, x, "the channel count of '{tensor}' sizes another axis of an Expand"
            )
            return True
    ctx.set_out(0, axis, x.ids, rank)
    return True


def rewrite_expand(node: onnx.NodeProto, rw: RewriteContext) -> None:
    """Write the kept count into the constant of an Expand's sizes that sets the channel
    axis (``expand_heads``' *written* case); -1, 1 and run-time counts need nothing."""
    cut = rw.cut(node.output[0])
    if cut is None or len(node.input) < 2:
        return
    index = rw.view.producer[node.output[0]][0]
    expr = exprs(rw.view).input_of(index, 1)
    rank = rw.view.rank(node.output[0])
    if isinstance(expr, Opaque) or rank is None:
        return
    j = cut.axis - (rank - len(expr))
    e = expr[j] if 0 <= j < len(expr) else None
    if isinstance(e, Term) and e.origin is not None and (e.const or 0) > 1:
        set_origin(e.origin, len(cut.kept), rw.view, rw.model, rw.set_input)


def live_sizes(ctx: Context, node: onnx.NodeProto, k: int) -> frozenset:
    """The dimensions with channels that can be pruned that input ``k`` (a shape value)
    depends on; a value known as numbers may still be computed from them."""
    index = ctx.view.producer[node.output[0]][0]
    expr = exprs(ctx.view).input_of(index, k)
    return frozenset(r for r in refs(expr) if _live(ctx, r) is not None)


def block_live_sizes(ctx: Context, node: onnx.NodeProto, k: int, what: str) -> None:
    """Block every pruned count that input ``k`` (a shape) depends on: ``what`` is sized
    by it and is not cut with it."""
    found = live_sizes(ctx, node, k)
    if found:
        _block_live(ctx, found, None, f"the channel count of '{{tensor}}' sizes {what}")


FUSED = (
    "com.microsoft.GroupQueryAttention",
    "com.microsoft.PackedAttention",
    "com.microsoft.PackedMultiHeadAttention",
    "com.microsoft.DecoderMaskedMultiHeadAttention",
    "com.microsoft.SparseAttention",
)
"""Fused attention that still blocks; ``onnxprune.ops.fused`` follows Attention and
MultiHeadAttention (com.microsoft) and ONNX's Attention."""


class FusedAttentionRule(Rule):
    """Fused attention keeps the head count in an attribute (``num_heads``, ``q_num_heads``)
    and packs or folds Q/K/V per head: removing heads means rewriting the packed weights and
    those attributes together. Not followed yet: every input keeps its channels."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        claim_constants(ctx, 0)
        ctx.block_inputs(
            f"fused {op} holds the head count in an attribute and packs Q/K/V; onnxprune does "
            "not prune inside it (export without attention fusion to prune heads)"
        )
