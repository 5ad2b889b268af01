"""The allocation priced after recovery (``targets.recovered``), and --target-macs with
--calib priced by measured losses (not score mass)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune import prune
from onnxprune.graph.view import GraphView
from onnxprune.options import PruneOptions
from onnxprune.recovery.recover import RecoveryOptions
from onnxprune.structured.dependency import analyze
from onnxprune.structured.importance import score_groups
from onnxprune.targets.measured import losses_hook
from onnxprune.targets.recovered import (
    FINE_FRACTIONS,
    fit_data,
    fractions_for,
    recovered_losses,
    recovered_losses_hook,
)
from onnxprune.testing.graphs import small_cnn


def _calib(tmp_path, n=24):
    path = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((n, 3, 8, 8)).astype(np.float32))
    return path


def _copies_cnn() -> onnx.ModelProto:
    """small_cnn whose filters 8..15 of c1 are 0.4 x filters 0..7 (bias too): the weakest
    half by L1 is a scaled copy of the strongest, so after ReLU c2 can rebuild its input
    from the kept half exactly; only recovery knows that cutting them costs nothing."""
    model = small_cnn()
    inits = {t.name: t for t in model.graph.initializer}
    w = numpy_helper.to_array(inits["c1.w"]).copy()
    b = numpy_helper.to_array(inits["c1.b"]).copy()
    w[:8] = np.abs(w[:8]) + 0.5  # all-positive filters: strong, and ReLU keeps them alive
    b[:8] = np.abs(b[:8]) + 0.5
    w[8:], b[8:] = 0.4 * w[:8], 0.4 * b[:8]
    inits["c1.w"].CopyFrom(numpy_helper.from_array(w, "c1.w"))
    inits["c1.b"].CopyFrom(numpy_helper.from_array(b, "c1.b"))
    return model


def _groups(model):
    view = GraphView(model)
    groups = [g for g in analyze(model, view=view) if g.blocked_reason is None]
    return view, groups, score_groups(groups, view, "l1", None)


def test_a_cut_recovery_repairs_is_priced_near_zero_after_recovery(tmp_path):
    model = _copies_cnn()
    view, groups, scores = _groups(model)
    c1 = [g for g in groups if g.id == "c1"]
    fit = fit_data(model, PruneOptions(structured=0.5, calib=_calib(tmp_path)))
    none = RecoveryOptions(bias=False, lstsq=False, obs=False)
    before = recovered_losses(model, c1, scores, view, fit, none, (0.5,))["c1"]["0.5"]
    after = recovered_losses(model, c1, scores, view, fit, RecoveryOptions(obs=False),
                             (0.5,))["c1"]["0.5"]  # fmt: skip
    assert before > 1e-2  # zeroed, the copies' share of c2's input is gone
    assert after < 1e-4 < before  # least squares folds them into the originals' weights


def test_a_fraction_that_removes_nothing_loses_nothing_and_is_not_run(tmp_path):
    model = small_cnn()
    view, groups, scores = _groups(model)
    fit = fit_data(model, PruneOptions(structured=0.5, calib=_calib(tmp_path)))
    losses = recovered_losses(model, groups, scores, view, fit, RecoveryOptions(obs=False),
                              (0.01, 0.5))  # fmt: skip
    for g in groups:
        assert losses[g.id][repr(0.01)] == 0.0
        assert losses[g.id]["0.5"] > 0.0


def test_the_hook_measures_once_and_reuses_its_curves(tmp_path, monkeypatch):
    import onnxprune.targets.recovered as rec

    model = small_cnn()
    view, groups, scores = _groups(model)
    calls = []
    real = rec.recovered_losses
    monkeypatch.setattr(rec, "recovered_losses", lambda *a: calls.append(1) or real(*a))
    hook = recovered_losses_hook(PruneOptions(structured=0.5, calib=_calib(tmp_path)), (0.5,))
    first = hook(groups, scores, view)
    second = hook(groups, scores, view)
    assert len(calls) == 1 and [c.value for c in first] == [c.value for c in second]
    for curve in first:
        assert curve.at(curve.slots) == 0.0 and curve.at(1) >= curve.at(curve.slots // 2)


def test_fine_fractions_only_for_few_groups():
    assert fractions_for(2) == FINE_FRACTIONS
    assert len(fractions_for(40)) == 3


def test_target_macs_with_calib_cuts_where_recovery_repairs(tmp_path):
    """Score mass says c1's weak half is cheap anyway; here the point is the pricing: with
    --calib the run is priced after recovery and says so, and lands on its target."""
    model = _copies_cnn()
    calib = _calib(tmp_path)
    result = prune(model, target_macs=0.6, calib=calib, validate=False)
    t = result.report.structured.target
    assert t["losses"].startswith("measured after recovery")
    assert t["met"] and t["after"] <= 0.6 * t["before"]
    plain = prune(model, target_macs=0.6, validate=False).report.structured.target
    assert plain["losses"] == "score mass (no --calib)"


@pytest.mark.parametrize("bare", [True, False])
def test_a_target_is_priced_as_its_run_recovers(tmp_path, bare):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    steps = {"lstsq": False, "bias_correction": False} if bare else {}
    result = prune(path, target_macs=0.6, calib=_calib(tmp_path), validate=False, **steps)
    losses = result.report.structured.target["losses"]
    assert losses.startswith("measured without recovery" if bare else "measured after recovery")
    searched = PruneOptions(target_speedup=2, calib=_calib(tmp_path), **steps)
    how = losses_hook(path, searched)[1]  # a search on a file: analyze's cached masked losses
    assert how.startswith("measured (analyze" if bare else "measured after recovery")


def test_a_fixed_batch_model_is_measured_in_runs_of_its_batch(tmp_path):
    model = small_cnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # exported at batch 2
    view, groups, scores = _groups(model)
    fit = fit_data(model, PruneOptions(structured=0.5, calib=_calib(tmp_path, n=8)))
    losses = recovered_losses(model, groups, scores, view, fit, RecoveryOptions(obs=False),
                              (0.5,))  # fmt: skip
    assert all(0.0 < v["0.5"] < 2.0 for v in losses.values())


def test_over_its_time_budget_the_pricing_falls_back_and_says_so(tmp_path):
    from onnxprune.targets.masking import measured_curve

    model = small_cnn()
    view, groups, scores = _groups(model)
    opts = PruneOptions(structured=0.5, calib=_calib(tmp_path))
    hook = recovered_losses_hook(opts, (0.5,), budget_s=0.0)  # nothing fits in 0 s
    curves = hook(groups, scores, view)
    assert hook.priced.startswith("score mass (pricing after recovery would take")
    assert [c.value for c in curves] == [c.value for c in hook(groups, scores, view)]
    calls = []

    def fallback():
        calls.append(1)
        return (lambda fr, sc, _v: [measured_curve(g, sc[g.id], {"0.5": 0.25}) for g in fr],
                "measured (analyze: 2 candidates)")

    hook = recovered_losses_hook(opts, (0.5,), fallback=fallback, budget_s=0.0)
    curves = hook(groups, scores, view)
    assert calls == [1] and hook.priced.startswith("measured (analyze")
    assert all(c.at(c.slots // 2) == pytest.approx(0.25) for c in curves)
    roomy = recovered_losses_hook(opts, (0.5,), fallback=fallback, budget_s=None)
    roomy(groups, scores, view)
    assert roomy.priced is None and calls == [1]  # measured: no fallback


def test_a_plain_target_over_budget_reports_its_fallback(tmp_path, monkeypatch):
    import onnxprune.targets.recovered as rec

    monkeypatch.setattr(rec, "projected_seconds", lambda *a: 10 * rec.BUDGET_S)  # a big model
    result = prune(small_cnn(), target_macs=0.6, calib=_calib(tmp_path), validate=False)
    assert result.report.structured.target["losses"].startswith("score mass (pricing after")
