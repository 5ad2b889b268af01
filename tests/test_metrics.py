"""Metrics on tiny hand-built graphs whose figures can be worked out on paper.

Each MAC test also runs the graph in onnxruntime and checks the output shape the hand
formula assumed, so a wrong expectation cannot hide behind a matching wrong implementation.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.metrics import counts as metrics
from onnxprune.metrics import size as metrics_size
from onnxprune.metrics.counts import (
    ModelMetrics,
    compressed_size,
    compute_metrics,
    count_macs,
    count_params,
)
from onnxprune.metrics.macs import node_macs as _node_macs
from onnxprune.ops.macs import Dims as _Dims

RNG = np.random.default_rng(0)


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def weight(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def ort_output_shape(model: onnx.ModelProto, feeds: dict[str, tuple[int, ...]]) -> tuple:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    arrays = {k: np.ones(s, np.float32) for k, s in feeds.items()}
    return sess.run(None, arrays)[0].shape


# ---- MACs ------------------------------------------------------------------------------------


def conv_model():
    # N=2, Cin=8, group 2 (Cin/group 4), Cout 12, kernel 3x5, stride (2,3), dilation (2,1),
    # pads: H 1+1, W 2+2.
    #   H_out = floor((17 + 2 - (2*(3-1)+1)) / 2) + 1 = 8
    #   W_out = floor((19 + 4 - (1*(5-1)+1)) / 3) + 1 = 7
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"], group=2, strides=[2, 3], dilations=[2, 1], pads=[1, 2, 1, 2]
    )
    return make_model([node], [("x", [2, 8, 17, 19])], ["y"], [weight("w", 12, 4, 3, 5)])


def test_conv_macs_with_group_stride_padding_dilation():
    model = conv_model()
    assert ort_output_shape(model, {"x": (2, 8, 17, 19)}) == (2, 12, 8, 7)
    macs, notes = count_macs(model)
    assert macs == 2 * 12 * (8 * 7) * 4 * (3 * 5)  # N * Cout * out * Cin/group * kernel
    assert notes == []


def test_depthwise_conv_macs():
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=16, pads=[1, 1, 1, 1])
    model = make_model([node], [("x", [1, 16, 10, 10])], ["y"], [weight("w", 16, 1, 3, 3)])
    assert ort_output_shape(model, {"x": (1, 16, 10, 10)}) == (1, 16, 10, 10)
    assert count_macs(model)[0] == 16 * 100 * 9


def test_conv_transpose_macs_count_input_positions():
    # Cin 4, group 2, W [Cin, Cout/group=3, 2, 2] -> Cout 6; stride 2 doubles 5x5 to 10x10.
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 2])
    model = make_model([node], [("x", [1, 4, 5, 5])], ["y"], [weight("w", 4, 3, 2, 2)])
    assert ort_output_shape(model, {"x": (1, 4, 5, 5)}) == (1, 6, 10, 10)
    assert count_macs(model)[0] == 1 * 4 * 25 * 3 * 4  # N * Cin * in * Cout/group * kernel


def test_gemm_with_trans_b():
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)
    model = make_model([node], [("a", [3, 5])], ["y"], [weight("b", 7, 5), weight("c", 7)])
    assert ort_output_shape(model, {"a": (3, 5)}) == (3, 7)
    assert count_macs(model)[0] == 3 * 7 * 5


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([2, 3, 4, 5], [5, 6], 2 * 3 * 4 * 6 * 5),  # batched against a 2-D weight
        ([2, 1, 4, 5], [3, 5, 6], 2 * 3 * 4 * 6 * 5),  # batch dims broadcast to [2, 3]
        ([5], [5, 6], 6 * 5),  # 1-D left operand: a row
        ([2, 3, 4, 5], [5], 2 * 3 * 4 * 5),  # 1-D right operand: a column
    ],
)
def test_matmul_macs_follow_numpy_semantics(a, b, expected):
    node = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = make_model([node], [("a", a)], ["y"], [weight("b", *b)])
    shape = ort_output_shape(model, {"a": tuple(a)})
    assert np.matmul(np.ones(a), np.ones(b)).shape == shape
    assert count_macs(model)[0] == expected


def test_dynamic_batch_is_taken_as_one_and_noted_once():
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["h", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    model = make_model(
        nodes,
        [("x", ["batch", 3, 8, 8])],
        ["y"],
        [weight("w1", 4, 3, 3, 3), weight("w2", 5, 4, 3, 3)],
    )
    macs, notes = count_macs(model)
    assert macs == 4 * 64 * 27 + 5 * 64 * 36
    assert notes == ["symbolic dimension 'batch' taken as 1 for MACs"]


def test_node_with_unknown_shapes_counts_zero_and_is_named():
    nodes = [
        helper.make_node("Mystery", ["x"], ["h"], domain="com.example", name="odd"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="proj"),
        helper.make_node("MatMul", ["x", "w"], ["z"], name="known"),
    ]
    model = make_model(nodes, [("x", [2, 8])], ["y", "z"], [weight("w", 8, 4)])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    macs, notes = count_macs(model)
    assert macs == 2 * 4 * 8  # only "known"
    assert any("MatMul 'proj'" in n and "0" in n for n in notes), notes


def test_big_weights_and_reshape_constants_survive_the_light_copy():
    # w1 is 128 KiB (data dropped for inference); the Reshape target is small (kept), and the
    # second MatMul's M depends on it.
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([-1, 8, 16], np.int64), "shape")
    model = make_model(
        nodes, [("x", [1, 256])], ["y"], [weight("w1", 256, 128), shape, weight("w2", 16, 4)]
    )
    before = model.SerializeToString()
    macs, notes = count_macs(model)
    assert macs == 256 * 128 + 8 * 16 * 4
    assert notes == []
    assert model.SerializeToString() == before  # the light copy never touched the model


@pytest.mark.parametrize(
    ("op", "x", "w", "y", "attrs"),
    [
        ("Conv", (2, 8, 17, 19), (12, 4, 3, 5), (2, 12, 8, 7),
         {"group": 2, "strides": [2, 3], "dilations": [2, 1], "pads": [1, 2, 1, 2]}),
        ("Gemm", (3, 5), (7, 5), (3, 7), {"transB": 1}),
        ("MatMul", (2, 3, 4, 5), (5, 6), (2, 3, 4, 6), {}),
    ],
)  # fmt: skip
def test_macs_from_input_shapes_when_output_shape_is_missing(op, x, w, y, attrs):
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    full = _node_macs(node, {"x": x, "w": w, "y": y}, _Dims())
    assert _node_macs(node, {"x": x, "w": w}, _Dims()) == full > 0


# ---- parameters and nonzeros ----------------------------------------------------------------


def test_params_and_nonzeros_with_planted_zeros():
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    w.flat[[0, 3, 5, 9, 15]] = 0.0
    w.flat[7] = -0.0  # negative zero is zero: 6 zeros in 16
    half = np.array([1.5, 0.0, -0.0, 2.0], np.float16)  # 2 zeros in 4
    double = np.array([0.0, 3.0], np.float64)  # 1 zero in 2
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(half, "h"),
        numpy_helper.from_array(double, "d"),
        # typed (not raw) storage: float_data and bfloat16 bit patterns in int32_data
        helper.make_tensor("typed", TensorProto.FLOAT, [3], [0.0, 1.0, 2.0]),  # 1 zero
        helper.make_tensor("bf", TensorProto.BFLOAT16, [3], [0.0, -0.0, 4.0]),  # 2 zeros
        numpy_helper.from_array(np.array([0, 0, 4], np.int64), "shape"),  # not a parameter
    ]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = make_model(nodes, [("x", [1, 4])], ["y"], inits)
    params, nonzeros = count_params(model)
    assert params == 16 + 4 + 2 + 3 + 3
    assert nonzeros == (16 - 6) + (4 - 2) + (2 - 1) + (3 - 1) + (3 - 2)


def test_params_include_initializers_of_subgraphs():
    inner = helper.make_graph(
        [helper.make_node("Identity", ["k"], ["o"])],
        "then",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, [5])],
        [numpy_helper.from_array(np.array([0, 1, 2, 3, 4], np.float32), "k")],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert count_params(model) == (10, 8)  # the branch graph is stored twice


# ---- compressed size ------------------------------------------------------------------------


def mlp_with_weights(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    return make_model(nodes, [("x", [1, 256])], ["y"], inits)


def magnitude_prune(w: np.ndarray, ratio: float) -> np.ndarray:
    out = w.copy()
    out[np.abs(w) < np.quantile(np.abs(w), ratio)] = 0.0
    return out


def test_zeroed_weights_compress_clearly_smaller():
    w1 = RNG.standard_normal((256, 256)).astype(np.float32)
    w2 = RNG.standard_normal((256, 128)).astype(np.float32)
    dense = mlp_with_weights(w1, w2)
    sparse = mlp_with_weights(magnitude_prune(w1, 0.5), magnitude_prune(w2, 0.5))
    dense_bytes, sparse_bytes = compressed_size(dense), compressed_size(sparse)
    raw = w1.nbytes + w2.nbytes
    assert 0.85 * raw < dense_bytes < 1.05 * raw  # normal floats barely compress
    assert sparse_bytes < 0.75 * dense_bytes
    assert compressed_size(sparse) == sparse_bytes  # deterministic


def test_compressed_size_counts_the_graph_and_small_tensors():
    small = mlp_with_weights(
        RNG.standard_normal((256, 2)).astype(np.float32), np.zeros((2, 2), np.float32)
    )
    size = compressed_size(small)
    assert 0 < size < small.ByteSize()
    assert size > 256 * 2 * 4 * 0.85  # the 2 KiB weight stays in the graph part, still counted


def test_compute_metrics_combines_the_figures():
    w1 = magnitude_prune(RNG.standard_normal((256, 64)).astype(np.float32), 0.25)
    w2 = RNG.standard_normal((64, 10)).astype(np.float32)
    model = mlp_with_weights(w1, w2)
    m = compute_metrics(model)
    assert isinstance(m, ModelMetrics)
    assert m.params == 256 * 64 + 64 * 10
    assert m.nonzeros == int(np.count_nonzero(w1)) + int(np.count_nonzero(w2))
    assert m.nonzeros < m.params
    assert m.macs == 256 * 64 + 64 * 10
    assert m.gzip_bytes == compressed_size(model)
    assert m.to_dict() == {
        "params": m.params,
        "nonzeros": m.nonzeros,
        "macs": m.macs,
        "gzip_bytes": m.gzip_bytes,
        "notes": [],
    }


def test_unloaded_external_weights_count_as_dense_and_are_noted(tmp_path):
    w1 = magnitude_prune(RNG.standard_normal((256, 64)).astype(np.float32), 0.5)
    w2 = RNG.standard_normal((64, 10)).astype(np.float32)
    model = mlp_with_weights(w1, w2)
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, size_threshold=0)
    unloaded = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    m = compute_metrics(unloaded)
    assert m.params == m.nonzeros == 256 * 64 + 64 * 10  # values unknown: dense
    assert m.macs == 256 * 64 + 64 * 10
    assert m.gzip_bytes > w1.nbytes + w2.nbytes  # stored size, uncompressed
    assert any("external files" in n for n in m.notes)


def test_sampled_compressed_size_tracks_the_exact_figure(monkeypatch):
    """Big models get an estimate from every 8th MiB of each tensor; it must stay close and
    must still see a layer that was zeroed."""
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(3, 1024, 1024)).astype(np.float32)  # 12 MiB, float noise
    half = dense.copy()
    half[0] = 0.0
    models = []
    for w in (dense, half):
        init = numpy_helper.from_array(w.reshape(3 * 1024, 1024), "w")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3 * 1024])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])],
            initializer=[init],
        )
        models.append(helper.make_model(graph))
    monkeypatch.setattr(metrics_size, "EXACT_COMPRESSION_LIMIT", 1 << 20)
    assert metrics.is_compression_sampled(models[0])
    for model in models:
        exact = metrics.compressed_size(model, exact=True)
        estimate = metrics.compressed_size(model, exact=False)
        assert abs(estimate - exact) / exact < 0.05
    assert metrics.compressed_size(models[1]) < 0.8 * metrics.compressed_size(models[0])
    assert any("estimated" in n for n in metrics.compute_metrics(models[0]).notes)


def test_a_graph_the_view_refuses_falls_back_with_a_note():
    """The view refuses a model without the default opset (OnnxPruneError): plain shape
    inference counts the MACs and a note says why."""
    model = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [("x", [2, 8])],
        ["y"],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")],
    )
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    macs, notes = count_macs(model)
    assert macs == 2 * 8 * 4
    assert any("graph view refused the model" in n and "default ONNX" in n for n in notes)


def test_a_bug_in_the_view_is_not_hidden(monkeypatch):
    from onnxprune.metrics import macs as metrics_macs

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the view")

    monkeypatch.setattr(metrics_macs, "GraphView", broken)
    with pytest.raises(RuntimeError, match="a bug in the view"):
        count_macs(make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2, 8])], ["y"]))
