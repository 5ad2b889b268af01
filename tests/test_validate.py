"""Validation against onnxruntime itself: real sessions, real outputs, real timings."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.calibration.data import make_inputs
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.runtime.compare import compare_outputs
from onnxprune.runtime.latency import measure_latency
from onnxprune.runtime.session import resolve_providers, run_model
from onnxprune.runtime.validate import ValidationResult, validate

CPU = ["CPUExecutionProvider"]
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
RESULT_KEYS = {
    "provider", "max_abs_diff", "rel_diff", "cosine", "top1_agreement", "per_output",
    "latency_ms_before", "latency_ms_after", "latency_p90_ms_before", "latency_p90_ms_after",
    "runs", "notes",
}  # fmt: skip


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def classifier(w: np.ndarray | None = None, extra_inits=()) -> onnx.ModelProto:
    """x [batch, 4] -> Gemm -> scores [batch, 10]."""
    if w is None:
        w = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["scores"], transB=1)],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w"), *extra_inits],
    )
    return finish(graph)


def conv_net() -> onnx.ModelProto:
    """x [1, 3, 8, 8] -> Conv -> y [1, 4, 8, 8]: a 4-D output, not class scores."""
    w = np.random.default_rng(2).standard_normal((4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")],
    )
    return finish(graph)


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def clf_path(tmp_path):
    return save(classifier(), tmp_path / "clf.onnx")


# ---- identical and changed models ------------------------------------------------------------


def test_identical_model_has_zero_drift(clf_path):
    inputs = make_inputs(onnx.load(clf_path), batch_size=8)
    result = validate(clf_path, clf_path, inputs, CPU, runs=6)
    assert isinstance(result, ValidationResult)
    assert result.provider == "CPUExecutionProvider"
    assert result.max_abs_diff == 0.0 and result.rel_diff == 0.0
    assert result.cosine == 1.0
    assert result.top1_agreement == 1.0
    assert result.runs == 6
    assert result.latency_ms_before > 0 and result.latency_ms_after > 0
    assert result.latency_p90_ms_before >= result.latency_ms_before
    d = result.to_dict()
    assert set(d) >= RESULT_KEYS
    assert d["per_output"][0]["name"] == "scores"
    assert "random inputs (seed 0)" in d["notes"]


def test_hand_changed_weights_show_real_drift(tmp_path, clf_path):
    w = numpy_helper.to_array(onnx.load(clf_path).graph.initializer[0]).copy()
    w[3] += 2.0  # one class's weights moved by hand
    w[0] = 0.0
    changed = save(classifier(w), tmp_path / "changed.onnx")
    inputs = make_inputs(onnx.load(clf_path), batch_size=64, seed=3)
    result = validate(clf_path, changed, inputs, CPU, runs=5)

    ref = run_model(clf_path, inputs, CPU)[0]
    cand = run_model(changed, inputs, CPU)[0]
    diff = float(np.abs(ref - cand).max())
    assert result.max_abs_diff == pytest.approx(diff) and diff > 0.1
    assert result.rel_diff == pytest.approx(diff / float(np.abs(ref).max()))
    a, b = ref.ravel().astype(np.float64), cand.ravel().astype(np.float64)
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert result.cosine == pytest.approx(cosine) and cosine < 0.99
    agree = float((ref.argmax(1) == cand.argmax(1)).mean())
    assert result.top1_agreement == pytest.approx(agree) and agree < 1.0


def test_top1_is_none_for_a_4d_output(tmp_path):
    path = save(conv_net(), tmp_path / "conv.onnx")
    result = validate(path, path, make_inputs(onnx.load(path)), CPU, runs=5)
    assert result.top1_agreement is None
    assert result.per_output[0]["shape"] == [1, 4, 8, 8]
    assert "top1_agreement" not in result.per_output[0]


def test_ort_warnings_stay_off_stderr(tmp_path, capfd):
    unused = numpy_helper.from_array(np.ones(3, np.float32), "unused")
    path = save(classifier(extra_inits=[unused]), tmp_path / "clf.onnx")
    validate(path, path, make_inputs(onnx.load(path)), CPU, runs=5)
    assert capfd.readouterr().err == ""


def test_progress_bar_stays_off_captured_output(clf_path, capsys):
    """Deployment scripts capture output: no bar there, and never on stdout."""
    validate(clf_path, clf_path, make_inputs(onnx.load(clf_path)), CPU, runs=5, progress=True)
    captured = capsys.readouterr()
    assert "latency" not in captured.err and captured.out == ""


# ---- compare_outputs -------------------------------------------------------------------------


def test_compare_all_zero_outputs_is_cosine_one():
    zeros = [np.zeros((2, 3), np.float32)]
    out = compare_outputs(zeros, [z.copy() for z in zeros], ["y"])
    assert out["cosine"] == 1.0 and out["max_abs_diff"] == 0.0 and out["rel_diff"] == 0.0


def test_compare_concatenates_outputs_and_rejects_shape_changes():
    ref = [np.array([[1.0, 0.0]], np.float32), np.array([2.0, 0.0], np.float32)]
    cand = [np.array([[1.0, 0.0]], np.float32), np.array([0.0, 2.0], np.float32)]
    out = compare_outputs(ref, cand, ["a", "b"])
    assert out["max_abs_diff"] == 2.0 and out["rel_diff"] == 1.0
    assert out["cosine"] == pytest.approx(1.0 / 5.0)  # (1*1) / (sqrt(5) * sqrt(5))
    assert [p["cosine"] for p in out["per_output"]] == [1.0, 0.0]
    assert out["top1_agreement"] == 1.0  # "a" is [1, 2] scores and agrees; "b" is 1-D
    with pytest.raises(OnnxPruneError, match="shape"):
        compare_outputs(ref, [cand[0], np.zeros((3,), np.float32)], ["a", "b"])


# ---- inputs ----------------------------------------------------------------------------------


def mixed_input_model() -> onnx.ModelProto:
    """Float, int64 token ids, int64 mask and bool inputs, plus an old-IR initializer input."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["x_out"]),
            helper.make_node("Identity", ["input_ids"], ["ids_out"]),
            helper.make_node("Identity", ["attention_mask"], ["mask_out"]),
            helper.make_node("Identity", ["flag"], ["flag_out"]),
            helper.make_node("Identity", ["bias"], ["bias_out"]),
        ],
        "mixed",
        [
            vi("x", TensorProto.FLOAT, ["batch", 3, "height"]),
            vi("input_ids", TensorProto.INT64, ["batch", "seq"]),
            vi("attention_mask", TensorProto.INT64, ["batch", 7]),
            vi("flag", TensorProto.BOOL, [2]),
            vi("bias", TensorProto.FLOAT, [3]),
        ],
        [
            vi("x_out", TensorProto.FLOAT, None),
            vi("ids_out", TensorProto.INT64, None),
            vi("mask_out", TensorProto.INT64, None),
            vi("flag_out", TensorProto.BOOL, None),
            vi("bias_out", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(np.zeros(3, np.float32), "bias")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 3  # initializers are listed as graph inputs in old IR versions
    return model


def test_random_inputs_match_dtypes_and_shapes(tmp_path):
    model = mixed_input_model()
    inputs = make_inputs(model, batch_size=4, seed=5)
    assert set(inputs) == {"x", "input_ids", "attention_mask", "flag"}  # not "bias"
    assert inputs["x"].dtype == np.float32 and inputs["x"].shape == (4, 3, 1)
    assert inputs["input_ids"].dtype == np.int64 and inputs["input_ids"].shape == (4, 1)
    assert inputs["attention_mask"].shape == (4, 7) and (inputs["attention_mask"] == 1).all()
    assert inputs["flag"].dtype == np.bool_ and inputs["flag"].shape == (2,)
    assert any("'height'" in n for n in inputs.notes) and any("'seq'" in n for n in inputs.notes)
    ids = make_inputs(model, batch_size=64)["input_ids"]
    assert ids.min() >= 0 and ids.max() < 100 and len(np.unique(ids)) > 10
    again = make_inputs(model, batch_size=4, seed=5)
    assert all(np.array_equal(inputs[k], again[k]) for k in inputs)
    # and onnxruntime accepts them as they are
    path = save(model, tmp_path / "mixed.onnx")
    outs = run_model(path, inputs, CPU)
    assert np.array_equal(outs[1], inputs["input_ids"])


def write_npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_calib_inputs_are_used_and_trimmed(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    calib = write_npz(tmp_path / "calib.npz", x=x)
    inputs = make_inputs(classifier(), calib=calib, max_samples=3)
    assert np.array_equal(inputs["x"], x[:3])
    assert any("calib.npz" in n and "3 samples" in n for n in inputs.notes)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({}, "missing x"),
        ({"x": np.zeros((2, 4), np.float32), "y": np.zeros(1)}, "unexpected y"),
        ({"x": np.zeros((2, 4), np.float64)}, "dtype float64"),
        ({"x": np.zeros((2, 4, 1), np.float32)}, "rank 3"),
        ({"x": np.zeros((2, 5), np.float32)}, "axis 1 is 5"),
    ],
)
def test_bad_calib_data_is_a_clear_error(tmp_path, arrays, message):
    calib = write_npz(tmp_path / "calib.npz", **arrays)
    with pytest.raises(OnnxPruneError, match=message) as info:
        make_inputs(classifier(), calib=calib)
    assert "\n" not in str(info.value)


def test_calib_file_that_is_not_npz(tmp_path):
    bad = tmp_path / "calib.npz"
    bad.write_text("hello")
    with pytest.raises(OnnxPruneError, match=r"not a numpy \.npz"):
        make_inputs(classifier(), calib=bad)
    with pytest.raises(OnnxPruneError, match="not a file"):
        make_inputs(classifier(), calib=tmp_path / "missing.npz")


# ---- latency ---------------------------------------------------------------------------------


def test_latency_lists_have_the_requested_length(tmp_path, clf_path):
    other = save(classifier(np.ones((10, 4), np.float32)), tmp_path / "other.onnx")
    inputs = make_inputs(onnx.load(clf_path))
    times = measure_latency([clf_path, other], inputs, CPU, runs=7, warmup=1)
    assert [len(t) for t in times] == [7, 7]
    assert all(t > 0 for ts in times for t in ts)


def test_latency_budget_stops_early_but_keeps_five_runs(clf_path):
    inputs = make_inputs(onnx.load(clf_path))
    times = measure_latency([clf_path, clf_path], inputs, CPU, runs=50, warmup=0, budget_s=0.0)
    assert [len(t) for t in times] == [5, 5]


# ---- providers -------------------------------------------------------------------------------


def test_provider_choices():
    assert resolve_providers("cpu") == CPU
    assert resolve_providers("CPU") == CPU
    with pytest.raises(UsageError, match="cpu, cuda or auto"):
        resolve_providers("tpu")
    if HAS_CUDA:
        assert resolve_providers("auto")[0] == "CUDAExecutionProvider"
        return
    assert resolve_providers("auto") == CPU
    with pytest.raises(OnnxPruneError, match="onnxruntime-gpu") as info:
        resolve_providers("cuda")
    assert not isinstance(info.value, UsageError)


@pytest.mark.skipif(not HAS_CUDA, reason="onnxruntime has no CUDAExecutionProvider here")
def test_validate_on_cuda(clf_path):
    providers = resolve_providers("cuda")
    result = validate(clf_path, clf_path, make_inputs(onnx.load(clf_path)), providers, runs=5)
    assert result.provider == "CUDAExecutionProvider"
    assert result.max_abs_diff == 0.0


# ---- models onnxruntime cannot run ------------------------------------------------------------


def unknown_op_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["scores"])],
        "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
    )
    return finish(graph)


def test_unrunnable_original_is_a_wrapped_error(tmp_path, clf_path):
    bad = save(unknown_op_model(), tmp_path / "bad.onnx")
    onnx.load(bad)  # it parses: only onnxruntime refuses it
    inputs = make_inputs(onnx.load(clf_path))
    with pytest.raises(OnnxPruneError) as info:
        validate(bad, clf_path, inputs, CPU, runs=5)
    message = str(info.value)
    assert message.startswith("onnxruntime cannot run the original model: ")
    assert "NoSuchOp" in message and "\n" not in message
    assert "[ONNXRuntimeError]" not in message
    with pytest.raises(OnnxPruneError, match=r"^onnxruntime cannot run the pruned model: "):
        validate(clf_path, bad, inputs, CPU, runs=5)


def test_run_failure_is_wrapped_too(clf_path):
    wrong = {"x": np.zeros((2, 5), np.float32)}  # the model wants [batch, 4]
    with pytest.raises(OnnxPruneError, match=r"^onnxruntime cannot run the model: "):
        run_model(clf_path, wrong, CPU)
    with pytest.raises(OnnxPruneError, match="no value for input"):
        run_model(clf_path, {}, CPU)


def test_calibration_set_runs_in_chunks_of_a_fixed_batch(tmp_path):
    """A batch-1 export validated on 10 samples: every sample is compared, latency on one."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[w],
    )
    a = tmp_path / "a.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), a)
    changed = onnx.load(a)
    arr = numpy_helper.to_array(changed.graph.initializer[0]).copy()
    arr[0, 0] += 1.0  # only the first input feature's weights change
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(arr, "w"))
    b = tmp_path / "b.onnx"
    onnx.save(changed, b)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    result = validate(a, b, {"x": x}, ["CPUExecutionProvider"], runs=5)
    # the largest change over all 10 samples is |x[:, 0]|.max(): seen only if all ran
    assert result.max_abs_diff == pytest.approx(float(np.abs(x[:, 0]).max()), rel=1e-5)
    assert any("batches of 1" in n for n in result.notes)


def test_dynamic_batch_compares_every_sample_past_the_chunk_size(tmp_path, monkeypatch):
    import onnxprune.runtime.feeds as feeds

    monkeypatch.setattr(feeds, "MAX_VALIDATION_BATCH", 4)
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[w],
    )
    a = tmp_path / "a.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), a)
    changed = onnx.load(a)
    arr = numpy_helper.to_array(changed.graph.initializer[0]).copy()
    arr[0, 0] += 1.0
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(arr, "w"))
    b = tmp_path / "b.onnx"
    onnx.save(changed, b)
    x = rng.normal(size=(10, 4)).astype(np.float32)
    x[9, 0] = 50.0  # the largest drift sits in the short last chunk
    result = validate(a, b, {"x": x}, ["CPUExecutionProvider"], runs=5)
    assert result.max_abs_diff == pytest.approx(50.0, rel=1e-5)
    assert not any("dropped" in n for n in result.notes)
