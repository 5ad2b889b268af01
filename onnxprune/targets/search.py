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
  (``_confirm``). With data (``--calib``) the uniform cut (``--structured 1-f``) is searched
  to the same speed-up the same way, both families' chosen candidates are recovered and
  validated, and the one that keeps more (accuracy with labels, else cosine) is the result:
  the allocation weighs each group's loss measured alone, and on pretrained MiniLM those
  losses did not add up (``compares_uniform``).
* ``--max-drop P`` / ``--min-cosine X`` alone (``targets.quality_search``): the fewest MACs that keep that quality. Each
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
from dataclasses import replace

from onnxprune.errors import GateError, OnnxPruneError, UsageError
from onnxprune.targets.candidates import (
    GATES_OFF,
    TOLERANCE,
    Trial,
    candidate_opts,
    finish_report,
    measured_speedup,
    trial_of,
    uniform_opts,
)

__all__ = ["TOLERANCE", "Trial", "next_fraction", "prune_searched", "search_speedup"]

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
    total = None  # quality: as it goes
    if opts.search == "speedup":
        total = SPEEDUP_ITERATIONS * (2 if compares_uniform(opts) else 1)
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
                from onnxprune.targets.quality_search import search_quality

                final_opts, summary = search_quality(model, opts, prune_with, bar, executor)
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
            finish_report(exc.report, summary, searched, measure)
        raise
    finish_report(result.report, summary, searched, measure)
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
        allocation = target.get("allocation", "targeted")
        candidate = prune_with(model, _speed_opts(opts, allocation, target["fraction"], bare=True))
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


def _speedup(model, opts, prune_with, measure, bar):
    """The measured speed-up search: (the chosen candidate's options, the summary). With
    data (``--calib``) the uniform cut is searched to the same speed too and the one that
    keeps more quality after recovery wins (``_compare``)."""
    target = opts.target_speedup

    def search(allocation: str) -> tuple[Trial, list[Trial]]:
        def evaluate(fraction: float) -> Trial:
            report = prune_with(model, _speed_opts(opts, allocation, fraction, bare=True)).report
            trial = trial_of(fraction, report)
            trial.speedup = measure(report)
            trial.figures["allocation"] = allocation
            bar.update(1)
            return trial

        return search_speedup(evaluate, target)

    best, trials = search("targeted")
    compared = None
    if compares_uniform(opts):
        try:
            uniform, more = search("uniform")
        except UsageError:
            raise
        except OnnxPruneError as exc:  # e.g. a ratio this model's groups cannot take
            compared = [{"allocation": "uniform", "failed": str(exc)}]
        else:
            trials = trials + more
            best, compared = _compare(model, opts, prune_with, measure, [best, uniform], target)
    allocation = best.figures["allocation"]
    summary = {"metric": "speedup", "target": target, "tolerance": TOLERANCE,
               "allocation": allocation, "fraction": best.fraction,
               "search_speedup": best.speedup,
               "iterations": [t.to_dict() for t in trials]}  # fmt: skip
    if compared is not None:
        summary["compared"] = compared
    return _speed_opts(opts, allocation, best.fraction, final=True), summary


def compares_uniform(opts) -> bool:
    """Whether a speed-up search also searches the uniform cut (``--structured 1-f``): with
    data, where recovery runs and quality can be told apart. Searched alone, the allocation
    lost to it on pretrained MiniLM at 1.5x (held-out cosine 0.889 against 0.901 with the
    ``auto`` criterion: each group's loss is measured alone, and the cuts do not add up)."""
    return opts.calib is not None


def _compare(model, opts, prune_with, measure, best: Sequence[Trial], target: float):
    """Each family's chosen candidate run with recovery (no gates, no output) and validated:
    the one that keeps more (accuracy when labels are given, then cosine) among those that
    reached the target, else the fastest; and what each kept, for the report."""
    rows, scored = [], []
    for trial in best:
        allocation = trial.figures["allocation"]
        report = prune_with(model, _speed_opts(opts, allocation, trial.fraction,
                                               recovered=True)).report  # fmt: skip
        v = report.validation
        quality = (-1.0 if v is None or v.accuracy_after is None else v.accuracy_after,
                   -1.0 if v is None or v.cosine is None else v.cosine)
        rows.append({"allocation": allocation, "fraction": trial.fraction,
                     "search_speedup": trial.speedup, "macs": trial.macs,
                     "cosine": None if v is None else v.cosine,
                     "accuracy_after": None if v is None else v.accuracy_after})  # fmt: skip
        scored.append((trial, quality))
    reached = [(t, q) for t, q in scored if (t.speedup or 0.0) >= (1.0 - TOLERANCE) * target]
    if reached:
        chosen = max(reached, key=lambda tq: tq[1])[0]
    else:
        chosen = max(best, key=lambda t: t.speedup or 0.0)
    for row in rows:
        row["chosen"] = row["allocation"] == chosen.figures["allocation"]
    return chosen, rows


def _speed_opts(opts, allocation: str, fraction: float, *, bare: bool = False,
                recovered: bool = False, final: bool = False):  # fmt: skip
    """A speed-up search's run of one family at ``fraction``: the allocation's
    (``candidate_opts``) or the uniform cut's, ``--structured 1-fraction`` (exact counts
    unless ``--round-to``, as in the quality search). ``recovered``: with recovery but
    without gates or output (``_compare``)."""
    if recovered:
        opts = replace(opts, **GATES_OFF)
    if allocation == "targeted":
        return candidate_opts(opts, fraction, bare=bare, final=final)
    return uniform_opts(opts, fraction, opts.round_to or 1, bare=bare, final=final)
