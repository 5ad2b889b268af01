"""What the searches share (``targets.search``, ``targets.quality_search``): one candidate's
figures (``Trial``), the options of a candidate run, and the search written into the final
report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["BARE", "GATES_OFF", "TOLERANCE", "Trial", "candidate_opts", "finish_report",
           "measured_speedup", "ratio_of", "trial_of", "uniform_opts"]

TOLERANCE = 0.05
"""A speed-up within 5% of the target is met."""
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
        fraction, macs=ratio_of(report.macs_after, report.macs_before),
        params=ratio_of(report.params_after, report.params_before),
        speedup=None if v is None else v.speedup,
        significant=None if v is None else v.speedup_significant,
        at_floor=not t.get("met", True), figures=figures,
    )  # fmt: skip


def ratio_of(after: float, before: float) -> float:
    return after / before if before else 1.0


GATES_OFF = {"min_cosine": None, "max_drop": None, "max_rel_diff": None}
"""What a candidate run drops to be judged by the search rather than by the gates."""
BARE = {"bias_correction": False, "lstsq": False, "obs": False, **GATES_OFF}
"""What a bare candidate drops: recovery and gates (a speed candidate: neither changes the
time)."""


def _run_drop(bare: bool, final: bool) -> dict:
    """A candidate (not ``final``) writes no plan and keeps no failed model; ``bare`` also
    drops recovery and gates."""
    drop = dict(BARE) if bare else {}
    if not final:
        drop.update(save_plan=None, keep_failed=False, validate=True)
    return drop


def candidate_opts(opts, fraction: float, *, bare: bool = False, final: bool = False):
    """The options of one run: ``--target-macs fraction`` (``target_time`` when the cuts are
    priced in milliseconds) instead of the search (``_run_drop`` for ``bare``/``final``)."""
    timed = "node_ms" in (opts.hooks or {})
    return replace(opts, target_speedup=None, target_macs=None if timed else fraction,
                   target_time=fraction if timed else None, jobs=1, ray=None,
                   **_run_drop(bare, final))  # fmt: skip


def uniform_opts(opts, fraction: float, round_to: int | None, *, bare: bool = False,
                 final: bool = False):  # fmt: skip
    """The options of one uniform run: ``--structured 1-fraction`` with ``round_to`` (None:
    the default rounding) instead of the search."""
    return replace(opts, target_speedup=None, target_macs=None, target_time=None,
                   structured=round(1.0 - fraction, 12), round_to=round_to, jobs=1, ray=None,
                   **_run_drop(bare, final))  # fmt: skip


def finish_report(report, summary: dict, searched: float, measure) -> None:
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
            target["reached"] = ratio_of(report.macs_after, report.macs_before)
            target["met"] = report.validation is None or report.validation.passed
        s.target = target
        if s.plan is not None:
            s.plan.settings["target"] = target
    report.timings_s = {"search": searched, **report.timings_s}
