"""Packed and batch-folded attention heads: what ``nn.MultiheadAttention`` and Swin export.

torch's ``nn.MultiheadAttention`` (torchvision ViT) projects Q, K and V with one MatMul to
``3*D``, then ``Reshape [S, B, 3*D] -> [S, B, 3, D]`` and selects each third with a Gather on
the ``3`` axis (after Unsqueeze/Transpose/Squeeze); Swin and GPT-2 write
``Reshape [B, N, 3*D] -> [B, N, 3, H, d]`` and Transpose. A *packed split* ties column ``j``
of each third into one channel (removing a head removes its columns in Q, K and V alike, and
the bias with them) and, in the five-axis form, ties the ``d`` positions of each head.
It is recognized only when every use of the ``3`` axis selects along it (Gather of one index,
Split, Slice), so it never takes a real split into three heads for a packing.

``nn.MultiheadAttention`` then folds the heads into the batch: ``[S, B, D] -> [S, B*H, d]``,
Transpose, and ``[B*H, S, d] -> [B, H, S, d]`` back. With a dynamic batch the ids of the
folded axis stand for the heads of every batch row (position ``p`` is head ``p % H``); such a
*folded* tensor may only reach Transposes and the Reshape that unfolds it (else it blocks).

Targets computed at run time from a tensor we do not cut (``Concat(Shape(x)[:2], [3],
Shape(y)[-1:])``, the ``B*12`` of ``Mul(B, 12)``) are rewritten: the element at the cut axis
becomes ``-1`` in the Concat that assembles the target (``replaceable``), which is right
whenever it is the only ``-1`` and every other element is a dimension or a positive number.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.shape_algebra import Opaque, Term
from onnxprune.graph.shape_values import exprs
from onnxprune.graph.view import GraphView, attr, normalize_axis

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Chan, Context
    from onnxprune.structured.rewrite import RewriteContext

_PACKS = (2, 3)  # K and V, or Q, K and V


def concrete_shapes(view: GraphView, name: str) -> list[tuple[int, ...]]:
    """The shape of ``name`` as numbers: once when inference knows it, else once per probe
    (``GraphView.probe_shapes``); empty when neither is known."""
    s = view.shape(name)
    if s is not None and all(isinstance(d, int) for d in s):
        return [tuple(s)]
    out = []
    for probe in view.probe_shapes:
        p = probe.get(name)
        if p is None or not all(isinstance(d, int) and d > 0 for d in p):
            return []
        out.append(tuple(p))
    return out


def reshape_segments(ins: tuple, outs: tuple) -> list[tuple[range, range]] | None:
    """Align the dims of a reshape into segments of equal size; None if they do not align."""
    segs: list[tuple[range, range]] = []
    i = j = 0
    while i < len(ins) and j < len(outs):
        if not isinstance(ins[i], int) or not isinstance(outs[j], int):
            if ins[i] is None or ins[i] != outs[j]:
                return None
            segs.append((range(i, i + 1), range(j, j + 1)))
            i, j = i + 1, j + 1
            continue
        i0, j0, pi, pj = i, j, ins[i], outs[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(ins) or not isinstance(ins[i], int):
                    return None
                pi, i = pi * ins[i], i + 1
            else:
                if j >= len(outs) or not isinstance(outs[j], int):
                    return None
                pj, j = pj * outs[j], j + 1
        segs.append((range(i0, i), range(j0, j)))
    rest_in, rest_out = ins[i:], outs[j:]
    if any(d != 1 for d in (*rest_in, *rest_out)):
        return None
    if segs and (rest_in or rest_out):
        a, b = segs[-1]
        segs[-1] = (range(a.start, len(ins)), range(b.start, len(outs)))
    return segs


def probe_segments(view: GraphView, node: onnx.NodeProto, axis: int) -> list[tuple] | None:
    """Per probe (or once, when shapes are numbers): ``(seg_in, seg_out, din, dout, rank)``
    of the Reshape segment that holds input ``axis``; None when a probe does not align."""
    ins, outs = concrete_shapes(view, node.input[0]), concrete_shapes(view, node.output[0])
    if not ins or not outs:  # the probes that ran this far (a size may not fit the windows)
        pairs = [(p.get(node.input[0]), p.get(node.output[0])) for p in view.probe_shapes]
        pairs = [(i, o) for i, o in pairs if _numbers(i) and _numbers(o)]
        ins, outs = [i for i, _ in pairs], [o for _, o in pairs]
    if not ins or not outs:
        pair = symbolic_pair(view, node)
        if pair is None:
            return None
        ins, outs = [pair[0]], [pair[1]]
    if len(ins) != len(outs):
        if len(ins) == 1:
            ins = ins * len(outs)
        elif len(outs) == 1:
            outs = outs * len(ins)
        else:
            return None
    found = []
    for i, o in zip(ins, outs, strict=True):
        segs = reshape_segments(i, o) if axis < len(i) else None
        if segs is None:
            return None
        seg_in, seg_out = next(s for s in segs if axis in s[0])
        din, dout = tuple(i[a] for a in seg_in), tuple(o[a] for a in seg_out)
        found.append((seg_in, seg_out, din, dout, len(o), len(i)))
    return found


def _numbers(shape: tuple | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


_PLACEHOLDER = 1_000_003  # a prime: stands for a symbolic dimension shared by both sides
_SOLVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _resolve(view: GraphView, shape: tuple) -> list:
    solved = _SOLVED.setdefault(view, {})
    return [solved.get(d, d) if isinstance(d, str) else d for d in shape]


def symbolic_pair(view: GraphView, node: onnx.NodeProto) -> tuple[tuple, tuple] | None:
    """The Reshape's input and output shapes as numbers when inference left symbols: a
    symbol on both sides (the batch of windows) stands for a placeholder prime, and the one
    symbol only the output has (``d`` of a target computed at run time) is solved from the
    element count, then remembered for this view (a symbol is one value in the whole graph)."""
    si, so = view.shape(node.input[0]), view.shape(node.output[0])
    if si is None or so is None:
        return None
    si, so = _resolve(view, si), _resolve(view, so)
    syms_in = [d for d in si if not isinstance(d, int)]
    syms_out = [d for d in so if not isinstance(d, int)]
    ints_in = int(np.prod([d for d in si if isinstance(d, int)], dtype=object))
    ints_out = int(np.prod([d for d in so if isinstance(d, int)], dtype=object))
    if len(syms_in) == len(syms_out) == 1 and syms_in != syms_out and ints_in == ints_out:
        so = [syms_in[0] if d == syms_out[0] else d for d in so]  # the same count: one value
        syms_out = syms_in
    if any(d is None for d in (*syms_in, *syms_out)) or sorted(syms_in) != sorted(
        d for d in syms_out if d in syms_in
    ):
        return None
    free = [d for d in syms_out if d not in syms_in]
    place = {d: _PLACEHOLDER + 2 * k for k, d in enumerate(dict.fromkeys(syms_in))}
    ins = tuple(place.get(d, d) for d in si)
    if len(free) > 1 or (free and free.count(free[0]) > 1):
        return None
    if len(syms_out) - len(free) != len(syms_in):
        return None
    known = int(np.prod([place.get(d, d) for d in so if d not in free], dtype=object))
    total = int(np.prod(ins, dtype=object))
    if free:
        if known == 0 or total % known:
            return None
        value = total // known
        _SOLVED[view][free[0]] = value
        so = [value if d == free[0] else d for d in so]
    outs = tuple(place.get(d, d) for d in so)
    return ins, outs


def _uses_select(view: GraphView, tensor: str, axis: int, depth: int = 0) -> bool:
    """Whether every use of ``tensor`` selects along ``axis`` (Gather of one index, Split,
    Slice on that axis alone), through Identity, Transpose, Unsqueeze and Squeeze."""
    uses = view.uses(tensor)
    if not uses or tensor in view.graph_outputs or depth > 8:
        return False
    for use in uses:
        n = view.nodes[use.node]
        rank = view.rank(tensor)
        if use.index != 0 or rank is None:
            return False
        op, out = n.op_type, n.output[0]
        try:
            if op == "Identity":
                nxt = axis
            elif op == "Transpose":
                perm = list(attr(n, "perm", None) or range(rank)[::-1])
                nxt = perm.index(axis)
            elif op == "Unsqueeze":
                ax = view.ints(n, "axes", 1) or []
                inserted = {normalize_axis(a, rank + len(ax)) for a in ax}
                nxt = [i for i in range(rank + len(ax)) if i not in inserted][axis]
            elif op == "Squeeze":
                axes = [normalize_axis(a, rank) for a in view.ints(n, "axes", 1) or []]
                if not axes or axis in axes:
                    return False
                nxt = axis - sum(a < axis for a in axes)
            elif op == "Gather":
                idx = view.constant(n.input[1])
                if normalize_axis(int(attr(n, "axis", 0)), rank) != axis or idx is None:
                    return False
                if idx.size != 1 or idx.ndim > 1:
                    return False
                continue
            elif op == "Split":
                if normalize_axis(int(attr(n, "axis", 0)), rank) != axis:
                    return False
                continue
            elif op == "Slice":
                axes = view.input_ints(n, 3) if len(n.input) > 3 else list(range(rank))
                if [normalize_axis(a, rank) for a in axes or []] != [axis]:
                    return False
                continue
            else:
                return False
        except (LookupError, TypeError, ValueError):
            return False
        if not _uses_select(view, out, nxt, depth + 1):
            return False
    return True


def packed_layout(view: GraphView, node: onnx.NodeProto, axis: int) -> tuple[int, tuple] | None:
    """``(pack_axis, dout)`` when the Reshape splits channel ``axis`` into its last axes
    ``(k, D)`` or ``(k, H, d)`` (k of 2 or 3) and every use selects along the ``k`` axis."""
    found = probe_segments(view, node, axis)
    if not found or len({f[3] for f in found}) != 1:
        return None
    seg_in, seg_out, _din, dout, rank, _ = found[0]
    if len(seg_in) != 1 or seg_out.stop != rank or len(dout) not in (2, 3):
        return None
    if dout[0] not in _PACKS or min(dout) < 1 or (len(dout) == 3 and min(dout[1:]) < 2):
        return None
    if not _uses_select(view, node.output[0], seg_out.start):
        return None
    return seg_out.start, dout


def folded_layout(view: GraphView, node: onnx.NodeProto, axis: int) -> tuple[int, int, int] | None:
    """``(out_axis, H, d)`` when the Reshape turns ``[..., B, H*d]`` (channels last) into
    ``[..., B*H, d]``: the heads folded into the batch, as ``nn.MultiheadAttention`` does."""
    found = probe_segments(view, node, axis)
    if not found:
        return None
    hd = set()
    for seg_in, seg_out, din, dout, rank, rank_in in found:
        if axis != rank_in - 1 or len(seg_in) != 2 or len(seg_out) != 2 or seg_out.stop != rank:
            return None
        (b, e), (bh, d) = din, dout
        if d < 2 or e % d or e // d < 2 or bh != b * (e // d):
            return None
        hd.add((seg_out.start, e // d, d))
    return next(iter(hd)) if len(hd) == 1 else None


def unfold_layout(
    view: GraphView, node: onnx.NodeProto, axis: int, n_ids: int
) -> tuple[int, int] | None:
    """``(out_axis, H)`` when the Reshape unfolds the batch-folded axis ``axis`` (``B*H``)
    into ``(B, H)``: ``n_ids`` is ``H`` (folded ids) or ``B*H`` (a static batch)."""
    found = probe_segments(view, node, axis)
    if not found:
        return None
    out = set()
    for seg_in, seg_out, _din, dout, _rank, _ in found:
        if len(seg_in) != 1 or len(seg_out) != 2 or min(dout) < 1:
            return None
        b, h = dout
        if n_ids not in (h, b * h) or h < 2:
            return None
        out.add((seg_out.start + 1, h))
    return next(iter(out)) if len(out) == 1 else None


def _folded_ok(view: GraphView, tensor: str, axis: int, n_ids: int, depth: int = 0) -> str | None:
    """None when the folded ``tensor`` reaches only Transposes, Shapes and the Reshape that
    unfolds it; else the place where it goes elsewhere."""
    if tensor in view.graph_outputs or depth > 8:
        return f"the graph output '{tensor}'"
    for use in view.uses(tensor):
        n = view.nodes[use.node]
        where = f"'{view.label(use.node)}' ({n.op_type})"
        if n.op_type == "Shape":
            continue
        if use.index != 0:
            return where
        if n.op_type == "Transpose":
            rank = view.rank(tensor)
            perm = list(attr(n, "perm", None) or range(rank or 0)[::-1])
            bad = _folded_ok(view, n.output[0], perm.index(axis), n_ids, depth + 1)
            if bad:
                return bad
        elif n.op_type != "Reshape" or unfold_layout(view, n, axis, n_ids) is None:
            return where
    return None


def _tie_heads(ctx: Context, ids: np.ndarray, h: int, d: int) -> np.ndarray:
    grid = ids.reshape(h, d)
    ctx.unify(grid[:, 1:].ravel(), np.repeat(grid[:, 0], d - 1))
    return np.ascontiguousarray(grid[:, 0])


def reshape_packed(node: onnx.NodeProto, ctx: Context, x: Chan, check_target: Callable) -> bool:
    """Follow a packed split, a batch fold or its unfold (module docstring); False leaves
    the Reshape to the other rules. ``check_target``: ``attention.check_target``."""
    view = ctx.view
    rank = view.rank(node.output[0])
    packed = packed_layout(view, node, x.axis)
    if packed is not None:
        pack_axis, dout = packed
        k = dout[0]
        if len(x.ids) % k:
            return False
        grid = x.ids.reshape(k, -1)
        ctx.unify(grid[1:].ravel(), np.tile(grid[0], k - 1))
        out_ids = np.ascontiguousarray(grid[0])
        if len(dout) == 3:
            out_ids = _tie_heads(ctx, out_ids, dout[1], dout[2])
        if check_target(ctx, node, x, pack_axis + 1, out_ids, own_only=True):
            ctx.set_out(0, pack_axis + 1, out_ids, rank)
        return True
    folded = folded_layout(view, node, x.axis)
    if folded is not None:
        out_axis, h, d = folded
        if h * d != len(x.ids):
            return False
        heads = _tie_heads(ctx, x.ids, h, d)
        b = view.dim(node.input[0], x.axis - 1)
        out_ids = np.tile(heads, b) if b is not None else heads
        bad = None if b is not None else _folded_ok(view, node.output[0], out_axis, h)
        if bad is not None:
            ctx.block(
                x.ids, f"heads folded into the batch reach {bad}, which onnxprune does not follow"
            )
            return True
        if check_target(ctx, node, x, out_axis, out_ids, own_only=True):
            ctx.set_out(0, out_axis, out_ids, rank)
        return True
    size = view.dim(node.input[0], x.axis)
    suffix = suffix_axis(view, node, x.axis)
    if suffix is not None and size == len(x.ids) and not _generic(view, node):
        if check_target(ctx, node, x, suffix, x.ids, own_only=True):
            ctx.set_out(0, suffix, x.ids, rank)
        return True
    if size is not None and size == len(x.ids) and not _is_tiled(x.ids):
        return False
    unfold = unfold_layout(view, node, x.axis, len(x.ids))
    if unfold is None:
        return False
    out_axis, h = unfold
    heads = np.ascontiguousarray(x.ids[:h])
    if len(x.ids) != h and not np.array_equal(x.ids, np.tile(heads, len(x.ids) // h)):
        return False
    if check_target(ctx, node, x, out_axis, heads, own_only=True):
        ctx.set_out(0, out_axis, heads, rank)
    return True


def suffix_axis(view: GraphView, node: onnx.NodeProto, axis: int) -> int | None:
    """The output axis of channel ``axis`` when the Reshape only regroups the axes before it
    (Swin's ``[B*nW, H, N, N] <-> [B, nW, H, N, N]``): the dims from ``axis`` on are known
    numbers, equal on both sides, so every element keeps its place in that block. Not used
    where the Reshape rule aligns the shapes itself (``_generic``)."""
    si, so = view.shape(node.input[0]), view.shape(node.output[0])
    if si is None or so is None or axis == 0:
        return None
    tail = tuple(si[axis:])
    if not all(isinstance(d, int) for d in tail) or len(tail) > len(so):
        return None
    if tuple(so[len(so) - len(tail) :]) != tail or len(so) - len(tail) == 0:
        return None
    return len(so) - len(tail)


def _generic(view: GraphView, node: onnx.NodeProto) -> bool:
    """Whether the Reshape rule handles this Reshape itself: a constant target between
    shapes known as numbers."""
    shapes = (view.shape(node.input[0]), view.shape(node.output[0]))
    known = all(s is not None and all(isinstance(d, int) for d in s) for s in shapes)
    return known and view.known_value(node.input[1]) is not None


def _is_tiled(ids: np.ndarray) -> bool:
    """Whether ``ids`` repeats a shorter block (the heads of a static batch above 1)."""
    n = len(ids)
    return any(
        n % h == 0 and np.array_equal(ids, np.tile(ids[:h], n // h)) for h in range(2, n // 2 + 1)
    )


def packed_heads(view: GraphView, node: onnx.NodeProto, src_axis: int, out_axis: int) -> int:
    """The head count when Reshape ``node`` makes heads on ``out_axis`` from channels on
    ``src_axis`` in one of the forms above (0 otherwise): the head groups of ``--heads``."""
    packed = packed_layout(view, node, src_axis)
    if packed is not None:
        return packed[1][1] if len(packed[1]) == 3 and packed[0] + 1 == out_axis else 0
    folded = folded_layout(view, node, src_axis)
    if folded is not None:
        return folded[1] if folded[0] == out_axis else 0
    return 0


# ---------------------------------------------------------------- run-time targets


def _length(view: GraphView, name: str) -> int | None:
    s = view.shape(name)
    if s is not None and len(s) == 1 and isinstance(s[0], int):
        return s[0]
    if s is not None and len(s) == 0:
        return 1
    v = view.constant(name)
    return None if v is None else int(v.size)


def target_piece(view: GraphView, node: onnx.NodeProto, axis: int) -> tuple[int, int] | None:
    """``(Concat node index, input)``: the one-element input of the Concat that assembles
    element ``axis`` of the Reshape target, when every tensor on the way has one reader."""
    tensor, pos = node.input[1], axis
    for _ in range(8):
        if len(view.uses(tensor)) != 1 or tensor in view.graph_outputs:
            return None
        p = view.producer.get(tensor)
        n = view.nodes[p[0]] if p else None
        if n is None or n.op_type != "Concat" or attr(n, "axis", 0) not in (0, -1):
            return None
        off = 0
        for k, inp in enumerate(n.input):
            size = _length(view, inp)
            if size is None:
                return None
            if pos < off + size:
                if size == 1:
                    return p[0], k
                tensor, pos = inp, pos - off
                break
            off += size
        else:
            return None
    return None


def replaceable(view: GraphView, node: onnx.NodeProto, axis: int) -> bool:
    """Whether element ``axis`` of the Reshape target may become ``-1`` (module docstring):
    it sits alone in a private Concat, and no other element can be ``-1``."""
    if bool(attr(node, "allowzero", 0)) or target_piece(view, node, axis) is None:
        return False
    index = view.producer[node.output[0]][0]
    expr = exprs(view).input_of(index, 1)
    if isinstance(expr, Opaque) or axis >= len(expr):
        return False
    seen = view.shape_expr(node.input[1]) or [None] * len(expr)
    for i, e in enumerate(expr):
        if i == axis or (isinstance(seen[i], int) and seen[i] > 0):
            continue  # a positive number for this model's shapes (d = D / H read at run time)
        if not isinstance(e, Term):
            return False
        if e.const is not None and e.const < 0:
            return False
        if e.const is None and e.coef <= 0:
            return False
    return True


def rewrite_piece(node: onnx.NodeProto, rw: RewriteContext, axis: int) -> bool:
    """Write ``-1`` at element ``axis`` of the target (see ``replaceable``)."""
    view = rw.view
    original = view.nodes[view.producer[node.output[0]][0]]
    if not replaceable(view, original, axis):
        return False
    at, k = target_piece(view, original, axis)
    outs = list(view.nodes[at].output)
    concat = next(n for n in rw.model.graph.node if list(n.output) == outs)
    rw.set_input(concat, k, np.array([-1], dtype=np.int64))
    return True
