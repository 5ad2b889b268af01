"""Comparing two model files on real data: agreement, drift and accuracy against labels, as
``evaluate`` computes them and as ``onnxprune validate`` prints and writes them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxprune.calibration.data import make_inputs
from onnxprune.errors import OnnxPruneError
from onnxprune.report.render import render_evaluation
from onnxprune.runtime.compare_models import evaluate, evaluate_files, load_labels

CPU = ["CPUExecutionProvider"]
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
MODELS = Path(__file__).resolve().parent.parent / "models"
CNN, MLP = MODELS / "digits_cnn.onnx", MODELS / "digits_mlp.onnx"
CNN_TEST, MLP_TEST = MODELS / "digits_cnn_test.npz", MODELS / "digits_mlp_test.npz"
LABELS = MODELS / "digits_test_labels.npy"


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=CPU)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def damaged_mlp(tmp_path: Path) -> Path:
    """digits_mlp with half of its first layer's neurons zeroed by hand: it loses accuracy."""
    model = onnx.load(MLP)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init).copy()
        if w.shape in ((300, 64), (64, 300)):
            neurons = 0 if w.shape[0] == 300 else 1
            w[(slice(None),) * neurons + (slice(None, None, 2),)] = 0.0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    path = tmp_path / "damaged.onnx"
    onnx.save(model, path)
    return path


def finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def gemm_model(batch: int | str = "batch", out_name: str = "scores", classes: int = 3):
    w = np.random.default_rng(1).standard_normal((classes, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], [out_name], transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(w, "w")],
    )
    return finish(graph)


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


# ---- evaluate --------------------------------------------------------------------------------


def test_same_model_on_digits_has_full_accuracy_and_agreement():
    inputs = make_inputs(onnx.load(CNN), calib=CNN_TEST)
    labels = np.load(LABELS)
    result = evaluate(CNN, CNN, inputs, CPU, labels=labels)
    want = float(np.mean(ort_logits(CNN, inputs["input"]).argmax(1) == labels))
    assert want == 1.0
    assert result["accuracy_before"] == want and result["accuracy_after"] == want
    assert result["top1_agreement"] == 1.0 and result["cosine"] == 1.0
    assert result["max_abs_diff"] == 0.0 and result["samples"] == 360
    assert result["provider"] == "CPUExecutionProvider"


def test_damaged_model_accuracy_matches_onnxruntime_argmax(tmp_path):
    damaged = damaged_mlp(tmp_path)
    x = np.load(MLP_TEST)["input"]
    labels = np.load(LABELS)
    result = evaluate(MLP, damaged, make_inputs(onnx.load(MLP), calib=MLP_TEST), CPU, labels=labels)
    before, after = ort_logits(MLP, x), ort_logits(damaged, x)
    assert result["accuracy_before"] == pytest.approx(np.mean(before.argmax(1) == labels))
    assert result["accuracy_after"] == pytest.approx(np.mean(after.argmax(1) == labels))
    assert result["accuracy_after"] < result["accuracy_before"]
    agree = np.mean(before.argmax(1) == after.argmax(1))
    assert result["top1_agreement"] == pytest.approx(agree) and agree < 1.0
    assert result["max_abs_diff"] == pytest.approx(float(np.abs(before - after).max()), rel=1e-6)


def test_fixed_batch_drops_the_last_chunk_and_its_labels(tmp_path):
    path = save(gemm_model(batch=4), tmp_path / "fixed.onnx")
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    logits = np.concatenate([ort_logits(path, x[i : i + 4]) for i in (0, 4)])
    labels = logits.argmax(1)
    labels[0] = (labels[0] + 1) % 3  # one wrong of the 8 kept
    labels = np.concatenate([labels, [0, 0]])
    result = evaluate(path, path, {"x": x}, CPU, labels=labels)
    assert result["samples"] == 8
    assert result["accuracy_before"] == pytest.approx(7 / 8)
    assert any("last 2 of 10 samples dropped" in n for n in result["notes"])


def test_pruned_model_may_lose_an_unused_input(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["y"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
    )
    both = save(finish(graph), tmp_path / "both.onnx")
    del graph.input[1]
    one = save(finish(graph), tmp_path / "one.onnx")
    inputs = make_inputs(onnx.load(both), batch_size=5)
    assert evaluate(both, one, inputs, CPU)["max_abs_diff"] == 0.0
    with pytest.raises(OnnxPruneError, match=r"takes input\(s\) the original model lacks: b"):
        evaluate(one, both, inputs, CPU)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("other_inputs", "pruned model has input(s) of another type or shape: input"),
        ("other_outputs", "the models have different outputs"),
        ("labels_length", "there are 5 labels but 360 input samples"),
        ("no_scores", "--labels needs an output of class scores"),
        ("label_range", "label 12 is out of range: output 'scores' scores 3 classes"),
    ],
)
def test_evaluate_errors(tmp_path, case, message):
    original, pruned, labels = CNN, CNN, np.zeros(5, np.int64)
    inputs = make_inputs(onnx.load(CNN), calib=CNN_TEST)
    if case == "other_inputs":
        pruned, labels = MLP, None
    elif case == "other_outputs":
        original = save(gemm_model(out_name="a"), tmp_path / "a.onnx")
        pruned = save(gemm_model(out_name="b"), tmp_path / "b.onnx")
        inputs, labels = make_inputs(onnx.load(original)), None
    elif case == "no_scores":
        original = pruned = save(gemm_model(classes=1), tmp_path / "one.onnx")
        inputs = make_inputs(onnx.load(original), batch_size=5)
    elif case == "label_range":
        original = pruned = save(gemm_model(), tmp_path / "g.onnx")
        inputs, labels = make_inputs(onnx.load(original), batch_size=2), np.array([0, 12])
    with pytest.raises(OnnxPruneError, match=re.escape(message)) as info:
        evaluate(original, pruned, inputs, CPU, labels=labels)
    assert "\n" not in str(info.value)


# ---- load_labels -----------------------------------------------------------------------------


def test_load_labels_reads_trims_and_checks_length(tmp_path):
    labels = load_labels(LABELS, 360)
    assert labels.dtype == np.int64 and np.array_equal(labels, np.load(LABELS))
    assert np.array_equal(load_labels(LABELS, 100, max_samples=100), np.load(LABELS)[:100])
    np.save(tmp_path / "col.npy", np.array([[1], [2]], np.int32))
    assert np.array_equal(load_labels(tmp_path / "col.npy"), [1, 2])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("garbage", "not a numpy .npy file"),
        ("npz", "is an .npz archive"),
        ("float", "are float32, not integers"),
        ("matrix", "has shape (2, 3): expected one class index per sample"),
        ("negative", "hold -1: class indices start at 0"),
        ("length", "hold 3 labels but there are 4 samples"),
    ],
)
def test_bad_labels_are_clear_errors(tmp_path, case, message):
    path = tmp_path / "labels.npy"
    if case == "garbage":
        path.write_text("0 1 2")
    elif case == "npz":
        with open(path, "wb") as f:
            np.savez(f, labels=np.zeros(4, np.int64))
    elif case != "missing":
        arr = {
            "float": np.zeros(4, np.float32),
            "matrix": np.zeros((2, 3), np.int64),
            "negative": np.array([0, -1, 2, 3]),
            "length": np.array([0, 1, 2]),
        }[case]
        np.save(path, arr)
    with pytest.raises(OnnxPruneError, match=re.escape(message)) as info:
        load_labels(path, 4)
    assert "\n" not in str(info.value)


# ---- onnxprune validate ----------------------------------------------------------------------


def test_validate_command_prints_accuracy_and_writes_json(tmp_path, capsys, run_cli):
    damaged = damaged_mlp(tmp_path)
    report = tmp_path / "v.json"
    args = ["validate", MLP, damaged, "--calib", MLP_TEST, "--labels", LABELS, "--json", report]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    x, labels = np.load(MLP_TEST)["input"], np.load(LABELS)
    before = float(np.mean(ort_logits(MLP, x).argmax(1) == labels))
    after = float(np.mean(ort_logits(damaged, x).argmax(1) == labels))
    rows = {line.rsplit(None, 1)[0].strip(): line.split()[-1] for line in out.splitlines()
            if line.strip() and not line.startswith(("-", "note"))}  # fmt: skip
    assert rows["samples"] == "360"
    assert rows["accuracy before"] == f"{before:.3f}" and rows["accuracy after"] == f"{after:.3f}"
    assert rows["accuracy drop (points)"] == f"{100 * (before - after):.2f}"
    data = json.loads(report.read_text())
    assert data["accuracy_before"] == pytest.approx(before)
    assert data["accuracy_after"] == pytest.approx(after)
    assert data["samples"] == 360 and data["inputs"] == str(MLP_TEST)
    assert data["original"] == str(MLP) and data["pruned"] == str(damaged)
    for key in ("max_abs_diff", "rel_diff", "cosine", "top1_agreement", "per_output", "notes"):
        assert key in data
    assert data["per_output"][0]["name"] == "logits"
    assert render_evaluation(data) == out.rstrip("\n")


def test_validate_command_on_the_digits_cnn_itself(capsys, run_cli):
    args = ["validate", CNN, CNN, "--calib", CNN_TEST, "--labels", LABELS, "--calib-samples", 50]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert re.search(r"^samples\s+50$", out, re.M)
    assert re.search(r"^accuracy before\s+1\.000$", out, re.M)
    assert re.search(r"^accuracy after\s+1\.000$", out, re.M)
    assert re.search(r"^top-1 agreement\s+1\.0000$", out, re.M)


def test_validate_command_without_calib_says_inputs_are_random(capsys, run_cli):
    code, out, err = run_cli(["validate", MLP, MLP, "--seed", 3], capsys)
    assert code == 0, err
    assert "note: random inputs (seed 3): pass --calib for real inputs" in out
    assert re.search(r"^samples\s+16$", out, re.M)
    result = evaluate_files(MLP, MLP, seed=3)
    assert result["inputs"] == "random" and result["samples"] == 16


def test_main_help_shows_validate(capsys, run_cli):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "onnxprune validate" in out
    code, out, _ = run_cli(["validate", "--help"], capsys)
    assert code == 0
    for option in ("--calib", "--calib-samples", "--calib-preprocess", "--labels", "--json"):
        assert option in out


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("missing_model", 1, "does not exist"),
        ("not_onnx", 1, "not a valid ONNX model"),
        ("different_models", 1, "both models must have the same inputs"),
        ("labels_without_calib", 2, "--labels needs --calib"),
        ("labels_length", 1, "hold 360 labels but there are 256 samples"),
        ("json_folder", 2, "--json folder"),
        ("bad_providers", 2, "--providers"),
        ("samples_zero", 2, "--calib-samples"),
        ("preprocess_without_calib", 2, "--calib-preprocess needs --calib"),
    ],
)
def test_validate_command_errors(tmp_path, capsys, run_cli, case, code, needle):
    args = ["validate", CNN, CNN]
    if case == "missing_model":
        args = ["validate", CNN, tmp_path / "nope.onnx"]
    elif case == "not_onnx":
        (tmp_path / "bad.onnx").write_text("not a model")
        args = ["validate", tmp_path / "bad.onnx", CNN]
    elif case == "different_models":
        args = ["validate", CNN, MLP]
    elif case == "labels_without_calib":
        args += ["--labels", LABELS]
    elif case == "labels_length":
        args += ["--calib", MODELS / "digits_cnn_calib.npz", "--labels", LABELS]
    elif case == "json_folder":
        args += ["--json", tmp_path / "no" / "v.json"]
    elif case == "bad_providers":
        args += ["--providers", "tpu"]
    elif case == "samples_zero":
        args += ["--calib", CNN_TEST, "--calib-samples", 0]
    elif case == "preprocess_without_calib":
        args += ["--calib-preprocess", "imagenet"]
    got, out, err = run_cli(args, capsys)
    assert got == code, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert needle in err and "Traceback" not in err and out == ""


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime has CUDA here")
def test_validate_command_cuda_without_cuda_is_an_error(capsys, run_cli):
    code, _, err = run_cli(["validate", MLP, MLP, "--providers", "cuda"], capsys)
    assert code == 1 and "CUDA requested" in err


def test_validate_command_on_an_image_folder_for_a_batch_1_model(tmp_path, capsys, run_cli):
    """The usual CNN export takes one image at a time: every image still runs, in order."""
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["scores"]),
        ],
        "img",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 5])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")],
    )
    path = save(finish(graph), tmp_path / "img.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    pictures = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(3)]
    for i, arr in enumerate(pictures):
        Image.fromarray(arr).save(folder / f"{i}.png")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = [
        int(ort_logits(path, ((a / 255 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None])
            .argmax())
        for a in pictures
    ]  # fmt: skip
    labels = np.array([want[0], want[1], (want[2] + 1) % 4])
    np.save(tmp_path / "labels.npy", labels)
    report = tmp_path / "v.json"
    args = ["validate", path, path, "--calib", folder, "--labels", tmp_path / "labels.npy",
            "--json", report]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["samples"] == 3 and data["accuracy_before"] == pytest.approx(2 / 3)
    assert any("preprocess imagenet" in n for n in data["notes"])
    assert "batches of 1" in out
