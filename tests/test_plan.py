"""Planning (ratios, scopes, round-to, exclusions), criteria, and the facade's contract."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxprune.errors import UsageError
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.importance import CRITERIA, score_groups
from onnxprune.structured.plan import DEFAULT_ROUND_TO, Plan, make_plan, round_keep
from onnxprune.testing.graphs import Builder, conv_bn_relu, grouped_block, residual_block
from onnxprune.testing.oracles import assert_planted_dead


def test_round_keep():
    assert round_keep(70, 100, 1, 8) == 72  # up, never prune more than asked
    assert round_keep(3, 100, 1, 8) == 8  # never below N
    assert round_keep(70, 71, 1, 8) == 71  # never above the group
    assert round_keep(5, 32, 4, 8) == 6  # groups of 4 channels: 6 groups = 24 channels
    assert round_keep(7, 10, 1, 1) == 7


def _plan(model, **kw):
    groups = analyze(model)
    scores = score_groups(groups, model, kw.pop("criterion", "l1"))
    return groups, make_plan(groups, scores, **kw)


def test_local_removes_the_ratio_of_each_group_keeping_the_best():
    groups, plan = _plan(residual_block(), ratio=0.25, round_to=1)
    after = {g.id: g.channels_after for g in plan.groups}
    assert after == {"stem": 12, "c1": 12, "c2": 24}
    scores = score_groups(groups, residual_block(), "l1")
    for gp in plan.groups:
        s = scores[gp.id]
        dropped = np.setdiff1d(np.arange(gp.slots), gp.kept)
        assert s[dropped].max() <= s[gp.kept].min()


def test_global_ratio_cap_and_never_empty():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    a = b.relu(b.conv(x, 3, 16, name="weak"))
    model = b.build([b.conv(b.relu(b.conv(a, 16, 16, name="strong")), 16, 2, name="head")])
    inits = {t.name: t for t in model.graph.initializer}
    for name, index in (
        ("weak.weight", np.s_[:12]),
        ("weak.bias", np.s_[:12]),
        ("strong.weight", np.s_[:, :12]),
    ):
        arr = onnx.numpy_helper.to_array(inits[name]).copy()
        arr[index] *= 1e-3  # 12 of weak's 16 channels are nearly dead: they rank lowest overall
        inits[name].CopyFrom(onnx.numpy_helper.from_array(arr, name))
    _, plan = _plan(model, ratio=0.5, scope="global", round_to=1, max_group_ratio=0.75)
    after = {g.id: g.channels_after for g in plan.groups}
    assert after["weak"] == 4  # capped at 75% even though all of it ranks lowest
    assert after["weak"] + after["strong"] == 16  # 50% of the 32 channels overall
    _, plan = _plan(model, ratio=0.9, scope="global", round_to=1, max_group_ratio=0.99)
    assert min(g.channels_after for g in plan.groups) >= 1


def test_round_to_default_and_exact():
    _, res = prune_structured(residual_block(c=20), StructuredOptions(ratio=0.3))
    assert res.to_dict()["round_to"] == DEFAULT_ROUND_TO
    assert all(g["channels_after"] % DEFAULT_ROUND_TO == 0 for g in res.to_dict()["groups"])
    _, res = prune_structured(residual_block(c=20), StructuredOptions(ratio=0.3, round_to=1))
    assert {g["channels_after"] for g in res.to_dict()["groups"]} == {14, 28}


def test_exclude_keeps_matching_groups_intact():
    model = residual_block()
    _, plan = _plan(model, ratio=0.5, round_to=1, exclude=["c1*"])
    assert "c1" not in {g.id for g in plan.groups}
    assert any("excluded by --exclude 'c1*'" in b["reason"] for b in plan.blocked)
    _, plan = _plan(model, ratio=0.5, round_to=1, exclude=["down.weight"])  # a tensor name
    assert "c2" not in {g.id for g in plan.groups}


def test_plan_is_json_and_reapplies_identically():
    from onnxprune.structured.rewrite import apply_plan

    model = residual_block()
    pruned, res = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    again = Plan.from_json(json.dumps(json.loads(res.plan.to_json())))
    assert again == res.plan
    assert apply_plan(model, again).SerializeToString() == pruned.SerializeToString()


@pytest.mark.parametrize("criterion", sorted(set(CRITERIA) - {"random"}))
def test_every_criterion_prunes_planted_dead_channels_only(criterion):
    assert_planted_dead(residual_block(), fraction=0.5, ratio=0.3, criterion=criterion)


def test_bn_scale_ranks_by_gamma():
    model = conv_bn_relu(c_mid=8)
    gamma = next(t for t in model.graph.initializer if t.name == "bn1.scale")
    gamma.CopyFrom(onnx.numpy_helper.from_array(np.arange(1, 9, dtype=np.float32), "bn1.scale"))
    groups = analyze(model)
    s = score_groups(groups, model, "bn-scale")["conv1"]
    assert s.tolist() == list(range(1, 9))


def test_fpgm_scores_the_median_filter_lowest():
    b = Builder()
    x = b.input([1, 2, 4, 4])
    w = np.zeros((5, 2, 1, 1), np.float32)
    w[:, 0, 0, 0] = [-2, -1, 0, 1, 2]
    y = b.op("Conv", [x, b.const(w, "p.weight")], kernel_shape=[1, 1], name="p")
    model = b.build([b.conv(y, 5, 2, k=1, name="head")])
    s = score_groups(analyze(model), model, "fpgm")["p"]
    assert int(np.argmin(s)) == 2


def test_random_is_seeded():
    model = residual_block()
    a = prune_structured(model, StructuredOptions(0.5, criterion="random", seed=1, round_to=1))[1]
    b = prune_structured(model, StructuredOptions(0.5, criterion="random", seed=1, round_to=1))[1]
    c = prune_structured(model, StructuredOptions(0.5, criterion="random", seed=2, round_to=1))[1]
    assert a.plan.groups == b.plan.groups and a.plan.groups != c.plan.groups


@pytest.mark.parametrize(
    "bad",
    [
        {"ratio": 1.0},
        {"ratio": -0.1},
        {"ratio": 0.3, "criterion": "taylor"},
        {"ratio": 0.3, "scope": "both"},
        {"ratio": 0.3, "round_to": 0},
        {"ratio": 0.3, "max_group_ratio": 1.0},
        {"ratio": 0.3, "exclude": "conv*"},
    ],
)
def test_bad_options_are_usage_errors(bad):
    with pytest.raises(UsageError) as e:
        prune_structured(conv_bn_relu(), StructuredOptions(**bad))
    assert "\n" not in str(e.value)


def test_to_dict_schema():
    _, res = prune_structured(grouped_block(), StructuredOptions(0.5, scope="global"))
    d = res.to_dict()
    assert set(d) == {"scope", "criterion", "round_to", "ratio", "groups", "blocked"}
    assert d["scope"] == "global" and d["criterion"] == "l1" and d["ratio"] == 0.5
    g = d["groups"][0]
    assert set(g) == {
        "id",
        "members",
        "nodes",
        "note",
        "channels_before",
        "channels_after",
        "score_min",
        "score_mean",
        "score_max",
    }
    assert "reduce.weight[out]" in g["members"] and "grouped.weight[out]" in g["members"]
    assert g["nodes"] and all(isinstance(n, str) for n in g["nodes"])
    assert g["score_min"] <= g["score_mean"] <= g["score_max"]
    assert all(set(b) == {"where", "reason"} for b in d["blocked"])
    json.dumps(d)


def test_nothing_prunable_returns_the_model_with_reasons():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    model = b.build([b.conv(x, 3, 4, name="only")])
    out, res = prune_structured(model, StructuredOptions(0.5))
    assert out is model
    assert res.groups == [] and any("graph output" in b["reason"] for b in res.blocked)
    b = Builder()
    x = b.input([1, 3])
    out, res = prune_structured(b.build([b.op("Relu", [x])]), StructuredOptions(0.5))
    assert "no prunable producer" in res.blocked[0]["reason"]


def test_global_with_nothing_prunable():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    model = b.build([b.conv(x, 3, 4, name="only")])
    out, res = prune_structured(model, StructuredOptions(0.5, scope="global"))
    assert out is model and res.plan.empty


def test_progress_bar_does_not_change_the_result(capsys):
    model = residual_block()
    quiet = prune_structured(model, StructuredOptions(0.5, round_to=1))[1]
    shown = prune_structured(model, StructuredOptions(0.5, round_to=1), progress=True)[1]
    assert quiet.plan == shown.plan


def test_stats_are_accepted_and_ignored_by_weight_criteria():
    model = residual_block()
    a = prune_structured(model, StructuredOptions(0.5, round_to=1))[1]
    b = prune_structured(model, StructuredOptions(0.5, round_to=1, stats={"x": np.ones(3)}))[1]
    assert a.plan == b.plan


def test_auto_criterion_is_wanda_on_linear_groups_and_l1_on_convolutions():
    """The default with --calib: wanda where every weight of a group is MatMul/Gemm, l1
    for convolution channels (README "Defaults with --calib"); l1 without statistics."""
    from types import SimpleNamespace

    from onnxprune.graph.view import GraphView
    from onnxprune.structured.importance import activation_targets, resolve_criterion, score_groups
    from onnxprune.testing.graphs import encoder_block, small_cnn

    assert resolve_criterion(None, True) == "auto" and resolve_criterion(None, False) == "l1"
    assert resolve_criterion("l2", True) == "l2"
    for build in (encoder_block, small_cnn):
        model = build()
        view = GraphView(model)
        groups = analyze(model, view=view)
        rng = np.random.default_rng(0)
        stats = {t: SimpleNamespace(norm=rng.random(view.shape(t)[axis]) + 0.1)
                 for t, axis in activation_targets(groups, view).items()}  # fmt: skip
        auto = score_groups(groups, view, "auto", stats)
        wanda = score_groups(groups, view, "wanda", stats)
        l1 = score_groups(groups, view, "l1", stats)
        for g in groups:
            if g.id not in auto:
                continue
            ops = {m.op for m in g.members if m.role in ("in", "out")}
            linear = ops <= {"MatMul", "Gemm"} and any(m.role == "in" for m in g.members)
            assert np.allclose(auto[g.id], (wanda if linear else l1)[g.id]), g.id
        assert np.allclose(np.concatenate(list(score_groups(groups, view, "auto").values())),
                           np.concatenate(list(score_groups(groups, view, "l1").values())))
    ffn = score_groups(analyze(encoder_block()), GraphView(encoder_block()), "auto", None)
    assert ffn  # without statistics: l1, no error
