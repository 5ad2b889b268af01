"""Choose kept slot counts per group under a budget: least loss per unit of cost saved.

Inputs are plain tables (``GroupCurve``): per group, the cost at each kept count (MACs,
params, milliseconds) and the loss at each kept count (score mass removed, measured
quality drop). The solver is a greedy over *jumps*: from its current count, each group
offers its best move to any lower allowed count, priced as (loss added) / (cost saved);
the cheapest move anywhere is taken until the budget is met. Looking at every lower count,
not only the next one, is what lets a latency staircase (cost flat, then a drop) or a
non-convex loss be crossed. The last move is the one that meets the budget with the least
loss added, and a refill pass then gives slots back where the budget still holds, so the
result lands as close to the budget as the allowed counts permit.

Why greedy and not an exact knapsack: the tables are estimates (interpolated, measured with
noise, and costs that interact between groups), and the caller checks the true cost and
corrects (``targets.allocate``); for convex curves the greedy over marginal ratios is
optimal at every budget it passes through (marginal analysis), so it misses the knapsack
optimum by at most its last move, and it is fast on tens of thousands of slots.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.targets import GroupCurve

_EPS = 1e-9


@dataclass
class Allocation:
    """What the solver chose: kept counts and the costs the tables predict for them."""

    keep: dict[str, int]
    cost: float
    """Predicted total cost: ``total`` minus the tables' savings."""
    loss: float
    """Predicted total loss added (sum over groups of loss(kept) - loss(whole))."""
    met: bool
    """Whether the predicted cost is within the budget (False: every group at its floor)."""


@dataclass
class _Group:
    gid: str
    values: np.ndarray  # allowed kept counts, ascending
    save: np.ndarray  # cost saved at each allowed count (vs whole)
    loss: np.ndarray  # loss added at each allowed count (vs whole)
    at: int  # index into values of the current count


def allowed_counts(
    slots: int,
    *,
    lo: int = 1,
    hi: int | None = None,
    allowed: Sequence[int] | None = None,
) -> np.ndarray:
    """The kept counts a group may take: ``allowed`` (all of 1..slots when None) within
    [lo, hi], never 0; ``hi`` itself is always one, so the start is always allowed."""
    hi = slots if hi is None else max(1, min(int(hi), slots))
    lo = max(1, min(int(lo), hi))
    base = np.arange(1, slots + 1) if allowed is None else np.asarray(list(allowed), dtype=int)
    vals = {int(v) for v in base.tolist() if lo <= v <= hi}
    vals.add(hi)
    return np.asarray(sorted(vals), dtype=np.int64)


def floor_of(slots: int, max_group_ratio: float | None) -> int:
    """The fewest slots a group may keep when it may lose at most ``max_group_ratio``
    (as ``make_plan``'s global scope counts it); at least one."""
    if max_group_ratio is None:
        return 1
    removable = min(int(max_group_ratio * slots + 1e-9), slots - 1)
    return max(1, slots - removable)


def _best_move(g: _Group, remaining: float | None) -> tuple[float, float, int] | None:
    """The group's cheapest jump down: (loss per cost saved, cost saved, index); with
    ``remaining``, the jump that saves at least that much with the least loss instead."""
    if g.at == 0:
        return None
    j = np.arange(g.at)
    dsave = g.save[j] - g.save[g.at]
    dloss = g.loss[j] - g.loss[g.at]
    ok = dsave > _EPS
    if remaining is not None:
        ok &= dsave >= remaining - _EPS
        if not ok.any():
            return None
        key = np.where(ok, dloss, np.inf)
        best = key[ok].min()
        pick = int(np.flatnonzero(ok & (key <= best + _EPS * (1 + abs(best))))[-1])
        return float(dloss[pick]), float(dsave[pick]), pick
    if not ok.any():
        return None
    ratio = np.where(ok, dloss / np.where(ok, dsave, 1.0), np.inf)
    best = ratio[ok].min()
    tie = ok & (ratio <= best + 1e-9 * (1 + abs(best)))
    pick = int(np.flatnonzero(tie)[-1])  # of equal ratios, the smallest jump
    return float(ratio[pick]), float(dsave[pick]), pick


def solve(
    cost: Sequence[GroupCurve],
    loss: Sequence[GroupCurve],
    budget: float,
    total: float,
    *,
    min_keep: Mapping[str, int] | None = None,
    max_keep: Mapping[str, int] | None = None,
    max_group_ratio: float | None = None,
    allowed: Mapping[str, Sequence[int]] | None = None,
) -> Allocation:
    """Kept counts for the groups of ``cost`` whose predicted total cost is at most
    ``budget``, adding the least loss the greedy finds (see the module doc).

    ``total`` is the cost with every group whole (the curves may cover part of a model);
    a group saves ``cost(slots) - cost(k)`` at ``k`` kept. ``loss`` curves pair with the
    cost curves by ``group_id`` (a group without one loses nothing). Per group, the count
    stays within [``min_keep``, ``max_keep``] and loses at most ``max_group_ratio`` of its
    slots, and takes only the counts ``allowed`` lists (a staircase) when given; a group
    is never emptied. When the budget cannot be met, every group ends at its floor and
    ``met`` is False.
    """
    losses = {c.group_id: c for c in loss}
    groups = [_table(c, losses.get(c.group_id), min_keep, max_keep, max_group_ratio, allowed)
              for c in cost]  # fmt: skip
    saved = float(sum(g.save[g.at] for g in groups))
    need = float(total) - float(budget)
    version = [0] * len(groups)
    heap = _heap(groups, range(len(groups)), version)
    while saved < need - _EPS and heap:
        _, _, gi, v = heapq.heappop(heap)
        if v != version[gi]:
            continue  # the group moved since this entry was priced
        g = groups[gi]
        move = _best_move(g, None)
        if move is None:
            continue
        if move[1] >= need - saved - _EPS:  # this move finishes: finish with the least loss
            _finish(groups, need - saved)
            saved = float(sum(x.save[x.at] for x in groups))
            break
        saved += move[1]
        g.at = move[2]
        version[gi] += 1
        for entry in _heap(groups, [gi], version):
            heapq.heappush(heap, entry)
    if saved >= need - _EPS:
        _refill(groups, saved - need)
    saved = float(sum(g.save[g.at] for g in groups))
    return Allocation(
        keep={g.gid: int(g.values[g.at]) for g in groups},
        cost=float(total) - saved,
        loss=float(sum(g.loss[g.at] for g in groups)),
        met=saved >= need - _EPS,
    )


def _table(curve, loss_curve, min_keep, max_keep, max_group_ratio, allowed) -> _Group:
    gid, slots = curve.group_id, curve.slots
    lo = max(floor_of(slots, max_group_ratio), int((min_keep or {}).get(gid, 1)))
    hi = (max_keep or {}).get(gid)
    values = allowed_counts(slots, lo=lo, hi=hi, allowed=(allowed or {}).get(gid))
    full_cost = curve.at(slots)
    save = full_cost - np.asarray(curve.at(values), dtype=np.float64)
    if loss_curve is None:
        added = np.zeros(len(values))
    else:
        added = np.asarray(loss_curve.at(values), dtype=np.float64) - loss_curve.at(slots)
    return _Group(gid, values, save, added, len(values) - 1)


def _heap(groups: list[_Group], which, version: list[int]) -> list[tuple]:
    """Heap entries (ratio, -saved, group, version) of the groups ``which``."""
    out = []
    for gi in which:
        move = _best_move(groups[gi], None)
        if move is not None:
            out.append((move[0], -move[1], gi, version[gi]))
    heapq.heapify(out)
    return out


def _finish(groups: list[_Group], remaining: float) -> None:
    """Take the single jump that saves ``remaining`` with the least loss added."""
    best: tuple[float, float, int, int] | None = None
    for gi, g in enumerate(groups):
        move = _best_move(g, remaining)
        if move is not None and (best is None or (move[0], move[1]) < best[:2]):
            best = (move[0], move[1], gi, move[2])
    if best is not None:
        groups[best[2]].at = best[3]


def _refill(groups: list[_Group], slack: float) -> None:
    """Give slots back while the budget holds: each time the step up that recovers the
    most loss per unit of cost, among those that fit in the slack."""
    while True:
        best: tuple[float, int, int, float] | None = None
        for gi, g in enumerate(groups):
            for j in range(g.at + 1, len(g.values)):
                dcost = g.save[g.at] - g.save[j]
                gain = g.loss[g.at] - g.loss[j]
                if dcost > slack + _EPS or gain <= _EPS:
                    continue
                score = gain / max(dcost, _EPS)
                if best is None or score > best[0]:
                    best = (score, gi, j, dcost)
        if best is None:
            return
        _, gi, j, dcost = best
        groups[gi].at = j
        slack -= dcost
