"""Attention heads (issue #4): multi-head and grouped-query attention as exporters write it.

Each graph is built with ``onnx.helper`` the way torch exports Hugging Face attention: Q/K/V
projections, a Reshape to [B, S, H, D] (head count constant, inferred with -1, or copied with
0; shapes constant or computed at run time from Shape/Gather/Concat), a Transpose, two
MatMuls around a Softmax, and the way back to [B, S, H*D]. The exactness oracle checks that
removing heads equals zeroing their rows of the output projection in the original model.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.shape_values import Opaque, Term, _equal, exprs, private
from onnxprune.graph.view import GraphView
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.importance import score_groups
from onnxprune.testing.graphs import (
    HEAD_FORMS,
    Builder,
    decoder_block,
    mha_block,
    repeat_kv,
    size_of,
)
from onnxprune.testing.oracles import assert_close, assert_exact, prune_exact, random_feeds, run


def _dims(b: Builder, x: str, axes: list[int]) -> list[str]:
    """``x.size(a)`` for each axis as torch exports it: Shape -> Gather -> Unsqueeze."""
    shape = b.op("Shape", [x])
    return [
        b.op("Unsqueeze", [b.op("Gather", [shape, b.const(np.int64(a))], axis=0), b.ints([0])])
        for a in axes
    ]


def _expand_shape(b: Builder, sizes: list[str]) -> str:
    """torch's ``expand`` sizes: Concat -> Reshape(-1) -> Where(Equal(s, -1), 1, s)."""
    s = b.op("Reshape", [b.op("Concat", sizes, axis=0), b.ints([-1])])
    ones = b.op(
        "ConstantOfShape",
        [b.op("Shape", [s])],
        value=helper.make_tensor("v", TensorProto.INT64, [1], [1]),
    )
    minus = b.op("Mul", [ones, b.const(np.int64(-1))])
    return b.op("Where", [b.op("Equal", [s, minus]), ones, s])


def test_view_refines_head_count_inferred_from_minus_one():
    """ONNX inference cannot divide a symbolic batch out of ``view(B, S, -1, D)``; the view
    probes two sets of sizes and keeps what does not change (the head count)."""
    b = Builder()
    x = b.input(["batch", "seq", 8])
    q = b.matmul(x, 8, 8, name="q")
    target = b.op("Concat", [*_dims(b, x, [0, 1]), b.ints([-1]), b.ints([4])], axis=0)
    y = b.op("Reshape", [q, target], name="split")
    model = b.build([y])
    view = GraphView(model)
    shape = view.shape("split_out")
    assert shape[2:] == (2, 4) and not isinstance(shape[0], int)
    assert [p["split_out"] for p in view.probe_shapes] == [(13, 17, 2, 4), (24, 30, 2, 4)]


def test_shape_expr_sees_through_torch_expand_sizes():
    b = Builder()
    x = b.input(["batch", 2, 1, 4])
    sizes = [*_dims(b, x, [0, 1]), b.ints([3]), *_dims(b, x, [3])]
    e = b.op("Expand", [x, _expand_shape(b, sizes)], name="rep")
    model = b.build([e])
    view = GraphView(model)
    where = next(n for n in model.graph.node if n.op_type == "Where").output[0]
    assert view.shape_expr(where) == [("dim", "x", 0), ("dim", "x", 1), 3, ("dim", "x", 3)]
    assert view.shape("rep_out")[1:] == (2, 3, 4)


def _prune(model, heads=0.5, ratio=0.0, **kw):
    """Prune with exact counts and check the exactness oracle with 3 tokens per sequence."""
    pruned, result = prune_structured(
        model, StructuredOptions(ratio=ratio, heads=heads, round_to=1, **kw)
    )
    assert not result.plan.empty, f"nothing was pruned; blocked: {result.blocked}"
    assert_exact(model, pruned, result.plan, symbolic=3)
    return pruned, result


def _weights(model):
    return {t.name: list(t.dims) for t in model.graph.initializer if "attn." in t.name}


@pytest.mark.parametrize("form", HEAD_FORMS)
def test_mha_heads_removed_whole(form):
    """Every target form: a group of 4 heads of 4 positions; removing 2 heads cuts their
    Q/K/V columns and biases and their rows of the output projection, and the targets."""
    model = mha_block(form, mask=form != "const")
    (g,) = [g for g in analyze(model) if g.blocked_reason is None]
    assert (g.slots, g.width, g.heads) == (4, 4, 4)
    pruned, result = _prune(model, 0.5)
    (gp,) = [gp for gp in result.groups if gp.heads]
    assert (gp.heads, gp.heads_after, gp.channels_after) == (4, 2, 8)
    w = _weights(pruned)
    assert w["attn.q.weight"] == w["attn.k.weight"] == w["attn.v.weight"] == [16, 8]
    assert w["attn.q.bias"] == [8] and w["attn.o.weight"] == [8, 16] and w["attn.o.bias"] == [16]
    if form in ("const", "zero", "runtime"):  # the head count is written somewhere: rewritten
        view = GraphView(pruned)
        split = next(n for n in pruned.graph.node if n.op_type == "Reshape")
        assert view.shape(split.output[0])[2:] == (2, 4)


def test_structured_ratio_leaves_heads_alone():
    model = mha_block("runtime_minus1")
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    assert pruned is model and result.plan.empty
    (gp,) = result.groups
    assert gp.heads == gp.heads_after == 4
    assert result.to_dict()["groups"][0]["heads_after"] == 4


def test_dead_heads_go_first():
    """Zero every weight of heads 1 and 3: l2 (Q/K/V/O slices) and neuron-l2 (the output
    projection's rows) both remove exactly those, and the outputs do not move."""
    model = mha_block("runtime")
    dead = [1, 3]
    for t in model.graph.initializer:
        if t.name.startswith("attn.") and t.name != "attn.o.bias":
            w = numpy_helper.to_array(t).copy()
            axis = 0 if t.name == "attn.o.weight" else w.ndim - 1
            idx = [slice(None)] * w.ndim
            idx[axis] = np.concatenate([np.arange(h * 4, h * 4 + 4) for h in dead])
            w[tuple(idx)] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    for criterion in ("l2", "neuron-l2"):
        pruned, result = _prune(model, 0.5, criterion=criterion)
        (gp,) = [gp for gp in result.groups if gp.heads]
        assert gp.kept == [0, 2], criterion
        feeds = random_feeds(model, 0, 3)
        assert_close(run(model, feeds), run(pruned, feeds))


def test_gqa_removes_whole_kv_groups():
    """4 query heads share 2 key/value heads (repeat_kv): a slot is one KV head with its 2
    query heads; removing one cuts 8 Q columns, 4 K and 4 V columns, 8 rows of Wo."""
    model = decoder_block(dim=16, heads=4, kv_heads=2, mlp=8, tokens=5)
    (g,) = [g for g in analyze(model) if g.heads]
    assert (g.slots, g.heads, g.blocked_reason) == (2, 4, None)
    pruned, result = _prune(model, 0.5)
    (gp,) = [gp for gp in result.groups if gp.heads]
    assert (gp.heads_after, len(gp.kept)) == (2, 1)
    w = _weights(pruned)
    assert w["attn.q.weight"] == [16, 8] and w["attn.k.weight"] == w["attn.v.weight"] == [16, 4]
    assert w["attn.o.weight"] == [8, 16]


def test_gqa_heads_ratio_rounds_down_to_whole_groups():
    model = decoder_block(dim=16, heads=4, kv_heads=2, mlp=8, tokens=5)
    _, result = prune_structured(model, StructuredOptions(ratio=0.0, heads=0.25, round_to=1))
    (gp,) = [gp for gp in result.groups if gp.heads]
    assert gp.heads_after == 4  # a quarter of 4 query heads is less than one KV group of 2


def test_head_count_from_another_tensor_is_rewritten():
    """The target takes its head count from a graph input, which does not follow the cut:
    that element becomes -1 in the Concat that assembles the target (issue 12: run-time
    targets of packed attention are rewritten), and the cut is exact."""
    b = Builder()
    x = b.input([1, 5, 8])
    other = b.input([1, 5, 2, 4], name="other")
    q = b.matmul(x, 8, 8, name="q")
    target = b.op("Concat", [b.ints([1, 5]), size_of(b, other, 2), b.ints([4])], axis=0)
    r = b.op("ReduceSum", [b.op("Reshape", [q, target]), b.ints([3])], keepdims=0)
    model = b.build([b.matmul(r, 2, 3, name="head")])
    (g,) = [g for g in analyze(model) if g.id == "q"]
    assert (g.blocked_reason, g.heads) == (None, 2)
    prune_exact(model, 0.0, heads=0.5)


def test_shared_head_count_constant_blocks():
    """One Concat target shared by two head splits: its constant cannot be rewritten for
    one of them alone."""
    b = Builder()
    x = b.input([1, 5, 8])
    target = b.op("Concat", [size_of(b, x, 0), size_of(b, x, 1), b.ints([2, 4])], axis=0)
    q = b.op("Reshape", [b.matmul(x, 8, 8, name="q"), target])
    k = b.op("Reshape", [b.matmul(x, 8, 8, name="k"), target])
    s = b.op("Add", [q, k])
    model = b.build([b.matmul(b.op("Reshape", [s, b.ints([1, 5, 8])]), 8, 3, name="head")])
    (g,) = [g for g in analyze(model) if g.id == "q"]
    assert "fixes the head or channel count" in g.blocked_reason


def test_head_count_computed_by_division_is_rewritten():
    """``view(B, S, C // D, D)`` with C read at run time: the arithmetic is not followed,
    the element becomes -1 in its Concat instead (issue 12), exact."""
    b = Builder()
    x = b.input(["batch", 5, 8])
    q = b.matmul(x, 8, 8, name="q")
    c = b.op("Gather", [b.op("Shape", [q]), b.const(np.int64(2))], axis=0)
    h = b.op("Unsqueeze", [b.op("Div", [c, b.const(np.int64(4))]), b.ints([0])])
    target = b.op("Concat", [size_of(b, q, 0), b.ints([5]), h, b.ints([4])], axis=0)
    r = b.op("ReduceSum", [b.op("Reshape", [q, target]), b.ints([3])], keepdims=0)
    model = b.build([b.matmul(r, 2, 3, name="head")])
    (g,) = [g for g in analyze(model) if g.id == "q"]
    assert (g.blocked_reason, g.heads) == (None, 2)
    prune_exact(model, 0.0, heads=0.5)


def test_keys_from_elsewhere_block_their_heads():
    """q @ k^T with k reshaped from a graph input: the query heads are coupled to heads
    onnxprune cannot cut."""
    b = Builder()
    x = b.input([1, 5, 8])
    kin = b.input([1, 2, 4, 5], name="k")
    q = b.op("Transpose", [b.op("Reshape", [b.matmul(x, 8, 8, name="q"), b.ints([1, 5, 2, 4])])], perm=[0, 2, 1, 3])  # fmt: skip
    s = b.op("MatMul", [q, kin])
    o = b.op("Reshape", [b.op("Transpose", [s], perm=[0, 2, 1, 3]), b.ints([1, 5, 10])])
    model = b.build([b.matmul(o, 10, 3, name="head")])
    (g,) = [g for g in analyze(model) if g.id == "q"]
    assert "graph input" in g.blocked_reason


@pytest.mark.parametrize("op", ["Attention", "MultiHeadAttention"])
def test_fused_microsoft_attention_is_followed(op):
    """Issue 12 changed this: ``onnxprune.ops.fused`` follows both (it blocked before); the
    layer before them prunes exactly (tests/test_fused_ops.py has the head cases)."""
    b = Builder()
    x = b.input([1, 5, 8])
    h = b.matmul(x, 8, 8, name="pre")
    if op == "Attention":
        ins = [h, b.rand([8, 24], "qkv.weight"), b.rand([24], "qkv.bias")]
    else:
        ins = [h, h, h]
    node = helper.make_node(op, ins, ["att"], domain="com.microsoft", num_heads=2, name="fused")
    b.nodes.append(node)
    out = b.matmul("att", 8, 3, name="post")
    graph = helper.make_graph(
        b.nodes, "fused", b.inputs, [helper.make_tensor_value_info(out, 1, [1, 5, 3])], b.inits
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    groups = {g.id: g for g in analyze(model)}
    assert groups["pre"].blocked_reason is None
    onnx.checker.check_model(model)
    run(model, random_feeds(model))  # onnxruntime runs the fused op: the test graph is real
    prune_exact(model, 0.5, heads=0.5)


def test_fused_group_query_attention_blocks_with_reason():
    b = Builder()
    x = b.input([1, 5, 8])
    h = b.matmul(x, 8, 8, name="pre")
    node = helper.make_node(
        "GroupQueryAttention", [h, h, h], ["att"], domain="com.microsoft", num_heads=2,
        kv_num_heads=2, name="fused",
    )  # fmt: skip
    b.nodes.append(node)
    out = b.matmul("att", 8, 3, name="post")
    graph = helper.make_graph(
        b.nodes, "fused", b.inputs, [helper.make_tensor_value_info(out, 1, [1, 5, 3])], b.inits
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    groups = {g.id: g for g in analyze(model)}
    assert "fused com.microsoft.GroupQueryAttention" in groups["pre"].blocked_reason


def test_head_scores_read_q_k_v_and_o_slices():
    """group-l2 of a head is the norm of its Q, K, V columns, biases and Wo rows together."""
    model = mha_block("runtime")
    groups = analyze(model)
    (g,) = [g for g in groups if g.heads]
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    expect = np.zeros(4)
    for h in range(4):
        cols = slice(h * 4, h * 4 + 4)
        for p in "qkv":
            expect[h] += (w[f"attn.{p}.weight"][:, cols] ** 2).sum()
            expect[h] += (w[f"attn.{p}.bias"][cols] ** 2).sum()
        expect[h] += (w["attn.o.weight"][cols] ** 2).sum()
    np.testing.assert_allclose(
        score_groups(groups, model, "group-l2")[g.id], np.sqrt(expect), rtol=1e-5
    )
    outgoing = np.linalg.norm(w["attn.o.weight"].reshape(4, -1), axis=1)
    np.testing.assert_allclose(score_groups(groups, model, "neuron-l2")[g.id], outgoing, rtol=1e-5)


def test_gqa_repeat_with_tile():
    """repeat_kv written with Tile on an inserted axis ([B, Hkv, 1, S, D] tiled to
    [B, Hkv, rep, S, D], then merged): the same key/value groups as with Expand."""
    b = Builder()
    x = b.input([1, 5, 16])
    q = b.op("Transpose", [b.op("Reshape", [b.matmul(x, 16, 16, name="q"), b.ints([1, 5, 4, 4])])], perm=[0, 2, 1, 3])  # fmt: skip
    kv = []
    for name in "kv":
        t = b.op("Transpose", [b.op("Reshape", [b.matmul(x, 16, 8, name=name), b.ints([1, 5, 2, 4])])], perm=[0, 2, 1, 3])  # fmt: skip
        t = b.op("Tile", [b.op("Unsqueeze", [t, b.ints([2])]), b.ints([1, 1, 2, 1, 1])])
        kv.append(b.op("Reshape", [t, b.ints([1, 4, 5, 4])]))
    s = b.op("MatMul", [q, b.op("Transpose", [kv[0]], perm=[0, 1, 3, 2])])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-1), kv[1]])
    o = b.op("Reshape", [b.op("Transpose", [o], perm=[0, 2, 1, 3]), b.ints([1, 5, 16])])
    model = b.build([b.matmul(o, 16, 16, name="o")])
    (g,) = [g for g in analyze(model) if g.heads]
    assert (g.slots, g.heads, g.blocked_reason) == (2, 4, None)
    pruned, _ = _prune(model, 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert (
        dims["q.weight"] == [16, 8] and dims["k.weight"] == [16, 4] and dims["o.weight"] == [8, 16]
    )


def test_dimexpr_reads_run_time_targets_with_provenance():
    """The GQA merge target is Shape(k)[1] * 2 heads; the head-split target's constant knows
    which node input holds it; an undecided comparison stays opaque but keeps its dims."""
    b = Builder()
    x = b.input(["batch", 5, 8])
    k = b.op("Transpose", [b.op("Reshape", [b.matmul(x, 8, 8, name="k"), _target_runtime(b, x)])], perm=[0, 2, 1, 3])  # fmt: skip
    rep = repeat_kv(b, k, 2)
    model = b.build([rep])
    view = GraphView(model)
    ex = exprs(view)
    merge = next(i for i, n in enumerate(view.nodes) if n.output[0] == rep)
    terms = ex.input_of(merge, 1)
    assert terms[1] == Term(Fraction(2), ((k, 1),))
    assert terms[0].refs == ((k, 0),) and terms[3] == Term(Fraction(1), ((k, 3),))
    split = next(i for i, n in enumerate(view.nodes) if n.op_type == "Reshape")
    head_count = ex.input_of(split, 1)[2]
    assert head_count.const == 2 and head_count.origin is not None
    holder = view.nodes[head_count.origin.node]
    assert holder.op_type == "Concat" and private(view, head_count.origin)
    undecided = _equal(Term(Fraction(1), ((k, 0),)), Term(Fraction(3)))
    assert isinstance(undecided, Opaque) and undecided.refs == {(k, 0)}


def _target_runtime(b, x):
    return b.op("Concat", [size_of(b, x, 0), size_of(b, x, 1), b.ints([2, 4])], axis=0)
