"""Searches over one fraction: ``--target-speedup S``, and a quality gate given alone.

Both search one number and let the allocation (``targets.allocate``) decide where each
candidate cuts: for a speed-up, the fraction of the original's *profiled time* kept (the
``time`` metric, priced by ``targets.time_model``; ``--price-by macs``: of its MACs); for a
gate, the fraction of its MACs (``--target-macs``). Each candidate is a real run of
``prune_with`` (the caller's, passed in: this module never imports the API), so a candidate
is pruned, measured and validated exactly as a plain run would be.

* ``--target-speedup S``: the speed-up is *measured* (onnxruntime on ``--providers`` and
  ``--threads``, at the validation's batch and shapes, median of interleaved runs: the
  figure validation reports), never predicted from MACs, which are a poor proxy for time.
  The first guess keeps 1/S of the priced time; each next one comes from a secant on log
  speed-up against log fraction through the bracketing candidates (the original counts as
  fraction 1, speed-up 1), with bisection when the secant leaves the bracket. Candidates
  skip recovery and gates (neither changes the shapes, so neither changes the time). The
  search stops within ``AIM`` (half ``TOLERANCE``) of S or after ``SPEEDUP_ITERATIONS``
  measured candidates, keeps the candidate that reached S with the largest fraction (or
  the fastest, and says it missed),
  and runs it once more with recovery, gates and the output: its measured speed-up is the
  one reported, unless it differs from the candidate's by more than ``TOLERANCE``: then the
  allocation is timed ``RETIMES`` more times and the median of its measurements is reported
  (``_confirm``).
* ``--max-drop P`` / ``--min-cosine X`` alone: the fewest MACs that keep that quality. Each
  family (``ALLOCATIONS``) runs the schedule of ``targets.scan`` (a coarse descent, then the
  zone below the fewest-MACs pass, then a refinement), not a bisection: a gate scored on a
  finite validation set is not monotone in the fraction near its threshold. Each candidate
  is pruned, recovered (with ``--calib``, the allocation priced once for all of them) and
  validated on held-out data under the gates (its latency timed ``CANDIDATE_RUNS`` times:
  only the gates decide); the passing candidate with the fewest MACs is run again, with
  ``--runs``, to write the output.

The measured speed-up is read by ``measure`` (a report -> speed-up function), which tests
replace with a synthetic latency model so the loop is tested without timing noise.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from onnxprune.errors import GateError, OnnxPruneError, UsageError
from onnxprune.targets.scan import Outcome, scan_fraction

__all__ = ["TOLERANCE", "Trial", "next_fraction", "prune_searched", "search_speedup"]

TOLERANCE = 0.05
"""A speed-up within 5% of the target is met."""
AIM = TOLERANCE / 2
"""A candidate within 2.5% of the target ends the search: one that ended it at the edge of
``TOLERANCE`` (MobileNetV2 at 1 thread, 1.915x for 2x) was timed again at the end just
outside it (1.888x)."""
SPEEDUP_ITERATIONS = 6
"""Measured candidates at most for --target-speedup."""
RETIMES = 2
"""Extra timings of the chosen allocation when the final measurement and the search's
disagree by more than ``TOLERANCE`` (``_confirm``)."""
FLOOR = 0.01
"""The smallest MAC fraction a search asks for."""


@dataclass
class Trial:
    """One candidate of a search: the fraction asked and what its run measured."""

    fraction: float
    """MAC fraction asked (``--target-macs``); in the quality search's uniform family, the
    fraction of channels kept (``--structured 1 - fraction``)."""
    macs: float = 1.0
    """MACs after / before reached."""
    params: float = 1.0
    speedup: float | None = None
    significant: bool | None = None
    passed: bool | None = None
    """Quality search: the candidate passed every gate."""
    at_floor: bool = False
    """The allocation could not reach the fraction (every group at its floor)."""
    figures: dict = field(default_factory=dict)
    """cosine, top-1 agreement, accuracy before/after, and why it failed."""

    def to_dict(self) -> dict:
        out = {"fraction": self.fraction, "macs": self.macs, "params": self.params,
               "speedup": self.speedup, "speedup_significant": self.significant}  # fmt: skip
        if self.passed is not None:
            out["passed"] = self.passed
        return {**out, "at_floor": self.at_floor, **self.figures}


def next_fraction(trials: Sequence[Trial], target: float, floor: float = FLOOR) -> float:
    """The next MAC fraction to try for speed-up ``target``, from the candidates so far.

    Speed-up ~ fraction^-a locally, so the secant runs on logs: between the slowest
    candidate still too fast and the fastest still too slow (the original, fraction 1 and
    speed-up 1, is always one), bisected (geometric mean) when the secant lands within a
    tenth of the bracket's ends; beyond the fastest, extrapolated through the last two
    points, at most 4x further down per step."""
    pts = [(1.0, 1.0)] + [(t.fraction, t.speedup) for t in trials if t.speedup]
    slow = [p for p in pts if p[1] < target]
    fast = [p for p in pts if p[1] >= target]
    hi = min(slow, key=lambda p: p[0]) if slow else (1.0, 1.0)
    if fast:
        lo = max(fast, key=lambda p: p[0])
        if lo[0] >= hi[0]:  # noise: a faster candidate kept more; split the difference
            return math.sqrt(lo[0] * hi[0]) if lo[0] != hi[0] else lo[0]
        guess = _secant(hi, lo, target)
        a, b = math.log(lo[0]), math.log(hi[0])
        if guess is None or not a + 0.1 * (b - a) < math.log(guess) < b - 0.1 * (b - a):
            return math.sqrt(lo[0] * hi[0])
        return guess
    others = sorted((p for p in slow if p[0] > hi[0]), key=lambda p: p[0])
    prev = others[0] if others else (1.0, 1.0)
    guess = _secant(prev, hi, target) if prev != hi else None
    if guess is None or guess >= hi[0]:
        guess = hi[0] / 2
    return max(floor, hi[0] / 4, min(guess, hi[0] * 0.98))


def _secant(p, q, target: float) -> float | None:
    """The fraction where the log-log line through p and q reaches ``target``."""
    (f1, s1), (f2, s2) = p, q
    if f1 == f2 or s1 <= 0 or s2 <= 0 or abs(math.log(s2 / s1)) < 1e-9:
        return None
    slope = math.log(f2 / f1) / math.log(s2 / s1)
    if slope >= 0:  # more pruning measured slower: no direction to follow
        return None
    return f1 * math.exp(slope * math.log(target / s1))


def search_speedup(
    evaluate: Callable[[float], Trial],
    target: float,
    *,
    iterations: int = SPEEDUP_ITERATIONS,
    tolerance: float = TOLERANCE,
    floor: float = FLOOR,
) -> tuple[Trial, list[Trial]]:
    """Measured candidates until one is within half ``tolerance`` of ``target`` (``AIM``; or
    the budget is spent, the allocation cannot cut further, or a new fraction gives a model
    already measured): the chosen candidate and all of them.

    The chosen one reached at least (1 - tolerance) x target with the most MACs kept;
    when none did, the fastest."""
    trials: list[Trial] = []
    fraction = max(floor, 1.0 / target)
    for _ in range(iterations):
        trial = evaluate(fraction)
        trials.append(trial)
        s = trial.speedup or 0.0
        if abs(s / target - 1.0) <= tolerance / 2:  # AIM: not at the edge of the tolerance
            break
        if s < target and (trial.at_floor or fraction <= floor):
            break  # nothing left to cut: unreachable
        if any(abs(t.macs - trial.macs) < 1e-9 for t in trials[:-1]):
            break  # the same allocation again (a step of the staircase): nothing in between
        fraction = next_fraction(trials, target, floor)
        if any(abs(fraction / t.fraction - 1.0) < 0.01 for t in trials):
            break  # the search has closed in on a fraction it measured
    return choose(trials, target, tolerance), trials


def choose(trials: Sequence[Trial], target: float, tolerance: float = TOLERANCE) -> Trial:
    """The candidate that reached the target with the most MACs kept, else the fastest. One
    that reached it with room to spare (within ``AIM``'s half of the tolerance below it, or
    above) goes before one at the edge, which a final timing can read just outside."""
    for slack in (tolerance / 2, tolerance):
        reached = [t for t in trials if (t.speedup or 0.0) >= (1.0 - slack) * target]
        if reached:
            return max(reached, key=lambda t: t.fraction)
    return max(trials, key=lambda t: t.speedup or 0.0)


# --------------------------------------------------------------------------------------------
# the searches on real runs
# --------------------------------------------------------------------------------------------


def measured_speedup(report) -> float | None:
    """The speed-up validation measured (median before / median after, interleaved)."""
    return None if report.validation is None else report.validation.speedup


def trial_of(fraction: float, report) -> Trial:
    """A candidate's figures, from its run's report."""
    v, t = report.validation, (report.structured.target or {}) if report.structured else {}
    figures = {}
    if v is not None:
        figures = {"cosine": v.cosine, "top1_agreement": v.top1_agreement}
        if v.accuracy_before is not None:
            figures.update(accuracy_before=v.accuracy_before, accuracy_after=v.accuracy_after)
    return Trial(
        fraction, macs=_ratio(report.macs_after, report.macs_before),
        params=_ratio(report.params_after, report.params_before),
        speedup=None if v is None else v.speedup,
        significant=None if v is None else v.speedup_significant,
        at_floor=not t.get("met", True), figures=figures,
    )  # fmt: skip


def _ratio(after: float, before: float) -> float:
    return after / before if before else 1.0


def prune_searched(model, opts, prune_with, *, output=None, progress: bool = False,
                   measure: Callable | None = None):  # fmt: skip
    """``prune_with`` for a search (``opts.search``): the candidates, then the chosen
    fraction run once more with everything asked (recovery, gates, the output); its report
    carries the search in ``structured.target`` and its time in ``timings_s["search"]``."""
    from onnxprune.progress import progress_bar
    from onnxprune.targets.measured import search_inputs, staircase_hook, with_measured_losses

    measure = measure or measured_speedup
    start = time.perf_counter()
    opts = with_measured_losses(model, opts)
    hooks = dict(opts.hooks or {})
    priced = hooks.get("priced", "measured" if "losses_for" in hooks else "score mass")
    stairs = {"used": False, "why": "--no-staircase"}
    total = SPEEDUP_ITERATIONS if opts.search == "speedup" else None  # quality: as it goes
    unit = "candidate" if total else " candidates"  # no total: "search: 7 candidates"
    with _executor(opts) as executor, progress_bar(
        total=total, desc="search", unit=unit, enabled=progress
    ) as bar:  # fmt: skip
        inputs = functools.cache(lambda: search_inputs(model, opts))  # read once, if at all
        if opts.uses_staircase and "allowed_for" not in hooks:
            allowed_for, stairs = staircase_hook(model, opts, executor=executor, inputs=inputs)
            if allowed_for is not None:
                hooks["allowed_for"] = allowed_for
        if opts.search == "speedup":
            priced_by = _time_hooks(model, opts, hooks, inputs)
        opts = replace(opts, hooks=hooks or None)
        try:
            if opts.search == "speedup":
                final_opts, summary = _speedup(model, opts, prune_with, measure, bar)
            else:
                final_opts, summary = _quality(model, opts, prune_with, bar, executor)
        except GateError as exc:  # nothing passed: the report says what priced the search
            target = getattr(getattr(exc.report, "structured", None), "target", None)
            if isinstance(target, dict):
                target["losses"] = priced
            raise
    searched = time.perf_counter() - start
    summary["losses"] = getattr(hooks.get("losses_for"), "priced", None) or priced
    if opts.search == "speedup":
        summary["staircase"] = stairs
        summary["priced_by"] = priced_by
    try:
        result = prune_with(model, final_opts, output=output, progress=progress)
    except GateError as exc:
        if exc.report is not None:
            _finish(exc.report, summary, searched, measure)
        raise
    _finish(result.report, summary, searched, measure)
    if opts.search == "speedup":
        _confirm(model, opts, prune_with, measure, result.report)
    return result


def _time_hooks(model, opts, hooks: dict, inputs) -> dict:
    """What prices the speed-up search's cuts (the report's ``priced_by``), the profiled
    node times added to ``hooks`` for ``--price-by time`` unless the caller gave them."""
    from onnxprune.targets.measured import time_prices

    given = hooks.get("node_ms")
    if given is not None:
        total = sum(v if isinstance(v, int | float) else sum(v) for v in given.values())
        return {"by": "time", "nodes": len(given), "given": True,
                "profiled_ms": total + float(hooks.get("overhead_ms", 0.0))}  # fmt: skip
    if opts.price_by != "time":
        return {"by": "macs", "why": "--price-by macs"}
    prices, priced_by = time_prices(model, opts, inputs=inputs)
    hooks.update(prices)
    return priced_by


def _confirm(model, opts, prune_with, measure, report) -> None:
    """When the final measurement and the chosen candidate's differ by more than
    ``TOLERANCE``, time the same allocation ``RETIMES`` more times (bare candidates: the
    shapes, so the time, are the final's) and report the median of all its measurements as
    ``reached``, with ``final_speedup`` and ``retimed`` beside it. One timing of a fast model
    at more than one thread is at the machine's mercy: a 2 ms MobileNetV2 cut read 1.46x in
    its search and 1.02x at the end, and 1.27x-1.47x timed again."""
    target = getattr(report.structured, "target", None)
    if not isinstance(target, dict):
        return
    first, chosen = target.get("reached"), target.get("search_speedup")
    if not first or not chosen or abs(first / chosen - 1.0) <= TOLERANCE:
        return
    again = []
    for _ in range(RETIMES):
        candidate = prune_with(model, _candidate_opts(opts, target["fraction"], bare=True))
        value = measure(candidate.report)
        if value:
            again.append(float(value))
    reached = float(statistics.median([chosen, first, *again]))
    target.update(final_speedup=first, retimed=again, reached=reached,
                  met=reached >= (1 - TOLERANCE) * target["target"])  # fmt: skip


def _executor(opts):
    """Where the search's independent jobs run (``--jobs``, ``--ray``): a context manager
    that closes worker pools and Ray connections, whatever happens."""
    from onnxprune.targets.executor import make_executor

    return make_executor(opts.jobs, opts.ray)


def _candidate_opts(opts, fraction: float, *, bare: bool = False, final: bool = False):
    """The options of one run: ``--target-macs fraction`` instead of the search. A candidate
    (not ``final``) writes no plan and keeps no failed model; ``bare`` also drops recovery
    and gates (a speed candidate: neither changes the time)."""
    drop = {"bias_correction": False, "lstsq": False, "obs": False, "min_cosine": None,
            "max_drop": None, "max_rel_diff": None} if bare else {}  # fmt: skip
    if not final:
        drop.update(save_plan=None, keep_failed=False, validate=True)
    timed = "node_ms" in (opts.hooks or {})
    return replace(opts, target_speedup=None, target_macs=None if timed else fraction,
                   target_time=fraction if timed else None, jobs=1, ray=None, **drop)  # fmt: skip



def _speedup(model, opts, prune_with, measure, bar):
    """The measured speed-up search: (the chosen candidate's options, the summary)."""
    target = opts.target_speedup

    def evaluate(fraction: float) -> Trial:
        report = prune_with(model, _candidate_opts(opts, fraction, bare=True)).report
        trial = trial_of(fraction, report)
        trial.speedup = measure(report)
        bar.update(1)
        return trial

    best, trials = search_speedup(evaluate, target)
    summary = {"metric": "speedup", "target": target, "tolerance": TOLERANCE,
               "fraction": best.fraction, "search_speedup": best.speedup,
               "iterations": [t.to_dict() for t in trials]}  # fmt: skip
    return _candidate_opts(opts, best.fraction, final=True), summary


ALLOCATIONS = ("targeted", "uniform")
"""The quality search's two families: ``--target-macs f`` (per group, cheapest first) and
``--structured 1-f`` (every group alike, exact counts unless ``--round-to``). Both are
searched because neither always wins after recovery: on the digits CNN with ``--calib``,
with the allocation priced before recovery, the uniform cut kept 99.17% at 0.253x MACs and
the targeted one 98.89% at 0.249x (priced after recovery, the default now: 99.44%; README
"Targets"); the run keeps whichever passing candidate has the fewest MACs."""


CANDIDATE_RUNS = 5
"""Latency runs per model for a quality search's candidate (``--runs`` at most): the gates
decide, the speed-up is only listed; the timing was 3/4 of a digits CNN candidate's time at
30 runs. The final run times ``--runs``."""


def _family_opts(opts, allocation: str, fraction: float, final: bool = False):
    """A quality candidate's options (``final``: the chosen one, run with everything)."""
    if not final:
        opts = replace(opts, runs=min(opts.runs, CANDIDATE_RUNS))
    if allocation == "targeted":
        return _candidate_opts(opts, fraction, final=final)
    extra = {} if final else {"save_plan": None, "keep_failed": False, "validate": True}
    return replace(opts, structured=round(1.0 - fraction, 12), round_to=opts.round_to or 1,
                   jobs=1, ray=None, **extra)  # fmt: skip


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

    def run(fraction: float, phase: str) -> Outcome:
        trial = _candidate(prune_with, model, opts, allocation, fraction, failed, errors)
        trial.figures["phase"] = phase
        trials.append(trial)
        if tick is not None:
            tick(trial)
        return Outcome(bool(trial.passed), final=trial.at_floor)

    scan_fraction(run)
    return trials, failed, errors


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
        if not kept or _ratio(report.macs_after, report.macs_before) > failed[kept[0]][0]:
            for k in kept:
                del failed[k]
            failed[allocation, fraction] = (trial.macs, report)
    return trial


def _quality(model, opts, prune_with, bar, executor=None):
    """The fewest MACs passing the gates: (the chosen candidate's options, the summary).
    The two families are independent jobs: with ``executor`` (``--jobs``, ``--ray``) they
    run at once, each pricing its own cuts; the plan is the same either way."""
    if executor is not None and executor.workers > 1:
        sent = replace(opts, hooks=None)  # closures stay here: a worker measures its own
        done = executor.map(_family, [(prune_with, model, sent, a) for a in ALLOCATIONS])
        for t, _, _ in done:
            bar.update(len(t))
    else:

        def tick(trial: Trial) -> None:
            bar.set_postfix_str(f"{trial.figures['allocation']} {trial.fraction:.3g}: MACs "
                                f"{trial.macs:.3g}, {'passed' if trial.passed else 'failed'}",
                                refresh=False)  # fmt: skip
            bar.update(1)

        done = [_family((prune_with, model, opts, a, tick)) for a in ALLOCATIONS]
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
    _finish(report, summary, 0.0, measured_speedup)
    return report


def _gates(opts) -> dict:
    return {k: v for k, v in (("min_cosine", opts.min_cosine), ("max_drop", opts.max_drop),
                              ("max_rel_diff", opts.max_rel_diff)) if v is not None}  # fmt: skip


def _finish(report, summary: dict, searched: float, measure) -> None:
    """The search written into the final report: ``structured.target`` (with the MAC
    target the final run had under ``macs``), the final measured figures, the time."""
    s = report.structured
    if s is not None:
        target = dict(summary, macs=s.target)
        if summary["metric"] == "speedup":
            reached = measure(report)
            target["reached"] = reached
            target["met"] = reached is not None and reached >= (1 - TOLERANCE) * summary["target"]
        else:
            target["reached"] = _ratio(report.macs_after, report.macs_before)
            target["met"] = report.validation is None or report.validation.passed
        s.target = target
        if s.plan is not None:
            s.plan.settings["target"] = target
    report.timings_s = {"search": searched, **report.timings_s}
