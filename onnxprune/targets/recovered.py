"""Losses priced *after recovery*: what the allocation should weigh when recovery will run.

The analysis (``targets.sensitivity``) measures what a group loses with its channels zeroed
and nothing refitted. With ``--calib`` a run refits the consumers that lost inputs (bias
correction, least squares: ``recovery.recover``), and recovery repairs some cuts far better
than others: on the digits CNN a uniform cut recovered to 99.17% at 0.213x MACs while the
allocation priced before recovery needed 0.359x for the same gate. So when recovery is on,
each group's loss at each fraction is measured on the model a run would produce: that group
alone cut (the plan's own slots, ``structured.plan.make_plan(keep=...)``, rewritten by
``structured.rewrite.apply_plan``), its consumers refitted by the run's recovery steps on
the run's fitting data, and the outputs compared with the original's on those samples
(``1 - cosine``). A candidate costs one rewrite, one recovery and one run, so it is used
within the same candidate budget as the analysis (``targets.measured.MAX_CANDIDATES``), and
the curves are measured once per run (a search's candidates share them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.targets import GroupCurve

__all__ = ["BUDGET_S", "FINE_FRACTIONS", "SCORE_SAMPLES", "fractions_for", "projected_seconds",
           "recovered_losses", "recovered_losses_hook"]

SCORE_SAMPLES = 256
"""Fitting samples at most that a candidate's outputs are compared on."""
BUDGET_S = 120.0
"""Seconds the post-recovery pricing may take (projected before it starts); beyond, the
masked analysis prices instead (a file), else the score mass."""
FINE_FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
"""Fractions of each group removed, one candidate each, when there are few groups: finer
curves place the cuts better (digits CNN after recovery, cosine on the 360 test digits at
0.186x MACs: 0.972 against 0.966 with the three coarse fractions)."""
FINE_CANDIDATES = 32
"""Fine fractions while groups x ``FINE_FRACTIONS`` stays within this; else the analysis's
three (``sensitivity.DEFAULT_FRACTIONS``)."""


def fractions_for(groups: int) -> tuple[float, ...]:
    """The fractions measured for ``groups`` groups (see ``FINE_FRACTIONS``)."""
    from onnxprune.targets.sensitivity import DEFAULT_FRACTIONS

    if groups * len(FINE_FRACTIONS) <= FINE_CANDIDATES:
        return FINE_FRACTIONS
    return tuple(DEFAULT_FRACTIONS)


def fit_data(model: onnx.ModelProto, opts):
    """The samples a run's recovery fits on: ``--calib`` (at most ``--calib-samples``),
    less the held-out part validation scores when there is no ``--val``."""
    from onnxprune.calibration.data import make_inputs, split_holdout
    from onnxprune.options import HOLDOUT_FRACTION, HOLDOUT_MIN

    extra = {"preprocess": opts.calib_preprocess} if opts.calib_preprocess else {}
    data = make_inputs(model, calib=opts.calib, max_samples=opts.calib_samples, **extra)
    if opts.val is None and opts.holdout and opts.validate:
        data, _, _ = split_holdout(data, HOLDOUT_FRACTION, HOLDOUT_MIN)
    return data


def _head(inputs, n: int) -> dict[str, np.ndarray]:
    from onnxprune.runtime.feeds import shared_batch

    rows = shared_batch(inputs)
    if rows is None or rows <= n:
        return dict(inputs)
    return {k: v[:n] for k, v in inputs.items()}


def _outputs(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], role: str):
    """(outputs, output names) of ``model`` on ``feed``, in the runs a fixed batch allows."""
    from onnxprune.runtime.feeds import chunked, join_chunks
    from onnxprune.runtime.session import fixed_batch, open_session, run_session, session_feeds

    sess = open_session(model.SerializeToString(), ["CPUExecutionProvider"], role=role)
    runs = chunked(session_feeds(sess, dict(feed), role), fixed_batch(sess), [])
    got = join_chunks([run_session(sess, run, role) for run in runs])
    return got, [o.name for o in sess.get_outputs()]


def recovered_losses(
    model: onnx.ModelProto,
    groups: Sequence,
    scores: Mapping[str, np.ndarray],
    view,
    fit,
    steps,
    fractions: Sequence[float],
) -> dict[str, dict[str, float]]:
    """Per group id: fraction removed (``sensitivity.fraction_key``) -> ``1 - cosine`` of
    the outputs after that group alone is cut and its consumers refitted with ``steps``
    (``recovery.recover.RecoveryOptions``) on ``fit``, compared on ``fit``'s first
    ``SCORE_SAMPLES`` samples. A fraction that removes no slot loses 0 and is not run; a
    candidate whose outputs are not finite loses 2 (the most ``1 - cosine`` can be)."""
    from onnxprune.recovery.recover import recover_structured
    from onnxprune.runtime.compare import compare_outputs
    from onnxprune.structured.plan import make_plan
    from onnxprune.structured.rewrite import apply_plan
    from onnxprune.targets.masking import removed_slots
    from onnxprune.targets.sensitivity import fraction_key

    feed = _head(fit, SCORE_SAMPLES)
    reference, names = _outputs(model, feed, "original model")
    out: dict[str, dict[str, float]] = {}
    for g in groups:
        loss: dict[str, float] = {}
        for f in fractions:
            n = len(removed_slots(g, scores[g.id], f))
            if not n:
                loss[fraction_key(f)] = 0.0
                continue
            plan = make_plan([g], scores, ratio=0.0, round_to=1, max_group_ratio=0.999999,
                             keep={g.id: g.slots - n})  # fmt: skip
            pruned = apply_plan(model, plan, view=view)
            pruned, _ = recover_structured(model, pruned, plan, fit, steps)
            got, _ = _outputs(pruned, feed, "pruned candidate")
            cosine = float(compare_outputs(reference, got, names)["cosine"])
            loss[fraction_key(f)] = max(0.0, 1.0 - cosine) if np.isfinite(cosine) else 2.0
        out[g.id] = loss
    return out


def projected_seconds(model: onnx.ModelProto, fit, candidates: int) -> float:
    """What pricing ``candidates`` would take, from one timed run of ``model`` on ``fit``: a
    candidate runs about three passes over the data (recovery's reference and pruned
    passes, then the scoring run), the refits on top."""
    t0 = time.perf_counter()
    _outputs(model, fit, "original model")
    return 3.0 * candidates * (time.perf_counter() - t0)


def recovered_losses_hook(opts, fractions: Sequence[float], *, fallback=None,
                          budget_s: float | None = BUDGET_S) -> Callable:  # fmt: skip
    """``TargetHook``'s ``losses_for``: post-recovery curves at ``fractions``, measured on
    its first call (when the groups and scores are known) and reused by every later call.

    When the measurement would take more than ``budget_s`` (``projected_seconds``), the
    curves come from ``fallback()`` (a ``(losses_for, what)`` pair: the masked analysis of
    a file) or, without one, the score mass; ``losses_for.priced`` then says so."""
    from onnxprune.recovery.recover import RecoveryOptions
    from onnxprune.targets.allocate import score_mass
    from onnxprune.targets.masking import measured_curve

    steps = RecoveryOptions(bias=opts.step("bias"), lstsq=opts.step("lstsq"), obs=False,
                            seed=opts.seed)  # fmt: skip
    memo: dict[tuple[str, int], GroupCurve] = {}
    data: list = []
    instead: list = []

    def losses_for(free, scores, view) -> list[GroupCurve]:
        if instead:
            return instead[0](free, scores, view)
        todo = [g for g in free if (g.id, g.slots) not in memo]
        if todo:
            if not data:
                data.append(fit_data(view.model, opts))
            need = projected_seconds(view.model, data[0], len(todo) * len(fractions))
            if budget_s is not None and need > budget_s:
                why = f"pricing after recovery would take ~{need:.0f} s, over {budget_s:.0f} s"
                lf, what = fallback() if fallback is not None else (None, "score mass")
                instead.append(lf or (lambda fr, sc, _v: [score_mass(g, sc[g.id]) for g in fr]))
                losses_for.priced = f"{what} ({why})"
                return instead[0](free, scores, view)
            measured = recovered_losses(view.model, todo, scores, view, data[0], steps,
                                        fractions)  # fmt: skip
            for g in todo:
                memo[g.id, g.slots] = measured_curve(g, scores[g.id], measured[g.id])
        return [memo[g.id, g.slots] for g in free]

    losses_for.priced = None
    return losses_for
