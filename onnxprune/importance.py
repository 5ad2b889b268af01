"""How much each channel slot of a group matters: one score per slot, higher = keep.

A slot's score gathers *every* member of its group (the producer's filters, the per-channel
parameters, the consumers' input slices), because pruning a slot removes all of them; the
members are combined with ``reduction`` (mean by default, as Torch-Pruning does). For global
ranking, scores are divided by their group's mean so that layers of different scale compare.

Criteria are small functions ``(group, values, stats, rng) -> np.ndarray`` in ``CRITERIA``;
``stats`` (activation statistics) is accepted for data-aware criteria added later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from onnxprune.dependency import Group, Slice
from onnxprune.errors import UsageError
from onnxprune.graph import GraphView

Values = Callable[[str], np.ndarray]
Criterion = Callable[
    [Group, Values, "Mapping[str, np.ndarray] | None", np.random.Generator, str], np.ndarray
]

SCORED_ROLES = ("out", "in", "chan")  # running statistics and activations do not count
REDUCTIONS = ("mean", "sum", "max")


def _rows(m: Slice, values: Values) -> np.ndarray:
    """The member's tensor with its channel axis first, flattened to [positions, rest]."""
    w = values(m.target)
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(np.float32)
    return np.moveaxis(w, m.axis, 0).reshape(m.size, -1)


def _per_slot(m: Slice, per_position: np.ndarray, slots: int) -> np.ndarray:
    mask = m.slot >= 0
    return np.bincount(m.slot[mask], weights=per_position[mask], minlength=slots)


def _reduce(vectors: list[np.ndarray], slots: int, how: str) -> np.ndarray:
    if not vectors:
        return np.zeros(slots)
    stack = np.stack(vectors)
    return {"mean": stack.mean(0), "sum": stack.sum(0), "max": stack.max(0)}[how]


def magnitude(p: int) -> Callable[..., np.ndarray]:
    """L1 (p=1) or L2 (p=2) norm of each slot's weights, per member, then reduced."""

    def score(g: Group, values: Values, stats: object, rng: object, reduction: str) -> np.ndarray:
        vectors = []
        for m in g.members:
            if m.role not in SCORED_ROLES:
                continue
            rows = _rows(m, values)
            per_pos = np.abs(rows).sum(1) if p == 1 else np.square(rows, dtype=np.float64).sum(1)
            v = _per_slot(m, per_pos, g.slots)
            vectors.append(np.sqrt(v) if p == 2 else v)
        return _reduce(vectors, g.slots, reduction)

    return score


def bn_scale(g: Group, values: Values, stats: object, rng: object, reduction: str) -> np.ndarray:
    """|gamma| of the group's BatchNormalization layers (network slimming); L1 where none."""
    vectors = []
    for m in g.members:
        if m.op == "BatchNormalization" and m.input == 1:
            counts = np.bincount(m.slot[m.slot >= 0], minlength=g.slots)
            v = _per_slot(m, np.abs(_rows(m, values)[:, 0]), g.slots)
            vectors.append(v / np.maximum(counts, 1))
    if not vectors:
        return magnitude(1)(g, values, stats, rng, reduction)
    return _reduce(vectors, g.slots, reduction)


def fpgm(g: Group, values: Values, stats: object, rng: object, reduction: str) -> np.ndarray:
    """Distance to the other filters (He et al. 2019): filters near the geometric median
    are replaceable by the others and score low."""
    feats = []
    for m in g.members:
        if m.role != "out":
            continue
        rows = _rows(m, values).astype(np.float64, copy=False)
        f = np.zeros((g.slots, rows.shape[1]))
        mask = m.slot >= 0
        np.add.at(f, m.slot[mask], rows[mask])
        feats.append(f)
    if not feats:
        return magnitude(2)(g, values, stats, rng, reduction)
    f = np.concatenate(feats, axis=1)
    sq = np.einsum("ij,ij->i", f, f)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.T)
    return np.sqrt(np.maximum(d2, 0.0)).sum(1)


def random(
    g: Group, values: Values, stats: object, rng: np.random.Generator, reduction: str
) -> np.ndarray:
    return rng.random(g.slots)


CRITERIA: dict[str, Callable[..., np.ndarray]] = {
    "l1": magnitude(1),
    "l2": magnitude(2),
    "bn-scale": bn_scale,
    "fpgm": fpgm,
    "random": random,
}


def score_groups(
    groups: list[Group],
    model: onnx.ModelProto | GraphView,
    criterion: str = "l1",
    stats: Mapping[str, np.ndarray] | None = None,
    *,
    reduction: str = "mean",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Scores (one per slot) of every group that is not blocked, keyed by group id."""
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if reduction not in REDUCTIONS:
        raise UsageError(f"unknown reduction '{reduction}' (choose from {', '.join(REDUCTIONS)})")
    view = model if isinstance(model, GraphView) else GraphView(model, shapes=False)

    def values(name: str) -> np.ndarray:
        v = view.constant(name)
        if v is None:
            raise KeyError(name)
        return v

    fn = CRITERIA[criterion]
    out = {}
    for i, g in enumerate(groups):
        if g.blocked_reason is None:
            rng = np.random.default_rng([seed, i])
            out[g.id] = np.asarray(fn(g, values, stats, rng, reduction), dtype=np.float64)
    return out


def normalize(scores: np.ndarray) -> np.ndarray:
    """Divide by the group's mean so that groups of different scale rank together."""
    mean = float(np.mean(scores)) if len(scores) else 0.0
    return scores / mean if mean > 0 else np.zeros_like(scores)
