"""`onnxprune inspect`: per layer MACs that add up, the groups --structured would cut, the
reasons the others stay, and the terminal table of a prune that accounts for every group."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxprune import prune
from onnxprune.cli import cli
from onnxprune.metrics.counts import compute_metrics
from onnxprune.report.inspection import inspect_data
from onnxprune.report.render import render_report
from onnxprune.testing.graphs import dynamic_batch, mixed_cnn, small_cnn


@pytest.mark.parametrize("build", [small_cnn, mixed_cnn])
def test_per_layer_macs_sum_to_the_model_total(tmp_path: Path, build):
    path = tmp_path / "m.onnx"
    onnx.save(build(), path)
    d = inspect_data(path)
    total = compute_metrics(onnx.load(path), compressed=False).macs
    assert total > 0
    assert sum(r["macs"] for r in d["layers"]) == d["totals"]["macs"] == total
    assert all(r["node"] and r["op"] for r in d["layers"])


def test_macs_follow_the_input_shape(tmp_path: Path):
    path = tmp_path / "dyn.onnx"
    onnx.save(dynamic_batch(small_cnn()), path)
    one = inspect_data(path)["totals"]["macs"]
    four = inspect_data(path, input_shapes=["4x3x8x8"])
    assert four["input_shapes"] == {"x": [4, 3, 8, 8]} or list(four["input_shapes"].values()) == [[4, 3, 8, 8]]
    assert four["totals"]["macs"] == sum(r["macs"] for r in four["layers"])
    assert four["totals"]["macs"] != one


def test_inspect_lists_prunable_groups_and_blocked_reasons(tmp_path: Path):
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), path)
    out_json = tmp_path / "i.json"
    r = CliRunner().invoke(cli, ["inspect", str(path), "--json", str(out_json)])
    assert r.exit_code == 0, r.output
    d = json.loads(out_json.read_text())
    assert d["groups"] and all(g["channels"] > 0 and g["members"] for g in d["groups"])
    assert d["blocked"], "the classifier's outputs reach the graph output"
    assert "prunable groups (what --structured cuts): " + str(len(d["groups"])) in r.output
    assert re.search(r"^\s+1 x channels reach the graph output", r.output, re.M)


def test_the_table_accounts_for_every_group():
    model = mixed_cnn()
    report = prune(model, structured=0.5, round_to=1, validate=False).report
    groups = report.structured.groups
    assert len(groups) == 3
    text = render_report(report, max_rows=2)
    m = re.search(r"\.\.\. and (\d+) more groups: (\d+) cut, (\d+) kept whole", text)
    assert m and int(m.group(1)) == len(groups) - 2
    assert int(m.group(2)) + int(m.group(3)) == len(groups) - 2
    full = render_report(report, max_rows=None)
    assert "more groups" not in full
    for g in groups:
        assert (g.nodes[0] if g.nodes else g.members[0].removesuffix("[out]")) in full
    if report.structured.blocked:
        counted = sum(int(x) for x in re.findall(r"^\s+(\d+) x ", full, re.M))
        assert counted == len({b["where"] for b in report.structured.blocked})
