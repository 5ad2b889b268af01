"""Models as other exporters write them: jax2tf/tf2onnx constant weight chains, keras NHWC
Transpose sandwiches, PRelu/LeakyRelu/Max/Min activations, fp16/bf16 weights read through
Cast, and initializers also listed as graph inputs. Each is pruned and checked with the
exactness oracle (and onnxruntime runs the result)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import prune
from onnxprune.graph.load import load_model, needs_normalization, normalize_model
from onnxprune.testing.graphs import Builder, small_cnn
from onnxprune.testing.graphs.foreign import C, cast_weights, jax2tf_model, nhwc_block
from onnxprune.testing.oracles import (
    assert_close,
    assert_planted_dead,
    prune_exact,
    random_feeds,
    run,
)


def normalized(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A normalized copy (what load_model gives) that still computes what ``model`` does."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    assert needs_normalization(out)
    notes = normalize_model(out)
    onnx.checker.check_model(out, full_check=True)
    feeds = random_feeds(model)
    assert_close(run(model, feeds), run(out, feeds), 1e-6)
    return out, notes


def initializer_names(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


# ---- 1. constant chains in front of weights (jax2tf, tf2onnx) ----------------------------
def test_jax2tf_weight_chains_fold_into_initializers_and_prune_exactly():
    model = jax2tf_model()
    _, before = prune_exact(model, 0.5, expect_pruned=False)
    assert before.empty  # as exported, every weight looks computed at run time
    out, notes = normalized(model)
    assert any("4 weights computed from constants" in n for n in notes), notes
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Conv") == 2 and "Transpose" not in ops and "Squeeze" not in ops
    assert ops.count("Mul") == 0 and ops.count("Reshape") == 0  # the Flatten is computed
    inits = initializer_names(out)
    assert "k1_hwio" not in inits and "dense_flat" not in inits  # only the chains read them
    assert list(inits["k1_scale_out"].dims) == [C, 3, 3, 3]
    pruned, plan = prune_exact(out, 0.5)
    assert sum(g.channels_after < g.slots for g in plan.groups) == 2
    w = initializer_names(pruned)
    assert list(w["k1_scale_out"].dims) == [C // 2, 3, 3, 3]
    assert_planted_dead(out)


def test_jax2tf_weights_prune_through_the_api_with_the_fold_noted():
    result = prune(jax2tf_model(), structured=0.5, round_to=1, runs=3)  # validated in ort
    assert any("folded into initializers" in n for n in result.report.notes)
    assert result.report.structured.prunable


def test_an_unsorted_jax2tf_file_loads_folded_and_sorted(tmp_path):
    model = jax2tf_model()
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = tmp_path / "jax2tf.onnx"
    onnx.save(model, path)
    loaded = load_model(path)
    assert any("folded into initializers" in n for n in loaded.notes), loaded.notes
    assert any("sorted" in n for n in loaded.notes), loaded.notes
    assert loaded.model.graph.node[0].op_type == "Conv"
    prune_exact(loaded.model, 0.5)


def test_a_chain_read_inside_an_if_branch_stays_readable():
    model = jax2tf_model()
    graph = model.graph
    then = helper.make_graph(
        [helper.make_node("Identity", ["d_r_out"], ["then_out"])], "then", [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [C, 4])],
    )  # fmt: skip
    cond = numpy_helper.from_array(np.array(True), "cond")
    graph.initializer.append(cond)
    graph.node.append(
        helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=then)
    )
    graph.output.append(helper.make_tensor_value_info("branch", TensorProto.FLOAT, [C, 4]))
    out, _ = normalized(model)
    assert "d_r_out" in initializer_names(out)  # only the chain and the branch read it


def test_a_chain_result_that_is_also_a_graph_output_keeps_its_node():
    model = jax2tf_model(shared_view=True)
    out, _ = normalized(model)
    produced = {o for n in out.graph.node for o in n.output}
    assert "k1_scale_out" in produced  # still computed for the graph output
    inits = initializer_names(out)
    assert "k1_hwio" in inits  # the kept chain still reads its root


def test_an_intermediate_read_elsewhere_is_kept_for_that_reader():
    b = Builder(seed=2)
    x = b.input([1, 3, 6, 6])
    t = b.op("Transpose", [b.rand([3, 3, 3, C], "hwio", 0.3)], perm=[3, 2, 0, 1], name="t")
    w = b.op("Mul", [t, b.const(np.float32(0.5))], name="scaled")
    y = b.op("Conv", [x, w], pads=[1, 1, 1, 1], name="conv")
    z = b.op("Conv", [x, t], pads=[1, 1, 1, 1], name="conv_raw")  # reads the Transpose view
    y = b.op("Add", [b.relu(y), z])
    model = b.build([b.conv(y, C, 2, name="consumer")])
    out, notes = normalized(model)
    assert any("1 weight computed" in n for n in notes), notes
    assert [n.op_type for n in out.graph.node].count("Transpose") == 1
    prune_exact(out, 0.5)


@pytest.mark.parametrize("opset", [17, 19])  # the reference evaluator has DQ from 19 only
def test_weight_only_int8_and_fp16_chains_are_not_widened(opset):
    """Folding would store float32 in place of int8 (4x) or fp16 (2x): the int8 weight and
    its DequantizeLinear stay, the fp16 chain is folded only up to its Cast, in fp16."""
    b = Builder(opset=opset)
    x = b.input([2, 4])
    q = b.const(np.arange(-32, 32, dtype=np.int8).reshape(4, 16), "wq")
    w = b.op("DequantizeLinear", [q, b.const(np.float32(0.1)), b.const(np.int8(0))])
    h = b.const(np.ones((3, 16), np.float16), "w16")
    w2 = b.op("Transpose", [b.op("Reshape", [h, b.ints([3, 16])], name="r16")], perm=[1, 0])
    w2 = b.op("Cast", [w2], to=TensorProto.FLOAT)
    model = b.build([b.op("MatMul", [b.op("MatMul", [x, w]), w2])])
    out, notes = normalized(model)
    assert any("1 weight computed" in n for n in notes), notes
    assert [n.op_type for n in out.graph.node] == ["DequantizeLinear", "Cast", "MatMul", "MatMul"]
    types = {t.name: t.data_type for t in out.graph.initializer if len(t.dims) == 2}
    assert sorted(types.values()) == [TensorProto.INT8, TensorProto.FLOAT16]
    assert out.ByteSize() <= model.ByteSize()


# ---- 2. keras / tf2onnx NHWC Transpose sandwiches -----------------------------------------
def test_nhwc_sandwich_prunes_exactly_with_last_axis_constants_sliced():
    pruned, plan = prune_exact(nhwc_block(), 0.5)
    assert [(g.id, g.channels_after) for g in plan.groups] == [("producer", 4)]
    inits = initializer_names(pruned)
    assert list(inits["bias_add"].dims) == [4] and list(inits["scale"].dims) == [4]
    assert list(inits["consumer.weight"].dims) == [2, 4, 1, 1]
    assert_planted_dead(nhwc_block())


def test_nhwc_global_pool_into_dense_prunes_exactly():
    """keras GlobalAveragePooling2D in NHWC (ReduceMean over H, W) then a Dense MatMul."""
    b = Builder(seed=8)
    x = b.input([1, 6, 6, 3], "x_nhwc")
    y = b.op("Transpose", [x], perm=[0, 3, 1, 2])
    y = b.conv(y, 3, C, name="producer")
    y = b.relu(b.op("Transpose", [y], perm=[0, 2, 3, 1]))
    y = b.op("ReduceMean", [y], axes=[1, 2], keepdims=0)
    model = b.build([b.matmul(y, C, 3, name="dense")])
    pruned, _ = prune_exact(model, 0.5)
    assert list(initializer_names(pruned)["dense.weight"].dims) == [4, 3]


# ---- 3. PRelu / LeakyRelu / Max / Min, channel-wise --------------------------------------
ACTIVATIONS = {
    "prelu_last_axis": [("PRelu", [np.linspace(0.05, 0.4, C, dtype=np.float32)])],
    "prelu_11c": [("PRelu", [np.linspace(0.05, 0.4, C, dtype=np.float32).reshape(1, 1, C)])],
    "prelu_scalar": [("PRelu", [np.array([0.2], np.float32)])],
    "max_scalar": [("Max", [np.float32(0.0)])],
    "min_scalar": [("Min", [np.float32(6.0)])],
    "relu6": [("Max", [np.float32(0.0)]), ("Min", [np.float32(6.0)])],
    "max_per_channel": [("Max", [np.linspace(-0.2, 0.2, C, dtype=np.float32)])],
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activations_in_nhwc_prune_exactly(name):
    model = nhwc_block(ACTIVATIONS[name])
    _, plan = prune_exact(model, 0.5)
    assert plan.groups[0].channels_after == 4
    per_channel = [c for c in plan.params if c.role == "chan"]
    sliced = {c.name for c in per_channel}
    assert {"bias_add", "scale"} <= sliced
    expect = name in ("prelu_last_axis", "prelu_11c", "max_per_channel")
    assert (len(sliced) == 3) == expect, sliced


def test_leaky_relu_and_prelu_nchw_slope_prune_exactly():
    b = Builder(seed=4)
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, C, name="producer")
    y = b.op("LeakyRelu", [y], alpha=0.2)
    y = b.op("PRelu", [y, b.rand([C, 1, 1], "slope", 0.2, positive=True)])
    model = b.build([b.conv(y, C, 2, name="consumer")])
    pruned, _ = prune_exact(model, 0.5)
    assert list(initializer_names(pruned)["slope"].dims) == [4, 1, 1]
    assert_planted_dead(model)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_of_two_branches_couple_them(op):
    b = Builder(seed=5)
    x = b.input([1, 3, 6, 6])
    p = b.conv(x, 3, C, name="producer")
    q = b.conv(x, 3, C, name="other")
    y = b.op(op, [p, q])
    model = b.build([b.conv(y, C, 2, name="consumer")])
    _, plan = prune_exact(model, 0.5)
    assert len(plan.groups) == 1 and plan.groups[0].channels_after == 4
    outs = {c.name for c in plan.params if c.role == "out"}
    assert {"producer.weight", "other.weight"} <= outs  # both producers lose the same filters


# ---- 4. fp16 / bf16 weights read through Cast ---------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "elem"),
    [(np.float16, TensorProto.FLOAT16), (ml_dtypes.bfloat16, TensorProto.BFLOAT16)],
    ids=["fp16", "bf16"],
)
def test_low_precision_weights_are_sliced_in_their_own_dtype(dtype, elem):
    model = cast_weights(dtype, elem)
    pruned, plan = prune_exact(model, 0.5)
    assert plan.groups[0].channels_after == 4
    inits = initializer_names(pruned)
    low = {n: t for n, t in inits.items() if t.data_type == elem}
    assert len(low) == len(inits) == 3  # nothing widened to float32, nothing left over
    dims = sorted(list(t.dims) for t in low.values())
    assert dims == [[2, 4, 1, 1], [4], [4, 3, 3, 3]]
    assert [n.op_type for n in pruned.graph.node].count("Cast") == 3
    assert pruned.ByteSize() < model.ByteSize()


def test_fp16_chain_before_a_cast_is_folded_in_fp16_and_the_cast_kept():
    """tf2onnx with mixed precision: fp16 HWIO kernel -> Transpose -> Reshape -> Cast."""
    b = Builder(seed=7)
    x = b.input([1, 3, 6, 6])
    k = (b.rng.standard_normal([3, 3, 3, C]) * 0.3).astype(np.float16)
    t = b.op("Transpose", [b.const(k, "hwio16")], perm=[3, 2, 0, 1])
    t = b.op("Reshape", [t, b.ints([C, 3, 3, 3])], name="w16")
    w = b.op("Cast", [t], to=TensorProto.FLOAT, name="w32")
    y = b.relu(b.op("Conv", [x, w], pads=[1, 1, 1, 1], name="producer"))
    model = b.build([b.conv(y, C, 2, name="consumer")])
    out, notes = normalized(model)
    assert any("1 weight computed" in n for n in notes), notes
    assert [n.op_type for n in out.graph.node][:2] == ["Cast", "Conv"]
    assert initializer_names(out)["w16_out"].data_type == TensorProto.FLOAT16
    pruned, plan = prune_exact(out, 0.5)
    assert plan.groups[0].channels_after == 4
    w16 = [t for t in pruned.graph.initializer if t.data_type == TensorProto.FLOAT16]
    assert [list(t.dims) for t in w16] == [[4, 3, 3, 3]]


def test_fp16_weights_through_the_api_keep_their_dtype():
    model = cast_weights(np.float16, TensorProto.FLOAT16)
    result = prune(model, structured=0.5, round_to=1, runs=3)
    types = {t.data_type for t in result.model.graph.initializer}
    assert types == {TensorProto.FLOAT16}
    assert result.report.structured.prunable


# ---- 5. initializers also listed as graph inputs ------------------------------------------
def initializers_as_inputs(ir: int) -> onnx.ModelProto:
    model = small_cnn()
    listed = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if t.name not in listed:
            model.graph.input.append(
                helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            )
    model.ir_version = ir
    return model


@pytest.mark.parametrize("ir", [8, 3])
def test_initializers_listed_as_inputs_become_prunable_weights(ir):
    model = initializers_as_inputs(ir)
    n_inits = len(model.graph.initializer)
    _, plan = prune_exact(model, 0.5, expect_pruned=False)
    assert plan.empty  # as exported, every weight is overridable: nothing may be cut
    out, notes = normalized(model)
    assert any(f"{n_inits} initializers also listed as graph inputs" in n for n in notes), notes
    assert [i.name for i in out.graph.input] == ["x"]
    assert out.ir_version == max(ir, 4)
    _, plan = prune_exact(out, 0.5)
    assert not plan.empty
    result = prune(model, structured=0.5, round_to=1, runs=3)  # validated in onnxruntime
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert any("graph inputs" in n for n in result.report.notes)


def test_a_few_initializer_inputs_are_overridable_defaults_and_stay():
    model = small_cnn()
    t = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    normalize_model(out)
    assert [i.name for i in out.graph.input] == [i.name for i in model.graph.input]
