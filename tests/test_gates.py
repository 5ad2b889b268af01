"""Issue 10, items 2-4 and 6: conclusive or not, held-out validation data, quality gates,
non-finite data and refits. Tiny graphs built with onnx.helper, run by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import prune
from onnxprune.errors import GateError, OnnxPruneError, UsageError
from onnxprune.runtime.compare import compare_outputs
from onnxprune.runtime.compare_models import evaluate_files
from onnxprune.runtime.gates import Gates, check_gates

RNG = np.random.default_rng(0)


class _Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.exit_code, self.output = code, out + err


@pytest.fixture
def cli(run_cli, capsys):
    """``cli(args)``: the command line in-process; ``.exit_code``, ``.output`` (both streams)."""
    return lambda args: _Ran(*run_cli(args, capsys))


def mlp(w2: np.ndarray | None = None, b2: np.ndarray | None = None, seed: int = 1,
        out_type: int = TensorProto.FLOAT, scale: float = 1.0) -> onnx.ModelProto:  # fmt: skip
    """x [N, 8] -> Gemm 64 -> Relu -> Gemm 10 (-> *scale -> Cast) -> scores [N, 10]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 8)).astype(np.float32)
    w2 = rng.standard_normal((10, 64)).astype(np.float32) if w2 is None else w2
    b2 = np.zeros(10, np.float32) if b2 is None else b2
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(b2, "b2")]  # fmt: skip
    if out_type == TensorProto.FLOAT and scale == 1.0:
        nodes.append(helper.make_node("Gemm", ["r", "w2", "b2"], ["scores"], transB=1))
    else:
        inits.append(numpy_helper.from_array(np.array(scale, np.float32), "s"))
        nodes += [
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1),
            helper.make_node("Mul", ["logits", "s"], ["scaled"]),
            helper.make_node("Cast", ["scaled"], ["scores"], to=out_type),
        ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("scores", out_type, ["N", 10])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def data(path, n: int = 40, seed: int = 2, labels_of: onnx.ModelProto | None = None):
    x = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    np.savez(path, x=x)
    if labels_of is None:
        return str(path)
    import onnxruntime as ort

    sess = ort.InferenceSession(labels_of.SerializeToString())
    labels = sess.run(None, {"x": x})[0].argmax(1).astype(np.int64)
    lpath = str(path).replace(".npz", "_labels.npy")
    np.save(lpath, labels)
    return str(path), lpath


# ------------------------------------------------------------------------------------------
# Conclusive or not
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        (np.zeros((8, 10), np.float32), "all zero"),
        (np.tile(np.arange(10, dtype=np.float32), (8, 1)), "same for every sample"),
        (np.full((8, 10), np.nan, np.float32), "NaN or Inf"),
        (np.tile(np.eye(10, dtype=np.float32)[3], (8, 1)) + RNG.random((8, 10)).astype(np.float32) * 0.1,
         "predicts 1 class"),
        # a detector at init: the same maps for every image but for float noise (seen on a
        # YOLOv8-style export with fresh BatchNorm: spread 2e-7 on values of 0.06)
        (np.tile(RNG.standard_normal((1, 4, 5, 5)).astype(np.float32), (8, 1, 1, 1))
         + RNG.standard_normal((8, 4, 5, 5)).astype(np.float32) * 1e-6, "hardly depends on the input"),
    ],
)  # fmt: skip
def test_degenerate_reference_outputs_are_inconclusive(reference, reason):
    candidate = RNG.standard_normal(reference.shape).astype(np.float32)
    result = compare_outputs([reference], [reference.copy()], ["y"])
    assert result["verdict"] == "inconclusive"
    assert any(reason in r for r in result["inconclusive_reasons"])
    # a broken candidate reads the same verdict: the comparison proves nothing either way
    assert compare_outputs([reference], [candidate], ["y"])["verdict"] == "inconclusive"


def test_varied_reference_outputs_are_conclusive():
    ref = RNG.standard_normal((16, 10)).astype(np.float32)
    result = compare_outputs([ref], [ref + 0.01], ["y"])
    assert result["verdict"] == "conclusive" and result["inconclusive_reasons"] == []
    assert result["nonfinite_outputs"] == []
    # an input-dependent part of 1% of the scale is enough to tell models apart
    base = np.tile(RNG.standard_normal((1, 3, 4, 4)).astype(np.float32), (16, 1, 1, 1))
    varied = base + 0.01 * RNG.standard_normal((16, 3, 4, 4)).astype(np.float32)
    assert compare_outputs([varied], [varied], ["y"])["verdict"] == "conclusive"


def test_nonfinite_pruned_output_where_the_original_is_finite_is_named():
    ref = RNG.standard_normal((16, 10)).astype(np.float32)
    cand = ref.copy()
    cand[3, 4] = np.nan
    result = compare_outputs([ref], [cand], ["y"])
    assert result["nonfinite_outputs"] == ["y"]
    gates = check_gates(result, Gates(max_rel_diff=1e9))
    assert gates[0]["passed"] is False and "NaN or Inf" in gates[0]["reason"]


def test_untrained_head_is_inconclusive_not_a_perfect_score(tmp_path, cli):
    """All-zero classifier weights: constant logits; the table says inconclusive."""
    head = mlp(w2=np.zeros((10, 64), np.float32), b2=np.arange(10, dtype=np.float32))
    a, b = save(head, tmp_path / "a.onnx"), save(head, tmp_path / "b.onnx")
    calib = data(tmp_path / "d.npz")
    res = cli(["validate", a, b, "--calib", calib, "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert (
        "inconclusive: output 'scores' of the original is the same for every sample" in res.output
    )
    assert "cosine" not in res.output  # no "cosine 1.000000" on a comparison that proves nothing
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["verdict"] == "inconclusive" and saved["cosine"] == 1.0  # numbers kept
    gated = cli(["validate", a, b, "--calib", calib, "--min-cosine", "0.5"])
    assert gated.exit_code == 3, gated.output
    assert "inconclusive" in gated.output


def test_fp16_outputs_that_underflow_are_inconclusive(tmp_path):
    tiny = mlp(out_type=TensorProto.FLOAT16, scale=1e-12)
    a, b = save(tiny, tmp_path / "a.onnx"), save(tiny, tmp_path / "b.onnx")
    result = evaluate_files(a, b, calib=data(tmp_path / "d.npz"))
    assert result["verdict"] == "inconclusive"
    assert any("all zero" in r for r in result["inconclusive_reasons"])


def test_unrelated_models_are_a_bad_result_not_a_refusal(tmp_path, cli):
    a, b = save(mlp(seed=1), tmp_path / "a.onnx"), save(mlp(seed=7), tmp_path / "b.onnx")
    calib = data(tmp_path / "d.npz")
    res = cli(["validate", a, b, "--calib", calib])
    assert res.exit_code == 0, res.output
    assert "cosine" in res.output
    out = tmp_path / "v.json"
    gated = cli(["validate", a, b, "--calib", calib, "--min-cosine", "0.99", "--json", str(out)])
    assert gated.exit_code == 3, gated.output
    assert "--min-cosine 0.99 failed: cosine" in gated.output
    saved = json.loads(out.read_text())
    assert saved["passed"] is False
    assert saved["gates"][0]["gate"] == "min_cosine" and saved["gates"][0]["passed"] is False
    assert saved["gates"][0]["value"] < 0.99


def test_validate_refuses_models_with_other_outputs(tmp_path, cli):
    other = mlp()
    other.graph.output[0].name = "logits_out"
    other.graph.node[-1].output[0] = "logits_out"
    a, b = save(mlp(), tmp_path / "a.onnx"), save(other, tmp_path / "b.onnx")
    res = cli(["validate", a, b])
    assert res.exit_code == 1 and "different outputs" in res.output


def test_validate_max_drop_needs_labels(tmp_path, cli):
    a = save(mlp(), tmp_path / "a.onnx")
    res = cli(["validate", a, a, "--calib", data(tmp_path / "d.npz"), "--max-drop", "1"])
    assert res.exit_code == 2 and "--max-drop" in res.output


# ------------------------------------------------------------------------------------------
# Held-out validation data
# ------------------------------------------------------------------------------------------


def test_calib_holds_out_its_last_fifth_for_validation(tmp_path):
    model = mlp()
    calib, labels = data(tmp_path / "c.npz", n=40, labels_of=model)
    result = prune(model, structured=0.5, calib=calib, labels=labels, runs=5)
    d = result.report.to_dict()
    assert d["validation"]["data"] == "calib-held-out"
    assert d["validation"]["samples"] == 8  # the labels of the 8 held-out rows
    assert d["validation"]["accuracy_before"] == 1.0  # labels are the original's argmax
    assert d["recovery"]["structured"]["samples"] == 32


def test_few_calib_samples_are_not_split_and_refuse_a_gate(tmp_path):
    calib = data(tmp_path / "c.npz", n=4)
    result = prune(mlp(), structured=0.5, calib=calib, runs=5)
    assert result.report.validation.data == "calib"
    with pytest.raises(UsageError, match="not a gate"):
        prune(mlp(), structured=0.5, calib=calib, runs=5, min_cosine=0.5)


def test_val_data_is_what_validation_scores(tmp_path):
    model = mlp()
    val, val_labels = data(tmp_path / "v.npz", n=24, seed=9, labels_of=model)
    result = prune(model, structured=0.5, calib=data(tmp_path / "c.npz"), val=val,
                   val_labels=val_labels, runs=5, max_drop=100.0)  # fmt: skip
    v = result.report.to_dict()["validation"]
    assert v["data"] == "val" and v["samples"] == 24
    assert v["gates"] == [{"gate": "max_drop", "threshold": 100.0, "value": v["gates"][0]["value"],
                           "passed": True}]  # fmt: skip
    assert result.report.to_dict()["recovery"]["structured"]["samples"] == 40
    assert "(val data)" in result.report.render()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-validate", "--min-cosine", "0.9"], "needs validation"),
        (["--max-drop", "1", "--val", "V"], "--val-labels"),
        (["--max-drop", "1"], "--max-drop"),
        (["--calib", "C", "--no-holdout", "--min-cosine", "0.9"], "not a gate"),
        (["--val-labels", "L"], "--val-labels needs --val"),
        (["--min-cosine", "2"], "--min-cosine must be"),
        (["--max-drop", "-1", "--val", "V", "--val-labels", "L"], "--max-drop must be"),
    ],
)
def test_gate_and_holdout_usage_errors(tmp_path, cli, args, message):
    model = save(mlp(), tmp_path / "m.onnx")
    c = data(tmp_path / "c.npz")
    args = [{"C": c, "V": c, "L": str(tmp_path / "l.npy")}.get(a, a) for a in args]
    res = cli([model, "--structured", "0.5", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "m.pruned.onnx").exists()


# ------------------------------------------------------------------------------------------
# Gates
# ------------------------------------------------------------------------------------------


def test_failed_gate_exits_3_writes_the_report_and_no_model(tmp_path, cli):
    model = save(mlp(), tmp_path / "m.onnx")
    val = data(tmp_path / "v.npz", n=32)
    report = tmp_path / "r.json"
    res = cli([model, "--unstructured", "0.9", "--val", val, "--min-cosine", "0.9999",
                   "--max-rel-diff", "1e-6", "--report", str(report)])  # fmt: skip
    assert res.exit_code == 3, res.output
    assert "quality gate failed: --min-cosine 0.9999 failed: cosine" in res.output
    assert "no output was written" in res.output
    assert not (tmp_path / "m.pruned.onnx").exists()
    assert not list(tmp_path.glob("*.failed.onnx"))
    v = json.loads(report.read_text())["validation"]
    assert v["passed"] is False and v["data"] == "val"
    assert [g["gate"] for g in v["gates"]] == ["min_cosine", "max_rel_diff"]
    assert all(not g["passed"] for g in v["gates"])
    assert v["gates"][0]["value"] < 0.9999


def test_keep_failed_writes_a_model_named_failed(tmp_path, cli):
    model = save(mlp(), tmp_path / "m.onnx")
    val = data(tmp_path / "v.npz", n=32)
    res = cli([model, "--unstructured", "0.9", "--val", val, "--min-cosine", "0.9999",
                   "--keep-failed"])  # fmt: skip
    assert res.exit_code == 3, res.output
    assert not (tmp_path / "m.pruned.onnx").exists()
    kept = tmp_path / "m.failed.onnx"
    assert kept.exists() and "kept as" in res.output
    onnx.checker.check_model(onnx.load(str(kept)))


def test_passed_gate_writes_the_model(tmp_path, cli):
    model = save(mlp(), tmp_path / "m.onnx")
    val = data(tmp_path / "v.npz", n=32)
    report = tmp_path / "r.json"
    res = cli([model, "--unstructured", "0.3", "--val", val, "--min-cosine", "0.0",
                   "--report", str(report)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.pruned.onnx").exists()
    v = json.loads(report.read_text())["validation"]
    assert v["passed"] is True and v["gates"][0]["passed"] is True
    assert v["verdict"] == "conclusive"


def test_api_gate_error_carries_the_report(tmp_path):
    val = data(tmp_path / "v.npz", n=32)
    out = tmp_path / "o.onnx"
    with pytest.raises(GateError) as info:
        prune(mlp(), unstructured=0.9, val=val, min_cosine=0.9999, output=out, runs=5)
    assert info.value.exit_code == 3
    assert info.value.report.validation.gates[0]["passed"] is False
    assert info.value.report.output_path is None
    assert not out.exists()


def test_inconclusive_validation_fails_a_gate_on_prune(tmp_path):
    head = mlp(w2=np.zeros((10, 64), np.float32))
    with pytest.raises(GateError, match="inconclusive"):
        prune(head, structured=0.5, val=data(tmp_path / "v.npz"), min_cosine=-1.0, runs=5)


# ------------------------------------------------------------------------------------------
# Finite or refused
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_calibration_values_are_refused(tmp_path, cli, bad):
    x = RNG.standard_normal((10, 8)).astype(np.float32)
    x[6, 2] = bad
    np.savez(tmp_path / "c.npz", x=x)
    model = save(mlp(), tmp_path / "m.onnx")
    res = cli([model, "--structured", "0.5", "--calib", str(tmp_path / "c.npz")])
    assert res.exit_code == 1, res.output
    assert "calibration array 'x'" in res.output and "c.npz" in res.output
    assert "NaN or Inf" in res.output and "sample 6" in res.output
    assert not (tmp_path / "m.pruned.onnx").exists()


def test_nonfinite_val_values_are_refused(tmp_path):
    x = RNG.standard_normal((10, 8)).astype(np.float32)
    x[0, 0] = np.nan
    np.savez(tmp_path / "v.npz", x=x)
    with pytest.raises(OnnxPruneError, match="NaN or Inf"):
        prune(mlp(), structured=0.5, val=str(tmp_path / "v.npz"), runs=5)


def test_a_nonfinite_refit_is_never_written():
    from onnxprune.recovery.layers import Layer
    from onnxprune.recovery.params import ModelParams, write

    model = mlp()
    params = ModelParams(model)
    layer = Layer(index=2, op="Gemm", x="r", y="scores", weight="w2", bias="b2", trans_b=True)
    before = params.get("w2").copy()
    wb = np.full((1, 10, 65), np.nan)
    assert write(layer, params, wb, True) is False
    assert np.array_equal(params.get("w2"), before)
    huge = np.full((1, 10, 65), 1e300)  # finite in float64, Inf as the float32 weight
    assert write(layer, params, huge, True) is False
    assert np.isfinite(params.get("w2")).all()


def test_nonfinite_pruned_outputs_are_reported_by_validate(tmp_path, cli):
    """A "pruned" model that gives NaN where the original is finite: said so, gates fail."""
    broken = mlp()
    w2 = numpy_helper.to_array(broken.graph.initializer[1]).copy()
    w2[0, 0] = np.nan
    broken.graph.initializer[1].CopyFrom(numpy_helper.from_array(w2, "w2"))
    a, b = save(mlp(), tmp_path / "a.onnx"), save(broken, tmp_path / "b.onnx")
    calib = data(tmp_path / "d.npz")
    res = cli(["validate", a, b, "--calib", calib])
    assert "NaN/Inf in scores" in res.output
    gated = cli(["validate", a, b, "--calib", calib, "--max-rel-diff", "1e9"])
    assert gated.exit_code == 3 and "NaN or Inf" in gated.output


def test_prune_report_prints_inconclusive_instead_of_scores(tmp_path):
    head = mlp(w2=np.zeros((10, 64), np.float32))
    result = prune(head, structured=0.5, val=data(tmp_path / "v.npz"), runs=5)
    text = result.report.render()
    assert "inconclusive: output 'scores' of the original is all zero" in text
    assert "cosine 1.000000" not in text
    v = result.report.to_dict()["validation"]
    assert v["verdict"] == "inconclusive" and v["cosine"] == 1.0 and v["passed"] is True


def test_nonfinite_sample_file_in_a_folder_is_named(tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i in range(6):
        x = RNG.standard_normal(8).astype(np.float32)
        if i == 4:
            x[1] = np.inf
        np.save(folder / f"s{i}.npy", x)
    with pytest.raises(OnnxPruneError, match=r"calibration file s4\.npy .*input 'x'.*NaN or Inf"):
        prune(mlp(), structured=0.5, calib=str(folder), runs=5)


def test_max_drop_on_the_held_out_labels_from_the_cli(tmp_path, cli):
    model = mlp()
    path = save(model, tmp_path / "m.onnx")
    calib, labels = data(tmp_path / "c.npz", n=40, labels_of=model)
    report = tmp_path / "r.json"
    res = cli([path, "--structured", "0.5", "--calib", calib, "--labels", labels,
               "--max-drop", "100", "--report", str(report)])  # fmt: skip
    assert res.exit_code == 0, res.output
    v = json.loads(report.read_text())["validation"]
    assert v["data"] == "calib-held-out" and v["samples"] == 8
    assert v["gates"][0]["gate"] == "max_drop" and v["gates"][0]["passed"] is True
    assert v["gates"][0]["value"] == pytest.approx(
        100 * (v["accuracy_before"] - v["accuracy_after"])
    )
    strict = cli([path, "--structured", "0.5", "--calib", calib, "--labels", labels,
                  "--max-drop", "0", "-o", str(tmp_path / "s.onnx")])  # fmt: skip
    if v["accuracy_before"] > v["accuracy_after"]:
        assert strict.exit_code == 3 and "--max-drop 0 failed" in strict.output
    else:
        assert strict.exit_code == 0
