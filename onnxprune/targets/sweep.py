"""``onnxprune sweep``: the trade-off curve, one prune per target, side by side.

Each target is a full ``prune`` run (nothing written): ``--metric speedup`` runs
``--target-speedup T`` (measured), ``--metric macs`` runs ``--target-macs`` (a target T > 1
keeps 1/T of the MACs; one in (0, 1) is the fraction kept), priced by measured losses with
``--calib`` as the searches are (``targets.measured``). A row holds what that run
measured: speed-up (interleaved, as validation reports it), MACs and params after/before,
cosine and top-1 agreement, accuracy before/after with labels, and whether the target was met.
A target that fails (a gate, nothing left to prune) is a row with its error, not the end of
the sweep: the curve is the point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from onnxprune.errors import GateError, OnnxPruneError, UsageError

__all__ = ["METRICS", "SweepRow", "parse_targets", "render_sweep", "sweep"]

METRICS = ("speedup", "macs")


@dataclass
class SweepRow:
    """One target of a sweep and what its run measured."""

    target: float
    metric: str
    fraction: float | None = None
    """The fraction the run kept (asked, for --metric macs; found, for speedup) of what
    ``fraction_of`` says."""
    fraction_of: str = "MAC"
    """``MAC``, ``time`` for a speed-up search priced in profiled milliseconds, ``channel`` when
    that search kept the uniform cut (``--structured 1-fraction``)."""
    speedup: float | None = None
    speedup_significant: bool | None = None
    macs: float | None = None
    params: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    met: bool | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_targets(value: str | Sequence[float], metric: str) -> list[float]:
    """``"1.25,1.5,2"`` as numbers: speed-ups above 1; for macs, reductions above 1 or
    fractions kept in (0, 1)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[float] = []
    for item in items:
        try:
            t = float(item)
        except (TypeError, ValueError):
            raise UsageError(f"--targets must be numbers, got {item!r}") from None
        ok = t > 1.0 if metric == "speedup" else (0.0 < t < 1.0 or t > 1.0)
        if not ok:
            what = "above 1" if metric == "speedup" else "above 1 (x fewer) or in (0, 1)"
            raise UsageError(f"--targets for --metric {metric} must be numbers {what}, got {item!r}")
        out.append(t)
    if not out:
        raise UsageError(f"--targets must list at least one target, got {value!r}")
    return out


def _options(base: Mapping, metric: str, target: float):
    from onnxprune.options import PruneOptions

    if metric == "speedup":
        return PruneOptions(**base, target_speedup=target)
    return PruneOptions(**base, target_macs=target if target < 1 else 1.0 / target)


def sweep(
    model: str | os.PathLike,
    targets: Sequence[float],
    *,
    metric: str = "speedup",
    base: Mapping | None = None,
    progress: bool = False,
    prune_with: Callable | None = None,
) -> list[SweepRow]:
    """One row per target; ``base`` holds the other ``PruneOptions`` fields (all checked
    before the first run, so a bad option fails before any pruning)."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if prune_with is None:
        from onnxprune.api import prune_with
    base = dict(base or {})
    if metric == "macs" and base.get("staircase"):
        raise UsageError("--staircase prices speed-up targets: use it with --metric speedup")
    runs = [(t, _options(base, metric, t)) for t in targets]
    if isinstance(model, str | os.PathLike):  # a missing or broken model: one error, now
        from onnxprune.graph import modelfile as io

        io.load_model(model)
    if metric == "macs" and runs:  # measured losses with --calib, as the searches use them
        from dataclasses import replace

        from onnxprune.targets.measured import with_measured_losses

        hooks = with_measured_losses(model, runs[0][1]).hooks
        runs = [(t, replace(o, hooks=hooks)) for t, o in runs]
    rows = []
    for target, opts in runs:
        row = SweepRow(target, metric)
        try:
            report = prune_with(model, opts, output=None, progress=progress).report
        except GateError as exc:
            report, row.error = exc.report, str(exc)
        except UsageError:
            raise
        except OnnxPruneError as exc:
            row.error = str(exc)
            report = None
        if report is not None:
            _fill(row, report)
        rows.append(row)
    return rows


def _fill(row: SweepRow, report) -> None:
    v, s = report.validation, report.structured
    t = (s.target if s is not None else None) or {}
    row.macs = report.macs_after / report.macs_before if report.macs_before else None
    row.params = report.params_after / report.params_before if report.params_before else None
    row.fraction = t.get("fraction", t.get("target"))
    if t.get("allocation") == "uniform":  # the speed search kept the uniform cut
        row.fraction_of = "channel"
    elif (t.get("macs") or {}).get("metric") == "time":
        row.fraction_of = "time"
    row.met = t.get("met")
    if v is not None:
        row.speedup, row.speedup_significant = v.speedup, v.speedup_significant
        row.cosine, row.top1_agreement = v.cosine, v.top1_agreement
        row.accuracy_before, row.accuracy_after = v.accuracy_before, v.accuracy_after


def render_sweep(rows: Sequence[SweepRow]) -> str:
    """The table: one row per target."""
    from onnxprune.report.text import table

    def num(x, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    body = []
    for r in rows:
        speed = num(r.speedup, ".2f") + ("x" if r.speedup is not None else "")
        if r.speedup_significant is False:
            speed += " (n.s.)"
        acc = "-"
        if r.accuracy_after is not None:
            acc = f"{r.accuracy_before:.2%} -> {r.accuracy_after:.2%}"
        met = "-" if r.met is None else ("yes" if r.met else "no")
        label = f"{r.target:g}x" if r.target > 1 else f"{r.target:g}"
        body.append([label, num(r.fraction, ".3g"), speed, num(r.macs, ".3f"),
                     num(r.params, ".3f"), num(r.cosine, ".4f"), num(r.top1_agreement, ".1%"),
                     acc, met])  # fmt: skip
    kinds = "/".join(sorted({r.fraction_of for r in rows})) or "MAC"
    header = ["target", f"{kinds} fraction", "speed-up", "MACs", "params", "cosine", "top-1",
              "accuracy", "met"]  # fmt: skip
    out = [table(body, header)]
    out += [f"  {r.target:g}: {r.error}" for r in rows if r.error]
    out.append("  speed-up: measured interleaved against the original (n.s.: p10-p90 spreads "
               "overlap); MACs, params: after / before")  # fmt: skip
    return "\n".join(out)
