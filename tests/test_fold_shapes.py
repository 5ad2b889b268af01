"""Load-time folding of static shape arithmetic, and unsharing of constant-filled initializers
(``onnxprune.graph.fold_shapes``, ``onnxprune.graph.fold.unshare_uniform``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.fold_shapes import fold_static_shapes
from onnxprune.graph.load import load_model, needs_normalization, normalize_model
from onnxprune.structured.dependency import analyze
from onnxprune.testing.stream_oracle import prune_stream

_RNG = np.random.default_rng(0)


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _scale_model() -> onnx.ModelProto:
    """Swin's attention arithmetic on x [N, 4, 8]: ``x * (C // 2) ** -0.5`` with
    ``C = x.shape[-1]``, then ``Reshape(x, [N, -1])`` with ``N = x.shape[0]`` read at run time."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "last"], ["c"], axis=0),
        helper.make_node("Div", ["c", "two"], ["head_dim"]),
        helper.make_node("Cast", ["head_dim"], ["head_dim_f"], to=TensorProto.FLOAT),
        helper.make_node("Pow", ["head_dim_f", "minus_half"], ["scale"]),
        helper.make_node("Mul", ["x", "scale"], ["scaled"]),
        helper.make_node("Gather", ["shape", "first"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["scaled", "target"], ["y"]),
    ]
    inits = [
        _init("last", np.int64(-1)), _init("first", np.int64(0)), _init("two", np.int64(2)),
        _init("minus_half", np.float32(-0.5)), _init("axes", np.array([0], np.int64)),
        _init("minus_one", np.array([-1], np.int64)),
    ]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])
    return _model(nodes, inits, [x], [y])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def test_static_channel_arithmetic_folds_and_the_dynamic_batch_stays_computed():
    model = _scale_model()
    folded = _copy(model)
    assert needs_normalization(folded)
    notes = normalize_model(folded)
    assert any("shape computation" in n and "folded into constants" in n for n in notes), notes
    ops = [n.op_type for n in folded.graph.node]
    # head_dim, its cast and the q scale are gone: the Mul reads the scale as a constant
    assert "Pow" not in ops and "Div" not in ops and "Cast" not in ops
    mul = next(n for n in folded.graph.node if n.op_type == "Mul")
    inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    scale = inits[mul.input[1]]
    assert scale.shape == () and scale.dtype == np.float32 and scale == np.float32(0.5)
    # the batch is read at run time still: Shape -> Gather(0) -> Unsqueeze -> Concat
    assert ops.count("Shape") == 1 and "Concat" in ops and "Unsqueeze" in ops
    gather = next(n for n in folded.graph.node if n.op_type == "Gather")
    assert int(inits[gather.input[1]]) == 0
    onnx.checker.check_model(folded, full_check=True)
    for batch in (1, 3):
        x = _RNG.standard_normal((batch, 4, 8)).astype(np.float32)
        want, got = _run(model, x), _run(folded, x)
        assert got.shape == (batch, 32)
        np.testing.assert_array_equal(want, got)


def test_a_dynamic_dim_is_never_folded():
    """The same arithmetic on the batch (``x.shape[0] // 2) ** -0.5``): nothing folds."""
    model = _scale_model()
    for node in model.graph.node:
        if node.op_type == "Gather" and node.input[1] == "last":
            node.input[1] = "first"
    before = _copy(model)
    assert fold_static_shapes(model) == (0, 0)
    assert model == before
    x = _RNG.standard_normal((4, 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(before, x), _run(model, x))


def test_a_fold_that_makes_shapes_known_folds_again():
    """Pads computed from the static dims (torch's window padding): once they are a constant,
    the Pad's output shape is known, and a value read from it folds in the next round."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "last"], ["c"], axis=0),
        helper.make_node("Mod", ["c", "three"], ["rest"]),
        helper.make_node("Sub", ["three", "rest"], ["need"]),
        helper.make_node("Unsqueeze", ["need", "axes"], ["need1"]),
        helper.make_node("Concat", ["zeros", "need1"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["padded"]),
        helper.make_node("Shape", ["padded"], ["pshape"]),
        helper.make_node("Gather", ["pshape", "last"], ["pc"], axis=0),
        helper.make_node("Cast", ["pc"], ["pcf"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["pcf"], ["root"]),
        helper.make_node("Div", ["padded", "root"], ["y"]),
    ]
    inits = [
        _init("last", np.int64(-1)), _init("three", np.int64(3)),
        _init("axes", np.array([0], np.int64)), _init("zeros", np.zeros(3, np.int64)),
    ]  # fmt: skip
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 7])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 9])
    model = _model(nodes, inits, [x], [y])
    folded = _copy(model)
    count, removed = fold_static_shapes(folded)
    assert count >= 2 and removed >= 8
    assert [n.op_type for n in folded.graph.node] == ["Pad", "Div"]
    xv = _RNG.standard_normal((2, 7)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, xv), _run(model, xv), rtol=1e-6)


def _two_branches(shared: np.ndarray, *, weight: bool) -> onnx.ModelProto:
    """Two unrelated Conv -> Relu -> Conv branches of one input; their first convs read the
    one tensor ``shared``, as their bias (``weight=False``) or as their weight."""
    nodes, inits, outputs = [], [_init("shared", shared)], []
    for b in ("a", "b"):
        w = "shared" if weight else f"{b}.w"
        bias = f"{b}.bias" if weight else "shared"
        if not weight:
            inits.append(_init(w, _RNG.standard_normal((8, 3, 1, 1)).astype(np.float32)))
        else:
            inits.append(_init(bias, _RNG.standard_normal(8).astype(np.float32)))
        inits.append(_init(f"{b}2.w", _RNG.standard_normal((2, 8, 1, 1)).astype(np.float32)))
        nodes += [
            helper.make_node("Conv", ["x", w, bias], [f"{b}.out"], name=b),
            helper.make_node("Relu", [f"{b}.out"], [f"{b}.act"]),
            helper.make_node("Conv", [f"{b}.act", f"{b}2.w"], [f"{b}.y"], name=f"{b}2"),
        ]
        outputs.append(helper.make_tensor_value_info(f"{b}.y", TensorProto.FLOAT, [1, 2, 4, 4]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    return _model(nodes, inits, [x], outputs)


def _tied(model: onnx.ModelProto) -> bool:
    """Whether one group holds the first convs of both branches (both consumers' inputs)."""
    return any({"a2.w", "b2.w"} <= {m.target for m in g.members} for g in analyze(model))


def test_a_shared_all_zero_bias_no_longer_couples_two_unrelated_groups():
    model = _two_branches(np.zeros(8, np.float32), weight=False)
    assert _tied(model)  # as exported: the shared bias ties the branches
    loaded = _copy(model)
    notes = normalize_model(loaded)
    assert any("constant-filled" in n for n in notes), notes
    biases = [n.input[2] for n in loaded.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert len(set(biases)) == 2
    assert not _tied(loaded)
    groups = {g.id: g for g in analyze(loaded)}
    assert groups["a"].blocked_reason is None and groups["b"].blocked_reason is None
    x = _RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    sess = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            for m in (model, loaded)]  # fmt: skip
    for want, got in zip(sess[0].run(None, {"x": x}), sess[1].run(None, {"x": x}), strict=True):
        np.testing.assert_array_equal(want, got)


def test_a_tied_non_uniform_weight_stays_shared_and_couples():
    weight = _RNG.standard_normal((8, 3, 1, 1)).astype(np.float32)
    model = _two_branches(weight, weight=True)
    loaded = _copy(model)
    notes = normalize_model(loaded)
    assert not any("constant-filled" in n for n in notes), notes
    weights = [n.input[1] for n in loaded.graph.node if n.op_type == "Conv" and n.name in "ab"]
    assert weights == ["shared", "shared"]
    assert _tied(loaded)


def test_uniform_scalars_and_single_readers_are_left_alone(tmp_path):
    """A shared scalar has no channel axis to tie; it keeps one tensor."""
    nodes = [
        helper.make_node("Mul", ["x", "half"], ["h"]),
        helper.make_node("Add", ["h", "half"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    model = _model(nodes, [_init("half", np.float32(0.5))], [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    loaded = load_model(path)
    assert [t.name for t in loaded.model.graph.initializer] == ["half"]
    assert not any("constant-filled" in n or "shape computation" in n for n in loaded.notes)


def test_the_stream_oracle_holds_after_the_fold():
    """A LayerNorm stream whose width is read at run time (a ``x.shape[-1] ** -0.5`` scale,
    as Swin's q scale): as exported the stream is blocked; folded at load, it is cut
    (``--hidden``) and matches the stream oracle (``prune_stream`` checks it)."""
    from onnxprune.testing.graphs import Builder
    from onnxprune.testing.graphs.transformer import layer_norm

    b = Builder()
    x = b.input(["batch", 5, 16])
    h = b.matmul(x, 16, 16, name="embed")
    n = layer_norm(b, h, 16, "ln")
    c = b.op("Gather", [b.op("Shape", [n]), b.const(np.int64(-1), "last")], axis=0)
    scale = b.op("Pow", [b.op("Cast", [c], to=TensorProto.FLOAT), b.const(np.float32(-0.5))])
    up = b.matmul(b.op("Mul", [n, scale]), 16, 32, name="fc1")
    r = b.op("Add", [h, b.matmul(b.relu(up), 32, 16, name="fc2")])
    model = b.build([b.matmul(layer_norm(b, r, 16, "ln2"), 16, 4, name="head")])
    notes = normalize_model(model)
    assert any("shape computation" in s for s in notes), notes
    assert "Pow" not in [nd.op_type for nd in model.graph.node]
    prune_stream(model, hidden=0.5)
