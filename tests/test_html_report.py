"""The HTML report: self-contained, one SVG per plot, and the same numbers as the JSON."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli
from onnxprune.report.html import PageFacts, analysis_page, prune_page
from onnxprune.report.render import blocked_by_reason, group_label
from onnxprune.runtime.compare import per_sample_cosine
from onnxprune.testing.graphs import small_cnn


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="onnxprune-data">(.*?)</script>', page, re.S)
    assert m, "the page carries its data block"
    return json.loads(m.group(1).replace("<\\/", "</"))


def _assert_self_contained(page: str) -> None:
    assert "http" not in page.lower()
    assert not re.search(r"""\bsrc\s*=""", page), "nothing is loaded from elsewhere"
    hrefs = re.findall(r"""href\s*=\s*["']([^"']*)""", page)
    assert all(h.startswith("#") for h in hrefs), hrefs
    assert "<link" not in page and "@import" not in page
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", page)), "only in-page urls"


@pytest.fixture(scope="module")
def pruned_page(tmp_path_factory) -> tuple[str, dict]:
    folder = tmp_path_factory.mktemp("html")
    model = folder / "cnn.onnx"
    onnx.save(small_cnn(), model)
    out_html, out_json = folder / "r.html", folder / "r.json"
    args = [str(model), "--structured", "0.5", "--round-to", "1", "--runs", "5", "-q"]
    r1 = CliRunner().invoke(cli, [*args, "-o", str(folder / "a.onnx"), "--report", str(out_html)])
    assert r1.exit_code == 0, r1.output
    r2 = CliRunner().invoke(cli, [*args, "-o", str(folder / "b.onnx"), "--report", str(out_json)])
    assert r2.exit_code == 0, r2.output
    return out_html.read_text(encoding="utf-8"), json.loads(out_json.read_text())


def test_prune_html_is_self_contained_with_one_svg_per_plot(pruned_page):
    page, _ = pruned_page
    assert page.startswith("<!DOCTYPE html>")
    _assert_self_contained(page)
    data = _data(page)
    plots = re.findall(r'<figure class="plot" data-plot="(\w+)">', page)
    assert page.count("<svg") == len(plots) == data["plots"]
    assert {"channels", "per_sample_cosine", "op_latency", "layer_latency"} <= set(plots)


def test_prune_html_numbers_equal_the_json(pruned_page):
    page, report = pruned_page
    data = _data(page)["report"]
    for key in ("params_before", "params_after", "macs_before", "macs_after", "nonzero_after"):
        assert data[key] == report[key]
    groups = lambda d: [(g["id"], g["channels_before"], g["channels_after"]) for g in d["structured"]["groups"]]  # noqa: E731
    assert groups(data) == groups(report)
    # every figure shown in a table cell carries the exact value it was drawn from
    cells = dict(re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page))
    assert int(cells["params_before"]) == report["params_before"]
    assert int(cells["macs_after"]) == report["macs_after"]
    assert float(html.unescape(cells["cosine"])) == data["validation"]["cosine"]
    shown = [int(v) for k, v in re.findall(r'data-key="(channels_after)" data-value="([^"]*)"', page)]
    assert sorted(shown) == sorted(g["channels_after"] for g in report["structured"]["groups"])


def test_prune_html_says_what_ran_and_on_which_model(pruned_page):
    page, _ = pruned_page
    facts = _data(page)["facts"]
    # the command as typed, whatever started the process (pytest here)
    assert facts["command"].startswith("onnxprune ") and "--structured 0.5" in facts["command"]
    assert set(facts["versions"]) >= {"onnxprune", "onnxruntime"}
    assert re.fullmatch(r"[0-9a-f]{64}", facts["model_hash"]["sha256"])
    assert facts["profile"]["before"] and facts["profile"]["after"]
    assert "Conv" in facts["profile"]["before"]
    assert len(facts["per_sample_cosine"]) >= 2


def test_blocked_groups_are_grouped_by_reason_and_expandable():
    report = {"structured": {"ratio": 0.3, "scope": "local", "criterion": "l1", "round_to": 1,
                             "groups": [], "blocked": [
                                 {"where": "a", "reason": "r1"}, {"where": "b", "reason": "r1"},
                                 {"where": "c", "reason": "r2"}]}}  # fmt: skip
    page = prune_page(report, PageFacts())
    assert page.count("<details><summary><b>2</b> × r1</summary>") == 1
    assert page.count("× r2") == 1
    assert blocked_by_reason(report["structured"]["blocked"]) == [("r1", ["a", "b"]), ("r2", ["c"])]
    _assert_self_contained(page)


def test_group_label_uses_the_producer_node():
    assert group_label({"nodes": ["/l1/conv/Conv", "/l1/down/Conv"], "members": ["w[out]"]}) == (
        "/l1/conv/Conv (+1 tied)"
    )
    assert group_label({"nodes": [], "members": ["onnx::Conv_5[out]", "b"]}) == "onnx::Conv_5"


def test_per_sample_cosine_finds_the_outlier():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(6, 10)).astype(np.float32)
    cand = ref.copy()
    cand[3] = -cand[3]
    cos = per_sample_cosine([ref], [cand])
    assert len(cos) == 6 and cos[3] == pytest.approx(-1.0) and min(cos[:3] + cos[4:]) == 1.0
    assert per_sample_cosine([ref[:1]], [cand[:1]]) == []


def test_analysis_page_has_a_sensitivity_plot():
    analysis = {"model": "m.onnx", "provider": "CPU", "fractions": [0.25, 0.5],
                "groups": [{"id": "g", "nodes": ["/a/Conv"], "slots": 8, "macs_share": 0.5,
                            "latency_share": 0.4, "loss": {"0.25": 0.01, "0.5": 0.1}}],
                "blocked": [{"where": "x", "reason": "why"}]}  # fmt: skip
    page = analysis_page(analysis, PageFacts())
    _assert_self_contained(page)
    assert page.count("<svg") == 1 == _data(page)["plots"]
    assert 'data-key="loss@0.5" data-value="0.1"' in page




def test_analyze_report_html_is_the_same_page(tmp_path: Path):
    model = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), model)
    out = tmp_path / "a.html"
    args = ["analyze", str(model), "--fractions", "0.5", "--samples", "2", "--no-cache", "-q"]
    r = CliRunner().invoke(cli, [*args, "--report", str(out), "--json", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    page = out.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert page.count("<svg") == 1
    saved = json.loads((tmp_path / "a.json").read_text())
    assert _data(page)["analysis"]["groups"] == saved["groups"]


def test_sweep_page_draws_the_tradeoff_curve():
    from onnxprune.report.html import sweep_page

    sweep = {"model": "m.onnx", "points": [{"target": "1.5x", "speedup": 1.4, "cosine": 0.99},
                                           {"target": "2x", "speedup": 1.9, "cosine": 0.95}]}  # fmt: skip
    page = sweep_page(sweep, PageFacts())
    _assert_self_contained(page)
    assert page.count("<svg") == 1 == _data(page)["plots"]
    assert 'data-key="cosine" data-value="0.95"' in page


def test_groups_are_drawn_in_the_order_of_the_network(pruned_page):
    page, _ = pruned_page
    order = _data(page)["facts"]["node_order"]
    rows = re.findall(r"<tr><td><code>([^<]+)</code></td>", page)
    nodes = [r.split(" (+")[0] for r in rows if r.split(" (+")[0] in order]
    assert nodes and [order[n] for n in nodes] == sorted(order[n] for n in nodes)
