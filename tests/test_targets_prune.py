"""--target-macs / --target-params on prune: non-uniform, on target within one slot."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune import prune
from onnxprune.errors import UsageError
from onnxprune.metrics.macs import count_macs
from onnxprune.metrics.params import count_params
from onnxprune.testing.graphs import (
    concat_block,
    decoder_block,
    encoder_block,
    residual_block,
    small_cnn,
    unet_block,
)

BUILDS = [residual_block, small_cnn, concat_block, unet_block, encoder_block]


@pytest.mark.parametrize("build", BUILDS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.3])
def test_target_macs_hits_its_target_within_one_slot(build, fraction):
    model = build()
    result = prune(model, target_macs=fraction, validate=False)
    t = result.report.structured.target
    before, after = count_macs(model)[0], count_macs(result.model)[0]
    assert (t["before"], t["after"]) == (before, after)  # the cost model is the metric
    assert result.report.macs_after == after
    budget = fraction * before
    assert after <= budget
    assert t["met"] and t["reached"] == pytest.approx(after / before)
    assert budget - after <= t["slot"]  # as close as whole slots allow
    assert t["slot"] > 0


def test_target_params_hits_its_target_within_one_slot():
    model = residual_block()
    result = prune(model, target_params=0.4, validate=False)
    t = result.report.structured.target
    before, after = count_params(model)[0], count_params(result.model)[0]
    assert t["metric"] == "params" and (t["before"], t["after"]) == (before, after)
    assert after <= 0.4 * before and 0.4 * before - after <= t["slot"]


def test_the_allocation_is_not_uniform():
    """Groups lose different fractions: the cheap-to-remove ones more."""
    result = prune(unet_block(), target_macs=0.5, validate=False)
    fractions = {g.id: len(g.kept) / g.slots for g in result.report.structured.plan.groups}
    assert len(set(fractions.values())) > 1
    assert min(len(g.kept) for g in result.report.structured.plan.groups) >= 1


def test_max_group_ratio_bounds_each_group_and_the_report_says_when_the_target_is_missed():
    result = prune(residual_block(), target_macs=0.01, max_group_ratio=0.5, validate=False)
    t = result.report.structured.target
    assert not t["met"] and t["reached"] > 0.01
    for g in result.report.structured.plan.groups:
        assert len(g.kept) >= g.slots // 2
    assert "not met" in result.report.render()


def test_round_to_given_with_a_target_keeps_multiples():
    result = prune(residual_block(), target_macs=0.5, round_to=4, validate=False)
    for g in result.report.structured.plan.groups:
        assert len(g.kept) % 4 == 0 or len(g.kept) == g.slots
    assert result.report.structured.round_to == 4
    exact = prune(residual_block(), target_macs=0.5, validate=False)
    assert exact.report.structured.round_to == 1


def test_target_with_fixed_input_sizes_counts_at_those_sizes(tmp_path):
    from onnxprune.testing.graphs import dynamic_batch

    model = dynamic_batch(small_cnn(), "batch")
    result = prune(model, target_macs=0.5, validate=False, input_shapes={"x": (4, 3, 8, 8)})
    t = result.report.structured.target
    assert t["before"] == count_macs(model, {"x": (4, 3, 8, 8)})[0]
    assert t["after"] == result.report.macs_after


def test_heads_are_allocated_with_the_rest_unless_fixed():
    """Without --heads the target cuts heads where they are cheap; --heads R fixes them at
    R (the target counts what that saves) and --heads 0 keeps them whole, which leaves an
    encoder whose attention is most of its MACs short of a deep target."""
    result = prune(encoder_block(), target_macs=0.3, validate=False)
    groups = result.report.structured.plan.groups
    heads = [g for g in groups if g.heads]
    assert heads and any(len(g.kept) < g.slots for g in heads)
    assert all(len(g.kept) >= 1 for g in groups)
    assert result.report.structured.target["met"]
    kept = prune(encoder_block(), target_macs=0.3, heads=0.0, validate=False)
    t = kept.report.structured.target
    assert all(len(g.kept) == g.slots for g in kept.report.structured.plan.groups if g.heads)
    assert not t["met"] and t["after"] > 0.3 * t["before"]
    ffn = next(g for g in kept.report.structured.plan.groups if not g.heads)
    assert len(ffn.kept) == ffn.slots - int(0.9 * ffn.slots)  # at its floor
    result = prune(encoder_block(), target_macs=0.6, heads=0.5, validate=False)
    heads = [g for g in result.report.structured.plan.groups if g.heads]
    assert all(len(g.kept) == g.slots // 2 for g in heads)
    assert result.report.structured.target["after"] <= 0.6 * result.report.macs_before


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"target_macs": 0.0}, "--target-macs must be a fraction in (0, 1]"),
        ({"target_macs": 1.5}, "--target-macs must be a fraction in (0, 1]"),
        ({"target_params": True}, "--target-params must be a fraction"),
        ({"target_macs": 0.5, "target_params": 0.5}, "choose one of --target-macs and"),
        ({"target_macs": 0.5, "structured": 0.3}, "choose one of --structured and --target"),
        ({"unstructured": 0.5, "save_plan": "p.json"}, "--save-plan saves a structured"),
    ],
)
def test_bad_target_options_are_one_clear_error(kw, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prune(small_cnn(), validate=False, **kw)


def test_target_on_the_command_line_reports_target_and_reached(tmp_path, capsys, run_cli):
    src = tmp_path / "m.onnx"
    onnx.save(residual_block(), src)
    report = tmp_path / "r.json"
    code, out, err = run_cli([src, "--target-macs", "0.5", "--report", report, "--runs", 5],
                             capsys)  # fmt: skip
    assert code == 0, err
    t = json.loads(report.read_text())["structured"]["target"]
    assert t["metric"] == "macs" and t["target"] == 0.5 and t["after"] <= 0.5 * t["before"]
    assert "target: keep 0.5 of the macs; reached" in out
    code, _, err = run_cli([src, "--target-macs", "0", "-o", tmp_path / "x.onnx"], capsys)
    assert code == 2 and err.startswith("error:") and "--target-macs" in err
    assert not (tmp_path / "x.onnx").exists()
    assert np.isfinite(t["reached"])


def test_choose_keep_takes_staircases_and_measured_losses():
    from onnxprune.graph.view import GraphView
    from onnxprune.structured.dependency import analyze
    from onnxprune.structured.importance import score_groups
    from onnxprune.targets import GroupCurve
    from onnxprune.targets.allocate import choose_keep
    from onnxprune.targets.costs import CostModel

    model = residual_block()
    view = GraphView(model)
    groups = [g for g in analyze(model, view=view) if g.blocked_reason is None]
    scores = score_groups(groups, view, "l1", None)
    costs = CostModel(model, groups, scores, view=view)
    stairs = {"stem": [4, 8, 12], "c1": [6, 11], "c2": [8, 16, 24]}
    keep, outcome = choose_keep(costs, scores, "macs", 0.6, allowed=stairs)
    for gid, k in keep.items():
        assert k in stairs[gid] or k == costs.groups[gid].slots
    assert outcome.met and outcome.after <= 0.6 * outcome.before
    # a measured loss that makes c1 precious moves the cut elsewhere
    losses = [GroupCurve(g.id, g.slots, [1, g.slots], [1e6 if g.id == "c1" else 1.0, 0.0])
              for g in groups]  # fmt: skip
    keep, outcome = choose_keep(costs, scores, "macs", 0.6, losses=losses)
    assert keep["c1"] == 16 and outcome.met


def _stream_model(c: int = 8, hidden: int = 32, blocks: int = 3):
    """stem -> ``blocks`` x (1x1 expand -> relu -> 1x1 project, + the stream) -> head: the
    stream's slots each touch every block, a hidden group's only its own."""
    from onnxprune.testing.graphs import Builder

    b = Builder(0)
    x = b.relu(b.conv(b.input([1, 3, 8, 8]), 3, c, name="stem"))
    for i in range(blocks):
        h = b.relu(b.conv(x, c, hidden, k=1, name=f"expand{i}"))
        x = b.op("Add", [x, b.conv(h, hidden, c, k=1, name=f"project{i}")])
    return b.build([b.conv(x, c, 4, k=1, name="head")])


def test_score_mass_prices_a_slot_by_the_weights_it_carries():
    """Normalized scores make every slot worth about 1: unscaled, the allocation cut only
    the stream (its slots save the most MACs each, touching every block), to half its width.
    Scaled by each slot's weights, a slot's loss per MAC is the same in every group at one
    resolution: the hidden groups share the cut and the stream keeps most of its width."""
    from onnxprune.graph.view import GraphView
    from onnxprune.structured.dependency import analyze
    from onnxprune.structured.importance import score_groups
    from onnxprune.targets.allocate import choose_keep, score_mass, slot_weights
    from onnxprune.targets.costs import CostModel

    model = _stream_model()
    view = GraphView(model)
    groups = [g for g in analyze(model, view=view) if g.blocked_reason is None]
    scores = score_groups(groups, view, "l2", None)
    costs = CostModel(model, groups, scores, view=view)
    stream = next(g for g in groups if g.slots == 8)
    hidden = [g for g in groups if g.slots == 32]
    assert len(hidden) == 3
    assert slot_weights(costs, stream) > 5 * slot_weights(costs, hidden[0])
    unscaled = [score_mass(g, scores[g.id]) for g in groups]
    old, _ = choose_keep(costs, scores, "macs", 0.6, losses=unscaled)
    new, outcome = choose_keep(costs, scores, "macs", 0.6)
    assert outcome.met
    # what the unscaled price did: the stream halved, every hidden group whole
    assert old[stream.id] <= 4 and all(old[g.id] == g.slots for g in hidden)
    assert new[stream.id] >= 7 and all(new[g.id] < g.slots for g in hidden)


@pytest.mark.parametrize("build", [encoder_block, decoder_block], ids=lambda b: b.__name__)
def test_a_target_that_cuts_heads_is_exact(build):
    """Heads cut by a target (whole key/value groups in grouped-query attention) are
    removed exactly: the pruned model equals the original with their inputs zeroed."""
    from onnxprune.testing.oracles import assert_exact

    model = build()
    result = prune(model, target_macs=0.35, validate=False)
    plan = result.report.structured.plan
    assert any(g.heads and len(g.kept) < g.slots for g in plan.groups)
    assert_exact(model, result.model, plan, symbolic=3)
