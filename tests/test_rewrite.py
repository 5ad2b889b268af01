"""apply_plan: copies, rewrites and checks; never touches its input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.errors import OnnxPruneError
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.plan import Cut, Plan
from onnxprune.structured.rewrite import apply_plan
from onnxprune.testing.graphs import Builder, residual_block
from onnxprune.testing.oracles import prune_exact, random_feeds, session


def test_input_model_is_not_mutated():
    model = residual_block()
    before = model.SerializeToString()
    prune_structured(model, StructuredOptions(0.5, round_to=1))
    assert model.SerializeToString() == before


def test_shapes_are_reinferred_and_match_onnxruntime():
    # annotated first: the rewrite refreshes a model's own annotations and adds none
    pruned, _ = prune_exact(onnx.shape_inference.infer_shapes(residual_block()), 0.5)
    declared = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in pruned.graph.value_info
    }
    assert declared, "value_info was not re-inferred"
    names = list(declared)
    probe = onnx.ModelProto()
    probe.CopyFrom(pruned)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    got = session(probe).run(names, random_feeds(pruned))
    for n, v in zip(names, got, strict=True):
        assert list(v.shape) == declared[n], n


def test_constant_node_weights_are_sliced():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    w = onnx.numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    )
    b.nodes.append(onnx.helper.make_node("Constant", [], ["w"], value=w, name="wconst"))
    y = b.relu(b.op("Conv", [x, "w"], kernel_shape=[3, 3], name="p"))
    model = b.build([b.conv(y, 8, 2, name="head")])
    pruned, _ = prune_exact(model, 0.5)
    const = next(n for n in pruned.graph.node if n.op_type == "Constant")
    assert list(const.attribute[0].t.dims) == [4, 3, 3, 3]


def test_plan_that_does_not_fit_is_refused():
    plan = Plan(groups=[], params=[Cut("c1.weight", 0, 99, [0], "out")], tensors=[])
    with pytest.raises(OnnxPruneError, match="does not fit"):
        apply_plan(residual_block(), plan)
    plan = Plan(groups=[], params=[Cut("nope", 0, 4, [0], "out")], tensors=[])
    with pytest.raises(OnnxPruneError, match="not a constant"):
        apply_plan(residual_block(), plan)


def test_inconsistent_plan_fails_the_check():
    model = residual_block()
    plan = Plan(groups=[], params=[Cut("c1.weight", 0, 16, list(range(8)), "out")], tensors=[])
    with pytest.raises(OnnxPruneError, match=r"does not check|shape inference"):
        apply_plan(model, plan)


def test_names_order_and_metadata_are_kept():
    model = residual_block()
    model.doc_string = "keep me"
    onnx.helper.set_model_props(model, {"author": "test"})
    pruned, _ = prune_structured(model, StructuredOptions(0.5, round_to=1))
    assert [n.name for n in pruned.graph.node] == [n.name for n in model.graph.node]
    assert [t.name for t in pruned.graph.initializer] == [t.name for t in model.graph.initializer]
    assert pruned.doc_string == "keep me" and pruned.metadata_props[0].value == "test"


def test_identity_aliases_of_a_shared_constant_get_private_copies():
    """torch deduplicates equal initializers: bias2 = Identity(bias1), bias3 = Identity(bias1)."""
    b = Builder()
    x = b.input([1, 3, 6, 6])
    bias = b.const(np.linspace(-1, 1, 8, dtype=np.float32), "bias1")
    alias2 = b.op("Identity", [bias], name="alias2")
    alias3 = b.op("Identity", [bias], name="alias3")
    p = b.relu(b.op("Conv", [x, b.rand([8, 3, 3, 3], "p.w"), bias], kernel_shape=[3, 3], name="p"))
    q = b.relu(
        b.op("Conv", [p, b.rand([8, 8, 1, 1], "q.w"), alias2], kernel_shape=[1, 1], name="q")
    )
    r = b.op("Conv", [q, b.rand([8, 8, 1, 1], "r.w"), alias3], kernel_shape=[1, 1], name="r")
    model = b.build([r])  # r reaches the output: its alias keeps all 8 values
    pruned, plan = prune_exact(model, 0.5)
    assert {c.name for c in plan.params} >= {"bias1", "alias2_out"}
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    nodes = {n.name: n for n in pruned.graph.node}
    assert dims["bias1"] == [4]
    assert dims[nodes["alias2"].input[0]] == [4]
    assert dims[nodes["alias3"].input[0]] == [8]
