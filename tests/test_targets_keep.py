"""``make_plan``'s ``keep=`` hook: exact kept slot counts per group, the targets' way in."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.errors import UsageError
from onnxprune.graph.view import GraphView
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.importance import score_groups
from onnxprune.structured.plan import kept_slots, make_plan
from onnxprune.testing.graphs import residual_block, split_block
from onnxprune.testing.oracles import assert_exact


def _setup(model):
    view = GraphView(model)
    groups = analyze(model, view=view)
    return groups, score_groups(groups, view, "l1", None)


def test_keep_is_exact_and_unrounded():
    groups, scores = _setup(residual_block())
    plan = make_plan(groups, scores, ratio=0.0, keep={"c1": 5, "c2": 17})
    kept = {g.id: len(g.kept) for g in plan.groups}
    assert kept["c1"] == 5 and kept["c2"] == 17
    assert kept["stem"] == 16  # not listed, ratio 0: whole
    assert plan.settings["keep"] == {"c1": 5, "c2": 17}
    # the best scored slots stay
    best = np.argsort(-scores["c1"], kind="stable")[:5]
    assert sorted(best.tolist()) == next(g.kept for g in plan.groups if g.id == "c1")


def test_keep_overrides_ratio_and_rounding_only_where_listed():
    groups, scores = _setup(residual_block())
    plan = make_plan(groups, scores, ratio=0.5, round_to=1, keep={"c1": 3})
    kept = {g.id: len(g.kept) for g in plan.groups}
    assert kept == {"stem": 8, "c1": 3, "c2": 16}


def test_keep_at_or_above_slots_keeps_the_group_whole():
    groups, scores = _setup(residual_block())
    plan = make_plan(groups, scores, ratio=0.0, keep={"c1": 16, "c2": 999})
    assert plan.empty
    assert all(len(g.kept) == g.slots for g in plan.groups)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_keep_refuses_counts_that_are_not_at_least_one(bad):
    groups, scores = _setup(residual_block())
    with pytest.raises(UsageError, match="keep"):
        make_plan(groups, scores, ratio=0.0, keep={"c1": bad})


def test_keep_refuses_an_unknown_group():
    groups, scores = _setup(residual_block())
    with pytest.raises(UsageError, match="'nope'"):
        make_plan(groups, scores, ratio=0.0, keep={"nope": 2})


def test_kept_slots_never_empties_a_subset():
    model = split_block()
    groups, scores = _setup(model)
    split = [g for g in groups if g.blocked_reason is None and g.subsets]
    assert split
    for g in split:
        kept = kept_slots(g, scores[g.id], 1)
        assert kept.sum() == 2  # the best one, plus one on the side it left empty
        for subset in g.subsets:
            assert kept[subset].any()


def test_engine_passes_keep_through_and_the_result_is_exact():
    model = residual_block()
    opts = StructuredOptions(ratio=0.0, round_to=1, keep={"c1": 7, "stem": 9})
    pruned, result = prune_structured(model, opts)
    kept = {g.id: g.channels_after for g in result.groups}
    assert kept["c1"] == 7 and kept["stem"] == 9 and kept["c2"] == 32
    assert_exact(model, pruned, result.plan)


def test_engine_refuses_keep_that_is_not_a_mapping():
    with pytest.raises(UsageError, match="keep must map"):
        StructuredOptions(ratio=0.0, keep=[("c1", 3)])


def test_keep_leaves_blocked_groups_intact():
    groups, scores = _setup(residual_block())
    assert any(g.id == "head" and g.blocked_reason for g in groups)
    plan = make_plan(groups, scores, ratio=0.0, keep={"head": 1})
    assert plan.empty and "head" not in {g.id for g in plan.groups}
