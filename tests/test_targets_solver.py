"""The solver on synthetic cost/loss tables: budget met, cheap-to-remove first, never empty."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxprune.targets import GroupCurve
from onnxprune.targets.solver import allowed_counts, floor_of, solve


def _linear(gid: str, slots: int, per_slot: float, base: float = 0.0) -> GroupCurve:
    keep = list(range(1, slots + 1))
    return GroupCurve(gid, slots, keep, [base + per_slot * k for k in keep])


def _convex_loss(gid: str, slots: int, scale: float) -> GroupCurve:
    """Loss grows faster the more is removed (lowest scores go first)."""
    keep = list(range(1, slots + 1))
    return GroupCurve(gid, slots, keep, [scale * (slots - k) ** 2 for k in keep])


def _cost(costs, keep, total):
    return total - sum(c.at(c.slots) - c.at(keep[c.group_id]) for c in costs)


def test_curve_checks_and_interpolates():
    c = GroupCurve("g", 10, [10, 1], [100.0, 10.0])
    assert c.keep == [1, 10] and c.at(5) == pytest.approx(50.0)
    assert c.table().shape == (10,)
    with pytest.raises(ValueError):
        GroupCurve("g", 4, [0, 4], [0.0, 1.0])
    with pytest.raises(ValueError):
        GroupCurve("g", 4, [1, 1], [0.0, 1.0])


def test_meets_the_budget_and_predicts_its_cost():
    rng = np.random.default_rng(0)
    costs = [_linear(f"g{i}", int(s), float(p)) for i, (s, p) in
             enumerate(zip(rng.integers(4, 40, 8), rng.uniform(1, 50, 8), strict=True))]  # fmt: skip
    losses = [_convex_loss(c.group_id, c.slots, float(rng.uniform(0.1, 2))) for c in costs]
    total = sum(c.at(c.slots) for c in costs)
    for frac in (0.9, 0.6, 0.3):
        a = solve(costs, losses, frac * total, total)
        assert a.met
        assert a.cost <= frac * total + 1e-6
        assert a.cost == pytest.approx(_cost(costs, a.keep, total))
        # as close as whole slots allow: one more slot of any group would break the budget
        per_slot = min(c.at(2) - c.at(1) for c in costs)
        assert frac * total - a.cost < max(c.at(2) - c.at(1) for c in costs) + 1e-6
        assert per_slot > 0


def test_prefers_the_group_that_is_cheap_to_remove():
    costs = [_linear("cheap", 16, 10.0), _linear("dear", 16, 10.0)]
    losses = [_convex_loss("cheap", 16, 0.01), _convex_loss("dear", 16, 1.0)]
    total = 320.0
    a = solve(costs, losses, total - 50.0, total)
    assert a.keep["dear"] == 16 and a.keep["cheap"] == 11


def test_prefers_the_group_that_saves_more_per_loss():
    costs = [_linear("big", 16, 100.0), _linear("small", 16, 1.0)]
    losses = [_convex_loss("big", 16, 1.0), _convex_loss("small", 16, 1.0)]
    total = 1616.0
    a = solve(costs, losses, total - 300.0, total)
    assert a.keep["big"] == 13 and a.keep["small"] == 16


def test_never_empties_a_group_and_says_when_the_budget_is_out_of_reach():
    costs = [_linear("a", 8, 5.0), _linear("b", 4, 5.0)]
    losses = [_convex_loss("a", 8, 1.0), _convex_loss("b", 4, 1.0)]
    a = solve(costs, losses, 0.0, 60.0)
    assert a.keep == {"a": 1, "b": 1} and not a.met
    assert a.cost == pytest.approx(10.0)


def test_respects_floors_caps_and_max_group_ratio():
    costs = [_linear("a", 20, 5.0), _linear("b", 20, 5.0)]
    losses = [_convex_loss("a", 20, 1.0), _convex_loss("b", 20, 1.0)]
    a = solve(costs, losses, 0.0, 200.0, max_group_ratio=0.5)
    assert a.keep == {"a": 10, "b": 10} and not a.met
    a = solve(costs, losses, 0.0, 200.0, min_keep={"a": 15})
    assert a.keep["a"] == 15 and a.keep["b"] == 1
    a = solve(costs, losses, 200.0, 200.0, max_keep={"b": 12})  # a cap forces a cut
    assert a.keep == {"a": 20, "b": 12}
    assert floor_of(20, 0.9) == 2 and floor_of(3, 0.99) == 1 and floor_of(7, None) == 1


def test_snaps_to_allowed_counts():
    costs = [_linear("a", 32, 3.0), _linear("b", 24, 4.0)]
    losses = [_convex_loss("a", 32, 1.0), _convex_loss("b", 24, 1.0)]
    allowed = {"a": [8, 16, 24, 32], "b": [8, 16, 24]}
    a = solve(costs, losses, 120.0, 192.0, allowed=allowed)
    assert a.met and a.keep["a"] in allowed["a"] and a.keep["b"] in allowed["b"]
    assert allowed_counts(24, lo=10, allowed=[8, 16]).tolist() == [16, 24]


def test_crosses_a_latency_staircase():
    """Cost flat from 16 down to 9 kept, then a step: the solver jumps to the step."""
    keep = list(range(1, 17))
    stair = GroupCurve("s", 16, keep, [5.0 if k <= 8 else 10.0 for k in keep])
    lin = _linear("l", 16, 0.5)
    losses = [_convex_loss("s", 16, 0.01), _convex_loss("l", 16, 1.0)]
    a = solve([stair, lin], losses, 13.0, 18.0)
    assert a.keep["s"] == 8  # the highest count on the lower step
    assert a.keep["l"] == 16


def test_is_near_the_exhaustive_optimum_on_convex_tables():
    rng = np.random.default_rng(3)
    for _ in range(5):
        costs = [_linear(f"g{i}", 6, float(rng.uniform(1, 9))) for i in range(3)]
        losses = [_convex_loss(c.group_id, 6, float(rng.uniform(0.1, 3))) for c in costs]
        total = sum(c.at(6) for c in costs)
        budget = 0.55 * total
        a = solve(costs, losses, budget, total)
        best = min(
            sum(lc.at(k) for lc, k in zip(losses, ks, strict=True))
            for ks in itertools.product(range(1, 7), repeat=3)
            if _cost(costs, dict(zip([c.group_id for c in costs], ks, strict=True)), total)
            <= budget + 1e-9
        )
        step = max(lc.at(1) - lc.at(2) for lc in losses)
        assert a.loss <= best + step + 1e-9
