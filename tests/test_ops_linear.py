"""Gemm and MatMul: dense layers, transposes, and computed operands."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.structured.dependency import analyze
from onnxprune.testing.graphs import Builder, mlp_block
from onnxprune.testing.oracles import assert_planted_dead, prune_exact


@pytest.mark.parametrize("trans_b", [True, False])
def test_gemm_chain(trans_b):
    b = Builder()
    x = b.input([2, 10])
    h = b.relu(b.gemm(x, 10, 12, trans_b=trans_b, name="fc1"))
    h = b.op("Sigmoid", [b.gemm(h, 12, 8, trans_b=not trans_b, name="fc2")])
    model = b.build([b.gemm(h, 8, 3, trans_b=trans_b, name="fc3")])
    groups = {g.id for g in analyze(model) if g.blocked_reason is None}
    assert groups == {"fc1", "fc2"}
    pruned, _ = prune_exact(model, 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["fc2.weight"] == ([4, 6] if not trans_b else [6, 4])
    assert_planted_dead(model)


def test_gemm_trans_a():
    b = Builder()
    x = b.input([2, 10])
    h = b.relu(b.gemm(x, 10, 12, name="fc1"))
    t = b.op("Transpose", [h], perm=[1, 0])
    w = b.rand([12, 3], "fc2.weight")
    model = b.build([b.op("Gemm", [t, w], transA=1, name="fc2")])
    prune_exact(model, 0.5)


def test_mlp_matmul_add_gelu():
    model = mlp_block()
    (g,) = [g for g in analyze(model) if g.blocked_reason is None]
    assert {m.label for m in g.params} == {"fc1.weight[out]", "fc1.bias", "fc2.weight[in]"}
    prune_exact(model, 0.5)
    assert_planted_dead(model)


def test_matmul_both_computed_contraction_couples():
    """q @ k^T style: the contracted channels of both operands are one group."""
    b = Builder()
    x = b.input([1, 5, 8])
    q = b.matmul(x, 8, 6, name="q")
    k = b.matmul(x, 8, 6, name="k")
    kt = b.op("Transpose", [k], perm=[0, 2, 1])
    att = b.op("MatMul", [q, kt])
    model = b.build([att])
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    assert len(groups) == 1 and {m.target for m in groups[0].members if m.role == "out"} == {
        "q.weight",
        "k.weight",
    }
    prune_exact(model, 0.5)


def test_constant_left_matmul():
    b = Builder()
    x = b.input([1, 6, 8])
    h = b.matmul(x, 8, 10, bias=False, name="fc")  # [1, 6, 10], channels on the last axis
    mixed = b.op("MatMul", [b.rand([4, 6], "mix"), h])  # mixes rows, keeps columns
    model = b.build([b.matmul(b.relu(mixed), 10, 3, bias=False, name="head")])
    prune_exact(model, 0.5)


def test_gemm_bias_full_matrix():
    b = Builder()
    x = b.input([2, 10])
    h = b.op("Gemm", [x, b.rand([10, 12], "fc1.weight"), b.rand([2, 12], "fc1.bias")], name="fc1")
    model = b.build([b.gemm(b.relu(h), 12, 3, name="fc2")])
    _pruned, plan = prune_exact(model, 0.5)
    assert {c.name: c.axis for c in plan.params}["fc1.bias"] == 1
    assert np.isfinite(1.0)


def test_weight_through_transpose_node():
    """Without constant folding torch writes MatMul(x, Transpose(W)) for a Linear layer."""
    b = Builder()
    x = b.input([1, 5, 8])
    w1 = b.op("Transpose", [b.rand([16, 8], "fc1.weight")], perm=[1, 0])
    h = b.relu(b.op("MatMul", [x, w1], name="fc1"))
    w2 = b.op("Transpose", [b.rand([4, 16], "fc2.weight")], perm=[1, 0])
    model = b.build([b.op("MatMul", [h, w2], name="fc2")])
    pruned, _ = prune_exact(model, 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert sorted(dims.values()) == [[4, 8], [8, 8]]
    assert_planted_dead(model)
