"""Element-wise rules: passthrough activations, per-channel constants, coupling of computed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.structured.dependency import analyze
from onnxprune.testing.graphs import Builder, chain, se_block
from onnxprune.testing.oracles import assert_planted_dead, prune_exact

C = 8
UNARY = [
    ("Relu", {}),
    ("LeakyRelu", {"alpha": 0.1}),
    ("Sigmoid", {}),
    ("HardSigmoid", {}),
    ("HardSwish", {}),
    ("Tanh", {}),
    ("Elu", {}),
    ("Selu", {}),
    ("Softplus", {}),
    ("Erf", {}),
    ("Identity", {}),
    ("Dropout", {}),
    ("Clip", {"_inputs": [np.float32(-0.5), np.float32(0.5)]}),
    ("Abs", {}),
    ("Neg", {}),
]


@pytest.mark.parametrize(("op", "attrs"), UNARY, ids=[u[0] for u in UNARY])
def test_unary_passthrough_is_exact(op, attrs):
    model = chain([(op, attrs)], c=C)
    _, plan = prune_exact(model, 0.5)
    assert [(g.id, g.channels_after) for g in plan.groups] == [("producer", 4)]


def test_gelu_op_opset20_and_cast_roundtrip():
    _, plan = prune_exact(chain([("Gelu", {})], opset=20), 0.5)
    assert plan.groups[0].channels_after == 4
    from onnx import TensorProto

    cast = [("Cast", {"to": TensorProto.DOUBLE}), ("Cast", {"to": TensorProto.FLOAT})]
    prune_exact(chain(cast), 0.5)


def test_prelu_slope_is_sliced():
    slope = np.linspace(0.05, 0.4, C, dtype=np.float32).reshape(C, 1, 1)
    pruned, plan = prune_exact(chain([("PRelu", {"_inputs": [slope]})]), 0.5)
    cut = [c for c in plan.params if c.role == "chan" and not c.name.endswith(".bias")]
    assert len(cut) == 1 and cut[0].size == C and len(cut[0].kept) == 4
    shapes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert shapes[cut[0].name] == [4, 1, 1]


def test_prelu_scalar_slope_is_kept_whole():
    prune_exact(chain([("PRelu", {"_inputs": [np.array([0.2], dtype=np.float32)]})]), 0.5)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shape", [(C, 1, 1), (1, C, 1, 1), (1,), ()])
def test_binary_with_constant(op, shape):
    value = np.linspace(0.5, 1.5, int(np.prod(shape)) or 1, dtype=np.float32).reshape(shape)
    _pruned, plan = prune_exact(chain([(op, {"_inputs": [value]})]), 0.5)
    sliced = [c for c in plan.params if c.role == "chan" and not c.name.endswith(".bias")]
    assert len(sliced) == (1 if C in shape else 0)


def test_constant_on_the_left_is_sliced_too():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, C, name="producer")
    y = b.op("Sub", [b.const(np.arange(C, dtype=np.float32).reshape(C, 1, 1)), y])
    model = b.build([b.conv(y, C, 2, name="consumer")])
    _, plan = prune_exact(model, 0.25)
    assert any(c.role == "chan" and not c.name.endswith(".bias") for c in plan.params)


def test_silu_is_one_group():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, C, name="producer")
    y = b.op("Mul", [y, b.op("Sigmoid", [y])])
    model = b.build([b.conv(y, C, 2, name="consumer")])
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    assert [g.id for g in groups] == ["producer"]
    prune_exact(model, 0.5)
    assert_planted_dead(model)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Max", "Min", "Sum", "Mean"])
def test_computed_inputs_couple(op):
    b = Builder()
    x = b.input([1, 3, 6, 6])
    p = b.conv(x, 3, C, name="p")
    q = b.conv(x, 3, C, name="q")
    y = b.op(
        op, [p, q, b.conv(x, 3, C, name="r")] if op in ("Sum", "Mean", "Max", "Min") else [p, q]
    )
    model = b.build([b.conv(b.relu(y), C, 2, name="consumer")])
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    assert len(groups) == 1
    outs = sorted(m.target for m in groups[0].members if m.role == "out")
    assert outs[:2] == ["p.weight", "q.weight"]
    prune_exact(model, 0.5)


def test_residual_with_graph_input_blocks_with_reason():
    b = Builder()
    x = b.input([1, C, 6, 6])
    y = b.op("Add", [b.conv(x, C, C, name="p"), x])
    model = b.build([b.conv(y, C, 2, name="consumer")])
    (g,) = [g for g in analyze(model) if g.id == "p"]
    assert g.blocked_reason is not None and "graph input" in g.blocked_reason


def test_broadcast_single_channel_does_not_couple():
    """A spatial attention map [N,1,H,W] times features [N,C,H,W]."""
    b = Builder()
    x = b.input([1, 3, 6, 6])
    f = b.conv(x, 3, C, name="feat")
    att = b.op("Sigmoid", [b.conv(x, 3, 1, name="att")])
    model = b.build([b.conv(b.op("Mul", [f, att]), C, 2, name="consumer")])
    ids = {g.id: g.blocked_reason for g in analyze(model)}
    assert ids["feat"] is None
    prune_exact(model, 0.5)


@pytest.mark.parametrize("gate", ["Sigmoid", "HardSigmoid"])
def test_squeeze_excitation(gate):
    model = se_block(gate=gate)
    groups = {g.id: g for g in analyze(model) if g.blocked_reason is None}
    assert set(groups) == {"feat", "se_reduce"}
    # The gate's producer joins the features' group: both sides of the Mul are one group.
    assert {m.target for m in groups["feat"].members if m.role == "out"} == {
        "feat.weight",
        "se_expand.weight",
    }
    prune_exact(model, 0.5)
    assert_planted_dead(model)
