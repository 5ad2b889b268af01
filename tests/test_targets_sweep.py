"""onnxprune sweep: one row per target, a table and valid JSON."""

from __future__ import annotations

import json
import re

import onnx
import pytest

from onnxprune.errors import UsageError
from onnxprune.targets.sweep import parse_targets, render_sweep, sweep
from onnxprune.testing.graphs import residual_block


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(residual_block(), path)
    return path


def test_sweep_prints_one_row_per_target_and_valid_json(model_path, tmp_path, capsys, run_cli):
    out_json = tmp_path / "curve.json"
    code, out, err = run_cli(
        ["sweep", model_path, "--metric", "macs", "--targets", "2,0.3,1.25", "--runs", 5,
         "--json", out_json, "-q"], capsys)  # fmt: skip
    assert code == 0, err
    assert out == ""  # -q
    doc = json.loads(out_json.read_text())
    assert doc["metric"] == "macs" and [r["target"] for r in doc["rows"]] == [2, 0.3, 1.25]
    for row, kept in zip(doc["rows"], [0.5, 0.3, 0.8], strict=True):
        assert row["fraction"] == pytest.approx(kept)
        assert row["macs"] <= kept + 1e-9 and row["met"]
        assert row["speedup"] > 0 and 0 < row["cosine"] <= 1 and row["params"] < 1
    code, out, err = run_cli(["sweep", model_path, "--metric", "macs", "--targets", "2,0.3",
                              "--runs", 5], capsys)  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["target", "MAC", "fraction"]
    assert [ln.split()[0] for ln in lines[2:4]] == ["2x", "0.3"]


def test_sweep_by_measured_speedup_runs_the_search_per_target(model_path):
    rows = sweep(model_path, [1.2, 1.5], base={"runs": 5, "staircase": None})
    assert [r.target for r in rows] == [1.2, 1.5]
    for r in rows:
        assert r.metric == "speedup" and r.speedup is not None and r.met is not None
        assert r.error is None and 0 < r.macs < 1
    assert "1.5x" in render_sweep(rows)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--targets", "1,2"], "must be numbers above 1"),
        (["--targets", "abc"], "--targets must be numbers"),
        (["--targets", "2", "--metric", "macs", "--structured", "0.3"], "No such option"),
        (["--targets", "2", "--metric", "macs", "--staircase"], "use it with --metric speedup"),
    ],
)
def test_bad_sweeps_are_one_error_line(model_path, capsys, run_cli, args, needle):
    code, _, err = run_cli(["sweep", model_path, *args], capsys)
    assert code == 2 and err.startswith("error:") and needle in err


def test_parse_targets():
    assert parse_targets("1.25,1.5,2,3", "speedup") == [1.25, 1.5, 2.0, 3.0]
    assert parse_targets("0.5,4", "macs") == [0.5, 4.0]
    with pytest.raises(UsageError):
        parse_targets("0.5", "speedup")


def test_sweep_with_labels_shows_accuracy(tmp_path, capsys, run_cli):
    from pathlib import Path

    models = Path(__file__).resolve().parent.parent / "models"
    code, out, err = run_cli(
        ["sweep", models / "digits_cnn.onnx", "--metric", "macs", "--targets", "2",
         "--calib", models / "digits_cnn_calib.npz", "--val", models / "digits_cnn_test.npz",
         "--val-labels", models / "digits_test_labels.npy", "--runs", 5], capsys)  # fmt: skip
    assert code == 0, err
    row = out.splitlines()[2]
    assert row.startswith("2x") and "100.00% ->" in row


def test_a_missing_model_is_one_error_not_a_row_per_target(tmp_path, capsys, run_cli):
    code, out, err = run_cli(["sweep", tmp_path / "nope.onnx", "--targets", "1.5,2"], capsys)
    assert code == 1 and err.startswith("error:") and "does not exist" in err and out == ""


def test_sweep_report_html_draws_the_tradeoff_curve(model_path, tmp_path, capsys, run_cli):
    page = tmp_path / "sweep.html"
    code, _, err = run_cli(["sweep", model_path, "--metric", "macs", "--targets", "0.8,0.5,0.3",
                            "--runs", "5", "--report", page, "-q"], capsys)  # fmt: skip
    assert code == 0, err
    text = page.read_text(encoding="utf-8")
    assert text.count("<svg") == 1 and 'data-plot="tradeoff"' in text
    assert "http" not in text.replace("http://www.w3.org", "")  # self-contained
    data = json.loads(re.search(r'id="onnxprune-data">(.*?)</script>', text, re.S).group(1))
    assert [p["target"] for p in data["sweep"]["points"]] == [0.8, 0.5, 0.3]
    assert data["facts"]["command"].startswith("onnxprune sweep ")


def test_a_speedup_sweep_priced_by_time_says_its_fraction_is_of_the_time():
    from onnxprune.targets.sweep import SweepRow

    rows = [SweepRow(1.5, "speedup", fraction=0.64, fraction_of="time", speedup=1.5, met=True)]
    assert render_sweep(rows).splitlines()[0].split()[:3] == ["target", "time", "fraction"]
    rows.append(SweepRow(2.0, "speedup", fraction=0.5, speedup=2.0, met=True))  # fell back
    assert render_sweep(rows).splitlines()[0].split()[:3] == ["target", "MAC/time", "fraction"]
