"""Conv and ConvTranspose: plain, depthwise, grouped (whole groups), transposed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.structured.dependency import analyze
from onnxprune.testing.graphs import (
    Builder,
    conv_bn_relu,
    depthwise_block,
    grouped_block,
    unet_block,
)
from onnxprune.testing.oracles import assert_planted_dead, prune_exact


def _attr(model: onnx.ModelProto, node: str, name: str):
    n = next(n for n in model.graph.node if n.name == node)
    return next(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == name)


def _dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def test_conv_bn_relu_members_and_shapes():
    model = conv_bn_relu(c_mid=16)
    (g,) = [g for g in analyze(model) if g.blocked_reason is None]
    labels = {m.label for m in g.params}
    assert {
        "conv1.weight[out]",
        "conv1.bias",
        "bn1.scale",
        "bn1.mean",
        "conv2.weight[in]",
    } <= labels
    pruned, _plan = prune_exact(model, 0.25)
    dims = _dims(pruned)
    assert dims["conv1.weight"] == [12, 3, 3, 3]
    assert dims["bn1.var"] == [12]
    assert dims["conv2.weight"] == [8, 12, 3, 3]
    assert_planted_dead(model)


def test_conv_without_bias():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.relu(b.conv(x, 3, 8, bias=False, name="a"))
    prune_exact(b.build([b.conv(y, 8, 2, bias=False, name="b")]), 0.5)


def test_depthwise_passes_channels_through():
    model = depthwise_block()
    (g,) = [g for g in analyze(model) if g.blocked_reason is None]
    assert {m.target for m in g.members if m.role == "out"} == {"expand.weight", "dw.weight"}
    pruned, _ = prune_exact(model, 0.5)
    assert _attr(pruned, "dw", "group") == 8
    assert _dims(pruned)["dw.weight"] == [8, 1, 3, 3]
    assert_planted_dead(model)


def test_depthwise_with_multiplier():
    model = depthwise_block(multiplier=2)
    pruned, _plan = prune_exact(model, 0.5)
    assert _attr(pruned, "dw", "group") == 8
    assert _dims(pruned)["dw.weight"] == [16, 1, 3, 3]
    assert _dims(pruned)["project.weight"] == [4, 16, 1, 1]


def test_grouped_conv_removes_whole_groups():
    model = grouped_block(groups=4)
    groups = {g.id: g for g in analyze(model) if g.blocked_reason is None}
    assert groups["reduce"].slots == 4 and groups["reduce"].width == 4
    pruned, _plan = prune_exact(model, 0.5)
    assert _attr(pruned, "grouped", "group") == 2
    assert _dims(pruned)["grouped.weight"] == [8, 4, 3, 3]
    assert _dims(pruned)["reduce.weight"] == [8, 3, 1, 1]
    assert_planted_dead(model)


def test_grouped_round_to_counts_channels_not_groups():
    model = grouped_block(groups=4)
    from onnxprune.structured.engine import StructuredOptions, prune_structured

    _, res = prune_structured(model, StructuredOptions(ratio=0.5, round_to=8))
    (g,) = res.groups
    assert g.channels_after == 8 and g.channels_after % 8 == 0


def test_convtranspose_and_skip_concat():
    model = unet_block()
    ids = {g.id for g in analyze(model) if g.blocked_reason is None}
    assert ids == {"enc1", "enc2", "up", "dec"}
    pruned, _ = prune_exact(model, 0.5)
    assert _dims(pruned)["up.weight"] == [8, 4, 2, 2]
    assert_planted_dead(model)


@pytest.mark.parametrize("groups", [2, 4])
def test_grouped_convtranspose(groups):
    b = Builder()
    x = b.input([1, 3, 4, 4])
    a = b.relu(b.conv(x, 3, 8, k=1, name="a"))
    up = b.conv_t(a, 8, 8, group=groups, name="up")
    model = b.build([b.conv(b.relu(up), 8, 2, k=1, name="head")])
    pruned, _ = prune_exact(model, 0.5)
    assert _attr(pruned, "up", "group") == groups // 2


def test_computed_weight_blocks():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, 8, name="a")
    w = b.op("Neg", [b.rand([4, 8, 1, 1], "w")])
    model = b.build([b.op("Conv", [y, w], kernel_shape=[1, 1])])
    (g,) = [g for g in analyze(model) if g.id == "a"]
    assert "computed at run time" in g.blocked_reason


def test_shared_weight_prunes_both_uses():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    w = b.rand([8, 3, 3, 3], "shared.weight")
    p = b.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="p")
    q = b.op("Conv", [b.op("Neg", [x]), w], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="q")
    model = b.build([b.conv(b.op("Concat", [p, q], axis=1), 16, 2, name="head")])
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    assert len(groups) == 1 and groups[0].slots == 8
    prune_exact(model, 0.5)


def test_weight_also_used_elsewhere_blocks():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    w = b.rand([8, 3, 3, 3], "w")
    y = b.op("Conv", [x, w], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="p")
    model = b.build([b.conv(y, 8, 2, name="head"), b.op("ReduceSum", [w], keepdims=0)])
    (g,) = [g for g in analyze(model) if g.id == "p"]
    assert "also used by" in g.blocked_reason


def test_random_weights_exact_for_several_seeds():
    for seed in range(3):
        prune_exact(conv_bn_relu(seed=seed), 0.3)
    assert np.isfinite(0.0)
