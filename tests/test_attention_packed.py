"""Packed Q/K/V projections and heads folded into the batch (onnxprune.ops.attention_packed).

The graphs are written the way torch exports ``nn.MultiheadAttention`` (torchvision ViT:
one MatMul to 3*D, ``Reshape [S, B, 3, D]`` with a target computed from two tensors'
shapes, Unsqueeze/Transpose/Squeeze/Gather, the heads folded into the batch) and Swin /
GPT-2 (``Reshape [B, N, 3, H, d]``, Transpose, Gather; a relative-position bias per head; the
shifted-window mask added through ``[B, nW, H, N, N]``). Each is pruned with ``--heads`` and
checked by the exactness oracle in onnxruntime at batch 1 and 2.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.graphs import Builder, size_of
from onnxprune.testing.oracles import assert_exact


def _dim(b: Builder, x: str, axis: int) -> str:
    """``x.size(axis)`` as a scalar (Shape -> Gather)."""
    return b.op("Gather", [b.op("Shape", [x]), b.const(np.int64(axis))], axis=0)


def _u(b: Builder, scalar: str) -> str:
    return b.op("Unsqueeze", [scalar, b.ints([0])])


def torch_mha(dim: int = 8, heads: int = 4, seq: int = 5, scale_from_shape: bool = True):
    """``nn.MultiheadAttention`` as torch 2 exports it (opset 17), ``x`` ``[S, B, D]``."""
    d = dim // heads
    b = Builder()
    x = b.input([seq, "batch", dim])
    qkv = b.matmul(x, dim, 3 * dim, name="in_proj")
    s_, b_ = _dim(b, x, 0), _dim(b, x, 1)
    stream = b.op("Slice", [b.op("Shape", [x]), b.ints([-1]), b.ints([2**62])])
    shape_qkv = b.op("Shape", [qkv])
    end = b.op("Reshape", [b.op("Mod", [b.const(np.int64(2)), b.const(np.int64(3))]), b.ints([1])])
    lead = b.op("Slice", [shape_qkv, b.ints([0]), end])
    target = b.op("Concat", [lead, b.op("Concat", [b.ints([3]), stream], axis=0)], axis=0)
    packed = b.op("Reshape", [qkv, target])
    packed = b.op("Unsqueeze", [packed, b.ints([0])])
    packed = b.op("Transpose", [packed], perm=[3, 1, 2, 0, 4])
    packed = b.op("Squeeze", [packed, b.ints([3])])
    hd = b.op("Cast", [b.op("Div", [_dim(b, x, 2), b.const(np.int64(heads))])], to=7)
    bh = b.op("Mul", [b_, b.const(np.int64(heads))])
    parts = []
    for i in range(3):
        t = b.op("Gather", [packed, b.const(np.int64(i))], axis=0)
        fold = b.op("Concat", [_u(b, s_), _u(b, bh), _u(b, hd)], axis=0)
        t = b.op("Transpose", [b.op("Reshape", [t, fold])], perm=[1, 0, 2])
        unfold = b.op("Concat", [_u(b, b_), b.ints([heads]), _u(b, s_), _u(b, hd)], axis=0)
        parts.append(b.op("Reshape", [t, unfold]))
    q, k, v = parts
    scale = b.const(np.float32(d**-0.5))
    if scale_from_shape:
        last = b.op("Slice", [b.op("Shape", [q]), b.ints([-1]), b.ints([2**62])])
        scale = b.op("Div", [b.const(np.float32(1.0)), b.op("Sqrt", [b.op("Cast", [last], to=1)])])
    att = b.op("MatMul", [b.op("Mul", [q, scale]), b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    o = b.op("MatMul", [b.op("Softmax", [att], axis=-1), v])
    o = b.op("Transpose", [o], perm=[2, 0, 1, 3])
    merge = b.op("Concat", [_u(b, b.op("Mul", [s_, b_])), _u(b, _dim(b, x, 2))], axis=0)
    o = b.op("Reshape", [o, merge])
    o = b.gemm(o, dim, dim, name="out_proj")
    o = b.op("Reshape", [o, b.op("Concat", [_u(b, s_), _u(b, b_), _u(b, _dim(b, o, 1))], axis=0)])
    return b.build([b.matmul(o, dim, 3, name="head")])


def swin_attention(dim: int = 8, heads: int = 4, windows: int = 2, n: int = 4, shifted: bool = True):
    """Swin's windowed attention, ``x`` ``[B*nW, N, D]``: packed ``[.., 3, H, d]``, a
    relative-position bias ``[1, H, N, N]`` and (shifted) a mask through ``[B, nW, H, N, N]``."""
    d = dim // heads
    b = Builder()
    x = b.input(["windows", n, dim])
    qkv = b.matmul(x, dim, 3 * dim, name="qkv")
    lead = b.op("Concat", [size_of(b, x, 0), size_of(b, x, 1)], axis=0)
    tail = b.op("Div", [size_of(b, x, 2), b.ints([heads])])
    target = b.op("Concat", [lead, b.ints([3, heads]), tail], axis=0)
    packed = b.op("Transpose", [b.op("Reshape", [qkv, target])], perm=[2, 0, 3, 1, 4])
    q, k, v = (b.op("Gather", [packed, b.const(np.int64(i))], axis=0) for i in range(3))
    att = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    att = b.op("Add", [b.op("Mul", [att, b.const(np.float32(d**-0.5))]), b.rand([1, heads, n, n])])
    if shifted:
        groups = b.op("Div", [size_of(b, att, 0), b.ints([windows])])
        view = b.op("Concat", [groups, b.ints([windows, heads, n, n])], axis=0)
        mask = b.rand([1, windows, 1, n, n], name="mask")
        att = b.op("Add", [b.op("Reshape", [att, view]), mask])
        att = b.op("Reshape", [att, b.ints([-1, heads, n, n])])
    o = b.op("MatMul", [b.op("Softmax", [att], axis=-1), v])
    o = b.op("Transpose", [o], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.op("Concat", [lead, size_of(b, x, 2)], axis=0)])
    o = b.matmul(o, dim, dim, name="proj")
    return b.build([b.matmul(o, dim, 3, name="head")])


def _head_group(model: onnx.ModelProto):
    return [g for g in analyze(model) if g.heads]


def _prune_heads(model: onnx.ModelProto, heads: float = 0.5, sizes: tuple = (1, 2)):
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.0, heads=heads, round_to=1))
    assert not result.plan.empty, result.blocked
    for batch in sizes:
        assert_exact(model, pruned, result.plan, symbolic=batch)
    return pruned, result


def _dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


@pytest.mark.parametrize("scale_from_shape", [True, False])
def test_torch_mha_loses_whole_heads(scale_from_shape: bool) -> None:
    """Removing 2 of 4 heads cuts their columns in each third of the packed weight and bias
    and their rows of the out-projection; the run-time targets get -1 or the kept count."""
    model = torch_mha(scale_from_shape=scale_from_shape)
    (g,) = _head_group(model)
    assert (g.heads, g.slots, g.blocked_reason) == (4, 4, None)
    pruned, result = _prune_heads(model)
    (gp,) = [gp for gp in result.groups if gp.heads]
    assert gp.heads_after == 2
    w = _dims(pruned)
    assert w["in_proj.weight"] == [8, 12] and w["in_proj.bias"] == [12]
    assert w["out_proj.weight"] == [8, 4]


def test_torch_mha_columns_are_the_heads_in_each_third() -> None:
    """The kept columns are the same heads in Q, K and V: head h is columns h*d..h*d+d-1
    of every third."""
    model = torch_mha()
    _, result = _prune_heads(model)
    (cut,) = [c for c in result.plan.params if c.name == "in_proj.weight"]
    kept = np.asarray(cut.kept)
    thirds = kept.reshape(3, -1)
    assert (thirds[1] - thirds[0] == 8).all() and (thirds[2] - thirds[0] == 16).all()
    heads = thirds[0].reshape(-1, 2)
    assert (heads[:, 1] - heads[:, 0] == 1).all() and (heads[:, 0] % 2 == 0).all()


@pytest.mark.parametrize("shifted", [False, True])
def test_swin_window_attention_slices_the_bias_per_head(shifted: bool) -> None:
    model = swin_attention(shifted=shifted)
    (g,) = _head_group(model)
    assert (g.heads, g.blocked_reason) == (4, None)
    pruned, _ = _prune_heads(model, sizes=(2, 4))  # whole images: windows in twos
    w = _dims(pruned)
    assert w["qkv.weight"] == [8, 12] and w["proj.weight"] == [4, 8]
    bias = [dims for name, dims in w.items() if dims[:2] == [1, 2] and len(dims) == 4]
    assert bias == [[1, 2, 4, 4]]  # the relative-position bias lost the removed heads
    if shifted:
        assert w["mask"] == [1, 2, 1, 4, 4]  # head-independent: untouched


def test_packing_needs_a_selection_of_the_three() -> None:
    """``[.., 3*D] -> [.., 3, D]`` whose ``3`` axis is not selected (reduced over): not a
    packing of three D-wide thirds but three heads of D, as before; the reduction mixes them
    and blocks."""
    b = Builder()
    x = b.input([1, 5, 8])
    y = b.op("Reshape", [b.matmul(x, 8, 24, name="p"), b.ints([1, 5, 3, 8])])
    r = b.op("ReduceSum", [y, b.ints([2])], keepdims=0)
    model = b.build([b.matmul(r, 8, 3, name="head")])
    (g,) = _head_group(model)
    assert (g.heads, g.slots) == (3, 3) and "ReduceSum reduces" in g.blocked_reason


def test_heads_folded_into_the_batch_must_be_unfolded() -> None:
    """``[S, B, D] -> [S, B*H, d]`` with a dynamic batch, then reduced without unfolding:
    the folded ids cannot be followed there; the heads block with that reason."""
    b = Builder()
    x = b.input([5, "batch", 8])
    q = b.matmul(x, 8, 8, name="q")
    bh = _u(b, b.op("Mul", [_dim(b, x, 1), b.const(np.int64(4))]))
    f = b.op("Reshape", [q, b.op("Concat", [b.ints([5]), bh, b.ints([2])], axis=0)])
    r = b.op("ReduceSum", [f, b.ints([0])], keepdims=0)
    model = b.build([b.op("Reshape", [r, b.ints([-1, 8])])])
    (g,) = [g for g in analyze(model) if g.id == "q"]
    assert "heads folded into the batch reach" in g.blocked_reason


def test_gpt2_c_attn_split_into_thirds() -> None:
    """GPT-2's ``c_attn``: one MatMul to 3*D, Split in three on the channel axis, each third
    split into heads: whole heads go from each third."""
    b = Builder()
    x = b.input(["batch", 5, 8])
    qkv = b.matmul(x, 8, 24, name="c_attn")
    q, k, v = b.op("Split", [qkv, b.ints([8, 8, 8])], n_out=3, axis=2)
    lead = b.op("Concat", [size_of(b, x, 0), size_of(b, x, 1)], axis=0)

    def heads(t: str) -> str:  # one target per view(), as torch exports it
        split = b.op("Concat", [size_of(b, x, 0), size_of(b, x, 1), b.ints([4, 2])], axis=0)
        return b.op("Transpose", [b.op("Reshape", [t, split])], perm=[0, 2, 1, 3])

    q, k, v = heads(q), heads(k), heads(v)
    att = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    o = b.op("MatMul", [b.op("Softmax", [att], axis=-1), v])
    o = b.op("Transpose", [o], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.op("Concat", [lead, b.ints([8])], axis=0)])
    model = b.build([b.matmul(b.matmul(o, 8, 8, name="c_proj"), 8, 3, name="head")])
    (g,) = _head_group(model)
    assert (g.heads, g.blocked_reason) == (4, None)
    pruned, _ = _prune_heads(model)
    assert _dims(pruned)["c_attn.weight"] == [8, 12] and _dims(pruned)["c_proj.weight"] == [4, 8]
