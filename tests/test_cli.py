"""The command line as a user meets it: the happy path, and every bad input ending in one
`error:` line, the right exit code, no traceback, the input untouched and no output left."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.testing.graphs import small_cnn


@pytest.fixture
def cnn_path(tmp_path: Path) -> Path:
    p = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), p)
    return p


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_unstructured_happy_path_writes_validated_output_and_report(
    cnn_path, tmp_path, capsys, run_cli
):
    report = tmp_path / "r.json"
    code, out, err = run_cli(
        [cnn_path, "--unstructured", "0.5", "--report", report, "--runs", "5"], capsys
    )
    assert code == 0, err
    out_path = tmp_path / "cnn.pruned.onnx"
    assert out_path.exists()
    data = json.loads(report.read_text())
    for key in (
        "params_before", "params_after", "nonzero_before", "nonzero_after", "macs_before",
        "macs_after", "size_bytes_before", "size_bytes_after",
    ):  # fmt: skip
        assert isinstance(data[key], int), key
    assert data["params_after"] == data["params_before"]
    # 50% of the three weight tensors (432 + 2304 + 160 = 2896) are zeroed; biases stay
    assert data["nonzero_before"] - data["nonzero_after"] == round(0.5 * 432) + round(
        0.5 * 2304
    ) + round(0.5 * 160)
    v = data["validation"]
    for key in ("provider", "max_abs_diff", "cosine", "latency_ms_before", "latency_ms_after"):
        assert key in v
    assert v["provider"] == "CPUExecutionProvider"
    assert v["max_abs_diff"] > 0  # zeroing half the weights changes the answer, and we see it
    assert -1.0 <= v["cosine"] < 1.0
    assert "nonzero params" in out and "validation on CPUExecutionProvider" in out


def test_nm_happy_path_and_inspect_reports_pattern(cnn_path, tmp_path, capsys, run_cli):
    out_path = tmp_path / "nm.onnx"
    code, _, err = run_cli([cnn_path, "--nm", "2:4", "-o", out_path, "--no-validate"], capsys)
    assert code == 0, err
    code, out, _ = run_cli(["inspect", out_path], capsys)
    assert code == 0
    # c1 has Cin=3 (not a multiple of 4): n/a; c2 (Cin 16) and fc (K 16) satisfy 2:4
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["c1.w"].rstrip().endswith("n/a")
    assert lines["c2.w"].rstrip().endswith("yes")
    assert lines["fc.w"].rstrip().endswith("yes")
    code, out, _ = run_cli(["inspect", cnn_path], capsys)
    assert (
        {line.split()[0]: line for line in out.splitlines() if line.strip()}["c2.w"]
        .rstrip()
        .endswith("no")
    )


def _assert_clean_failure(code, out, err, expected_code, folder, before_files, inputs=()):
    assert code == expected_code, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err + out
    assert sorted(p.name for p in folder.iterdir()) == before_files  # no output, no temp folder
    for path, sha in inputs:
        assert digest(path) == sha


def make_quantized_model() -> onnx.ModelProto:
    """A weight onnxprune cannot prune: com.microsoft DynamicQuantizeMatMul (an int8 weight
    read through DequantizeLinear is pruned since issue 12, so the case uses this op)."""
    wq = numpy_helper.from_array(np.arange(-32, 32, dtype=np.int8).reshape(4, 16), "wq")
    nodes = [
        helper.make_node(
            "DynamicQuantizeMatMul", ["x", "wq", "s", "z"], ["y"], name="mm",
            domain="com.microsoft",
        ),
    ]  # fmt: skip
    inits = [
        wq,
        numpy_helper.from_array(np.array([0.1], np.float32), "s"),
        numpy_helper.from_array(np.array([0], np.int8), "z"),
    ]
    graph = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], initializer=inits,
    )  # fmt: skip
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def make_no_weights_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_unrunnable_model() -> onnx.ModelProto:
    """Parses and has a prunable Conv, but uses an operator onnxruntime does not know."""
    model = small_cnn()
    model.graph.node[1].op_type = "NoSuchRelu"
    return model


def make_external_model(folder: Path, location: str) -> Path:
    model = small_cnn()
    onnx.save(model, folder / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)  # fmt: skip
    if location != "ext.onnx.data":
        m = onnx.load(folder / "ext.onnx", load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save(m, folder / "ext.onnx")
    return folder / "ext.onnx"


@pytest.mark.parametrize(
    "case, expected_code, needle",
    [
        ("not_a_file", 1, "does not exist"),
        ("directory", 1, "is a folder"),
        ("not_onnx", 1, "not a valid ONNX"),
        ("truncated", 1, "not a valid ONNX"),
        ("missing_external", 1, "ext.onnx.data"),
        ("traversal", 1, "outside"),
        ("ratio_high", 2, "--unstructured"),
        ("ratio_negative", 2, "--structured"),
        ("bad_nm", 2, "N:M"),
        ("output_is_input", 2, "input"),
        ("unwritable_folder", 1, "cannot write"),
        ("no_weights", 1, "no prunable weights"),
        ("quantized", 1, "quantized"),
        ("unrunnable", 1, "onnxruntime cannot run"),
        ("nothing_to_do", 2, "nothing to do"),
        ("unknown_option", 2, "--frobnicate"),
    ],
)
def test_bad_input_gives_one_error_line(case, expected_code, needle, tmp_path, capsys, run_cli):
    model_path = tmp_path / "m.onnx"
    args_tail = ["--unstructured", "0.5"]
    out_arg: list = []
    inputs = []
    if case == "not_a_file":
        model_path = tmp_path / "missing.onnx"
    elif case == "directory":
        model_path = tmp_path / "adir.onnx"
        model_path.mkdir()
    elif case == "not_onnx":
        model_path.write_text("hello, I am not a model\n" * 20)
    elif case == "truncated":
        data = small_cnn().SerializeToString()
        model_path.write_bytes(data[: len(data) // 2])
    elif case == "missing_external":
        model_path = make_external_model(tmp_path, "ext.onnx.data")
        (tmp_path / "ext.onnx.data").unlink()
    elif case == "traversal":
        sub = tmp_path / "sub"
        sub.mkdir()
        make_external_model(sub, "ext.onnx.data")
        (sub / "ext.onnx.data").rename(tmp_path / "secret.data")
        model_path = make_external_model(sub, "../secret.data")
        tmp_path = sub  # the folder that must stay clean
    elif case in ("ratio_high", "ratio_negative"):
        onnx.save(small_cnn(), model_path)
        args_tail = ["--unstructured", "1.0"] if case == "ratio_high" else ["--structured", "-0.1"]
    elif case == "bad_nm":
        onnx.save(small_cnn(), model_path)
        args_tail = ["--nm", "4:2"]
    elif case == "output_is_input":
        onnx.save(small_cnn(), model_path)
        out_arg = ["-o", model_path]
    elif case == "unwritable_folder":
        onnx.save(small_cnn(), model_path)
        out_arg = ["-o", tmp_path / "no" / "such" / "dir" / "out.onnx"]
    elif case == "no_weights":
        onnx.save(make_no_weights_model(), model_path)
    elif case == "quantized":
        onnx.save(make_quantized_model(), model_path)
    elif case == "unrunnable":
        onnx.save(make_unrunnable_model(), model_path)
    elif case == "nothing_to_do":
        onnx.save(small_cnn(), model_path)
        args_tail = []
    elif case == "unknown_option":
        onnx.save(small_cnn(), model_path)
        args_tail = ["--frobnicate"]
    folder = model_path.parent if model_path.parent.exists() else tmp_path
    if case == "traversal":
        folder = model_path.parent
    before_files = sorted(p.name for p in folder.iterdir())
    if model_path.is_file():
        inputs = [(model_path, digest(model_path))]
    code, out, err = run_cli([model_path, *args_tail, *out_arg, "--runs", "5"], capsys)
    _assert_clean_failure(code, out, err, expected_code, folder, before_files, inputs)
    assert needle.lower() in err.lower(), err


def test_force_allows_overwriting_the_input(cnn_path, capsys, run_cli):
    code, _, err = run_cli(
        [cnn_path, "--unstructured", "0.5", "-o", cnn_path, "--force", "--no-validate"], capsys
    )
    assert code == 0, err
    w = {t.name: numpy_helper.to_array(t) for t in onnx.load(cnn_path).graph.initializer}["c2.w"]
    assert np.count_nonzero(w == 0) == round(0.5 * w.size)


def test_console_entry_point_runs_as_a_subprocess(cnn_path, tmp_path):
    """The real process: exit codes and a single error line survive outside pytest too."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "onnxprune", str(cnn_path), "--nm", "3:2"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "onnxprune", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0
    assert "--structured" in proc.stdout and "inspect" in proc.stdout
    assert not (tmp_path / "cnn.pruned.onnx").exists()


# ---- calibration data, labels and recovery switches (issue #5) -------------------------------

MODELS = Path(__file__).resolve().parent.parent / "models"


def write_pngs(folder: Path, n: int, size: tuple[int, int] = (8, 8)) -> None:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(11)
    for i in range(n):
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")


def test_prune_help_lists_the_calibration_options(capsys, run_cli):
    code, out, _ = run_cli(["prune", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for text in (
        "a folder of .npy files, or a folder of images", "--calib-samples N",
        "--calib-preprocess SPEC", "--labels PATH", "--bias-correction / --no-bias-correction",
        "--lstsq / --no-lstsq", "--obs / --no-obs", "SparseGPT-style",
        "Refit each layer that lost input channels by ridge least squares",
    ):  # fmt: skip
        assert text in flat, text


def test_prune_takes_an_image_folder_with_samples_and_preprocess(
    cnn_path, tmp_path, capsys, run_cli
):
    write_pngs(tmp_path / "imgs", 4, size=(10, 12))  # resized to the model's 8x8
    report = tmp_path / "r.json"
    code, _, err = run_cli(
        [cnn_path, "--unstructured", "0.5", "--calib", tmp_path / "imgs", "--calib-samples", 3,
         "--calib-preprocess", "imagenet", "--report", report, "--runs", 5],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    notes = " | ".join(json.loads(report.read_text())["validation"]["notes"])
    assert "(3 samples)" in notes and "preprocess imagenet (--calib-preprocess)" in notes


def test_prune_with_labels_reports_accuracy_before_and_after(tmp_path, capsys, run_cli):
    import onnxruntime as ort

    out_path, report = tmp_path / "cnn.onnx", tmp_path / "r.json"
    code, _, err = run_cli(
        [MODELS / "digits_cnn.onnx", "--structured", 0.3, "-o", out_path, "--calib",
         MODELS / "digits_cnn_test.npz", "--labels", MODELS / "digits_test_labels.npy",
         "--report", report, "--runs", 5, "--no-holdout"],  # scored on all 360 digits
        capsys,
    )  # fmt: skip
    assert code == 0, err
    x = np.load(MODELS / "digits_cnn_test.npz")["input"]
    labels = np.load(MODELS / "digits_test_labels.npy")

    def accuracy(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float(np.mean(session.run(None, {"input": x})[0].argmax(1) == labels))

    v = json.loads(report.read_text())["validation"]
    assert v["accuracy_before"] == pytest.approx(accuracy(MODELS / "digits_cnn.onnx")) == 1.0
    assert v["accuracy_after"] == pytest.approx(accuracy(out_path))


def test_recovery_switches_off_leave_plain_magnitude_pruning(cnn_path, tmp_path, capsys, run_cli):
    """--calib with every recovery step off gives exactly what pruning without data gives."""
    write_pngs(tmp_path / "imgs", 4)

    def weights(args: list) -> dict[str, np.ndarray]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.onnx"
        code, _, err = run_cli([cnn_path, "--unstructured", 0.5, "-o", out, *args], capsys)
        assert code == 0, err
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}

    calib = ["--calib", tmp_path / "imgs", "--runs", 5]
    plain = weights(["--no-validate"])
    # --scope local: with --calib the default scope of --unstructured is global (issue 11)
    off = weights([*calib, "--no-bias-correction", "--no-lstsq", "--no-obs", "--scope", "local"])
    on = weights(calib)
    assert plain.keys() == off.keys()
    assert all(np.array_equal(plain[k], off[k]) for k in plain)
    # on by default with --calib: weights refitted, or a bias added where there was none
    assert on.keys() != plain.keys() or not all(np.array_equal(plain[k], on[k]) for k in plain)


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--calib-samples", 0], 2, "--calib-samples"),
        (["--calib-preprocess", "gamma=2"], 2, "unknown key 'gamma'"),
        (["--labels", "labels.npy"], 2, "--calib"),
    ],
)
def test_bad_calibration_options_for_prune(cnn_path, tmp_path, capsys, run_cli, args, code, needle):
    write_pngs(tmp_path / "imgs", 2)
    calib = [] if args[0] == "--labels" else ["--calib", tmp_path / "imgs"]
    before = sorted(p.name for p in tmp_path.iterdir())
    got, out, err = run_cli([cnn_path, "--unstructured", 0.5, *calib, *args, "--runs", 5], capsys)
    _assert_clean_failure(got, out, err, code, tmp_path, before, [(cnn_path, digest(cnn_path))])
    assert needle in err, err


def test_dry_run_prunes_validates_and_reports_but_writes_no_model(tmp_path, capsys, run_cli):
    model = tmp_path / "m.onnx"
    onnx.save(small_cnn(), model)
    report = tmp_path / "r.json"
    code, out, err = run_cli([model, "--structured", "0.5", "--round-to", "1", "--runs", "5", "--dry-run",
                              "--report", report], capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.json"]
    data = json.loads(report.read_text())
    assert data["output_path"] is None and data["macs_after"] < data["macs_before"]
    assert data["validation"]["verdict"] in ("conclusive", "inconclusive")
    assert "validation on" in out
