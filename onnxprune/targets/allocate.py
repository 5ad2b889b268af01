"""``--target-macs R`` / ``--target-params R``: kept counts per group that keep fraction R.

The steps: price every prunable group's slots (``costs.CostModel``, exact), say what losing
them costs (without measured sensitivities: the criterion's *score mass removed*, the sum of
the removed slots' normalized scores times the weights a slot carries, ``slot_weights``, so
a group of weak channels is cheap to cut), let the
solver allocate non-uniformly on the per-group tables, then correct on the joint cost: the
tables price each group with the others whole, so they overstate what cutting neighbours
together saves (``costs`` module doc). The budget handed to the solver is lowered by the
miss until the joint cost meets the target, and a last exact pass removes or gives back
single steps so the result lands at the target or as close as whole slots allow.

Head groups (``Group.heads``) are allocated with the others, a slot being a head (a
key/value group in grouped-query attention), unless ``--heads R`` is given: then they lose
that fraction as without a target (rounded only with an explicit ``--round-to``;
``--heads 0`` keeps them whole), and the target counts what that saves. Allocated, a head is
priced like any slot: its score mass times the weights it carries, or its measured loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.structured.dependency import Group
from onnxprune.structured.importance import normalize
from onnxprune.structured.plan import kept_slots, rounded_counts
from onnxprune.targets import GroupCurve
from onnxprune.targets.costs import CostModel, curve_keeps
from onnxprune.targets.solver import allowed_counts, floor_of, solve

_ROUNDS = 8
"""Solver rounds on the joint cost before the exact single-step pass."""


@dataclass
class TargetOutcome:
    """What a target asked and what was reached: the report's ``structured.target``."""

    metric: str
    target: float
    """The fraction of the original ``metric`` asked to keep."""
    before: int
    after: int
    """``metric`` of the pruned model, as the cost model prices it (= the metrics')."""
    met: bool
    slot: int
    """The most one slot step costs at the result: how close whole slots can get."""
    losses: str | None = None
    """What priced the cuts (``targets.measured.losses_hook``): measured or score mass."""

    @property
    def reached(self) -> float:
        return self.after / self.before if self.before else 1.0

    def to_dict(self) -> dict:
        return {"metric": self.metric, "target": self.target, "before": self.before,
                "after": self.after, "reached": self.reached, "met": self.met,
                "slot": self.slot, **({"losses": self.losses} if self.losses else {})}  # fmt: skip


def score_mass(g: Group, scores: np.ndarray, keeps: Sequence[int] | None = None,
               weight: float = 1.0) -> GroupCurve:  # fmt: skip
    """The loss curve without measurements: normalized score mass removed at each count,
    times ``weight`` (a slot's weights, ``slot_weights``)."""
    norm = normalize(np.asarray(scores, dtype=np.float64))
    keeps = curve_keeps(g.slots) if keeps is None else keeps
    values = [weight * float(norm[~kept_slots(g, scores, k)].sum()) for k in keeps]
    return GroupCurve(g.id, g.slots, list(keeps), values)


def slot_weights(costs: CostModel, g: Group) -> float:
    """The weights one slot of ``g`` carries (the model whole): what the score mass of a cut
    is scaled by. Normalized scores make every slot worth about 1 in every group, so unscaled
    the solver cut first the slots that save the most MACs each: a residual stream's, which
    touch every convolution of their stage. MobileNetV2's 64- and 96-wide streams went to 16
    while its 384-wide hidden groups stayed whole (1.52x at 1 thread with 0.506x MACs and
    0.874x parameters kept). Scaled by its weights, a slot's loss per MAC is about one over
    its output's spatial size, so cuts go where each weight is used most: the high-resolution
    layers, where a compact CNN's time is (1.54x with 0.667x MACs and 0.981x parameters;
    Torch-Pruning round_to=16 at 1.46x: 0.634x and 0.728x; README "Targets"). Scaled by the
    square root of its weights, in between (0.625x, 0.971x). On a pretrained MobileNetV2 no
    such prior keeps its predictions at 1.5x (they collapse to one to three classes, held-out
    cosine 0.95-0.97): that takes measured losses (``targets.measured``)."""
    return float(costs.slot_cost("params", g.id)) or 1.0


def round_steps(g: Group, round_to: int | None) -> list[int] | None:
    """The counts ``--round-to`` allows (kept channels a multiple of it), None for any."""
    if round_to is None or round_to <= 1:
        return None
    return rounded_counts(g.slots, g.width, round_to)


def choose_keep(
    costs: CostModel,
    scores: Mapping[str, np.ndarray],
    metric: str,
    fraction: float,
    *,
    fixed: Mapping[str, int] | None = None,
    max_group_ratio: float | None = None,
    round_to: int | None = None,
    losses: Sequence[GroupCurve] | None = None,
    allowed: Mapping[str, Sequence[int]] | None = None,
) -> tuple[dict[str, int], TargetOutcome]:
    """Kept counts for every group of ``costs`` except those ``fixed`` (head groups at
    a given ``--heads`` count), so the model keeps at most ``fraction`` of its ``metric``.

    ``losses`` replace the score-mass curves (measured sensitivities, ``targets``'
    integration); ``allowed`` (group id -> kept counts, a measured latency staircase) limits
    the counts a group may take, on top of ``round_to``. The result meets the target unless every group is at its floor
    (``max_group_ratio``, never empty); ``outcome`` says what was reached.
    """
    fixed = dict(fixed or {})
    before = costs.total(metric)
    budget = fraction * before
    free = [g for gid, g in costs.groups.items() if gid not in fixed]
    curves = [costs.curve(metric, g.id) for g in free]
    if fixed:  # the free groups' tables with the fixed ones already cut
        base = costs.total(metric, fixed)
        shift = base - before
        curves = [GroupCurve(c.group_id, c.slots, c.keep, [v + shift for v in c.value])
                  for c in curves]  # fmt: skip
    if losses is None:
        losses = [score_mass(g, scores[g.id], weight=slot_weights(costs, g)) for g in free]
    allowed = _allowed(free, round_to, allowed)
    start = costs.total(metric, fixed)
    asked = budget
    keep: dict[str, int] = {g.id: g.slots for g in free}
    for _ in range(_ROUNDS):
        alloc = solve(curves, losses, asked, start, max_group_ratio=max_group_ratio,
                      allowed=allowed)  # fmt: skip
        keep = alloc.keep
        miss = costs.total(metric, {**fixed, **keep}) - budget
        if miss <= 0 or not alloc.met:
            break
        asked -= miss
    keep = _polish(costs, metric, budget, fixed, keep, free, losses, allowed, max_group_ratio)
    after = costs.total(metric, {**fixed, **keep})
    slot = max((costs.slot_cost(metric, g.id, {**fixed, **keep}) for g in free), default=0)
    return keep, TargetOutcome(metric, float(fraction), before, after, after <= budget, slot)


def _allowed(free, round_to, given) -> dict[str, list[int]]:
    """Per group, the counts both ``--round-to`` and a given staircase allow."""
    out: dict[str, list[int]] = {}
    for g in free:
        steps = round_steps(g, round_to)
        stair = (given or {}).get(g.id)
        if stair is not None:
            stair = sorted({int(k) for k in stair if 1 <= int(k) <= g.slots} | {g.slots})
            steps = stair if steps is None else sorted(set(steps) & set(stair)) or [g.slots]
        if steps is not None:
            out[g.id] = steps
    return out


def _polish(costs, metric, budget, fixed, keep, free, losses, allowed, max_group_ratio):
    """Single steps on the exact joint cost: down (least loss per cost saved) until the
    budget holds, then up (most loss recovered per cost) while it still holds."""
    loss = {c.group_id: c for c in losses}
    steps = {
        g.id: allowed_counts(g.slots, lo=floor_of(g.slots, max_group_ratio),
                             allowed=allowed.get(g.id)).tolist()
        for g in free
    }  # fmt: skip
    keep = dict(keep)
    now = costs.total(metric, {**fixed, **keep})

    def moves(up: bool):
        for g in free:
            vals = steps[g.id]
            i = vals.index(keep[g.id]) if keep[g.id] in vals else len(vals) - 1
            j = i + 1 if up else i - 1
            if 0 <= j < len(vals):
                cost = now + costs.change(metric, {**fixed, **keep}, g.id, vals[j])
                lc = loss.get(g.id)
                dloss = 0.0 if lc is None else lc.at(vals[j]) - lc.at(keep[g.id])
                yield g.id, vals[j], cost, dloss

    for _ in range(sum(g.slots for g in free)):
        if now <= budget:
            break
        options = [(d / max(now - c, 1e-9), gid, k, c) for gid, k, c, d in moves(False)
                   if c < now]  # fmt: skip
        if not options:
            break
        _, gid, k, now = min(options)
        keep[gid] = k
    for _ in range(sum(g.slots for g in free)):
        if now > budget:
            break
        options = [(d / max(c - now, 1e-9), gid, k, c) for gid, k, c, d in moves(True)
                   if c <= budget]  # fmt: skip
        if not options:
            break
        _, gid, k, now = min(options)  # d < 0: loss recovered; most per cost first
        keep[gid] = k
    return keep


class TargetHook:
    """The structured engine's ``allocate`` for a MACs or params target: prices the groups
    of the model the engine analyzed, chooses their counts, and keeps the outcome."""

    def __init__(
        self,
        model,
        metric: str,
        fraction: float,
        *,
        exclude: Sequence[str] = (),
        heads: float | None = None,
        max_group_ratio: float | None = None,
        round_to: int | None = None,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        losses_for=None,
        allowed_for=None,
        priced: str | None = None,
        node_ms: Mapping[str, float] | None = None,
        overhead_ms: float = 0.0,
    ) -> None:
        """``losses_for`` / ``allowed_for`` (``(groups, scores, view) -> ...``), when given,
        supply ``choose_keep``'s ``losses`` and ``allowed`` for the prunable groups;
        ``priced`` says what priced them (the outcome's ``losses``). ``node_ms`` and
        ``overhead_ms`` (``targets.profile.node_times``) price the ``time`` metric."""
        self.losses_for, self.allowed_for, self.priced = losses_for, allowed_for, priced
        self.node_ms, self.overhead_ms = node_ms, overhead_ms
        self.model, self.metric, self.fraction = model, metric, fraction
        self.exclude, self.heads, self.round_to = tuple(exclude), heads, round_to
        self.max_group_ratio, self.input_shapes = max_group_ratio, input_shapes
        self.outcome: TargetOutcome | None = None

    def __call__(self, groups, scores, view) -> dict[str, int]:
        from onnxprune.structured.plan import prunable_groups, round_keep

        prunable, _ = prunable_groups(groups, self.exclude)
        fixed = {}
        for g in prunable:
            if g.heads and self.heads is not None:  # --heads R fixes them; else allocated
                gone = int(self.heads * g.slots + 1e-9)
                fixed[g.id] = round_keep(max(1, g.slots - gone), g.slots, g.width,
                                         self.round_to or 1)  # fmt: skip
        costs = CostModel(self.model, prunable, scores, input_shapes=self.input_shapes,
                          view=None if self.input_shapes else view, node_ms=self.node_ms,
                          overhead_ms=self.overhead_ms)  # fmt: skip
        free = [g for g in prunable if g.id not in fixed]
        keep, self.outcome = choose_keep(
            costs, scores, self.metric, self.fraction, fixed=fixed,
            max_group_ratio=self.max_group_ratio, round_to=self.round_to,
            losses=self.losses_for(free, scores, view) if self.losses_for else None,
            allowed=self.allowed_for(free, scores, view) if self.allowed_for else None,
        )  # fmt: skip
        if self.losses_for is None:
            self.outcome.losses = "score mass" if self.priced is None else self.priced
        else:  # a hook that changed its pricing (over its time budget) says so
            self.outcome.losses = getattr(self.losses_for, "priced", None) or self.priced or "measured"
        return {**fixed, **keep}
