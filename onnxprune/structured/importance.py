"""How much each channel slot of a group matters: one score per slot, higher = keep.

A slot's score gathers *every* member of its group (the producer's filters, the per-channel
parameters, the consumers' input slices), because pruning a slot removes all of them; the
members are combined with ``reduction`` (mean by default, as Torch-Pruning does). For global
ranking, scores are divided by their group's mean so that layers of different scale compare.

Criteria are small functions ``(group, weights, stats, rng, reduction) -> np.ndarray`` in
``CRITERIA`` (``weights`` is a ``Weights``: values and cached per-axis norms);
``stats`` maps activation tensors to ``calibrate.ChannelStats`` for the data-aware criteria
(``DATA_AWARE``: activation, apoz, wanda), gathered from ``--calib`` data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

from onnxprune.errors import UsageError
from onnxprune.graph.view import GraphView
from onnxprune.ops import opsets_of, spec_for
from onnxprune.structured.dependency import Group, Slice

SCORED_ROLES = ("out", "in", "chan")  # running statistics and activations do not count
REDUCTIONS = ("mean", "sum", "max")
_CHUNK = 1 << 22  # elements per pass: bounds the temporary |w| of a 400 MB VGG layer


class Weights:
    """Read access to parameter values for criteria, with the per-axis norms cached.

    A weight is usually a member of two groups (its filters, its input slices); both need
    ``sum |w|^p`` along one axis. One chunked pass computes the sums along every axis the
    groups ask for, so a large weight is read once and never copied or transposed whole.
    """

    def __init__(self, view: GraphView, groups: list[Group] = ()) -> None:
        self.view = view
        self._axes: dict[str, set[int]] = {}
        for g in groups:
            for m in g.members:
                self._axes.setdefault(m.target, set()).add(m.axis)
        self._norms: dict[tuple[str, int], dict[int, np.ndarray]] = {}
        self._scratch = np.empty(0, dtype=np.float32)

    def _buffer(self, size: int) -> np.ndarray:
        """One scratch buffer for |w| reused across weights: fresh temporaries would fault
        in new pages for every weight, which costs more than the arithmetic."""
        if len(self._scratch) < size:
            self._scratch = np.empty(size, dtype=np.float32)
        return self._scratch

    def array(self, name: str) -> np.ndarray:
        v = self.view.value(name)
        if v is None:
            raise KeyError(name)
        return v if v.dtype in (np.float32, np.float64) else v.astype(np.float32)

    def rows(self, m: Slice) -> np.ndarray:
        """The member's tensor with its channel axis first, flattened to [positions, rest]."""
        return np.moveaxis(self.array(m.target), m.axis, 0).reshape(m.size, -1)

    def norms(self, name: str, axis: int, p: int) -> np.ndarray:
        """``sum |w|^p`` over every axis but ``axis``: one value per position of ``axis``."""
        cached = self._norms.setdefault((name, p), {})
        if axis not in cached:
            w = self.view.value(name)
            if w is None:
                raise KeyError(name)
            w = w.reshape(1) if w.ndim == 0 else w
            axes = sorted(self._axes.get(name, set()) | {axis})
            sums = {k: np.zeros(w.shape[k], dtype=np.float64) for k in axes}
            step = max(1, _CHUNK // max(1, w[0].size))
            buf = self._buffer(min(w.size, step * max(1, w[0].size)))
            for i in range(0, w.shape[0], step):
                c = w[i : i + step]
                a = buf[: c.size].reshape(c.shape)
                (np.abs if p == 1 else np.square)(c, out=a)
                for k in axes:
                    lead = int(np.prod(a.shape[:k]))
                    part = a.reshape(lead, a.shape[k], -1).sum(axis=(0, 2))
                    if k == 0:
                        sums[0][i : i + len(c)] = part
                    else:
                        sums[k] += part
            cached.update(sums)
        return cached[axis]


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

    def score(g: Group, weights: Weights, stats: object, rng: object, reduction: str) -> np.ndarray:
        vectors = []
        for m in g.members:
            if m.role not in SCORED_ROLES:
                continue
            v = _per_slot(m, weights.norms(m.target, m.axis, p), g.slots)
            vectors.append(np.sqrt(v) if p == 2 else v)
        return _reduce(vectors, g.slots, reduction)

    return score


def bn_scale(g: Group, weights: Weights, stats: object, rng: object, reduction: str) -> np.ndarray:
    """|gamma| of the group's BatchNormalization layers (network slimming); L1 where none."""
    vectors = []
    for m in g.members:
        if m.op == "BatchNormalization" and m.input == 1:
            counts = np.bincount(m.slot[m.slot >= 0], minlength=g.slots)
            v = _per_slot(m, np.abs(weights.array(m.target)), g.slots)
            vectors.append(v / np.maximum(counts, 1))
    if not vectors:
        return magnitude(1)(g, weights, stats, rng, reduction)
    return _reduce(vectors, g.slots, reduction)


def fpgm(g: Group, weights: Weights, stats: object, rng: object, reduction: str) -> np.ndarray:
    """Distance to the other filters (He et al. 2019): filters near the geometric median
    are replaceable by the others and score low."""
    feats = []
    for m in g.members:
        if m.role != "out":
            continue
        rows = weights.rows(m)
        f = np.zeros((g.slots, rows.shape[1]), dtype=np.float32)
        mask = m.slot >= 0
        slots = m.slot[mask]
        if len(np.unique(slots)) == len(slots):
            f[slots] = rows[mask]
        else:  # a slot owns several rows (a whole group of a grouped conv): sum them
            np.add.at(f, slots, rows[mask])
        feats.append(f)
    if not feats:
        return magnitude(2)(g, weights, stats, rng, reduction)
    f = np.concatenate(feats, axis=1)
    sq = np.einsum("ij,ij->i", f, f, dtype=np.float64)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (f @ f.T).astype(np.float64)
    return np.sqrt(np.maximum(d2, 0.0)).sum(1)


def neuron_l2(g: Group, weights: Weights, stats: object, rng: object, reduction: str) -> np.ndarray:
    """L2 norm of each neuron's outgoing weights: the consumers' input slices (``in``
    members) only, the classic neuron-pruning rule. Each consumer's norm is taken alone,
    then reduced; a group with no weighted consumer falls back to L2 over every member."""
    vectors = [
        np.sqrt(_per_slot(m, weights.norms(m.target, m.axis, 2), g.slots))
        for m in g.members
        if m.role == "in"
    ]
    if not vectors:
        return magnitude(2)(g, weights, stats, rng, reduction)
    return _reduce(vectors, g.slots, reduction)


def incoming(p: int) -> Callable[..., np.ndarray]:
    """L1 (p=1) or L2 (p=2) norm of each neuron's incoming weights: the producers' filters
    and columns (``out`` members; the rows of a torch ``Linear`` weight) only."""

    def score(g: Group, weights: Weights, stats: object, rng: object, reduction: str) -> np.ndarray:
        vectors = []
        for m in g.members:
            if m.role == "out":
                v = _per_slot(m, weights.norms(m.target, m.axis, p), g.slots)
                vectors.append(np.sqrt(v) if p == 2 else v)
        if not vectors:
            return magnitude(p)(g, weights, stats, rng, reduction)
        return _reduce(vectors, g.slots, reduction)

    return score


def group_norm(p: int) -> Callable[..., np.ndarray]:
    """The norm of everything a slot removes, summed over the group: ``sum |w|`` (p=1) or
    ``sqrt(sum w^2)`` (p=2) over every member at once. A head scores its Q, K and V columns,
    biases and output-projection rows together; members with more weights weigh more."""

    def score(g: Group, weights: Weights, stats: object, rng: object, reduction: str) -> np.ndarray:
        total = np.zeros(g.slots)
        for m in g.members:
            if m.role in SCORED_ROLES:
                total += _per_slot(m, weights.norms(m.target, m.axis, p), g.slots)
        return np.sqrt(total) if p == 2 else total

    return score


# --------------------------------------------------------------------------------------------
# Data-aware criteria: ``stats`` maps an activation tensor to its ``calibrate.ChannelStats``
# --------------------------------------------------------------------------------------------

DATA_AWARE = ("activation", "apoz", "wanda")
"""Criteria that need calibration statistics (``--calib``)."""
USES_DATA = (*DATA_AWARE, "auto")
"""Criteria that read calibration statistics when there are some (``auto``: without, l1)."""


def resolve_criterion(criterion: str | None, has_data: bool) -> str:
    """The criterion a run uses: as given, else ``auto`` with data and ``l1`` without."""
    if criterion is not None:
        return criterion
    return "auto" if has_data else "l1"


def consumer_activations(g: Group, view: GraphView) -> list[Slice]:
    """The group's activation tensors that a weighted layer reads: what the next layer sees
    (after ReLU, pooling...), not the pre-activation values. Every ``act`` member if none."""
    # only tensors of the main graph can be measured (not those inside an If/Loop body)
    acts = [
        m
        for m in g.members
        if m.role == "act" and (m.target in view.producer or m.target in view.graph_inputs)
    ]
    opsets = opsets_of(view.model)
    fed = [
        m
        for m in acts
        if any(u.index == 0 and _weighted(view.nodes[u.node], opsets) for u in view.uses(m.target))
    ]
    return fed or acts


def _weighted(node: onnx.NodeProto, opsets: dict[str, int]) -> bool:
    """Whether the registry knows a weight for ``node``'s op (a layer that reads input 0)."""
    spec = spec_for(node, opsets)
    return spec is not None and spec.weight is not None


def activation_targets(groups: list[Group], view: GraphView) -> dict[str, int]:
    """Tensor -> channel axis for every statistic the data-aware criteria read."""
    out: dict[str, int] = {}
    for g in groups:
        if g.blocked_reason is None:
            for m in consumer_activations(g, view):
                out[m.target] = m.axis
    return out


def _act_per_slot(
    g: Group, weights: Weights, stats: Mapping, value: Callable[[object], np.ndarray]
) -> np.ndarray | None:
    """Mean over the group's consumer activations of ``value(stat)`` per slot, or None."""
    vectors = []
    for m in consumer_activations(g, weights.view):
        st = (stats or {}).get(m.target)
        if st is None or len(value(st)) != m.size:
            continue
        counts = np.bincount(m.slot[m.slot >= 0], minlength=g.slots)
        vectors.append(_per_slot(m, value(st), g.slots) / np.maximum(counts, 1))
    return np.mean(vectors, axis=0) if vectors else None


def activation(g: Group, weights: Weights, stats: Mapping, rng: object, reduction: str) -> np.ndarray:
    """Mean |activation| of each channel on the calibration data (L1 where none is known)."""
    v = _act_per_slot(g, weights, stats, lambda st: st.mean_abs)
    return v if v is not None else magnitude(1)(g, weights, stats, rng, reduction)


def apoz(g: Group, weights: Weights, stats: Mapping, rng: object, reduction: str) -> np.ndarray:
    """1 - APoZ (Hu et al. 2016): channels whose activations are mostly zero score low."""
    v = _act_per_slot(g, weights, stats, lambda st: st.apoz)
    return 1.0 - v if v is not None else magnitude(1)(g, weights, stats, rng, reduction)


def wanda(g: Group, weights: Weights, stats: Mapping, rng: object, reduction: str) -> np.ndarray:
    """``||X_c|| * sum |W_out,c|``: Wanda's |W|.||X|| summed over what a channel feeds
    (the channel's expected contribution to the next layers); L1 where no statistic."""
    v = _act_per_slot(g, weights, stats, lambda st: st.norm)
    out = [
        _per_slot(m, weights.norms(m.target, m.axis, 1), g.slots) for m in g.members if m.role == "in"
    ]
    if v is None or not out:
        return magnitude(1)(g, weights, stats, rng, reduction)
    return v * np.sum(out, axis=0)


def random(
    g: Group, weights: Weights, stats: object, rng: np.random.Generator, reduction: str
) -> np.ndarray:
    return rng.random(g.slots)


LINEAR = frozenset({"MatMul", "Gemm"})
"""The layers of a group that ``auto`` scores with ``wanda`` (neurons, heads): every weight
that produces or consumes its slots is one of these."""


def auto(g: Group, weights: Weights, stats: Mapping, rng: object, reduction: str) -> np.ndarray:
    """The default with ``--calib``: ``wanda`` for a group whose weights are all MatMul/Gemm
    (FFN neurons, heads), ``l1`` for the rest (convolution channels). Measured with
    recovery (``tools/bench_criterion_default.py``, README "Targets"): on MiniLM's FFN at 30%
    wanda keeps a held-out cosine of 0.951 against l1's 0.739; on convolutions it does not
    win (digits CNN 99.17% both at 0.5 and 0.7; pretrained MobileNetV2 at 0.3: cosine 0.976
    against 0.978, top-1 agreement 8% against 25%). Without statistics: l1 everywhere."""
    ops = [m.op for m in g.members if m.role in ("in", "out")]
    if stats and any(m.role == "in" for m in g.members) and all(op in LINEAR for op in ops):
        return wanda(g, weights, stats, rng, reduction)
    return magnitude(1)(g, weights, stats, rng, reduction)


CRITERIA: dict[str, Callable[..., np.ndarray]] = {
    "l1": magnitude(1),
    "l2": magnitude(2),
    "bn-scale": bn_scale,
    "fpgm": fpgm,
    "neuron-l2": neuron_l2,
    "incoming-l1": incoming(1),
    "incoming-l2": incoming(2),
    "group-l1": group_norm(1),
    "group-l2": group_norm(2),
    "random": random,
    "activation": activation,
    "apoz": apoz,
    "wanda": wanda,
    "auto": auto,
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
    weights = Weights(view, groups)
    fn = CRITERIA[criterion]
    out = {}
    for i, g in enumerate(groups):
        if g.blocked_reason is None:
            rng = np.random.default_rng([seed, i])
            out[g.id] = np.asarray(fn(g, weights, stats, rng, reduction), dtype=np.float64)
    return out


def normalize(scores: np.ndarray) -> np.ndarray:
    """Divide by the group's mean so that groups of different scale rank together."""
    mean = float(np.mean(scores)) if len(scores) else 0.0
    return scores / mean if mean > 0 else np.zeros_like(scores)
