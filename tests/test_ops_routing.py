"""Concat, Split, Slice and Gather."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.structured.dependency import analyze
from onnxprune.testing.graphs import Builder, concat_block, split_block
from onnxprune.testing.oracles import assert_planted_dead, prune_exact


def test_concat_keeps_each_part_in_its_group():
    model = concat_block()
    groups = {g.id: g for g in analyze(model) if g.blocked_reason is None}
    assert set(groups) == {"branch_a", "branch_b"}
    head = next(m for m in groups["branch_b"].members if m.target == "head.weight")
    assert head.slot.tolist() == [-1] * 8 + list(range(12))  # offset map into the concat
    pruned, _plan = prune_exact(model, 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["head.weight"] == [4, 10, 3, 3] and dims["bn_cat.scale"] == [10]
    assert_planted_dead(model)


def test_concat_with_graph_input_blocks_only_through_coupling():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    a = b.relu(b.conv(x, 3, 8, name="a"))
    model = b.build([b.conv(b.op("Concat", [a, x], axis=1), 11, 2, name="head")])
    ids = {g.id: g.blocked_reason for g in analyze(model)}
    assert ids["a"] is None  # x's channels are simply never cut
    prune_exact(model, 0.5)


def test_concat_along_other_axis_couples_inputs():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    p, q = b.conv(x, 3, 8, name="p"), b.conv(x, 3, 8, name="q")
    model = b.build([b.conv(b.op("Concat", [p, q], axis=2), 8, 2, name="head")])
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    assert len(groups) == 1 and groups[0].slots == 8
    prune_exact(model, 0.5)


@pytest.mark.parametrize(("opset", "use_slice"), [(11, False), (13, False), (17, True), (9, True)])
def test_split_and_slice(opset, use_slice):
    if opset == 9:
        b = Builder(opset=9)
        x = b.input([1, 3, 6, 6])
        y = b.relu(b.conv(x, 3, 12, k=1, name="cv1"))
        y0 = b.op("Slice", [y], starts=[0], ends=[5], axes=[1])
        y1 = b.op("Slice", [y], starts=[5], ends=[100], axes=[1])
        model = b.build([b.conv(b.op("Concat", [y1, y0], axis=1), 12, 2, name="head")])
    else:
        model = split_block(opset=opset, use_slice=use_slice)
    _pruned, plan = prune_exact(model, 0.5)
    assert plan.groups
    assert_planted_dead(model)


def test_split_equal_parts_gets_explicit_sizes():
    b = Builder(opset=18)
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, 12, k=1, name="cv1")
    y0, y1 = b.op("Split", [y], n_out=2, axis=1, num_outputs=2)
    model = b.build([b.conv(b.op("Mul", [y0, b.op("Sigmoid", [y1])]), 6, 2, name="head")])
    pruned, _plan = prune_exact(model, 0.5)
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    assert len(split.input) == 2 and not any(a.name == "num_outputs" for a in split.attribute)


def test_split_keeps_one_channel_in_each_part():
    from onnxprune.structured.engine import StructuredOptions, prune_structured

    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, 12, k=1, name="cv1")
    y0, y1 = b.op("Split", [y, b.ints([2, 10])], n_out=2, axis=1)
    model = b.build([b.conv(b.op("Concat", [y1, y0], axis=1), 12, 2, name="head")])
    # make the two channels of y0 the weakest: global pruning would otherwise empty y0
    w = next(t for t in model.graph.initializer if t.name == "cv1.weight")
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[:2] *= 1e-3
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    _pruned, res = prune_structured(model, StructuredOptions(ratio=0.8, scope="global", round_to=1))
    (g,) = res.groups
    assert g.channels_after >= 2 and any(k < 2 for k in g.kept)


def test_slice_with_step_on_channels_blocks():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, 8, name="p")
    s = b.op("Slice", [y, b.ints([0]), b.ints([8]), b.ints([1]), b.ints([2])])
    model = b.build([b.conv(s, 4, 2, name="head")])
    assert "step" in next(g for g in analyze(model) if g.id == "p").blocked_reason


def test_slice_on_spatial_axis_passes():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, 8, name="p")
    s = b.op("Slice", [y, b.ints([1, 1]), b.ints([5, 5]), b.ints([2, 3])])
    prune_exact(b.build([b.conv(s, 8, 2, name="head")]), 0.5)


def test_gather_on_token_axis_passes():
    b = Builder()
    x = b.input([1, 5, 8])
    h = b.relu(b.matmul(x, 8, 16, name="fc1"))
    cls = b.op("Gather", [h, b.const(np.int64(0))], axis=1)
    model = b.build([b.gemm(cls, 16, 3, name="head")])
    prune_exact(model, 0.5)


def test_torch_chunk_with_bounds_computed_from_shape():
    """torch exports x.chunk(2, dim=1) as Slices whose bounds are (C + 1) // 2 * k from
    Shape(x); the rewrite writes the pruned bounds as constants."""
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.relu(b.conv(x, 3, 12, k=1, name="cv1"))
    c = b.op("Gather", [b.op("Shape", [y]), b.ints([1])], axis=0)
    half = b.op("Div", [b.op("Add", [c, b.ints([1])]), b.ints([2])])
    y0 = b.op("Slice", [y, b.ints([0]), b.op("Mul", [half, b.ints([1])]), b.ints([1])])
    y1 = b.op(
        "Slice",
        [y, b.op("Mul", [half, b.ints([1])]), b.op("Mul", [half, b.ints([2])]), b.ints([1])],
    )
    z = b.conv(y1, 6, 6, name="z")
    model = b.build([b.conv(b.op("Concat", [y0, z], axis=1), 12, 2, name="head")])
    pruned, plan = prune_exact(model, 0.5)
    assert {g.id for g in plan.groups} == {"cv1", "z"}
    assert not any(n.op_type == "Div" for n in pruned.graph.node)  # the arithmetic is gone


def test_shape_arithmetic_sizing_another_tensor_blocks():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.relu(b.conv(x, 3, 12, k=1, name="cv1"))
    other = b.relu(b.conv(x, 3, 12, k=1, name="other"))
    half = b.op("Div", [b.op("Gather", [b.op("Shape", [y]), b.ints([1])], axis=0), b.ints([2])])
    part = b.op("Slice", [other, b.ints([0]), half, b.ints([1])])
    model = b.build([b.conv(y, 12, 2, name="h1"), b.conv(part, 6, 2, name="h2")])
    reason = next(g for g in analyze(model) if g.id == "cv1").blocked_reason
    assert "read at run time" in reason
