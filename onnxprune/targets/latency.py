"""A latency table measured on the target: per prunable group, run time against kept slots.

For each group, the model is pruned in *that group only* to a few kept counts (every
multiple of 4 or 8 channels, coarsened to at most ``max_points``, plus the full width), and
the whole pruned model is timed with onnxruntime on the chosen providers, threads and
inputs, interleaved with the original in rotating order (as ``runtime.latency`` does), so
that the machine's slow spells land on every candidate alike. Sessions stop their pool
threads' spinning at the end of each run (``open_session(spin_between_runs=False)``): with
more than one thread, the candidate timed before would otherwise spin on the cores this one
needs (at 2 threads on 2 cores, the fastest runs of two cut MobileNetV2s read 1.7 and 1.6 ms
under the original's, the more cut one the slower, against 0.5 and 1.1 ms with each model
settled alone first; stopped: 0.6 and 1.1 ms). The wake-up this adds to every run cancels
in the differences. A curve stores, per kept
count, the whole model's median, p10, p90 and fastest run (ms) and the difference against
the full width (``delta_ms``: the median of per-round differences, or of the fastest runs
with ``estimate="min"``): the group's price in milliseconds. Per group: one
``make_plan(keep={group: k})`` and ``apply_plan`` per count; which slots go does not change
the time, so no criterion is needed.

Cost on a 2-core machine (tools/bench_latency_table.py): MobileNetV2 at 1 thread, 127
candidates, 50 runs each, 46 s; ResNet-50 needs about 140 s for 8 counts per group at the
minimum 3 runs, so a 120 s budget coarsens it to half and full width. That cost is what a
per-layer (extracted) mode would save; it is not implemented, for the reason below.

Why the whole model and not the group's nodes extracted as a small model: onnxruntime
decides layouts per graph. With AVX-512 it turns convolutions into blocked NCHWc ones and
inserts reorders at the borders of each blocked region; a channel count that is not a
multiple of the block changes where those reorders go and which kernel the *neighbours*
get. An extracted layer has different borders (its own input and output reorders) and
misses those effects, which are exactly the staircase this table is for (MobileNetV2's
16/24/32-channel layers). Timing the whole model costs more runs, so the budget is spent
adaptively: groups measured one after another share what is left of ``time_budget_s``
(time a fast group did not use goes to the next; a group whose candidates cost more than
its share makes the next one use fewer kept counts), and every candidate gets at least
``min_runs`` rounds.

The clock is injectable: ``timer(run, group_id, keep) -> ms`` times one ``run()``; tests
give a fake one that returns a known staircase, so the table building is checked without
timing noise (``wall_clock`` is the real one). Groups are independent jobs, so a table can
be built through any ``targets.executor`` (local processes, a Ray cluster).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from onnxprune.errors import UsageError
from onnxprune.graph.view import GraphView
from onnxprune.runtime.session import open_session, run_session, session_feeds
from onnxprune.structured.dependency import Group, analyze
from onnxprune.structured.plan import DEFAULT_ROUND_TO, make_plan, rounded_counts
from onnxprune.structured.rewrite import apply_plan
from onnxprune.targets import GroupCurve

__all__ = [
    "GroupJob",
    "LatencyCurve",
    "LatencyTable",
    "TableSpec",
    "build_latency_table",
    "keep_counts",
    "measure_group",
    "resolved",
    "staircase",
    "staircase_counts",
    "thread_clock",
    "wall_clock",
]

Timer = Callable[[Callable[[], object], str, int], float]
"""``timer(run, group_id, keep)``: call ``run()`` once and return how long it took (ms);
``keep`` is the candidate's kept slots (the group's full slots for the original)."""


def wall_clock(run: Callable[[], object], group_id: str, keep: int) -> float:
    """The real clock: ``time.perf_counter`` around one run, in ms."""
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1000.0


def thread_clock(run: Callable[[], object], group_id: str, keep: int) -> float:
    """The calling thread's CPU time around one run, in ms: at one intra-op thread on the
    CPU, the run's own work, whatever else the machine runs (``runtime.latency.clock_for``)."""
    t0 = time.thread_time()
    run()
    return (time.thread_time() - t0) * 1000.0


@dataclass
class LatencyCurve:
    """One group's measured staircase. ``keep`` ascends and ends at ``slots`` (the original);
    ``value`` is the whole model's median ms at each count (the ``GroupCurve`` fields),
    ``delta_ms`` the difference against the full width by ``TableSpec.estimate``, ``best``
    the fastest run at each count."""

    group_id: str
    slots: int
    width: int
    keep: list[int]
    value: list[float]
    p10: list[float]
    p90: list[float]
    delta_ms: list[float]
    runs: int
    best: list[float] = field(default_factory=list)

    def index_at(self, keep: int) -> int:
        """The first measured count at or above ``keep`` (the staircase step it lies on)."""
        for i, k in enumerate(self.keep):
            if k >= keep:
                return i
        return len(self.keep) - 1

    def price_ms(self, keep: int) -> float:
        """Milliseconds this group saves (negative) or costs at ``keep`` slots, against its
        full width; unmeasured counts take the next measured step up (conservative)."""
        return self.delta_ms[self.index_at(keep)]

    def price_curve(self) -> GroupCurve:
        """The price (``delta_ms``) as the package's plain table, for the solver."""
        return GroupCurve(self.group_id, self.slots, list(self.keep), list(self.delta_ms))


@dataclass
class LatencyTable:
    """Curves per group id, plus how they were measured (providers, threads, input shapes,
    budget and time spent) so a cache can tell whether it still applies."""

    curves: dict[str, LatencyCurve]
    baseline_ms: float
    settings: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "curves": {k: asdict(c) for k, c in self.curves.items()},
            "baseline_ms": self.baseline_ms,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> LatencyTable:
        curves = {k: LatencyCurve(**c) for k, c in d["curves"].items()}
        return cls(curves, float(d["baseline_ms"]), dict(d.get("settings", {})))


def staircase(table: LatencyTable, group: str, keep: int, *, slack_ms: float = 0.0) -> int:
    """The kept count to use instead of ``keep``: the largest measured count at or above
    ``keep`` whose time is not above that of ``keep`` (+ ``slack_ms``).

    ``keep`` itself costs what the first measured step at or above it costs; keeping more
    channels for free is never worse, so 20 wanted channels become 24 when 24 run as fast
    (and 16 stays 16 when 24 is slower). A solver that compares steps by ``price_ms``
    prefers 16 over 17..31 where 16 runs faster.
    """
    curve = table.curves.get(group)
    if curve is None:
        raise UsageError(f"the latency table has no group {group!r}")
    if keep < 1 or keep > curve.slots:
        raise UsageError(f"group {group} keeps 1..{curve.slots} slots, not {keep}")
    first = curve.index_at(keep)
    limit = curve.delta_ms[first] + slack_ms
    best = first
    for i in range(first, len(curve.keep)):
        if curve.delta_ms[i] <= limit:
            best = i
    return curve.keep[best]


def resolved(curve: LatencyCurve) -> bool:
    """Whether the group's smallest measured count saves more than the timing noise (half
    the p10-p90 spread at full width, and at least 0.5% of the model's time). A group whose
    cut alone is lost in the noise says nothing about its steps: MobileNetV2's groups each
    save too little to see alone, so forcing their counts onto the measured 'steps' kept 12
    to 14 of 25 whole and floored the search near 1.3x, although the savings add up."""
    if len(curve.keep) < 2:
        return False
    noise = max(0.5 * (curve.p90[-1] - curve.p10[-1]), 0.005 * curve.value[-1])
    return -min(curve.delta_ms[:-1]) > noise


def staircase_counts(table: LatencyTable, *, slack_ms: float = 0.0) -> dict[str, list[int]]:
    """Per group, the measured counts worth keeping: those ``staircase`` leaves as they are
    (no larger measured count runs as fast). This is ``targets.allocate.choose_keep``'s
    ``allowed``: the solver then picks among steps, never between them. A group whose
    saving the table could not resolve (``resolved``) gets the default rounding's counts
    instead (kept channels multiples of ``DEFAULT_ROUND_TO``, measured fastest without a
    table): left free, the solver gave MobileNetV2's 16- to 32-channel groups 2 to 8
    channels, odd counts that run slowly (1.47x at 0.426x MACs; rounded: 1.49x at 0.541x)."""
    out = {}
    for gid, c in table.curves.items():
        if resolved(c):
            out[gid] = [k for k in c.keep if staircase(table, gid, k, slack_ms=slack_ms) == k]
        else:
            out[gid] = rounded_counts(c.slots, c.width, DEFAULT_ROUND_TO)
    return out


def keep_counts(group: Group, *, step: int | None = None, max_points: int = 8) -> list[int]:
    """Kept slot counts to measure: multiples of ``step`` channels (4 up to 64 channels,
    else 8: onnxruntime's blocks), the step doubled until at most ``max_points`` counts
    remain, the full width included. Head groups start at one head."""
    channels = group.slots * group.width
    if step is None:
        step = 4 if channels <= 64 else 8
    per = 1 if group.heads else max(1, step // math.gcd(step, group.width))
    while len(range(per, group.slots, per)) + 1 > max_points > 1:
        per *= 2  # coarser, but still on multiples of the block: where the steps are
    counts = list(range(per, group.slots, per))
    return [*counts, group.slots]


@dataclass(frozen=True)
class TableSpec:
    """What every group's job shares: the model file, inputs and how to run and time it."""

    model_path: str
    inputs: Mapping[str, np.ndarray]
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int | None = None
    warmup: int = 2
    min_runs: int = 3
    max_runs: int = 50
    timer: Timer = wall_clock
    estimate: str = "paired"
    """How a count's price is estimated: ``paired``, the median of per-round differences
    against the full width (right on a quiet machine: drift cancels round by round), or
    ``min``, the difference of the fastest runs (right on a shared, loaded machine, where
    other work only ever adds time and a few runs' median still carries it)."""


@dataclass(frozen=True)
class GroupJob:
    """One group to measure at ``keeps`` within ``budget_s`` seconds."""

    spec: TableSpec
    group_id: str
    keeps: tuple[int, ...]
    budget_s: float | None


@functools.lru_cache(maxsize=2)
def _analyzed(path: str, stamp: float) -> tuple[onnx.ModelProto, GraphView, dict[str, Group]]:
    """The model, its view and groups, once per process (each job of a table needs them)."""
    model = onnx.load(path)
    view = GraphView(model)
    return model, view, {g.id: g for g in analyze(model, view=view)}


def _model_of(spec: TableSpec) -> tuple[onnx.ModelProto, GraphView, dict[str, Group]]:
    return _analyzed(spec.model_path, os.stat(spec.model_path).st_mtime)


def _candidate(model, view, groups: dict[str, Group], gid: str, keep: int) -> onnx.ModelProto:
    """The model with group ``gid`` cut to its first ``keep`` slots (which slots go does not
    change the time), everything else untouched."""
    prunable = [g for g in groups.values() if g.blocked_reason is None]
    scores = {g.id: np.zeros(g.slots) for g in prunable}
    plan = make_plan(prunable, scores, ratio=0.0, round_to=1, keep={gid: keep})
    return apply_plan(model, plan, view=view, check=False)


def measure_group(job: GroupJob) -> LatencyCurve:
    """Time the model pruned in one group at each of ``job.keeps`` against the original,
    interleaved; the picklable job a ``targets.executor`` runs."""
    spec = job.spec
    start = time.perf_counter()  # building and opening candidates count against the budget
    model, view, groups = _model_of(spec)
    group = groups[job.group_id]
    keeps = sorted(set(job.keeps) | {group.slots})
    role = f"model pruned in group {job.group_id}"
    sessions = []
    for k in keeps:
        source = (
            spec.model_path
            if k == group.slots
            else _candidate(model, view, groups, job.group_id, k)
        )
        sessions.append(open_session(source, spec.providers, role=role, threads=spec.threads,
                                     spin_between_runs=False))  # fmt: skip
    feeds = [session_feeds(s, spec.inputs, role) for s in sessions]
    runs = [
        functools.partial(run_session, s, f, role) for s, f in zip(sessions, feeds, strict=True)
    ]
    for run in runs:
        for _ in range(spec.warmup):
            run()
    times = _interleaved(runs, keeps, job, start)
    full = np.asarray(times[-1])
    stats = [np.percentile(t, [10, 50, 90]) for t in times]
    return LatencyCurve(
        group_id=job.group_id,
        slots=group.slots,
        width=group.width,
        keep=keeps,
        value=[float(s[1]) for s in stats],
        p10=[float(s[0]) for s in stats],
        p90=[float(s[2]) for s in stats],
        delta_ms=[_delta(np.asarray(t), full, spec.estimate) for t in times],
        runs=len(full),
        best=[float(np.min(t)) for t in times],
    )


def _delta(times: np.ndarray, full: np.ndarray, estimate: str) -> float:
    if estimate == "min":
        return float(times.min() - full.min())
    return float(np.median(times - full))


def _interleaved(runs: list, keeps: list[int], job: GroupJob, start: float) -> list[list[float]]:
    """Rounds of every candidate once, first one rotating, until the budget is spent (never
    under ``min_runs`` rounds, never over ``max_runs``)."""
    spec = job.spec
    n = len(runs)
    times: list[list[float]] = [[] for _ in runs]
    for r in range(spec.max_runs):
        spent = time.perf_counter() - start
        if r >= spec.min_runs and job.budget_s is not None and spent > job.budget_s:
            break
        for j in range(n):
            i = (r + j) % n
            times[i].append(float(spec.timer(runs[i], job.group_id, keeps[i])))
    return times


def build_latency_table(
    spec: TableSpec,
    *,
    groups: Sequence[str] | None = None,
    step: int | None = None,
    max_points: int = 8,
    time_budget_s: float | None = 120.0,
    executor=None,
) -> LatencyTable:
    """Measure every prunable group (or those in ``groups``) of ``spec.model_path``.

    With one worker (no ``executor``, or ``jobs=1``) groups run one after another and
    share the budget adaptively (``_one_by_one``); with more workers each gets an equal
    share of ``time_budget_s x workers`` at ``max_points``. Building candidates and opening
    sessions count against the budget; ``min_runs`` rounds are always measured, so a tiny
    budget gives a rough table, not a missing one.
    """
    if time_budget_s is not None and time_budget_s <= 0:
        raise UsageError(f"the latency table's time budget must be positive, got {time_budget_s}")
    if spec.estimate not in ("paired", "min"):
        raise UsageError(f"latency estimate must be 'paired' or 'min', got {spec.estimate!r}")
    if spec.min_runs < 1 or spec.max_runs < spec.min_runs:
        raise UsageError("latency runs: need 1 <= min_runs <= max_runs")
    if max_points < 2:
        raise UsageError(f"a latency curve needs at least 2 points, got {max_points}")
    _, _, found = _model_of(spec)
    chosen = _chosen(found, groups)
    start = time.perf_counter()
    workers = getattr(executor, "workers", 1) if executor is not None else 1
    if workers <= 1:
        curves = _one_by_one(spec, chosen, step, max_points, time_budget_s, executor)
    else:
        share = None if time_budget_s is None else time_budget_s * workers / max(1, len(chosen))
        jobs = [
            GroupJob(spec, g.id, tuple(keep_counts(g, step=step, max_points=max_points)), share)
            for g in chosen
        ]
        curves = executor.map(measure_group, jobs)
    full = [c.value[-1] for c in curves]
    settings = {
        "model": spec.model_path,
        "providers": list(spec.providers),
        "threads": spec.threads,
        "shapes": {k: list(np.shape(v)) for k, v in spec.inputs.items()},
        "time_budget_s": time_budget_s,
        "spent_s": time.perf_counter() - start,
        "workers": workers,
        "unmeasured": [g.id for g in chosen if g.id not in {c.group_id for c in curves}],
    }
    return LatencyTable(
        {c.group_id: c for c in curves}, float(np.median(full)) if full else 0.0, settings
    )


def _one_by_one(
    spec: TableSpec,
    chosen: list[Group],
    step: int | None,
    max_points: int,
    budget: float | None,
    executor,
) -> list[LatencyCurve]:
    """Groups one after another: each gets what is left of ``budget`` over the groups left
    (a fast group's unused time goes to the next), and when the last group's candidates
    cost more each than the share allows, the next group is measured at fewer kept counts
    (never under 2: one cut and the full width) rather than overrunning the budget. Once
    the budget is spent the groups left are not measured (their counts stay free): on a
    loaded machine the floor of runs per candidate alone overran a 60 s budget tenfold."""
    curves: list[LatencyCurve] = []
    start = time.perf_counter()
    per_candidate = 0.0  # seconds the last group spent per candidate (build, open, runs)
    for i, g in enumerate(chosen):
        share, points = None, max_points
        if budget is not None and i > 0 and time.perf_counter() - start >= budget:
            break
        if budget is not None:
            share = max(0.0, budget - (time.perf_counter() - start)) / (len(chosen) - i)
            if per_candidate > 0:
                points = max(2, min(max_points, int(share / per_candidate)))
        job = GroupJob(spec, g.id, tuple(keep_counts(g, step=step, max_points=points)), share)
        t0 = time.perf_counter()
        curves.append(executor.map(measure_group, [job])[0] if executor else measure_group(job))
        per_candidate = (time.perf_counter() - t0) / len(job.keeps)
    return curves


def _chosen(found: dict[str, Group], groups: Sequence[str] | None) -> list[Group]:
    prunable = [g for g in found.values() if g.blocked_reason is None]
    if groups is None:
        return prunable
    by_id = {g.id: g for g in prunable}
    missing = [g for g in groups if g not in by_id]
    if missing:
        raise UsageError(f"the model has no prunable group {', '.join(missing)}")
    return [by_id[g] for g in groups]
