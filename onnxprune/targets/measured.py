"""Measured inputs for a search's allocation: ``onnxprune analyze``'s quality losses.

Without measurements the allocation prices a cut by the criterion's score mass removed
(``targets.allocate.score_mass``). With ``--calib`` a search can do better: the analysis
masks each group alone at a few fractions and measures what the outputs lose (``1 -
cosine``, ``targets.sensitivity``), and those curves replace the score mass for the
candidates. The analysis costs one masked run of ``samples`` samples per (group, fraction),
so it is used only when there are at most ``MAX_CANDIDATES`` of them (a small CNN, MLP or
a transformer's FFN groups; not ResNet-50's 111, which took 158 s); it is cached on disk
(``targets.cache``), so a sweep or a second run pays once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from onnxprune.targets import GroupCurve

__all__ = ["MAX_CANDIDATES", "losses_hook", "measured_curve"]

MAX_CANDIDATES = 64
"""Masked candidates (groups x fractions) at most for measured losses in a search."""


def measured_curve(g, scores, loss: Mapping[str, float]) -> GroupCurve:
    """A group's loss at kept counts from its measured loss per fraction removed: 0 kept
    whole, each fraction at the count its cut keeps, extended in a line to one slot kept
    (the analysis stops at its largest fraction; deeper cuts lose at least as much)."""
    from onnxprune.targets.masking import removed_slots

    pts: dict[int, float] = {g.slots: 0.0}
    for key, value in loss.items():
        n = len(removed_slots(g, scores, float(key)))
        if n:
            pts[g.slots - n] = float(value)
    keeps = sorted(pts)
    if keeps[0] > 1 and len(keeps) >= 2:
        (k2, v2), (k1, v1) = (keeps[0], pts[keeps[0]]), (keeps[1], pts[keeps[1]])
        slope = max(0.0, (v2 - v1) / (k1 - k2))
        pts[1] = v2 + slope * (k2 - 1)
    return GroupCurve(g.id, g.slots, list(pts), list(pts.values()))


def losses_hook(model, opts) -> tuple[Callable | None, str]:
    """(``TargetHook``'s ``losses_for`` from a cached analysis, or None) and what the
    allocation prices by, for the report: ``measured`` or ``score mass (why)``."""
    if opts.calib is None:
        return None, "score mass (no --calib)"
    if not isinstance(model, str | os.PathLike):
        return None, "score mass (an in-memory model: the analysis reads a file)"
    from onnxprune.graph import modelfile as io
    from onnxprune.structured.dependency import analyze
    from onnxprune.targets.sensitivity import DEFAULT_FRACTIONS, prunable_groups

    groups, _ = prunable_groups(analyze(io.load_model(model).model), opts.exclude)
    candidates = sum(1 for g in groups if not g.heads) * len(DEFAULT_FRACTIONS)
    if candidates > MAX_CANDIDATES:
        return None, f"score mass ({candidates} candidates to measure, over {MAX_CANDIDATES})"
    from onnxprune.targets.allocate import score_mass
    from onnxprune.targets.analyzer import analyze_path

    analysis = analyze_path(
        model, calib=opts.calib, calib_preprocess=opts.calib_preprocess,
        input_shapes=opts.input_shapes, providers=opts.providers, threads=opts.threads,
        criterion=opts.criterion, exclude=opts.exclude, seed=opts.seed,
    )  # fmt: skip
    rows = {r.id: r for r in analysis.groups}

    def losses_for(free, scores, view) -> list[GroupCurve]:
        out = []
        for g in free:
            row = rows.get(g.id)
            if row is None or row.slots != g.slots or not row.loss:
                out.append(score_mass(g, scores[g.id]))
            else:
                out.append(measured_curve(g, scores[g.id], row.loss))
        return out

    return losses_for, f"measured (analyze: {analysis.candidates} candidates)"


STAIRCASE_BUDGET_S = 60.0
"""Seconds of latency-table measurement a --target-speedup run spends before its search
(``targets.latency``: MobileNetV2 at 1 thread needs about 46 s for its full table; larger
models get coarser steps within the budget)."""


def _validation_data(model, opts):
    """The data validation will time (so the table is measured at its batch and shapes):
    ``--val``, else the held-out part of ``--calib``, else None (random inputs)."""
    if opts.calib is None:
        return None
    from onnxprune.calibration.data import make_inputs, split_holdout
    from onnxprune.options import HOLDOUT_FRACTION, HOLDOUT_MIN

    extra = {"preprocess": opts.calib_preprocess} if opts.calib_preprocess else {}
    if opts.val is not None:
        return make_inputs(model, calib=opts.val, **extra)
    data = make_inputs(model, calib=opts.calib, max_samples=opts.calib_samples, **extra)
    if opts.holdout:
        _, held, _ = split_holdout(data, HOLDOUT_FRACTION, HOLDOUT_MIN)
        return data if held is None else held
    return data


def _first_run(model, inputs) -> dict:
    """What validation times: the first run of its inputs, at the batch the model fixes,
    else the data's run batch, else all of them (``runtime.feeds.chunked``)."""
    from onnxprune.runtime.feeds import chunked

    init = {i.name for i in model.graph.initializer}
    dims = {d.dim[0].dim_value for vi in model.graph.input if vi.name not in init
            for d in [vi.type.tensor_type.shape] if d.dim and d.dim[0].dim_value > 0}  # fmt: skip
    fixed = dims.pop() if len(dims) == 1 else getattr(inputs, "run_batch", None)
    return chunked(dict(inputs), fixed, [])[0]


_TABLES: dict[tuple, object] = {}
"""The last table measured, by file, settings and shapes (the sweep asks once per target)."""


def staircase_hook(model, opts, *, timer=None,
                   budget_s: float | None = STAIRCASE_BUDGET_S) -> tuple[Callable | None, dict]:  # fmt: skip
    """(``TargetHook``'s ``allowed_for`` from a latency table measured on the target, or
    None) and what the report says about it. With the table the allocation picks, per
    group, among the kept counts on its measured staircase (a count that runs no faster
    than a larger one is never chosen), instead of any count."""
    if not isinstance(model, str | os.PathLike):
        return None, {"used": False, "why": "an in-memory model: the table times a file"}
    from onnxprune.graph import modelfile as io
    from onnxprune.runtime.session import resolve_providers
    from onnxprune.runtime.shapes import random_validation_inputs, resolve_shapes
    from onnxprune.targets.latency import TableSpec, build_latency_table, staircase_counts

    loaded = io.load_model(model).model
    inputs = _validation_data(loaded, opts)
    resolved = resolve_shapes(loaded, opts.input_shapes, inputs)
    if inputs is None:
        inputs = random_validation_inputs(loaded, resolved, opts.samples, opts.seed)
    feed = _first_run(loaded, inputs)
    spec = TableSpec(
        os.fspath(model), feed, providers=tuple(resolve_providers(opts.providers)),
        threads=opts.threads or None, estimate="min", **({"timer": timer} if timer else {}),
    )  # fmt: skip
    key = (os.path.realpath(model), os.stat(model).st_mtime_ns, spec.providers, spec.threads,
           tuple(sorted((k, tuple(v.shape)) for k, v in feed.items())), budget_s, timer)  # fmt: skip
    if key not in _TABLES:  # a sweep's targets share one table
        _TABLES.clear()
        _TABLES[key] = build_latency_table(spec, time_budget_s=budget_s)
    table = _TABLES[key]
    counts = staircase_counts(table)

    def allowed_for(free, scores, view) -> dict[str, list[int]]:
        return {g.id: counts[g.id] for g in free if g.id in counts}

    about = {"used": True, "groups": len(counts), "budget_s": budget_s,
             "spent_s": table.settings.get("spent_s"), "shapes": table.settings.get("shapes"),
             "steps": {gid: list(ks) for gid, ks in counts.items()}}  # fmt: skip
    return allowed_for, about
