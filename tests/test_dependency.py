"""The analysis itself: how groups form, merge, and block."""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune import ops
from onnxprune.graph.view import GraphView
from onnxprune.structured.dependency import analyze
from onnxprune.testing.graphs import Builder, concat_block, conv_bn_relu, residual_block
from onnxprune.testing.oracles import prune_exact


def _groups(model):
    return {g.id: g for g in analyze(model)}


def test_residual_add_merges_producers():
    groups = _groups(residual_block())
    outs = {
        gid: sorted(m.target for m in g.members if m.role == "out") for gid, g in groups.items()
    }
    assert outs["c2"] == ["c2.weight", "down.weight"]
    assert groups["stem"].blocked_reason is None and groups["c1"].blocked_reason is None
    assert groups["c2"].slots == 32


def test_identity_shortcut_joins_stem_and_block():
    groups = _groups(residual_block(downsample=False))
    assert sorted(m.target for m in groups["stem"].members if m.role == "out") == [
        "c2.weight",
        "stem.weight",
    ]
    assert "c2" not in groups


def test_every_member_maps_every_slot_once_per_position():
    for model in (residual_block(), concat_block(), conv_bn_relu()):
        for g in analyze(model):
            for m in g.members:
                assert m.slot.shape == (m.size,)
                assert m.slot.max() < g.slots
            out = [m for m in g.members if m.role == "out"]
            assert out, g.id
            # Together the producers cover every slot.
            covered = np.unique(np.concatenate([m.slot[m.slot >= 0] for m in out]))
            assert covered.tolist() == list(range(g.slots))


def test_graph_output_channels_are_never_pruned():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.relu(b.conv(x, 3, 8, name="a"))
    model = b.build([y, b.conv(y, 8, 2, name="head")])  # y is an output too
    g = _groups(model)["a"]
    assert "graph output" in g.blocked_reason
    _, res_plan = prune_exact(model, 0.5, expect_pruned=False)
    assert res_plan.empty


def test_unknown_domain_blocks_with_a_readable_reason():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, 8, name="a")
    b.nodes.append(
        onnx.helper.make_node("FancyAct", [y], ["fancy"], domain="com.example", name="fancy")
    )
    graph = onnx.helper.make_graph(
        b.nodes, "g", b.inputs, [onnx.helper.make_tensor_value_info("fancy", 1, None)], b.inits
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=[
            onnx.helper.make_opsetid("", 17),
            onnx.helper.make_opsetid("com.example", 1),
        ],
    )
    g = _groups(model)["a"]
    assert "com.example.FancyAct is not supported" in g.blocked_reason
    assert g.reasons[0][0] == "fancy"


def test_a_rule_that_forgets_an_input_blocks():
    class Forgetful(ops.Rule):
        def propagate(self, node, ctx):
            pass

    with ops.registered(ops.OpSpec("Relu", rule=Forgetful()), override=True):
        g = _groups(conv_bn_relu())["conv1"]
    assert "left input 0 unhandled" in g.blocked_reason


def test_unsorted_graph_is_walked_in_order():
    model = conv_bn_relu()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert [n.op_type for n in GraphView(model).nodes][:2] == ["Conv", "BatchNormalization"]
    assert _groups(model)["conv1"].blocked_reason is None


def test_single_channel_group_is_not_prunable():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    model = b.build([b.conv(b.relu(b.conv(x, 3, 1, name="one")), 1, 2, name="head")])
    assert "single channel" in _groups(model)["one"].blocked_reason


def test_names_for_exclusion():
    g = _groups(conv_bn_relu())["conv1"]
    assert {"conv1", "conv1.weight", "bn1.scale", "conv2"} <= g.names


def test_constant_sliced_for_one_node_and_read_whole_by_another_blocks():
    """One initializer is a BatchNorm scale (sliced) and a LayerNorm scale (read whole)."""
    b = Builder()
    x = b.input([1, 3, 6, 6])
    shared = b.const(np.linspace(0.5, 1.5, 8, dtype=np.float32), "shared")
    rest = [b.rand([8], positive=True) for _ in range(3)]
    y = b.op("BatchNormalization", [b.conv(x, 3, 8, name="p"), shared, *rest])
    t = b.op("Transpose", [b.conv(y, 8, 8, k=1, name="q")], perm=[0, 2, 3, 1])
    model = b.build([b.op("LayerNormalization", [t, shared], axis=-1)])
    assert "also used by" in _groups(model)["p"].blocked_reason
