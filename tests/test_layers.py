"""layers.py: every refit layer is ``y = W x + b`` over sampled rows, checked against onnxruntime.

The oracle: ``Layer.matrix(W) @ Layer.rows(x, picks) + b`` must equal the op's own output at
those positions, for Conv (kernel, stride, dilation, explicit and asymmetric pads, auto_pad,
groups, depthwise), Gemm (transB 0/1) and MatMul on [B, S, D]; ``unmatrix`` inverts
``matrix``; ``find_layers`` keeps only what it can refit and records MatMul + Add biases.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxprune.recovery.layers import Layer, find_layers
from onnxprune.testing.graphs import Builder, gemm_mlp
from onnxprune.testing.oracles import run

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    onnx.checker.check_model(model, full_check=True)
    return model


def _fin(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _out(name: str) -> onnx.ValueInfoProto:
    return helper.make_empty_tensor_value_info(name)


def _predict(layer: Layer, w: np.ndarray, b: np.ndarray | None, x: np.ndarray, picks):
    """``[rows, out]``: the layer as a matrix product, output channels flat over groups."""
    m = layer.matrix(w)  # [g, opg, d]
    rows = layer.rows(x, picks).astype(np.float64)  # [r, g, d]
    assert rows.shape == (len(picks), m.shape[0], m.shape[2])
    y = np.einsum("god,rgd->rgo", m, rows).reshape(len(picks), -1)
    return y + (b if b is not None else 0.0)


def _picks(rng: np.random.Generator, n: int, k: int = 40) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


# --------------------------------------------------------------------------------------------
# Conv: im2col rows against onnxruntime
# --------------------------------------------------------------------------------------------


@st.composite
def conv_configs(draw):
    kind = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
    if kind == "plain":
        groups, cpg, opg = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif kind == "grouped":
        groups, cpg, opg = 2, draw(st.integers(1, 3)), draw(st.integers(1, 2))
    else:
        groups = draw(st.integers(2, 4))
        cpg, opg = 1, draw(st.integers(1, 2))  # channel multiplier
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    # onnxruntime refuses dilations with SAME_* padding, so those run undilated
    top = 1 if auto_pad.startswith("SAME") else 2
    dilations = (draw(st.integers(1, top)), draw(st.integers(1, top)))
    pads = [draw(st.integers(0, 2)) for _ in range(4)] if auto_pad == "NOTSET" else None
    hw = (draw(st.integers(5, 8)), draw(st.integers(5, 8)))  # >= the widest dilated kernel
    return dict(
        groups=groups, cpg=cpg, opg=opg, kernel=kernel, strides=strides, dilations=dilations,
        auto_pad=auto_pad, pads=pads, hw=hw, batch=draw(st.integers(1, 2)),
        bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
    )  # fmt: skip


def conv_model(cfg: dict) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(cfg["seed"])
    c_in, c_out = cfg["groups"] * cfg["cpg"], cfg["groups"] * cfg["opg"]
    w = rng.standard_normal((c_out, cfg["cpg"], *cfg["kernel"])).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32) if cfg["bias"] else None
    attrs = dict(
        kernel_shape=list(cfg["kernel"]), strides=list(cfg["strides"]),
        dilations=list(cfg["dilations"]), group=cfg["groups"],
    )  # fmt: skip
    if cfg["auto_pad"] == "NOTSET":
        attrs["pads"] = cfg["pads"]
    else:
        attrs["auto_pad"] = cfg["auto_pad"]
    inits = [numpy_helper.from_array(w, "w")]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "b"))
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if b is not None else []), ["y"], **attrs)
    model = _model([node], inits, [_fin("x", ["N", c_in, "H", "W"])], [_out("y")])
    return model, w, b


@PROPERTY
@given(cfg=conv_configs())
def test_conv_rows_times_matrix_equal_onnxruntime(cfg):
    model, w, b = conv_model(cfg)
    (layer,) = find_layers(model)
    assert (layer.op, layer.x, layer.y, layer.weight) == ("Conv", "x", "y", "w")
    assert layer.bias == ("b" if b is not None else None)
    assert layer.groups == cfg["groups"] and layer.kernel == cfg["kernel"]
    rng = np.random.default_rng(cfg["seed"] + 1)
    x = rng.standard_normal((cfg["batch"], cfg["groups"] * cfg["cpg"], *cfg["hw"]))
    x = x.astype(np.float32)
    (y,) = run(model, {"x": x})
    assert layer.positions(x.shape) == y.shape[0] * y.shape[2] * y.shape[3]
    picks = _picks(rng, layer.positions(x.shape))
    img, rest = np.divmod(picks, y.shape[2] * y.shape[3])
    row, col = np.divmod(rest, y.shape[3])
    want = y[img, :, row, col]  # [r, c_out]
    got = _predict(layer, w, b, x, picks)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(PROPERTY, max_examples=25)
@given(
    cfg=conv_configs(),
    auto_pad=st.sampled_from(["SAME_UPPER", "SAME_LOWER"]),
    dilations=st.tuples(st.integers(1, 2), st.integers(1, 2)),
)
def test_conv_same_padding_with_dilations_follows_the_onnx_reference(cfg, auto_pad, dilations):
    """onnxruntime refuses this case, so ONNX's own reference implementation is the oracle."""
    cfg = {**cfg, "auto_pad": auto_pad, "pads": None, "dilations": dilations, "batch": 1}
    model, w, b = conv_model(cfg)
    (layer,) = find_layers(model)
    x = np.random.default_rng(cfg["seed"]).standard_normal(
        (1, cfg["groups"] * cfg["cpg"], *cfg["hw"])
    )
    x = x.astype(np.float32)
    (y,) = ReferenceEvaluator(model).run(None, {"x": x})
    n = layer.positions(x.shape)
    assert n == y.shape[2] * y.shape[3]
    got = _predict(layer, w, b, x, np.arange(n))
    np.testing.assert_allclose(got, y[0].reshape(y.shape[1], -1).T, rtol=1e-4, atol=1e-4)


def test_conv_every_position_of_an_asymmetric_strided_dilated_grouped_conv():
    cfg = dict(
        groups=2, cpg=3, opg=2, kernel=(3, 2), strides=(2, 1), dilations=(1, 2),
        auto_pad="NOTSET", pads=[2, 0, 1, 1], hw=(7, 6), batch=2, bias=True, seed=3,
    )  # fmt: skip
    model, w, b = conv_model(cfg)
    (layer,) = find_layers(model)
    x = np.random.default_rng(0).standard_normal((2, 6, 7, 6)).astype(np.float32)
    (y,) = run(model, {"x": x})
    n = layer.positions(x.shape)
    got = _predict(layer, w, b, x, np.arange(n))
    want = y.transpose(0, 2, 3, 1).reshape(n, -1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_columns_run_kernel_position_first_and_channel_last():
    """Consecutive columns are consecutive input channels: the axis N:M patterns follow."""
    lay = Layer(0, "Conv", "x", "y", "w", None, kernel=(2, 2))
    w = np.arange(3 * 4 * 2 * 2, dtype=np.float32).reshape(3, 4, 2, 2)
    m = lay.matrix(w)
    assert m.shape == (1, 3, 16)
    np.testing.assert_array_equal(m[0, 1, 4:8], w[1, :, 0, 1])  # kernel (0, 1), channels 0..3


# --------------------------------------------------------------------------------------------
# Gemm and MatMul
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_rows_times_matrix_equal_onnxruntime(trans_b):
    model = gemm_mlp((6, 5), seed=1, trans_b=trans_b)
    (layer,) = find_layers(model)
    assert layer.op == "Gemm" and layer.trans_b == trans_b and layer.bias == "fc1.bias"
    assert (layer.out_axis, layer.in_axis) == ((0, 1) if trans_b else (1, 0))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, b = inits["fc1.weight"], inits["fc1.bias"]
    assert w.shape[layer.out_axis] == 5 and w.shape[layer.in_axis] == 6
    x = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
    (y,) = run(model, {"x": x})
    assert layer.positions(x.shape) == 9
    picks = np.array([0, 3, 4, 8])
    np.testing.assert_allclose(_predict(layer, w, b, x, picks), y[picks], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_matmul_on_tokens_rows_times_matrix_equal_onnxruntime(bias):
    b = Builder(2)
    x = b.input(["B", "S", 6])
    model = b.build([b.matmul(x, 6, 4, bias=bias, name="mm")])
    (layer,) = find_layers(model)
    assert layer.op == "MatMul" and layer.y == "mm_out"
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if bias:
        assert layer.bias == "mm.bias"
        assert layer.bias_add == model.graph.output[0].name  # the Add's output
    else:
        assert layer.bias is None and layer.bias_add is None
    feed = np.random.default_rng(1).standard_normal((3, 5, 6)).astype(np.float32)
    (y,) = run(model, {"x": feed})
    assert layer.positions(feed.shape) == 15
    picks = np.array([0, 1, 7, 14])
    got = _predict(layer, inits["mm.weight"], inits["mm.bias"] if bias else None, feed, picks)
    np.testing.assert_allclose(got, y.reshape(15, 4)[picks], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# matrix <-> unmatrix
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(
    op=st.sampled_from(["Conv", "Gemm", "GemmT", "MatMul"]),
    groups=st.sampled_from([1, 2, 3]),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
    seed=st.integers(0, 1000),
)
def test_unmatrix_inverts_matrix(op, groups, shape, seed):
    rng = np.random.default_rng(seed)
    o, c, kh, kw = shape
    if op == "Conv":
        lay = Layer(0, "Conv", "x", "y", "w", None, groups=groups, kernel=(kh, kw))
        w = rng.standard_normal((o * groups, c, kh, kw)).astype(np.float32)
    else:
        lay = Layer(0, op[:4] if op != "MatMul" else op, "x", "y", "w", None, trans_b=op == "GemmT")
        w = rng.standard_normal((o, c)).astype(np.float32)
    m = lay.matrix(w)
    assert m.dtype == np.float64 and m.ndim == 3
    assert m.shape[0] == (groups if op == "Conv" else 1)
    back = lay.unmatrix(m, w)
    assert back.dtype == w.dtype and back.shape == w.shape
    np.testing.assert_array_equal(back, w)


# --------------------------------------------------------------------------------------------
# find_layers: what it keeps and what it leaves alone
# --------------------------------------------------------------------------------------------


def _single(op: str, inputs: list[str], inits: dict[str, np.ndarray], x_shape, **attrs):
    node = helper.make_node(op, inputs, ["y"], **attrs)
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    return _model([node], tensors, [_fin("x", x_shape)], [_out("y")])


def test_find_layers_skips_what_it_cannot_refit():
    r = np.random.default_rng(0).standard_normal
    skipped = {
        "gemm transA": _single("Gemm", ["x", "w"], {"w": r((4, 3))}, [4, 2], transA=1),
        "gemm alpha": _single("Gemm", ["x", "w"], {"w": r((4, 3))}, [2, 4], alpha=2.0),
        "gemm scaled C": _single(
            "Gemm", ["x", "w", "c"], {"w": r((4, 3)), "c": r(3)}, [2, 4], beta=0.5
        ),
        "gemm broadcast C[1]": _single(
            "Gemm", ["x", "w", "c"], {"w": r((4, 3)), "c": r(1)}, [2, 4]
        ),
        "gemm matrix C": _single("Gemm", ["x", "w", "c"], {"w": r((4, 3)), "c": r((2, 3))}, [2, 4]),
        "matmul constant left": _single("MatMul", ["w", "x"], {"w": r((3, 4))}, [4, 2]),
        "matmul 3-D weight": _single("MatMul", ["x", "w"], {"w": r((2, 4, 3))}, [2, 5, 4]),
        "conv transpose": _single(
            "ConvTranspose", ["x", "w"], {"w": r((2, 3, 2, 2))}, [1, 2, 4, 4], kernel_shape=[2, 2]
        ),
        "conv 1-D": _single("Conv", ["x", "w"], {"w": r((3, 2, 3))}, [1, 2, 8], kernel_shape=[3]),
    }
    for why, model in skipped.items():
        assert find_layers(model) == [], why


def test_find_layers_skips_a_bias_computed_at_run_time():
    """No bias parameter to refit, and no free input slot to give it one."""
    w = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1)]
    model = _model(
        nodes, [numpy_helper.from_array(w, "w")], [_fin("x", [2, 4]), _fin("c", [3])], [_out("y")]
    )
    assert find_layers(model) == []


def test_find_layers_reads_gemm_without_c_and_conv_without_b():
    r = np.random.default_rng(0).standard_normal
    (g,) = find_layers(_single("Gemm", ["x", "w"], {"w": r((4, 3))}, [2, 4], beta=0.5))
    assert g.op == "Gemm" and g.bias is None
    (c,) = find_layers(_single("Conv", ["x", "w"], {"w": r((3, 2, 1, 1))}, [1, 2, 4, 4]))
    assert c.op == "Conv" and c.bias is None and c.kernel == (1, 1)


def test_matmul_bias_is_only_a_sole_1d_add():
    """The Add must alone read the MatMul, add an [N] constant, and the MatMul's output must
    not be a graph output; otherwise the MatMul has no bias of its own."""

    def build(variant: str) -> onnx.ModelProto:
        b = Builder(0)
        x = b.input([2, 5, 4])
        y = b.op("MatMul", [x, b.rand([4, 3], "w")], name="mm")
        c = b.rand([1, 1, 3] if variant == "3d" else [3], "c")
        z = b.op("Add", [c, y] if variant == "swapped" else [y, c], name="add")
        outs = [z]
        if variant == "two readers":
            outs.append(b.op("Relu", [y]))
        if variant == "graph output":
            outs.append(y)
        return b.build(outs)

    for variant, expect in [
        ("plain", ("c", "add_out")),
        ("swapped", ("c", "add_out")),
        ("3d", (None, None)),
        ("two readers", (None, None)),
        ("graph output", (None, None)),
    ]:
        (lay,) = find_layers(build(variant))
        assert (lay.bias, lay.bias_add) == expect, variant


def test_find_layers_in_a_block_and_topological_index():
    b = Builder(0)
    x = b.input([1, 3, 6, 6])
    y = b.relu(b.conv(x, 3, 4, name="c1"))
    y = b.op("Flatten", [y], axis=1)
    y = b.gemm(y, 4 * 36, 5, name="fc")
    model = b.build([b.matmul(y, 5, 2, name="mm")])
    layers = find_layers(model)
    assert [(lay.op, lay.weight, lay.bias) for lay in layers] == [
        ("Conv", "c1.weight", "c1.bias"),
        ("Gemm", "fc.weight", "fc.bias"),
        ("MatMul", "mm.weight", "mm.bias"),
    ]
    nodes = model.graph.node
    assert all(nodes[lay.index].output[0] == lay.y for lay in layers)
    assert layers[0].pads == (1, 1, 1, 1) and layers[0].auto_pad == "NOTSET"


@pytest.mark.parametrize("op", ["Conv", "Gemm", "GemmT", "MatMul"])
def test_feature_scale_lays_input_norms_along_the_weight(op):
    """What Wanda multiplies |W| by: input feature j's norm on every weight that reads j."""
    rng = np.random.default_rng(0)
    if op == "Conv":
        lay = Layer(0, "Conv", "x", "y", "w", None, groups=2, kernel=(3, 3))
        w_shape, norm = (6, 2, 3, 3), rng.random(4)
        per = lay.feature_scale(norm, w_shape)
        full = np.broadcast_to(per, w_shape)
        for o in range(6):
            for c in range(2):
                assert (full[o, c] == norm[(o // 3) * 2 + c]).all()
    else:
        lay = Layer(0, op[:4] if op != "MatMul" else op, "x", "y", "w", None, trans_b=op == "GemmT")
        w_shape = (4, 5) if op == "GemmT" else (5, 4)  # 5 input features, 4 outputs
        norm = rng.random(5)
        full = np.broadcast_to(lay.feature_scale(norm, w_shape), w_shape)
        assert np.array_equal(np.moveaxis(full, lay.in_axis, 0)[:, 0], norm)
    assert lay.feature_scale(rng.random(7), w_shape) is None
