"""Plans as artifacts: --save-plan writes the decision, --plan re-applies it exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from onnxprune import prune
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.targets.plans import PLAN_FORMAT, model_hash, read_plan
from onnxprune.testing.graphs import residual_block, small_cnn


def _weights(model: onnx.ModelProto) -> dict[str, bytes]:
    return {t.name: numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}


@pytest.fixture
def saved(tmp_path: Path):
    model = residual_block()
    path = tmp_path / "plan.json"
    first = prune(model, target_macs=0.5, validate=False, save_plan=path)
    return model, path, first


def test_save_plan_writes_the_decision_settings_and_model_hash(saved):
    model, path, first = saved
    doc = json.loads(path.read_text())
    assert doc["format"] == PLAN_FORMAT and doc["version"] == 1
    assert doc["model"]["sha256"] == model_hash(model)["sha256"]
    assert doc["options"]["target_macs"] == 0.5 and doc["options"]["criterion"] == "l1"
    kept = {g["id"]: len(g["kept"]) for g in doc["plan"]["groups"]}
    assert kept == {g.id: len(g.kept) for g in first.report.structured.plan.groups}
    assert doc["plan"]["settings"]["keep"] and doc["plan"]["settings"]["target"]["met"]


def test_plan_reapplies_exactly(saved, tmp_path):
    model, path, first = saved
    again = prune(model, plan=path, validate=False)
    assert _weights(again.model) == _weights(first.model)
    assert [n.SerializeToString() for n in again.model.graph.node] == [
        n.SerializeToString() for n in first.model.graph.node
    ]
    assert again.report.structured.target == first.report.structured.target
    assert again.report.macs_after == first.report.macs_after


def test_plan_refuses_the_same_graph_with_other_weights(saved):
    _, path, _ = saved
    with pytest.raises(OnnxPruneError, match="same graph with other weights"):
        prune(residual_block(seed=1), plan=path, validate=False)


def test_plan_refuses_another_graph(saved):
    _, path, _ = saved
    with pytest.raises(OnnxPruneError, match=r"made for another model.*another graph"):
        prune(small_cnn(), plan=path, validate=False)


def test_model_hash_ignores_nothing_that_matters_and_is_stable():
    a, b = residual_block(), residual_block()
    assert model_hash(a) == model_hash(b)
    w = a.graph.initializer[0]
    arr = numpy_helper.to_array(w).copy()
    arr.flat[0] += 1.0
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    assert model_hash(a)["sha256"] != model_hash(b)["sha256"]
    assert model_hash(a)["graph_sha256"] == model_hash(b)["graph_sha256"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"format": "other"}', "is not an onnxprune plan"),
        (json.dumps({"format": PLAN_FORMAT, "version": 99}), "plan version 99"),
        (json.dumps({"format": PLAN_FORMAT, "version": 1, "plan": {}}), "is malformed"),
    ],
)
def test_a_bad_plan_file_is_one_clear_error(tmp_path, text, message):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(OnnxPruneError, match=message):
        read_plan(p)


def test_plan_conflicts_with_a_new_decision(saved):
    _, path, _ = saved
    with pytest.raises(UsageError, match="--plan re-applies a saved decision: drop --structured"):
        prune(residual_block(), plan=path, structured=0.3, validate=False)


def test_a_failed_run_writes_no_plan(tmp_path):
    path = tmp_path / "plan.json"
    with pytest.raises(OnnxPruneError):
        prune(small_cnn(), target_macs=0.5, min_cosine=1.0, save_plan=path, runs=5)
    assert not path.exists()
    assert not list(tmp_path.iterdir())


def test_plans_on_the_command_line(tmp_path, capsys, run_cli):
    src = tmp_path / "m.onnx"
    onnx.save(residual_block(), src)
    plan = tmp_path / "plan.json"
    code, _, err = run_cli([src, "--target-macs", "0.5", "--save-plan", plan, "--no-validate",
                            "-o", tmp_path / "a.onnx"], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli([src, "--plan", plan, "--no-validate", "-o", tmp_path / "b.onnx"],
                           capsys)  # fmt: skip
    assert code == 0, err
    a, b = (hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.onnx", "b.onnx"))
    assert a == b
    before = src.read_bytes()
    # the plan path is a side output: never the input model, never the --plan it reads
    code, _, err = run_cli([src, "--target-macs", "0.5", "--save-plan", src, "--no-validate",
                            "-o", tmp_path / "c.onnx"], capsys)  # fmt: skip
    assert code == 2 and err.startswith("error: --save-plan") and "input model" in err
    assert src.read_bytes() == before and not (tmp_path / "c.onnx").exists()
    code, _, err = run_cli([src, "--plan", plan, "--save-plan", plan, "--no-validate",
                            "-o", tmp_path / "d.onnx"], capsys)  # fmt: skip
    assert code == 2 and "--save-plan" in err and not (tmp_path / "d.onnx").exists()
    other = tmp_path / "other.onnx"
    onnx.save(small_cnn(), other)
    code, _, err = run_cli([other, "--plan", plan, "--no-validate", "-o", tmp_path / "e.onnx"],
                           capsys)  # fmt: skip
    assert code == 1 and "made for another model" in err and err.count("\n") == 1
    assert not (tmp_path / "e.onnx").exists()
