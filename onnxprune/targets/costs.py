"""MACs and params as a function of the kept slots of each group, without rewriting.

Why analytic: a target search asks "what would this model cost with these kept counts?"
thousands of times; rewriting and re-inferring the model each time would take minutes on
a large one. The dependency analysis already says, for every tensor axis a group touches
(its ``Slice`` members: weights *and* activations), which positions each slot owns. Kept
counts therefore give every pruned shape directly, and the op registry's MAC formulas
(``OpSpec.macs``, the ones ``metrics.count_macs`` uses) give each node's MACs at those
shapes. Only the nodes that read or write a touched tensor are re-priced.

What is exact: ``CostModel.total`` equals ``metrics.count_macs`` / ``count_params`` of the
model really pruned with those counts (``make_plan(keep=...)`` then ``apply_plan``), with
the same input shapes, because it applies the same kept slots (``plan.kept_slots``: best
scores first, a ``Split`` side never emptied) to the same shapes. What is linear: with the
other groups whole, one group's cost is linear in its kept count, except where one node
reads and writes the same group (``y = x + conv(x)``, a weight shared by its producer and
consumer): quadratic there. Together, groups interact: a Conv between group A and group B
costs ``~ kept(A) * kept(B)``, so the sum of per-group savings overstates the joint saving
by the product of the removed counts; ``total`` prices groups jointly for that reason.
Not followed: a weight reached through an ``Identity``/``Transpose`` alias, which the
rewrite copies privately (its params are then priced as if sliced in place).

``time`` (given ``node_ms``, each node's measured milliseconds as a fixed part and a part
that scales with its work, ``targets.time_model``) prices a cut in milliseconds: a timed
node costs its fixed part plus its variable part times the fraction of its MACs kept (of its
output's elements, for an op without a MAC formula: an activation, a pooling, an Add); time
no node stands for (``overhead_ms``) stays. MACs alone say a 3x3 depthwise convolution is
cheap; on onnxruntime's CPU kernels it costs about four times the milliseconds per MAC of a
1x1 convolution (MobileNetV2 at 1 thread: 62 against 14 ms per GMAC), so a MAC budget
spends its cuts where they save the least time.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.graph.view import GraphView, node_label
from onnxprune.metrics.macs import at_input_shapes, node_macs
from onnxprune.metrics.params import count_params, float_initializers
from onnxprune.ops import opsets_of, spec_for
from onnxprune.ops.macs import Dims, UnknownShape
from onnxprune.structured.dependency import Group
from onnxprune.structured.plan import kept_slots
from onnxprune.targets import GroupCurve

METRICS = ("macs", "params", "time")
CURVE_POINTS = 64
"""Groups with more slots than this get curves at this many kept counts (ends included),
interpolated between: the costs are (piecewise) linear, so little is lost."""

_PRICE_ERRORS = (UnknownShape, IndexError, TypeError, ValueError, ZeroDivisionError)


class CostModel:
    """MACs and params of ``model`` with any kept counts per group; see the module doc.

    ``groups`` are the groups that may change (the prunable ones); ``scores`` (group id ->
    one score per slot) choose which slots a count keeps, as the plan will; without them
    the first slots stay. ``input_shapes`` fixes the input sizes as ``count_macs`` does;
    ``view`` (a ``GraphView`` of ``model``) is reused when no sizes are fixed.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        groups: Sequence[Group],
        scores: Mapping[str, np.ndarray] | None = None,
        *,
        input_shapes: Mapping[str, tuple[int, ...]] | None = None,
        view: GraphView | None = None,
        node_ms: Mapping[str, float | tuple[float, float]] | None = None,
        overhead_ms: float = 0.0,
    ) -> None:
        self.groups = {g.id: g for g in groups}
        self._scores = {
            g.id: np.asarray(scores[g.id]) if scores is not None else np.zeros(g.slots)
            for g in groups
        }
        if input_shapes:
            view = GraphView(at_input_shapes(model, input_shapes))
        elif view is None:
            view = GraphView(model)
        shapes = dict(view.shapes)
        for t in model.graph.initializer:
            shapes.setdefault(t.name, tuple(int(x) for x in t.dims))
        self._shapes = shapes
        self._opsets = opsets_of(model)
        self._nodes = list(model.graph.node)
        self._float_params = {t.name for t, sparse in float_initializers(model) if sparse is None}
        self._params_total = count_params(model)[0]
        self._axes: dict[str, dict[int, list[tuple[str, np.ndarray]]]] = {}
        for g in groups:
            for m in g.members:
                self._axes.setdefault(m.target, {}).setdefault(m.axis, []).append((g.id, m.slot))
        self._touching: dict[str, list[int]] = {}
        self._base_macs: dict[int, int] = {}
        self._macs_total = 0
        for i, node in enumerate(self._nodes):
            macs = self._price(node, self._shapes)
            if macs is None:
                continue
            self._base_macs[i] = macs
            self._macs_total += macs
            for name in {*node.input, *node.output}:
                if name in self._axes:
                    self._touching.setdefault(name, []).append(i)
        self._tensors = {g.id: sorted({m.target for m in g.members}) for g in groups}
        self._masks: dict[tuple[str, int], np.ndarray] = {}
        self._init_time(node_ms or {}, overhead_ms)

    def _init_time(self, node_ms: Mapping, overhead_ms: float) -> None:
        """The ``time`` metric's node prices, (fixed, variable) ms per node index (labels
        read back as ``graph.view.node_label`` writes them; a plain number is all variable),
        and the nodes each touched tensor reaches."""
        labels = {node_label(n, i): i for i, n in enumerate(self._nodes)}
        self._node_ms: dict[int, tuple[float, float]] = {
            labels[k]: ((0.0, float(v)) if isinstance(v, int | float) else
                        (float(v[0]), float(v[1])))
            for k, v in node_ms.items() if k in labels
        }  # fmt: skip
        self._time_full = {i: a + b for i, (a, b) in self._node_ms.items()}
        self._time_total = float(sum(self._time_full.values())) + float(overhead_ms)
        self._timed_touching: dict[str, list[int]] = {}
        for i in self._node_ms:
            node = self._nodes[i]
            for name in {*node.input, *node.output}:
                if name in self._axes:
                    self._timed_touching.setdefault(name, []).append(i)

    @property
    def timed(self) -> bool:
        """Whether the ``time`` metric has measured nodes to price."""
        return bool(self._node_ms)

    def _time_of(self, i: int, shapes: Mapping) -> float:
        """Node ``i``'s fixed ms plus its variable ms times the fraction of its work kept
        at ``shapes`` (``work_kept``)."""
        fixed, variable = self._node_ms[i]
        return fixed + variable * self.work_kept(i, shapes)

    def work_kept(self, i: int, shapes: Mapping) -> float:
        """The fraction of node ``i``'s MACs (else of its first output's elements) that
        ``shapes`` keep."""
        node = self._nodes[i]
        base = self._base_macs.get(i)
        if base:
            return (self._price(node, shapes) or 0) / base
        out = node.output[0] if node.output else None
        full = self._shapes.get(out) if out else None
        now = shapes.get(out) if out else None
        if not full or now is None or len(now) != len(full):
            return 1.0
        ratio = 1.0  # axis by axis: a symbolic batch is the same before and after
        for a, b in zip(now, full, strict=True):
            if a != b and isinstance(a, int) and isinstance(b, int) and b > 0:
                ratio *= a / b
        return ratio

    def work_ratios(self, keep: Mapping[str, int]) -> dict[str, float]:
        """Per timed node label, the fraction of its work ``keep`` keeps (the time model's
        fit, ``targets.time_model``)."""
        shapes = ChainMap(self._pruned_shapes(keep), self._shapes)
        return {node_label(self._nodes[i], i): self.work_kept(i, shapes) for i in self._node_ms}

    def _price(self, node: onnx.NodeProto, shapes: Mapping) -> int | None:
        """One node's MACs (0 where its shapes do not tell, as ``count_macs``); None when
        its op has no MAC formula."""
        spec = spec_for(node, self._opsets)
        if spec is None or spec.macs is None:
            return None
        try:
            return max(0, node_macs(node, shapes, Dims(), self._opsets))
        except _PRICE_ERRORS:
            return 0

    def kept(self, gid: str, count: int) -> np.ndarray:
        """The slots of group ``gid`` kept at ``count`` (bool mask), as the plan keeps them."""
        g = self.groups[gid]
        count = max(1, min(int(count), g.slots))
        key = (gid, count)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = kept_slots(g, self._scores[gid], count)
        return mask

    def _pruned_shapes(
        self, keep: Mapping[str, int], names: Sequence[str] | None = None
    ) -> dict[str, tuple]:
        """The new shape of every tensor the groups cut at ``keep`` touch (of ``names``
        only, when given)."""
        kept = {gid: self.kept(gid, c) for gid, c in keep.items()}
        if names is None:
            names = sorted({t for gid in kept for t in self._tensors[gid]})
        out: dict[str, tuple] = {}
        for name in names:
            base = self._shapes.get(name)
            if base is None:
                continue
            shape = list(base)
            for axis, members in self._axes[name].items():
                gone: np.ndarray | None = None
                for gid, slot in members:
                    if gid not in kept:
                        continue
                    on = slot >= 0
                    hit = np.zeros(len(slot), dtype=bool)
                    hit[on] = ~kept[gid][slot[on]]
                    gone = hit if gone is None else gone | hit
                if gone is not None and axis < len(shape):
                    shape[axis] = int(len(gone) - gone.sum())
            out[name] = tuple(shape)
        return out

    def _check(self, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if metric == "time" and not self._node_ms:
            raise ValueError("the time metric needs measured node times (node_ms)")

    def total(self, metric: str, keep: Mapping[str, int] | None = None) -> float:
        """``metric`` (``macs``, ``params`` or ``time``, ms) of the whole model with
        ``keep`` kept slots per group id (groups not listed stay whole)."""
        self._check(metric)
        cut = {gid: int(c) for gid, c in (keep or {}).items() if int(c) < self.groups[gid].slots}
        base = {"macs": self._macs_total, "params": self._params_total,
                "time": self._time_total}[metric]  # fmt: skip
        if not cut:
            return base
        new = self._pruned_shapes(cut)
        if metric == "time":
            shapes = ChainMap(new, self._shapes)
            nodes = sorted({i for name in new for i in self._timed_touching.get(name, ())})
            return base + sum(self._time_of(i, shapes) - self._time_full[i] for i in nodes)
        if metric == "params":
            delta = 0
            for name, shape in new.items():
                if name in self._float_params:
                    delta += int(np.prod(shape, dtype=np.int64)) - int(
                        np.prod(self._shapes[name], dtype=np.int64)
                    )
            return base + delta
        shapes = ChainMap(new, self._shapes)
        nodes = sorted({i for name in new for i in self._touching.get(name, ())})
        delta = 0
        for i in nodes:
            delta += (self._price(self._nodes[i], shapes) or 0) - self._base_macs[i]
        return base + delta

    def change(self, metric: str, keep: Mapping[str, int], gid: str, count: int) -> float:
        """``total(metric, {**keep, gid: count}) - total(metric, keep)``, priced on the
        nodes and tensors group ``gid`` touches only (a search's single steps)."""
        trial = {**keep, gid: count}
        if metric == "params":
            names = [t for t in self._tensors[gid] if t in self._float_params]
            old, new = self._pruned_shapes(keep, names), self._pruned_shapes(trial, names)
            return sum(int(np.prod(new.get(t, self._shapes[t]), dtype=np.int64))
                       - int(np.prod(old.get(t, self._shapes[t]), dtype=np.int64))
                       for t in names)  # fmt: skip
        self._check(metric)
        touching = self._timed_touching if metric == "time" else self._touching
        nodes = sorted({i for t in self._tensors[gid] for i in touching.get(t, ())})
        names = sorted({t for i in nodes for t in (*self._nodes[i].input, *self._nodes[i].output)
                        if t in self._axes})  # fmt: skip
        before = ChainMap(self._pruned_shapes(keep, names), self._shapes)
        after = ChainMap(self._pruned_shapes(trial, names), self._shapes)
        if metric == "time":
            return sum(self._time_of(i, after) - self._time_of(i, before) for i in nodes)
        return sum((self._price(self._nodes[i], after) or 0)
                   - (self._price(self._nodes[i], before) or 0) for i in nodes)  # fmt: skip

    def curve(self, metric: str, gid: str, keeps: Sequence[int] | None = None) -> GroupCurve:
        """The whole model's ``metric`` with group ``gid`` at each count of ``keeps`` and
        every other group whole (default: every count, or ``CURVE_POINTS`` of them)."""
        slots = self.groups[gid].slots
        if keeps is None:
            keeps = curve_keeps(slots)
        keeps = sorted({max(1, min(int(k), slots)) for k in keeps})
        return GroupCurve(gid, slots, keeps, [float(self.total(metric, {gid: k})) for k in keeps])

    def curves(self, metric: str) -> list[GroupCurve]:
        """``curve`` of every group, in the order the groups were given."""
        return [self.curve(metric, gid) for gid in self.groups]

    def attributed(self, metric: str) -> dict[str, float]:
        """Per group id, its share of ``metric`` so that the shares add up (``onnxprune
        analyze``'s columns): each node's MACs, each weight's params divided evenly among
        the groups touching it. Even is exact where the cost is a product of the kept counts
        (a Conv between two groups costs ``~ kept(A) * kept(B)``: each owns half of it).
        Costs no group touches stay in ``total`` only. (Time: ``sensitivity``'s
        ``attributed_latency``, from the profiled kernels.)"""
        if metric not in ("macs", "params"):
            raise ValueError(f"attributed metric must be macs or params, got {metric!r}")
        out = {gid: 0.0 for gid in self.groups}
        if metric == "params":
            items = [(name, float(np.prod(self._shapes[name], dtype=np.int64)), [name])
                     for name in self._axes if name in self._float_params]  # fmt: skip
        else:
            items = [(i, float(macs), [*self._nodes[i].input, *self._nodes[i].output])
                     for i, macs in self._base_macs.items()]  # fmt: skip
        for _, cost, names in items:
            owners = sorted({gid for n in names for members in self._axes.get(n, {}).values()
                             for gid, _ in members})  # fmt: skip
            for gid in owners:
                out[gid] += cost / len(owners)
        return out

    def slot_cost(self, metric: str, gid: str, keep: Mapping[str, int] | None = None) -> float:
        """The most one slot of group ``gid`` costs at ``keep`` (the others as given): how
        far a target can be missed because slots are whole."""
        keep = dict(keep or {})
        slots = self.groups[gid].slots
        now = min(slots, int(keep.get(gid, slots)))
        best = 0
        if now > 1:
            best = max(best, -self.change(metric, keep, gid, now - 1))
        if now < slots:
            best = max(best, self.change(metric, keep, gid, now + 1))
        return best


def curve_keeps(slots: int, points: int = CURVE_POINTS) -> list[int]:
    """Kept counts a curve is priced at: all of 1..slots, or ``points`` spread evenly."""
    if slots <= points:
        return list(range(1, slots + 1))
    return sorted({int(x) for x in np.rint(np.linspace(1, slots, points))})

