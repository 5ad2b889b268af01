"""``onnxprune analyze`` as a user meets it: a table on stdout, valid JSON with --json, and
bad input ending in one ``error:`` line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from onnxprune.testing.graphs import small_cnn

SCHEMA_GROUP = {"id", "nodes", "slots", "macs_share", "params_share", "latency_ms",
                "latency_share", "loss"}  # fmt: skip


@pytest.fixture
def cnn_path(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    p = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), p)
    return p


def test_prints_a_table_and_writes_the_documented_json(cnn_path, tmp_path, capsys, run_cli):
    out_json = tmp_path / "a.json"
    code, out, err = run_cli(["analyze", cnn_path, "--json", out_json, "--threads", "1"], capsys)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("group"))
    for col in ("nodes", "slots", "MACs %", "params %", "latency %", "loss@0.25", "loss@0.75"):
        assert col in header
    assert any(line.startswith("c1 ") for line in out.splitlines())
    d = json.loads(out_json.read_text())
    assert {"model", "provider", "threads", "input_shapes", "groups", "seconds"} <= set(d)
    assert d["threads"] == 1 and d["input_shapes"] == {"x": [1, 3, 8, 8]}
    assert [g["id"] for g in d["groups"]] == ["c1", "c2"]
    for g in d["groups"]:
        assert set(g) >= SCHEMA_GROUP
        assert set(g["loss"]) == {"0.25", "0.5", "0.75"}
        assert g["nodes"] == [g["id"]]
    assert (tmp_path / "xdg" / "onnxprune").is_dir()  # cached under XDG_CACHE_HOME


def test_second_run_reads_the_cache_and_no_cache_skips_it(cnn_path, capsys, run_cli):
    assert run_cli(["analyze", cnn_path], capsys)[0] == 0
    code, out, _ = run_cli(["analyze", cnn_path], capsys)
    assert code == 0 and "(from the cache)" in out.splitlines()[0]
    code, out, _ = run_cli(["analyze", cnn_path, "--no-cache"], capsys)
    assert code == 0 and "(from the cache)" not in out


def test_options_reach_the_analysis(cnn_path, tmp_path, capsys, run_cli):
    out_json = tmp_path / "a.json"
    args = ["analyze", cnn_path, "--fractions", "0.5", "--criterion", "l2", "--samples", "3",
            "--input-shape", "x=2x3x8x8", "--exclude", "fc", "--json", out_json, "-q"]  # fmt: skip
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert out == ""
    d = json.loads(out_json.read_text())
    assert d["criterion"] == "l2" and d["fractions"] == [0.5] and d["samples"] == 4
    assert d["input_shapes"] == {"x": [2, 3, 8, 8]}
    assert [g["id"] for g in d["groups"]] == ["c1"]
    assert any("--exclude" in b["reason"] for b in d["blocked"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fractions", "0.5,1.5"], "--fractions"),
        (["--criterion", "wanda"], "--calib"),
        (["--input-shape", "x=1x3"], "--input-shape"),
    ],
)
def test_bad_options_are_one_error_line_and_nothing_written(
    cnn_path, tmp_path, capsys, run_cli, extra, message
):
    out_json = tmp_path / "a.json"
    code, _, err = run_cli(["analyze", cnn_path, "--json", out_json, *extra], capsys)
    assert code == 2
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1
    assert not out_json.exists()


def test_a_missing_model_is_an_error(tmp_path, capsys, run_cli):
    code, _, err = run_cli(["analyze", tmp_path / "nope.onnx"], capsys)
    assert code == 1 and err.startswith("error:") and "does not exist" in err


def test_calibration_data_is_used(cnn_path, tmp_path, capsys, run_cli):
    import numpy as np

    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32))
    out_json = tmp_path / "a.json"
    args = ["analyze", cnn_path, "--calib", calib, "--criterion", "wanda", "--json", out_json, "-q"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    d = json.loads(out_json.read_text())
    assert d["data"] == "calib" and d["samples"] == 5 and d["criterion"] == "wanda"
