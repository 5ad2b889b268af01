"""Registering op specs from outside the package: the worked example of ``onnxprune.ops``.

Two ops onnxprune does not know, each shown blocked without its spec and pruned exactly
(``onnxprune.testing.oracles.prune_exact``: onnxruntime runs both models) with it:

* ``Atan``, a standard op with no rule: one spec makes it channel-wise;
* ``my.domain.Dense``, a custom-domain weighted layer ``x @ W + b`` (a model-local function,
  so onnxruntime can run it): one spec gives it a rule, a weight, a MAC formula and a
  linear-layer view, and pruning, unstructured selection, metrics and recovery's layer
  finder all pick it up.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import ops
from onnxprune.metrics.counts import count_macs
from onnxprune.ops.linear import DenseLinear
from onnxprune.ops.macs import matmul_macs
from onnxprune.recovery.layers import find_layers
from onnxprune.structured.dependency import analyze
from onnxprune.testing.graphs import Builder
from onnxprune.testing.oracles import prune_exact
from onnxprune.unstructured.magnitude import find_prunable_weights

# ---- the "one file": a spec for each op ------------------------------------------------


class ChannelWise(ops.Rule):
    """Output channel c reads input channel c only."""

    def propagate(self, node, ctx):
        x = ctx.inp(0)
        if x is not None:
            ctx.set_out(0, x.axis, x.ids)


ATAN = ops.OpSpec("Atan", rule=ChannelWise())

DOMAIN = "my.domain"


class DenseRule(ops.Rule):
    """``x [N, K] @ W [K, M] + b [M]``: input channels are W's rows, output channels fresh."""

    def propagate(self, node, ctx):
        if not (ctx.is_const(1) and ctx.is_const(2)):
            ctx.block_inputs("Dense with a computed weight or bias is not followed")
            return
        x = ctx.inp(0)
        if x is not None and x.axis == 1:
            ctx.bind(1, 0, x.ids, "in")
        else:
            if x is not None:
                ctx.block(x.ids, "Dense reads its features on axis 1")
            ctx.claim(1)
        ids = ctx.source(1, 1)
        ctx.bind(2, 0, ids, "chan")
        ctx.set_out(0, 1, ids, 2)


def dense_weight(node, inits):
    """W [K, M] reduces over K (axis 0)."""
    return (node.input[1], 0) if node.input[1] in inits else None


class DenseView(DenseLinear):
    bias_input = 2

    def layer(self, node, view, inits, bias):
        return {"bias": bias} if len(inits[node.input[1]].dims) == 2 else None


DENSE = ops.OpSpec(
    "Dense",
    DOMAIN,
    rule=DenseRule(),
    weight=dense_weight,
    macs=matmul_macs,
    linear=DenseView(),
)

# ---- the tiny graphs -------------------------------------------------------------------


def conv_atan_conv() -> onnx.ModelProto:
    b = Builder(seed=3)
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, 8, name="conv1")
    y = b.op("Atan", [y])
    y = b.conv(y, 8, 4, name="conv2")
    return b.build([y])


def dense_mlp(dims=(8, 16, 4), seed: int = 0) -> onnx.ModelProto:
    """x -> Dense -> Relu -> Dense, with Dense a model-local function of my.domain."""
    rng = np.random.default_rng(seed)
    fn = helper.make_function(
        DOMAIN,
        "Dense",
        ["x", "w", "b"],
        ["y"],
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        [helper.make_opsetid("", 17)],
    )
    nodes, inits, y = [], [], "x"
    for k in range(len(dims) - 1):
        w = rng.standard_normal((dims[k], dims[k + 1])).astype(np.float32) * dims[k] ** -0.5
        inits += [
            numpy_helper.from_array(w, f"fc{k + 1}.weight"),
            numpy_helper.from_array(rng.standard_normal(dims[k + 1]).astype(np.float32) * 0.1, f"fc{k + 1}.bias"),
        ]  # fmt: skip
        out = f"fc{k + 1}_out"
        nodes.append(
            helper.make_node("Dense", [y, f"fc{k + 1}.weight", f"fc{k + 1}.bias"], [out],
                             name=f"fc{k + 1}", domain=DOMAIN)
        )  # fmt: skip
        y = out
        if k < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [y], [f"relu{k + 1}"]))
            y = f"relu{k + 1}"
    graph = helper.make_graph(
        nodes, "dense_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, dims[0]])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, dims[-1]])],
        inits,
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
        functions=[fn],
    )
    model.ir_version = 8
    return model


# ---- the oracle tests ------------------------------------------------------------------


def _reason(model: onnx.ModelProto, group: str) -> str | None:
    return {g.id: g for g in analyze(model)}[group].blocked_reason


def test_a_standard_op_without_a_rule_blocks_until_registered():
    model = conv_atan_conv()
    assert "Atan is not supported" in _reason(model, "conv1")
    with ops.registered(ATAN):
        assert _reason(model, "conv1") is None
        pruned, _ = prune_exact(model)
        conv1 = next(t for t in pruned.graph.initializer if t.name == "conv1.weight")
        assert list(conv1.dims) == [4, 3, 3, 3]
    assert "Atan is not supported" in _reason(model, "conv1")  # nothing leaked


def test_a_custom_weighted_op_prunes_exactly_with_its_spec():
    model = dense_mlp()
    assert analyze(model) == []  # no rule: Dense produces no channels, nothing is prunable
    prune_exact(model, expect_pruned=False)
    assert find_prunable_weights(model).weights == []
    assert count_macs(model)[0] == 0
    with ops.registered(DENSE):
        assert _reason(model, "fc1") is None
        pruned, _ = prune_exact(model)
        shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
        assert shapes["fc1.weight"] == [8, 8] and shapes["fc2.weight"] == [8, 4]
        assert shapes["fc1.bias"] == [8]
        sel = find_prunable_weights(model, min_elements=1)
        assert [(w.name, w.reduction_axis) for w in sel.weights] == [
            ("fc1.weight", 0),
            ("fc2.weight", 0),
        ]
        assert count_macs(model)[0] == 2 * (8 * 16 + 16 * 4)
        layers = find_layers(model)
        assert [(lay.op, lay.weight, lay.bias, lay.bias_input) for lay in layers] == [
            ("Dense", "fc1.weight", "fc1.bias", 2),
            ("Dense", "fc2.weight", "fc2.bias", 2),
        ]
        w = numpy_helper.to_array(
            next(t for t in model.graph.initializer if t.name == "fc1.weight")
        )
        assert np.array_equal(layers[0].unmatrix(layers[0].matrix(w), w), w)
    assert analyze(model) == []


def test_registry_refuses_a_second_spec_unless_it_overrides():
    reg = ops.default_registry()
    with pytest.raises(ValueError, match="two specs for Relu"):
        reg.register(ops.OpSpec("Relu", rule=ChannelWise()))
    reg.register(ops.OpSpec("Relu", rule=ChannelWise()), override=True)
    assert isinstance(reg.lookup("", "Relu").rule, ChannelWise)
    assert not isinstance(ops.active().lookup("", "Relu").rule, ChannelWise)  # a copy


def test_lookups_respect_domain_and_opset_ranges():
    old = ops.OpSpec("Atan", rule=ChannelWise(), until=12)
    with ops.registered(old):
        assert ops.active().lookup("ai.onnx", "Atan", 11) is old  # "" and ai.onnx are one
        assert ops.active().lookup("", "Atan", 13) is None
        assert ops.active().lookup("my.domain", "Atan", 11) is None
        node = helper.make_node("Atan", ["x"], ["y"])
        assert ops.rule_for(node, {"": 11}) is old.rule
        assert ops.rule_for(node, {"": 17}) is None
    new = ops.OpSpec("Atan", rule=ChannelWise(), since=13)
    with ops.registered(old, new):
        assert ops.active().lookup("", "Atan", 17) is new
        assert ops.active().lookup("", "Atan") is new  # no opset: the latest
