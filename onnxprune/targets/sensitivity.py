"""Per prunable group: what it costs (MACs, params, measured time) and what losing some of it
costs in quality. The ``onnxprune analyze`` command's engine, and the solver's input.

**Costs** are *attributed*, so that they add up: a Conv is controlled by two groups (its
filters belong to the group it produces, its input slices to the group it reads), and
counting it whole in both would make the shares sum past 1. Each node's MACs and each
weight's parameters are divided evenly among the prunable groups whose tensors it reads or
writes, by ``targets.costs.CostModel.attributed`` (the one cost model: the solver's prices
and these shares come from the same node prices and shapes); each profiled kernel's time
is divided the same way among the groups touching the nodes it stands for. Costs no
prunable group touches (the stem's input side, a blocked group) stay in the totals only, so
the shares of all groups sum to at most 1.

**Quality loss** of a group at a fraction f: the f lowest-scoring slots (the criterion in
use) are removed by *zeroing* their input slices at every consumer in a copy, the exactness
oracle's construction (``onnxprune.testing.oracles.zeroed``, which the package never
imports): a model pruned by the plan gives exactly the zeroed model's outputs, so no rewrite
is needed to measure it. The loss is 1 - cosine of all outputs against the original's on the
same inputs, plus the top-1 agreement drop when an output is class scores. Every candidate
opens from the *same* serialized bytes with only its masked weights passed as initializer
overrides, and reads the shared inputs and the original's outputs computed once.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxprune.graph.view import GraphView
from onnxprune.runtime.compare import compare_outputs, is_class_scores
from onnxprune.runtime.feeds import join_chunks
from onnxprune.runtime.session import fixed_batch, open_session, run_session
from onnxprune.structured.dependency import Group, analyze
from onnxprune.structured.importance import USES_DATA, activation_targets, score_groups
from onnxprune.targets.costs import CostModel
from onnxprune.targets.masking import (
    Blobs,
    contraction_masks,
    mask_model,
    masked_values,
    removed_slots,
)
from onnxprune.targets.profile import KernelTimes, attribute

__all__ = [
    "DEFAULT_FRACTIONS",
    "Analysis",
    "GroupSensitivity",
    "fraction_key",
    "prunable_groups",
    "quality_losses",
]

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)


def fraction_key(f: float) -> str:
    """How a fraction names its entry in ``loss``: ``"0.25"``, ``"0.5"``."""
    return repr(float(f))


@dataclass
class GroupSensitivity:
    """One row of the analysis (the JSON ``groups`` entries)."""

    id: str
    nodes: list[str]
    """The group's producers' node names (``/layer1/0/conv1/Conv``), as users know them."""
    slots: int
    macs: float = 0.0
    macs_share: float = 0.0
    params: float = 0.0
    params_share: float = 0.0
    latency_ms: float = 0.0
    latency_share: float = 0.0
    loss: dict[str, float] = field(default_factory=dict)
    """Fraction removed (``fraction_key``) -> 1 - cosine of the outputs."""
    top1_drop: dict[str, float] | None = None
    """Fraction removed -> 1 - top-1 agreement with the original (class-score outputs)."""
    heads: int = 0


@dataclass
class Analysis:
    """The whole analysis; ``to_dict`` is the ``--json`` document::

        {"model": path, "provider": "CPUExecutionProvider", "threads": 0 (onnxruntime's own),
         "input_shapes": {input: [dims]},          # the shapes profiled at
         "groups": [{"id", "nodes" (producer node names), "slots", "heads",
                     "macs", "macs_share", "params", "params_share",
                     "latency_ms", "latency_share",
                     "loss": {"0.25": 1 - cosine, ...},
                     "top1_drop": {"0.25": 1 - top-1 agreement, ...} or null}],
         "seconds", "criterion", "fractions", "data" ("calib" | "random"), "samples",
         "macs_total", "params_total", "latency_total_ms" (sum of kernel medians),
         "run_ms" (median run as profiled), "blocked": [{"where", "reason"}], "notes",
         "cached", "timings_s": {stage: s}, "candidates"}

    Shares are attributed (see the module doc), so each column sums to at most 1.
    """

    model: str
    provider: str
    threads: int
    input_shapes: dict[str, list[int]]
    groups: list[GroupSensitivity]
    seconds: float = 0.0
    criterion: str = "l1"
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    data: str = "random"
    samples: int = 0
    macs_total: float = 0.0
    params_total: float = 0.0
    latency_total_ms: float = 0.0
    run_ms: float = 0.0
    blocked: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cached: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: groups (analysis, scores, costs), profile, reference, candidates."""
    candidates: int = 0
    """Masked candidates run (a fraction that removes no slot is not run)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Analysis:
        """The inverse of ``to_dict``; ``KeyError``/``TypeError`` on a malformed entry."""
        d = dict(d)
        groups = [GroupSensitivity(**g) for g in d.pop("groups")]
        return cls(groups=groups, **d)


# --------------------------------------------------------------------------------------------
# Which groups
# --------------------------------------------------------------------------------------------


def prunable_groups(
    groups: Sequence[Group], exclude: Sequence[str] = ()
) -> tuple[list[Group], list[dict[str, str]]]:
    """The groups prune's plan would prune, and why the others stay (``make_plan``'s rules:
    blocked groups, and groups touching an ``--exclude`` glob)."""
    keep, blocked = [], []
    for g in groups:
        if g.blocked_reason is not None:
            if any(m.role == "out" for m in g.members):
                blocked.append({"where": g.id, "reason": g.blocked_reason})
            continue
        hit = next(
            (f"excluded by --exclude '{p}' (matches '{n}')" for p in exclude for n in sorted(g.names)
             if n and fnmatch.fnmatchcase(n, p)),
            None,
        )  # fmt: skip
        if hit is not None:
            blocked.append({"where": g.id, "reason": hit})
            continue
        keep.append(g)
    return keep, blocked


def producer_nodes(g: Group) -> list[str]:
    """The nodes that create the group's channels (``out`` members), in member order."""
    out: list[str] = []
    for m in g.members:
        if m.role == "out" and m.node not in out:
            out.append(m.node)
    return out or [g.id]


def _touched_nodes(g: Group) -> set[str]:
    return {m.node for m in g.members if m.node}


# --------------------------------------------------------------------------------------------
# Costs: MACs, params and time, attributed so that they add up
# --------------------------------------------------------------------------------------------


def _split(costs: Mapping[str, float], owners: Mapping[str, list[str]]) -> dict[str, float]:
    """Each item's cost divided evenly among the groups that own it."""
    out: dict[str, float] = {}
    for item, cost in costs.items():
        who = owners.get(item, [])
        for gid in who:
            out[gid] = out.get(gid, 0.0) + cost / len(who)
    return out


def attributed_latency(
    times: KernelTimes, model: onnx.ModelProto, groups: Sequence[Group]
) -> dict[str, float]:
    """Milliseconds per group id: each kernel's median time split among the groups that
    touch any original node it stands for (``targets.profile.attribute``)."""
    owners_of_node: dict[str, list[str]] = {}
    for g in groups:
        for n in _touched_nodes(g):
            owners_of_node.setdefault(n, []).append(g.id)
    owners: dict[str, list[str]] = {}
    for kernel, nodes in attribute(times.kernels, model).items():
        who: list[str] = []
        for n in nodes:
            who.extend(gid for gid in owners_of_node.get(n, []) if gid not in who)
        if who:
            owners[kernel] = who
    return _split(times.kernels, owners)


# --------------------------------------------------------------------------------------------
# Quality: masked copies
# --------------------------------------------------------------------------------------------


@dataclass
class _Reference:
    """What every candidate shares: the inputs in runs the model takes, and the outputs."""

    chunks: list[dict[str, np.ndarray]]
    outputs: list[np.ndarray]
    names: list[str]


class _Runner:
    """Runs the candidates: the one session of the ``MaskedModel``, and per-candidate
    sessions of ``Blobs`` for the groups that fall back (see ``targets.masking``)."""

    def __init__(self, model, view, groups, inputs, providers, threads, run_batch) -> None:
        self.model, self.view = model, view
        self.providers, self.threads = list(providers), threads
        self.masked = mask_model(model, view, groups)
        self.session = open_session(
            self.masked.model.SerializeToString(), providers, role="model", threads=threads
        )
        names = [i.name for i in self.session.get_inputs()]
        feed = {k: v for k, v in inputs.items() if k in names}
        step = fixed_batch(self.session) or run_batch
        n = next(iter(feed.values())).shape[0] if feed and step else 0
        chunks = [feed]
        if step and n > step:
            chunks = [
                {k: v[a : a + step] for k, v in feed.items()} for a in range(0, n - n % step, step)
            ]
        ones = self.masked.ones()
        outputs = self._run(self.session, [{**c, **ones} for c in chunks])
        self.names = [o.name for o in self.session.get_outputs()]
        self.ref = _Reference(chunks, outputs, self.names)
        self.original: _Reference | None = None
        self.blobs = Blobs(model) if self.masked.fallback else None
        self.runs = 0

    def _run(self, sess, chunks) -> list[np.ndarray]:
        return join_chunks([run_session(sess, c, "masked model") for c in chunks])

    def loss(self, g: Group, removed: np.ndarray) -> tuple[float, float | None]:
        """(1 - cosine, 1 - top-1 agreement or None) of the group losing ``removed``."""
        if g.id not in self.masked.fallback:
            masks = self.masked.feed(g.id, removed)
            got = self._run(self.session, [{**c, **masks} for c in self.ref.chunks])
            return _compare(self.ref, got)
        if self.original is None:
            sess = open_session(
                self.model.SerializeToString(), self.providers, role="model", threads=self.threads
            )
            self.original = _Reference(
                self.ref.chunks, self._run(sess, self.ref.chunks), self.names
            )
        blob = self.blobs.masked(
            masked_values(g, self.view, removed), contraction_masks(g, self.view, removed)
        )
        sess = open_session(blob, self.providers, role="masked model", threads=self.threads)
        return _compare(self.original, self._run(sess, self.ref.chunks))


def _compare(ref: _Reference, got: list[np.ndarray]) -> tuple[float, float | None]:
    cmp = compare_outputs(ref.outputs, got, ref.names)
    agree = cmp["top1_agreement"]
    return 1.0 - float(cmp["cosine"]), None if agree is None else 1.0 - float(agree)


def quality_losses(
    runner: _Runner,
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    fractions: Sequence[float],
    progress: Callable[[int], None] | None = None,
) -> dict[str, tuple[dict[str, float], dict[str, float] | None]]:
    """Per group id: (loss per fraction, top-1 drop per fraction or None), one candidate
    per (group, fraction). A fraction that removes no slot costs nothing and is not run."""
    classes = any(is_class_scores(o) for o in runner.ref.outputs)
    out: dict[str, tuple[dict[str, float], dict[str, float] | None]] = {}
    for g in groups:
        loss: dict[str, float] = {}
        drop: dict[str, float] = {}
        for f in fractions:
            removed = removed_slots(g, scores[g.id], f)
            key = fraction_key(f)
            loss[key], d = runner.loss(g, removed) if len(removed) else (0.0, 0.0)
            runner.runs += 1 if len(removed) else 0
            drop[key] = 0.0 if d is None else d
            if progress is not None:
                progress(1)
        out[g.id] = (loss, drop if classes else None)
    return out


def analyze_model(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    profile_feed: Mapping[str, np.ndarray],
    times: Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], KernelTimes],
    *,
    providers: Sequence[str],
    threads: int | None,
    criterion: str = "l1",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    exclude: Sequence[str] = (),
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    stats_for: Callable | None = None,
    seed: int = 0,
    run_batch: int | None = None,
    progress: Callable[[int, int], Callable[[int], None]] | None = None,
) -> Analysis:
    """The analysis of an in-memory model (every node named: ``profile.named_copy``).

    ``times(model, feed)`` measures the kernels (``profile.profile_model``, or a fake clock
    in tests); ``stats_for(targets, view)`` gives a data-aware criterion its statistics;
    ``progress(total, ...)`` returns a step callback for the candidates.
    """
    start = time.perf_counter()
    clock = _Clock()
    view = GraphView(model)
    groups, blocked = prunable_groups(analyze(model, view=view), exclude)
    stats = None
    if criterion in USES_DATA and stats_for is not None:
        stats = stats_for(activation_targets(groups, view), view)
    scores = score_groups(groups, view, criterion, stats, seed=seed)
    costs = CostModel(model, groups, scores, input_shapes=shapes or None,
                      view=None if shapes else view)  # fmt: skip
    macs, params = costs.attributed("macs"), costs.attributed("params")
    macs_total, params_total = float(costs.total("macs")), float(costs.total("params"))
    clock("groups")
    kernels = times(model, profile_feed)
    ms = attributed_latency(kernels, model, groups)
    clock("profile")
    runner = _Runner(model, view, groups, inputs, providers, threads, run_batch)
    clock("reference")
    step = progress(len(groups) * len(fractions)) if progress is not None else None
    losses = quality_losses(runner, groups, scores, fractions, step)
    clock("candidates")
    rows = []
    for g in groups:
        loss, drop = losses[g.id]
        rows.append(
            GroupSensitivity(
                id=g.id, nodes=producer_nodes(g), slots=g.slots, heads=g.heads,
                macs=macs.get(g.id, 0.0), macs_share=_share(macs.get(g.id, 0.0), macs_total),
                params=params.get(g.id, 0.0),
                params_share=_share(params.get(g.id, 0.0), params_total),
                latency_ms=ms.get(g.id, 0.0),
                latency_share=_share(ms.get(g.id, 0.0), kernels.total_ms),
                loss=loss, top1_drop=drop,
            )
        )  # fmt: skip
    return Analysis(
        model="", provider=",".join(providers), threads=int(threads or 0),
        input_shapes={k: list(v) for k, v in (shapes or {}).items()}, groups=rows,
        seconds=time.perf_counter() - start, criterion=criterion,
        fractions=[float(f) for f in fractions], macs_total=macs_total,
        params_total=params_total, latency_total_ms=kernels.total_ms, run_ms=kernels.run_ms,
        blocked=blocked, timings_s=clock.timings, candidates=runner.runs,
    )  # fmt: skip


class _Clock:
    """Seconds per stage since the previous call (the JSON's ``timings_s``)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._last, 3)
        self._last = now


def _share(part: float, total: float) -> float:
    return float(part / total) if total > 0 else 0.0
