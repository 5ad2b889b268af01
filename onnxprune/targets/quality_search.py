"""The quality search: ``--max-drop P`` / ``--min-cosine X`` given alone means the fewest
MACs that keep that quality (``targets.search`` runs it; its docstring says how).

Each family (``ALLOCATIONS``) runs the schedule of ``targets.scan``; each candidate is a real
run of the caller's ``prune_with``, pruned, recovered and validated under the gates.
"""

from __future__ import annotations

from dataclasses import replace

from onnxprune.errors import GateError, OnnxPruneError, UsageError
from onnxprune.targets.candidates import (
    Trial,
    candidate_opts,
    finish_report,
    measured_speedup,
    ratio_of,
    trial_of,
    uniform_opts,
)
from onnxprune.targets.scan import MAX_CANDIDATES, Outcome, scan_fraction

__all__ = ["ALLOCATIONS", "CANDIDATE_RUNS", "search_quality"]


ALLOCATIONS = ("targeted", "uniform", "rounded")
"""The quality search's families: ``--target-macs f`` (per group, cheapest first),
``--structured 1-f`` with exact counts (``--round-to`` when given), and ``--structured 1-f``
with the default rounding (kept channels multiples of 16, as a plain run rounds; searched
only without ``--round-to``). All are searched because none always wins after recovery: on
the digits CNN with ``--calib`` and the ``auto`` criterion the targeted cut kept 99.17% at
0.135x MACs, the exact-count uniform one needed 0.319x, and the default rounding's
``--structured 0.75`` kept 99.17% at 0.107x (README "Targets"); the run keeps whichever
passing candidate has the fewest MACs."""


def families(opts) -> tuple[str, ...]:
    """The families this run searches: the rounded one only where it differs from the
    exact-count one (no ``--round-to``)."""
    return ALLOCATIONS if opts.round_to is None else ALLOCATIONS[:2]


CANDIDATE_RUNS = 5
"""Latency runs per model for a quality search's candidate (``--runs`` at most): the gates
decide, the speed-up is only listed; the timing was 3/4 of a digits CNN candidate's time at
30 runs. The final run times ``--runs``."""


def _family_opts(opts, allocation: str, fraction: float, final: bool = False):
    """A quality candidate's options (``final``: the chosen one, run with everything)."""
    if not final:
        opts = replace(opts, runs=min(opts.runs, CANDIDATE_RUNS))
    if allocation == "targeted":
        return candidate_opts(opts, fraction, final=final)
    rounding = opts.round_to if allocation == "rounded" else opts.round_to or 1
    return uniform_opts(opts, fraction, rounding, final=final)


def rounded_counts_for(model, opts):
    """``fraction -> the kept slot count of every channel group`` under the default
    rounding, as ``structured.plan.make_plan`` computes it for a local ``--structured``
    (``None`` when the model cannot be analyzed here): the rounded family runs a fraction
    only when these differ from every fraction it ran, since most fractions round onto a
    model it already has."""
    from onnxprune.structured.dependency import analyze
    from onnxprune.structured.plan import DEFAULT_ROUND_TO, kept_count, local_removals
    from onnxprune.targets.measured import loaded_model
    from onnxprune.targets.sensitivity import prunable_groups

    try:
        groups, _ = prunable_groups(analyze(loaded_model(model)), opts.exclude)
    except OnnxPruneError:
        return None
    channels = [g for g in groups if not g.heads]

    def counts(fraction: float) -> tuple[int, ...]:
        ratio = round(1.0 - fraction, 12)
        return tuple(kept_count(g, local_removals(g, ratio), DEFAULT_ROUND_TO) for g in channels)

    return counts


def _family(item) -> tuple[list[Trial], dict, list[OnnxPruneError]]:
    """One family's schedule (``--target-macs f`` or ``--structured 1-f``, ``targets.scan``):
    its candidates, the report of its least-pruned candidate a gate failed (what a search
    that finds nothing reports), and the errors of those that could not run. A job for
    ``targets.executor`` (module level, plain data): ``item`` is (``prune_with``, the model,
    the options, the family), and in this process a progress callback (candidate, trial)."""
    prune_with, model, opts, allocation, *rest = item
    tick = rest[0] if rest else None
    if allocation == "targeted":  # priced once for the family (in a worker: there)
        from onnxprune.targets.measured import with_measured_losses

        opts = with_measured_losses(model, opts)
    trials: list[Trial] = []
    failed: dict[tuple[str, float], object] = {}
    errors: list[OnnxPruneError] = []

    counts = rounded_counts_for(model, opts) if allocation == "rounded" else None
    ran: dict[tuple[int, ...], Outcome] = {}

    def run(fraction: float, phase: str) -> Outcome:
        key = counts(fraction) if counts is not None else None
        if key is not None and key in ran:  # the same model as a fraction already run
            return ran[key]
        trial = _candidate(prune_with, model, opts, allocation, fraction, failed, errors)
        trial.figures["phase"] = phase
        trials.append(trial)
        if tick is not None:
            tick(trial)
        outcome = Outcome(bool(trial.passed), final=trial.at_floor)
        if key is not None:
            ran[key] = outcome
        return outcome

    every = distinct_fractions(counts) if counts is not None else None
    if every is not None:  # few distinct models: run them all, not the scan
        for fraction in every:
            run(fraction, "all")
    else:
        scan_fraction(run)
    return trials, failed, errors


def distinct_fractions(counts) -> list[float] | None:
    """The rounded family's distinct models on a grid of fractions (1% steps), most kept
    first, one fraction each (the largest that gives it), the whole model left out; None
    when there are more than ``MAX_CANDIDATES``: then the scan runs. A gate is not monotone
    in the fraction, and the default rounding's few models sit far apart (the digits CNN's
    rounded 0.5 fails max-drop 1 where 0.25 passes), so with few of them all are run."""
    whole = counts(1.0)
    seen: dict[tuple[int, ...], float] = {}
    for step in range(99, 0, -1):
        f = step / 100
        key = counts(f)
        if key != whole and key not in seen:
            seen[key] = f
    return list(seen.values()) if len(seen) <= MAX_CANDIDATES else None


def _candidate(prune_with, model, opts, allocation: str, fraction: float, failed: dict,
               errors: list) -> Trial:  # fmt: skip
    """One candidate of a family, run, validated and gated. A failed one's report replaces
    the family's in ``failed`` when it kept more MACs; an error is appended to ``errors``."""
    ok, why = True, None
    try:
        report = prune_with(model, _family_opts(opts, allocation, fraction)).report
    except GateError as exc:
        if exc.report is None:
            raise
        report, ok, why = exc.report, False, str(exc)
    except UsageError:
        raise
    except OnnxPruneError as exc:  # e.g. a cut too small to remove a slot anywhere
        errors.append(exc)
        return Trial(fraction, passed=False,
                     figures={"allocation": allocation, "failed": str(exc)})  # fmt: skip
    trial = trial_of(fraction, report)
    trial.passed = ok
    trial.figures["allocation"] = allocation
    if why:
        trial.figures["failed"] = why
        kept = [k for k in failed if k[0] == allocation]
        if not kept or ratio_of(report.macs_after, report.macs_before) > failed[kept[0]][0]:
            for k in kept:
                del failed[k]
            failed[allocation, fraction] = (trial.macs, report)
    return trial


def search_quality(model, opts, prune_with, bar, executor=None):
    """The fewest MACs passing the gates: (the chosen candidate's options, the summary).
    The families are independent jobs: with ``executor`` (``--jobs``, ``--ray``) they
    run at once, each pricing its own cuts; the plan is the same either way."""
    if executor is not None and executor.workers > 1:
        sent = replace(opts, hooks=None)  # closures stay here: a worker measures its own
        done = executor.map(_family, [(prune_with, model, sent, a) for a in families(opts)])
        for t, _, _ in done:
            bar.update(len(t))
    else:

        def tick(trial: Trial) -> None:
            bar.set_postfix_str(f"{trial.figures['allocation']} {trial.fraction:.3g}: MACs "
                                f"{trial.macs:.3g}, {'passed' if trial.passed else 'failed'}",
                                refresh=False)  # fmt: skip
            bar.update(1)

        done = [_family((prune_with, model, opts, a, tick)) for a in families(opts)]
    trials: list[Trial] = []
    failed: dict[tuple[str, float], object] = {}
    errors: list[OnnxPruneError] = []
    for t, f, e in done:
        trials.extend(t)
        failed.update({k: report for k, (_, report) in f.items()})
        errors.extend(e)
    passing = [t for t in trials if t.passed and t.macs < 1.0]  # 1.0: nothing was cut
    best = min(passing, key=lambda t: t.macs) if passing else None
    summary = {"metric": "quality", "gates": _gates(opts),
               "fraction": None if best is None else best.fraction,
               "allocation": None if best is None else best.figures["allocation"],
               "iterations": [t.to_dict() for t in trials]}  # fmt: skip
    if best is None:
        if len(errors) == len(trials):
            raise errors[0]
        closest = max((t for t in trials if (t.figures["allocation"], t.fraction) in failed),
                      key=lambda t: t.macs)  # fmt: skip
        raise GateError(
            f"no MAC fraction tried keeps that quality (tried "
            f"{', '.join(f'{t.macs:.3g}' for t in trials)} of the MACs); the least pruned, "
            f"at {closest.macs:.3g}: {closest.figures.get('failed', 'failed')}",
            _finished(failed[closest.figures["allocation"], closest.fraction], summary),
        )
    return _family_opts(opts, best.figures["allocation"], best.fraction, final=True), summary


def _finished(report, summary: dict):
    """A failed candidate's report with the search in it (what a GateError carries)."""
    finish_report(report, summary, 0.0, measured_speedup)
    return report


def _gates(opts) -> dict:
    return {k: v for k, v in (("min_cosine", opts.min_cosine), ("max_drop", opts.max_drop),
                              ("max_rel_diff", opts.max_rel_diff)) if v is not None}  # fmt: skip
