"""The library API as a deployment pipeline uses it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import OnnxPruneError, UsageError, prune
from onnxprune.testing.graphs import small_cnn


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_in_memory_model_is_not_modified_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = small_cnn()
    snapshot = model.SerializeToString()
    result = prune(model, unstructured=0.5, runs=5)
    assert model.SerializeToString() == snapshot
    assert list(tmp_path.iterdir()) == []
    assert result.output_path is None
    assert isinstance(result.model, onnx.ModelProto)
    r = result.report.to_dict()
    assert r["nonzero_after"] < r["nonzero_before"]
    assert r["validation"]["max_abs_diff"] > 0


def test_validation_of_identical_weights_reports_zero_drift():
    """With nothing zeroed (ratio 0) the pruned model is the original: drift must be exactly 0."""
    result = prune(small_cnn(), unstructured=0.0, runs=5)
    v = result.report.to_dict()["validation"]
    assert v["max_abs_diff"] == 0.0
    assert v["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert v["latency_ms_before"] > 0 and v["latency_ms_after"] > 0


def test_constant_node_weights_are_pruned(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 16)).astype(np.float32)
    nodes = [
        helper.make_node(
            "Constant", [], ["w"], name="const_w", value=numpy_helper.from_array(w, "w")
        ),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])],
    )  # fmt: skip
    path = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = prune(path, unstructured=0.75, output=tmp_path / "out.onnx", runs=5)
    saved = onnx.load(tmp_path / "out.onnx")
    weights = [numpy_helper.to_array(t) for t in saved.graph.initializer if t.name == "w"]
    assert len(weights) == 1 and np.count_nonzero(weights[0] == 0) == round(0.75 * w.size)
    assert result.report.to_dict()["unstructured"]["tensors"][0]["tensor"] == "w"


def test_structured_through_the_api_shrinks_and_keeps_io(tmp_path):
    model = small_cnn()
    result = prune(model, structured=0.5, round_to=1, runs=5)
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    assert [i.name for i in pruned.graph.input] == ["x"]
    assert [o.name for o in pruned.graph.output] == ["y"]
    r = result.report.to_dict()
    assert r["params_after"] < r["params_before"]
    assert r["macs_after"] < r["macs_before"]
    assert r["structured"]["groups"]
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert _run(pruned, x).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"unstructured": 1.0},
        {"structured": -0.2},
        {"nm": "2:2"},
        {"unstructured": 0.5, "nm": "2:4"},
        {"unstructured": 0.5, "scope": "everywhere"},
        {"structured": 0.3, "criterion": "vibes"},
        {"structured": 0.3, "round_to": 0},
        {"unstructured": 0.5, "providers": "tpu"},
    ],
)
def test_bad_options_raise_usage_error(kwargs):
    with pytest.raises(UsageError):
        prune(small_cnn(), **kwargs)


def test_model_problems_raise_onnxprune_error(tmp_path):
    with pytest.raises(OnnxPruneError) as info:
        prune(tmp_path / "nope.onnx", unstructured=0.5)
    assert not isinstance(info.value, UsageError)


def test_public_names():
    assert onnxprune.prune is prune
    assert {"prune", "PruneResult", "Report", "OnnxPruneError", "UsageError"} <= set(
        onnxprune.__all__
    )


@pytest.mark.parametrize("opset", [11, 13, 15, 17, 19, 21, 22])
def test_every_supported_opset_prunes_and_validates(opset):
    model = small_cnn()
    model.opset_import[0].version = opset
    if opset >= 21:
        model.ir_version = 10
    result = prune(model, unstructured=0.5, structured=0.25, round_to=1, runs=5)
    r = result.report.to_dict()
    assert r["macs_after"] < r["macs_before"]
    assert r["validation"]["provider"] == "CPUExecutionProvider"
    onnx.checker.check_model(result.model, full_check=True)


def test_heads_flag_removes_attention_heads_and_validates():
    from onnxprune.testing.graphs import mha_block

    result = prune(mha_block(heads=4, head_dim=4), heads=0.5, round_to=1, runs=5)
    groups = [g for g in result.report.to_dict()["structured"]["groups"] if "heads_before" in g]
    assert groups and groups[0]["heads_before"] == 4 and groups[0]["heads_after"] == 2
    r = result.report.to_dict()
    assert r["params_after"] < r["params_before"]
    assert r["validation"]["provider"] == "CPUExecutionProvider"
    onnx.checker.check_model(result.model, full_check=True)


def test_heads_ratio_is_checked():
    with pytest.raises(UsageError):
        prune(small_cnn(), heads=1.5)


DIGITS = "models/digits_mlp.onnx"
DIGITS_CALIB = "models/digits_mlp_calib.npz"
DIGITS_TEST = "models/digits_mlp_test.npz"
LABELS = "models/digits_test_labels.npy"


def _accuracy(model: onnx.ModelProto, rows: slice = slice(None)) -> float:
    sess = ort.InferenceSession(model.SerializeToString())
    x = np.load(DIGITS_TEST)["input"][rows]
    return float(np.mean(sess.run(None, {"input": x})[0].argmax(1) == np.load(LABELS)[rows]))


def test_calib_turns_recovery_on_and_it_recovers_held_out_accuracy():
    """The same 90% mask with and without recovery: OBS keeps the sparsity and wins back
    accuracy on test digits it never saw (calibration uses the separate calib split)."""
    plain = prune(DIGITS, unstructured=0.9, scope="global", validate=False)
    recovered = prune(
        DIGITS, unstructured=0.9, scope="global", calib=DIGITS_CALIB, validate=False
    )
    rec = recovered.report.to_dict()["recovery"]["unstructured"]
    assert rec["steps"] == ["bias", "obs"] and rec["layers_refit"] == 3
    zeroed = [r.report.to_dict()["unstructured"]["zeroed"] for r in (recovered, plain)]
    assert zeroed[0] == zeroed[1]
    assert _accuracy(plain.model) < 0.5 < 0.95 < _accuracy(recovered.model)


def test_each_recovery_step_has_its_switch():
    off = prune(DIGITS, structured=0.5, round_to=1, calib=DIGITS_CALIB, validate=False,
                bias_correction=False, lstsq=False)  # fmt: skip
    bias = prune(DIGITS, structured=0.5, round_to=1, calib=DIGITS_CALIB, validate=False,
                 lstsq=False)  # fmt: skip
    full = prune(DIGITS, structured=0.5, round_to=1, calib=DIGITS_CALIB, validate=False)
    assert off.report.recovery is None
    assert bias.report.to_dict()["recovery"]["structured"]["steps"] == ["bias"]
    assert full.report.to_dict()["recovery"]["structured"]["steps"] == ["bias", "lstsq"]
    assert _accuracy(off.model) < _accuracy(full.model)
    weights = {t.name for t in off.model.graph.initializer}
    changed = [
        t.name
        for t in full.model.graph.initializer
        if t.name in weights
        and not np.array_equal(
            numpy_helper.to_array(t),
            numpy_helper.to_array(next(u for u in off.model.graph.initializer if u.name == t.name)),
        )
    ]
    assert changed  # the refit wrote new weights into the same, already-cut tensors


def test_labels_add_accuracy_to_the_validation():
    """Issue 10: with only --calib the last 20% is held out; the labels of those rows score."""
    n = len(np.load(LABELS))
    held = slice(n - n // 5, None)
    result = prune(DIGITS, structured=0.3, calib=DIGITS_TEST, labels=LABELS, runs=5)
    v = result.report.to_dict()["validation"]
    assert v["data"] == "calib-held-out"
    assert v["samples"] == n // 5
    assert v["accuracy_before"] == pytest.approx(_accuracy(onnx.load(DIGITS), held))
    assert v["accuracy_after"] == pytest.approx(_accuracy(result.model, held))
    assert not any("fitted to these samples" in n for n in v["notes"])
    assert result.report.to_dict()["recovery"]["structured"]["samples"] == n - n // 5


def test_no_holdout_validates_on_the_fitted_samples_and_says_so():
    result = prune(DIGITS, structured=0.3, calib=DIGITS_TEST, labels=LABELS, runs=5,
                   holdout=False)  # fmt: skip
    v = result.report.to_dict()["validation"]
    assert v["data"] == "calib"
    assert v["accuracy_before"] == pytest.approx(_accuracy(onnx.load(DIGITS)))
    assert v["accuracy_after"] == pytest.approx(_accuracy(result.model))
    assert any("fitted to these samples" in n for n in v["notes"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lstsq": True},
        {"obs": True},
        {"bias_correction": True},
        {"labels": LABELS},
        {"calib_samples": 10},
        {"criterion": "wanda"},
        {"criterion": "activation"},
    ],
)
def test_recovery_options_need_calibration_data(kwargs):
    with pytest.raises(UsageError, match="--calib"):
        prune(DIGITS, structured=0.3, validate=False, **kwargs)


def test_wanda_criterion_reads_activations():
    a = prune(DIGITS, unstructured=0.5, calib=DIGITS_CALIB, criterion="wanda", obs=False,
              bias_correction=False, validate=False)  # fmt: skip
    m = prune(DIGITS, unstructured=0.5, validate=False)
    assert a.report.to_dict()["unstructured"]["criterion"] == "wanda"
    masks = [
        [numpy_helper.to_array(t) == 0 for t in r.model.graph.initializer if t.name.endswith("weight")]
        for r in (a, m)
    ]
    assert any(not np.array_equal(x, y) for x, y in zip(*masks, strict=True))
