"""Magnitude and N:M pruning: exact fractions, patterns in every group, what is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import UsageError
from onnxprune.options import parse_nm
from onnxprune.unstructured.magnitude import (
    find_prunable_weights,
    nm_mask,
    prune_unstructured,
    satisfies_nm,
)


def _model(nodes, inits, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def conv_gemm_model(seed: int = 0, cin: int = 8, cout: int = 16) -> onnx.ModelProto:
    """Conv(cin->cout, 3x3) + bias -> Relu -> GlobalAveragePool -> Flatten -> Gemm(transB) + MatMul."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(cout, cin, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(rng.normal(size=(cout,)).astype(np.float32), "conv.b"),
        numpy_helper.from_array(rng.normal(size=(12, cout)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(size=(12,)).astype(np.float32), "fc.b"),
        numpy_helper.from_array(rng.normal(size=(12, 8)).astype(np.float32), "mm.w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["g"], name="fc", transB=1),
        helper.make_node("MatMul", ["g", "mm.w"], ["y"], name="mm"),
    ]
    return _model(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )


def arrays(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_finds_weights_with_their_reduction_axes_and_leaves_biases():
    sel = find_prunable_weights(conv_gemm_model())
    axes = {r.name: r.reduction_axis for r in sel.weights}
    assert axes == {"conv.w": 1, "fc.w": 1, "mm.w": 0}


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.8, 0.95])
def test_local_zeroes_exact_fraction_of_every_tensor(ratio):
    model = conv_gemm_model()
    pruned, result = prune_unstructured(model, ratio=ratio, scope="local")
    before, after = arrays(model), arrays(pruned)
    for name in ("conv.w", "fc.w", "mm.w"):
        w = after[name]
        assert np.count_nonzero(w == 0) == round(ratio * w.size)
        # the survivors are exactly the largest-magnitude ones
        kept = np.abs(before[name][w != 0])
        dropped = np.abs(before[name][w == 0])
        if kept.size and dropped.size:
            assert kept.min() >= dropped.max()
        # kept weights are unchanged
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])
    # biases untouched, input model untouched
    np.testing.assert_array_equal(after["conv.b"], before["conv.b"])
    assert np.count_nonzero(arrays(model)["conv.w"] == 0) == 0
    assert result.zeroed == sum(round(ratio * before[n].size) for n in ("conv.w", "fc.w", "mm.w"))


def test_global_ranks_all_weights_together():
    model = conv_gemm_model()
    # make the MatMul weights tiny so a global ranking takes them first
    inits = {t.name: t for t in model.graph.initializer}
    small = numpy_helper.to_array(inits["mm.w"]) * 1e-3
    inits["mm.w"].CopyFrom(numpy_helper.from_array(small, "mm.w"))
    pruned, _ = prune_unstructured(model, ratio=0.3, scope="global")
    after = arrays(pruned)
    total = sum(after[n].size for n in ("conv.w", "fc.w", "mm.w"))
    zeros = sum(np.count_nonzero(after[n] == 0) for n in ("conv.w", "fc.w", "mm.w"))
    assert zeros == round(0.3 * total)
    assert np.all(after["mm.w"] == 0)  # 96 tiny weights < 30% of 1440 go first
    assert 0 < np.count_nonzero(after["conv.w"] == 0) < after["conv.w"].size


@settings(max_examples=60, deadline=None)
@given(
    n_m=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (2, 8), (4, 8)]),
    rows=st.integers(1, 6),
    groups=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    axis=st.sampled_from([0, 1]),
)
def test_nm_mask_keeps_exactly_n_largest_in_every_group(n_m, rows, groups, seed, axis):
    n, m = n_m
    shape = (groups * m, rows) if axis == 0 else (rows, groups * m)
    w = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    keep = nm_mask(np.abs(w), axis, n, m)
    pruned = np.where(keep, w, 0)
    assert satisfies_nm(pruned, axis, n, m)
    moved = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
    kmoved = np.moveaxis(keep, axis, -1).reshape(-1, m)
    assert (kmoved.sum(axis=1) == n).all()
    for vals, k in zip(moved, kmoved, strict=True):
        assert vals[k].min() >= vals[~k].max()


def test_nm_on_model_follows_reduction_axes_and_skips_indivisible():
    model = conv_gemm_model(cin=8, cout=16)  # conv Cin=8, fc K=16 (transB: axis 1), mm K=12
    pruned, _ = prune_unstructured(model, nm="2:4")
    after = arrays(pruned)
    assert satisfies_nm(after["conv.w"], 1, 2, 4)
    assert satisfies_nm(after["fc.w"], 1, 2, 4)
    assert satisfies_nm(after["mm.w"], 0, 2, 4)  # 12 is a multiple of 4
    assert np.count_nonzero(after["conv.w"]) == after["conv.w"].size // 2
    _, result8 = prune_unstructured(model, nm="2:8")
    skipped = {s["tensor"] for s in result8.skipped}
    assert "mm.w" in skipped  # 12 % 8 != 0
    assert "conv.w" not in skipped


def test_nm_on_conv_groups_run_along_input_channels_not_flattened():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 8, 3, 3)).astype(np.float32)
    keep = nm_mask(np.abs(w), 1, 2, 4)
    for co in range(4):
        for i in range(3):
            for j in range(3):
                for g in range(2):
                    assert keep[co, 4 * g : 4 * g + 4, i, j].sum() == 2


@pytest.mark.parametrize("spec", ["2-4", "4:2", "0:4", "2:2", "a:b", "2:4:8", "", "2:"])
def test_malformed_nm_is_usage_error(spec):
    with pytest.raises(UsageError):
        parse_nm(spec)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_out_of_range_is_usage_error(ratio):
    with pytest.raises(UsageError):
        prune_unstructured(conv_gemm_model(), ratio=ratio)


def test_exclude_glob_on_node_or_tensor_name():
    model = conv_gemm_model()
    pruned, result = prune_unstructured(model, ratio=0.5, exclude=["fc*", "mm.w"])
    after = arrays(pruned)
    assert np.count_nonzero(after["fc.w"] == 0) == 0
    assert np.count_nonzero(after["mm.w"] == 0) == 0
    assert np.count_nonzero(after["conv.w"] == 0) == round(0.5 * after["conv.w"].size)
    assert {s["tensor"] for s in result.skipped} >= {"fc.w", "mm.w"}


def test_quantized_weights_are_zeroed_at_their_zero_point():
    """Since issue 12 an int8 weight read through DequantizeLinear is selected and zeroed in
    the integer domain (it used to be left untouched and counted as quantized)."""
    wq = numpy_helper.from_array(np.arange(-32, 32, dtype=np.int8).reshape(4, 16), "wq")
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    inits = [
        wq,
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(3, np.int8), "z"),
    ]
    model = _model(
        nodes,
        inits,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])],
    )
    sel = find_prunable_weights(model)
    assert [w.name for w in sel.weights] == ["w"] and sel.quantized_ops == {}
    pruned, _ = prune_unstructured(model, ratio=0.5)
    q = next(numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name == "wq")
    assert q.dtype == np.int8 and np.count_nonzero(q == 3) == 32


def test_float16_weights_keep_their_dtype():
    model = conv_gemm_model()
    for t in model.graph.initializer:
        if t.name == "mm.w":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), "mm.w"))
    pruned, _ = prune_unstructured(model, ratio=0.5)
    w = arrays(pruned)["mm.w"]
    assert w.dtype == np.float16
    assert np.count_nonzero(w == 0) == round(0.5 * w.size)
