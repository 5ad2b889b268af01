"""Ops that move the channel axis or fold it into others: Transpose, (Un)Squeeze, Flatten,
Reshape, Expand and Tile.

Flatten and Reshape keep per-position ids: after ``[N, C, H, W] -> [N, C*H*W]`` channel c
owns the block of H*W features ``c*HW .. (c+1)*HW``, so a Gemm reading them loses those
rows. A Reshape that *splits* the channel axis (``[N, 2C] -> [N, 2, C]``, as in a channel
shuffle) can only be cut rectangularly: the positions that end up in the same column are
tied into one channel, except in a channel shuffle (Reshape, Transpose, Reshape back),
which is followed as a permutation and rewritten as a Gather. Shape constants are rewritten;
shapes computed at run time are accepted only when they provably follow the pruned count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.view import GraphView, attr, normalize_axis, product
from onnxprune.ops import attention
from onnxprune.ops.base import Rule, data_input
from onnxprune.ops.shape import block_tracked_dims

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Chan, Context
    from onnxprune.structured.rewrite import RewriteContext


class TransposeRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        if x is None:
            return
        perm = attr(node, "perm", None) or list(range(x.rank))[::-1]
        ctx.set_out(0, list(perm).index(x.axis), x.ids, x.rank)


def _input_and_axes(ctx: Context, node: onnx.NodeProto) -> tuple[Chan, list[int] | None] | None:
    """(channels of input 0, axes from the attribute or the constant input), or None when
    no channels arrive or the axes are computed (which blocks)."""
    x = data_input(ctx)
    if x is None:
        return None
    try:
        return x, ctx.view.ints(node, "axes", 1)
    except LookupError as exc:
        ctx.block(x.ids, f"{node.op_type}: {exc}")
        return None


class _AxesRule(Rule):
    """A rule driven by an ``axes`` list (attribute or constant input)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        found = _input_and_axes(ctx, node)
        if found is not None:
            self.along(ctx, *found)

    def along(self, ctx: Context, x: Chan, axes: list[int] | None) -> None:
        raise NotImplementedError


class SqueezeRule(_AxesRule):
    def along(self, ctx: Context, x: Chan, axes: list[int] | None) -> None:
        if not axes:
            shape = ctx.in_shape(0)
            if shape is None or any(not isinstance(d, int) for d in shape):
                ctx.block(x.ids, "Squeeze without axes on a shape that is not fully known")
                return
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = [normalize_axis(a, x.rank) for a in axes]
        if x.axis in axes:
            ctx.block(x.ids, "Squeeze removes the channel axis")
            return
        ctx.set_out(0, x.axis - sum(a < x.axis for a in axes), x.ids, x.rank - len(axes))


class UnsqueezeRule(_AxesRule):
    def along(self, ctx: Context, x: Chan, axes: list[int] | None) -> None:
        if not axes:
            ctx.block(x.ids, "Unsqueeze without axes")
            return
        rank = x.rank + len(axes)
        inserted = {normalize_axis(a, rank) for a in axes}
        kept = [i for i in range(rank) if i not in inserted]
        ctx.set_out(0, kept[x.axis], x.ids, rank)


def _expand(ids: np.ndarray, dims: list[int], rel: int) -> np.ndarray:
    """Ids of the flattened block ``dims`` whose axis ``rel`` carries ``ids``."""
    inner = product(dims[rel + 1 :])
    outer = product(dims[:rel])
    return np.tile(np.repeat(ids, inner), outer)


class FlattenRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        if x is None:
            return
        shape = ctx.in_shape(0)
        f = normalize_axis(int(attr(node, "axis", 1)), x.rank)
        lo, hi, out_axis = (f, x.rank, 1) if x.axis >= f else (0, f, 0)
        dims = list(shape[lo:hi]) if shape is not None else [None]
        if any(not isinstance(d, int) for d in dims):
            ctx.block(x.ids, "Flatten of dimensions that are not known numbers")
            return
        ctx.set_out(0, out_axis, _expand(x.ids, dims, x.axis - lo), 2)


class ReshapeRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        const = ctx.view.known_value(node.input[1])
        expr = (
            ctx.view.shape_expr(node.input[1])
            if const is None
            else [int(v) for v in const.reshape(-1)]
        )
        if ctx.is_const(1):
            ctx.claim(1)
        else:
            ctx.inp(1)
        shuffle = channel_shuffle(ctx.view, node)
        if shuffle is not None:
            source, axis, perm = shuffle
            src = ctx.tracked(source)
            if node.input[0] == source and src is not None and src.axis == axis:
                return  # the first Reshape of a shuffle: the last one carries the channels
            if node.input[0] != source and src is not None and src.axis == axis:
                ctx.set_out(0, axis, src.ids[perm], src.rank)
                return
        if x is None:
            if const is None:
                block_tracked_dims(ctx, expr, f"the target of '{ctx.where}' (Reshape)")
                attention.check_target(ctx, node, None, None, None)
            return
        if attention.reshape_heads(node, ctx, x):
            return
        ins, outs = ctx.in_shape(0), ctx.out_shape(0)
        segs = (
            attention.reshape_segments(ins, outs) if ins is not None and outs is not None else None
        )
        if segs is None or expr is None:
            ctx.block(x.ids, "Reshape with shapes that onnxprune cannot align")
            return
        seg_in, seg_out = next(s for s in segs if x.axis in s[0])
        din, dout = [ins[i] for i in seg_in], [outs[j] for j in seg_out]
        if any(not isinstance(d, int) for d in (*din, *dout)):
            ctx.block(x.ids, "Reshape of the channel axis with symbolic dimensions")
            return
        ids = _expand(x.ids, din, x.axis - seg_in.start).reshape(dout)
        varies = [u for u in range(ids.ndim) if not (ids == np.take(ids, [0], axis=u)).all()]
        if not varies:
            ctx.block(x.ids, "Reshape of a single channel")
            return
        o = max(varies, key=lambda u: (ids.shape[u], u))
        for u in varies:
            if u != o:  # channel split over several axes: tie so that cuts stay rectangular
                ctx.unify(
                    ids.ravel(), np.broadcast_to(np.take(ids, [0], axis=u), ids.shape).ravel()
                )
        index = tuple(slice(None) if u == o else 0 for u in range(ids.ndim))
        out_ids = np.ascontiguousarray(ids[index])
        out_axis = seg_out.start + o
        if _target_follows(
            ctx, node, x, expr, const is not None, out_axis, out_ids
        ) and attention.check_target(ctx, node, x, out_axis, out_ids):
            ctx.set_out(0, out_axis, out_ids, len(outs))

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        shuffle = channel_shuffle(rw.view, node)
        if shuffle is not None and node.input[0] != shuffle[0]:
            self._gather(node, rw, *shuffle)
            return
        if attention.rewrite_reshape(node, rw):
            return
        cut = rw.cut(node.output[0])
        target = rw.view.known_value(node.input[1])
        if cut is None or target is None:
            return
        target = np.array(target, copy=True)
        if target[cut.axis] > 0:
            target[cut.axis] = len(cut.kept)
            rw.set_input(node, 1, target)

    @staticmethod
    def _gather(
        node: onnx.NodeProto, rw: RewriteContext, source: str, axis: int, perm: np.ndarray
    ) -> None:
        """The pruned shuffle is no longer a reshape/transpose (its parts need not stay
        equal): the last Reshape becomes one Gather of the kept channels, in shuffled order."""
        src, out = rw.cut(source), rw.cut(node.output[0])
        if src is None or out is None:
            return
        indices = np.searchsorted(src.kept, perm[out.kept]).astype(np.int64)
        del node.input[:]
        node.input.extend([source, ""])
        rw.set_input(node, 1, indices)
        del node.attribute[:]
        node.op_type = "Gather"
        node.attribute.append(onnx.helper.make_attribute("axis", axis))


def _target_follows(
    ctx: Context, node: onnx.NodeProto, x: Chan, expr: list, constant: bool, out_axis: int,
    out_ids: np.ndarray,
) -> bool:  # fmt: skip
    """Whether the Reshape target keeps the channel count right after pruning: -1, the
    input's own count read at run time, 0 copying it in place, or a constant rewritten
    later. Blocks and returns False otherwise."""
    identity = x.axis == out_axis and np.array_equal(out_ids, x.ids)
    allowzero = bool(attr(node, "allowzero", 0))
    for i, e in enumerate(expr):
        if e == 0 and not allowzero and i == x.axis and not identity:
            ctx.block(x.ids, "Reshape copies the channel count (0) to another axis")
            return False
        if isinstance(e, tuple):
            ch = ctx.tracked(e[1])
            follows = ch is not None and ch.axis == e[2]
            if follows and not (i == out_axis and np.array_equal(ch.ids, out_ids)):
                ctx.block(x.ids, f"Reshape target reads the channel count of '{e[1]}' at run time")
                ctx.block(ch.ids, f"Reshape target reads the channel count of '{e[1]}' at run time")
                return False
    e = expr[out_axis] if out_axis < len(expr) else None
    follows = isinstance(e, tuple) and (ch := ctx.tracked(e[1])) is not None and ch.axis == e[2]
    if not (
        e == -1
        or follows  # the input's own channel count, read at run time (checked above)
        or (e == 0 and not allowzero and identity)  # copies the (pruned) channel count
        or (constant and isinstance(e, int) and e > 0)  # rewritten by ``rewrite``
        or (isinstance(e, int) and e > 0  # a private constant piece of a computed target
            and attention.private_constant_follows(ctx, node, out_axis, out_ids))
    ):
        ctx.block(x.ids, "Reshape target fixes the channel count where it cannot be rewritten")
        return False
    return True


def channel_shuffle(view: GraphView, node: onnx.NodeProto) -> tuple[str, int, np.ndarray] | None:
    """(input, axis, permutation) when ``node`` is either Reshape of a Reshape -> Transpose ->
    Reshape chain that only permutes one axis (ShuffleNet's channel shuffle), else None.

    Followed as a permutation, the shuffle ties no channels together; tied, every block of a
    ShuffleNet stage would halve the prunable channels of its stream.
    """

    def only_use(name: str, op: str) -> onnx.NodeProto | None:
        uses = view.uses(name)
        if len(uses) != 1 or name in view.graph_outputs or uses[0].index != 0:
            return None
        n = view.nodes[uses[0].node]
        return n if n.op_type == op else None

    def producer(name: str, op: str) -> onnx.NodeProto | None:
        p = view.producer.get(name)
        n = view.nodes[p[0]] if p else None
        return n if n is not None and n.op_type == op else None

    def same(a: onnx.NodeProto | None, b: onnx.NodeProto | None) -> bool:
        # by outputs: the rewrite passes nodes of the copy, the view holds the original's
        return a is not None and b is not None and list(a.output) == list(b.output)

    if node.op_type != "Reshape":
        return None
    t = only_use(node.output[0], "Transpose")
    if t is not None:
        first, last = node, only_use(t.output[0], "Reshape")
    else:
        t = producer(node.input[0], "Transpose")
        first = producer(t.input[0], "Reshape") if t is not None else None
        last = node
        if first is None or not same(only_use(first.output[0], "Transpose"), t):
            return None
    if last is None or not same(only_use(t.output[0], "Reshape"), last):
        return None
    ins, mid, out = (
        view.shape(first.input[0]),
        view.shape(first.output[0]),
        view.shape(last.output[0]),
    )
    dims = (ins, mid, out)
    if (
        any(d is None or not all(isinstance(v, int) and v > 0 for v in d) for d in dims)
        or ins != out
    ):
        return None
    if len(ins) < 2 or product(ins) > 1 << 22:
        return None
    perm = attr(t, "perm", None) or list(range(len(mid)))[::-1]
    index = np.arange(product(ins)).reshape(ins)
    moved = np.transpose(index.reshape(mid), perm).reshape(out)
    for axis in range(len(ins)):
        first_line = tuple(slice(None) if a == axis else 0 for a in range(len(ins)))
        order = moved[first_line] // product(ins[axis + 1 :]) % ins[axis]
        if np.array_equal(moved, np.take(index, order, axis=axis)):
            return (
                (first.input[0], axis, order)
                if not np.array_equal(order, np.arange(ins[axis]))
                else None
            )
    return None


class RepeatRule(Rule):
    """Broadcasting or tiling other axes is fine; repeating the channel axis blocks."""

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        if node.op_type == "Expand":
            attention.rewrite_expand(node, rw)

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        x = ctx.inp(0)
        value = ctx.view.known_value(node.input[1])
        if ctx.is_const(1):
            ctx.claim(1)
        else:
            ctx.inp(1)
        if x is None:
            if value is None:
                block_tracked_dims(
                    ctx, ctx.view.shape_expr(node.input[1]), f"'{ctx.where}' ({node.op_type})"
                )
                attention.block_live_sizes(ctx, node, 1, f"'{ctx.where}' ({node.op_type})")
            if node.op_type == "Expand" and ctx.is_const(0):
                _broadcast_constant(node, ctx, value)
            return
        if node.op_type == "Expand" and (value is None or attention.live_sizes(ctx, node, 1)):
            attention.expand_heads(node, ctx, x)
            return
        if value is None:
            ctx.block(x.ids, f"{node.op_type} shape is computed at run time")
            return
        v = [int(a) for a in value.reshape(-1)]
        if node.op_type == "Tile":
            if v[x.axis] != 1:
                ctx.block(x.ids, "Tile repeats the channel axis")
                return
            ctx.set_out(0, x.axis, x.ids, x.rank)
            return
        rank = max(x.rank, len(v))
        axis = x.axis + rank - x.rank
        e = v[axis - (rank - len(v))] if axis - (rank - len(v)) >= 0 else 1
        if e == len(x.ids) and len(x.ids) != 1:  # its own count, folded (repeat_kv)
            attention.expand_heads(node, ctx, x)  # follows when only this Expand reads it
            return
        if e != 1 and len(x.ids) != 1:
            ctx.block(x.ids, "Expand sets the channel count")
            return
        ctx.set_out(0, axis, x.ids, rank)


def _broadcast_constant(node: onnx.NodeProto, ctx: Context, value) -> None:
    """A float constant with one axis of more than one entry, broadcast over the others
    (ViT's class token ``[1, 1, D]`` expanded to the batch and concatenated before the
    tokens): its entries are channels of the output, so a stream it joins can cut them
    (the constant is sliced). Only when the target keeps that axis at 1 (evaluated, as
    ``(batch, 1, 1)``); integer constants (positions, indices) stay untracked."""
    name = node.input[0]
    const = ctx.view.constant(name)
    if const is None or not np.issubdtype(const.dtype, np.floating):
        return
    big = [i for i, d in enumerate(const.shape) if d != 1]
    target = [int(v) for v in value.reshape(-1)] if value is not None else ctx.view.shape_expr(node.input[1])
    if len(big) != 1 or target is None:
        return
    rank = max(const.ndim, len(target))
    axis = big[0] + rank - const.ndim
    at = axis - (rank - len(target))
    if at >= 0 and not (isinstance(target[at], int) and target[at] == 1):
        return
    ids = ctx.follower(int(const.shape[big[0]]), f"{name}[entries]")
    ctx.bind(0, big[0], ids, "chan")
    ctx.set_out(0, axis, ids, rank)
