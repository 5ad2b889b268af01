"""--target-speedup and a gate alone (targets.search): the loops on synthetic latency and
quality, deterministic; the real runs through prune with a fake speed-up measure."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import pytest

from onnxprune import prune
from onnxprune.api import prune_with
from onnxprune.errors import GateError, UsageError
from onnxprune.options import PruneOptions
from onnxprune.targets.search import (
    SPEEDUP_ITERATIONS,
    TOLERANCE,
    Trial,
    next_fraction,
    prune_searched,
    search_speedup,
)
from onnxprune.testing.graphs import residual_block, small_cnn


def _synthetic(speed):
    """A latency model: the candidate at fraction f keeps f of the MACs, runs speed(f)x."""
    calls: list[float] = []

    def evaluate(f: float) -> Trial:
        calls.append(f)
        return Trial(f, macs=f, speedup=speed(f))

    return evaluate, calls


@pytest.mark.parametrize("target", [1.25, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("exponent", [0.5, 0.8, 1.2])
def test_the_speedup_loop_converges_on_a_power_law(target, exponent):
    evaluate, calls = _synthetic(lambda f: f**-exponent)
    best, trials = search_speedup(evaluate, target)
    assert abs(best.speedup / target - 1) <= TOLERANCE
    assert len(trials) == len(calls) <= SPEEDUP_ITERATIONS
    assert trials[-1] is best  # it stopped at the first candidate within tolerance


def test_the_speedup_loop_crosses_a_latency_staircase():
    """Speed-up flat until a width drops below a step, then a jump: bracketed, not lost."""
    evaluate, _ = _synthetic(lambda f: 1.0 if f > 0.6 else (1.6 if f > 0.3 else 2.6))
    best, _ = search_speedup(evaluate, 1.6)
    assert best.speedup == pytest.approx(1.6) and 0.3 < best.fraction <= 0.6


def test_an_unreachable_speedup_stops_at_the_budget_and_says_so():
    """Speed-up at most 1/0.6 = 1.67x (a part that does not prune): 2x is never reached."""
    evaluate, calls = _synthetic(lambda f: 1 / (0.6 + 0.4 * f))
    best, trials = search_speedup(evaluate, 2.0)
    assert len(calls) <= SPEEDUP_ITERATIONS
    assert best.speedup < (1 - TOLERANCE) * 2.0  # not met
    assert best.speedup == max(t.speedup for t in trials)  # the fastest, said honestly


def test_the_loop_stops_when_every_group_is_at_its_floor():
    calls: list[float] = []

    def evaluate(f: float) -> Trial:
        calls.append(f)
        return Trial(f, macs=max(f, 0.4), speedup=1 / max(f, 0.4), at_floor=f < 0.4)

    _, trials = search_speedup(evaluate, 5.0)
    assert trials[-1].at_floor and len(calls) < SPEEDUP_ITERATIONS


def test_next_fraction_stays_inside_the_bracket():
    trials = [Trial(0.5, speedup=1.3), Trial(0.2, speedup=2.6)]
    f = next_fraction(trials, 2.0)
    assert 0.2 < f < 0.5


def _fake_measure(report) -> float:
    """Speed-up = (MACs before / after) ** 0.8: deterministic, MACs-driven."""
    return (report.macs_before / report.macs_after) ** 0.8


def _timed_as_macs(model) -> dict:
    """``hooks`` pricing every node at one 'ms' per MAC: the time metric is then the MAC
    count, and a search against ``_fake_measure`` is deterministic (a real profile of a
    tiny graph is noise)."""
    from onnxprune.graph.view import node_label
    from onnxprune.targets.costs import CostModel

    cm = CostModel(model, [], None)
    return {"node_ms": {node_label(n, i): float(cm._base_macs[i])
                        for i, n in enumerate(model.graph.node) if cm._base_macs.get(i)},
            "overhead_ms": 0.0}  # fmt: skip


@pytest.mark.parametrize("target", [1.3, 2.0])
def test_target_speedup_on_a_real_model_with_a_fake_clock(target):
    model = residual_block()
    opts = PruneOptions(target_speedup=target, runs=5, hooks=_timed_as_macs(model))
    result = prune_searched(model, opts, prune_with, measure=_fake_measure)
    t = result.report.structured.target
    assert t["metric"] == "speedup" and t["target"] == target
    assert t["met"] and abs(t["reached"] / target - 1) <= TOLERANCE
    assert t["reached"] == pytest.approx(_fake_measure(result.report))
    assert 1 <= len(t["iterations"]) <= SPEEDUP_ITERATIONS
    for it in t["iterations"]:
        assert it["speedup"] == pytest.approx(it["macs"] ** -0.8, rel=1e-6)
    assert t["macs"]["metric"] == "time" and t["fraction"] == t["macs"]["target"]
    assert t["priced_by"]["by"] == "time" and t["priced_by"]["nodes"] > 0
    assert t["macs"]["before"] == result.report.macs_before  # priced at 1 ms per MAC
    assert "cuts priced in milliseconds" in result.report.render()
    assert "search" in result.report.timings_s
    json.dumps(result.report.to_dict())  # the report stays JSON
    assert "target: speed-up" in result.report.render()


def test_a_final_measurement_that_disagrees_with_the_search_is_timed_again():
    """The final run reads 30% slower than its candidate (one slow spell): the allocation is
    timed RETIMES more times and the median of its measurements is what is reported."""
    from onnxprune.targets.search import RETIMES

    finals: set[int] = set()

    def prune_marking_the_final(model, o, **kw):
        result = prune_with(model, o, **kw)
        if o.lstsq is not False:  # candidates drop recovery; the final run keeps it
            finals.add(id(result.report))
        return result

    def measure(report) -> float:
        return _fake_measure(report) * (0.7 if id(report) in finals else 1.0)

    model = residual_block()
    opts = PruneOptions(target_speedup=1.3, runs=5, hooks=_timed_as_macs(model))
    result = prune_searched(model, opts, prune_marking_the_final, measure=measure)
    t = result.report.structured.target
    assert t["final_speedup"] == pytest.approx(0.7 * t["search_speedup"])
    assert t["retimed"] == [pytest.approx(t["search_speedup"])] * RETIMES
    assert t["reached"] == pytest.approx(t["search_speedup"]) and t["met"]
    assert "timed again" in result.report.render()


def test_an_unreachable_target_speedup_is_reported_not_met():
    opts = PruneOptions(target_speedup=40.0, runs=5, max_group_ratio=0.5)
    result = prune_searched(residual_block(), opts, prune_with, measure=_fake_measure)
    t = result.report.structured.target
    assert not t["met"] and t["reached"] < 40 * (1 - TOLERANCE)
    assert len(t["iterations"]) <= SPEEDUP_ITERATIONS
    assert "not met" in result.report.render()


def test_target_speedup_through_prune_measures_for_real():
    """The real clock: only what holds whatever the machine's noise."""
    result = prune(residual_block(), target_speedup=1.2, runs=5)
    t = result.report.structured.target
    final = t.get("final_speedup", t["reached"])  # re-timed when final and search disagree
    assert final == result.report.validation.speedup
    assert all(it["speedup"] is not None for it in t["iterations"])
    assert t["met"] == (t["reached"] >= (1 - TOLERANCE) * 1.2)


def test_a_gate_alone_finds_the_fewest_macs_that_pass():
    result = prune(residual_block(), min_cosine=0.95, runs=5)
    t = result.report.structured.target
    assert t["metric"] == "quality" and t["gates"] == {"min_cosine": 0.95} and t["met"]
    assert result.report.validation.passed and result.report.validation.cosine >= 0.95
    its = t["iterations"]
    assert {i["allocation"] for i in its} == {"targeted", "uniform", "rounded"}
    passed = [i for i in its if i["passed"]]
    best = min(passed, key=lambda i: i["macs"])
    assert (t["allocation"], t["fraction"]) == (best["allocation"], best["fraction"])
    macs = result.report.macs_after / result.report.macs_before
    assert macs == pytest.approx(best["macs"]) and t["reached"] == pytest.approx(macs)
    assert all(i["cosine"] < 0.95 for i in its if not i["passed"])
    same = [i for i in its if i["allocation"] == best["allocation"] and not i["passed"]]
    assert max(i["fraction"] for i in same if i["fraction"] < best["fraction"]) > (
        best["fraction"] - 0.1
    )  # the refinement closed in from below
    assert "the fewest MACs keeping min-cosine 0.95" in result.report.render()


def test_a_gate_nothing_passes_fails_with_the_search_in_the_report():
    with pytest.raises(GateError, match="no MAC fraction tried keeps that quality") as exc:
        prune(residual_block(), min_cosine=1.0, runs=5)
    t = exc.value.report.structured.target
    assert t["metric"] == "quality" and t["fraction"] is None and not t["met"]
    assert t["losses"].startswith("score mass")
    its = [i for i in t["iterations"] if i["allocation"] != "rounded"]
    assert len(its) == 14  # per family: 2 down (0.5, 0.354), then up: 0.75 ... 0.984
    for family in ("targeted", "uniform"):
        phases = [i["phase"] for i in its if i["allocation"] == family]
        assert phases == ["down"] * 2 + ["up"] * 5
        assert max(i["fraction"] for i in its if i["allocation"] == family) > 0.98


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"target_speedup": 1.0}, "--target-speedup must be a number above 1"),
        ({"target_speedup": "2"}, "--target-speedup must be a number above 1"),
        ({"target_speedup": 2, "structured": 0.3}, "choose one of --structured and --target-sp"),
        ({"target_speedup": 2, "target_macs": 0.5}, "choose one of --target-macs and --target-s"),
        ({"target_speedup": 2, "validate": False}, "--target-speedup is measured"),
        ({"max_rel_diff": 0.1}, "nothing to do"),
        ({"min_cosine": 0.9, "validate": False}, "a gate .* needs validation"),
    ],
)
def test_bad_search_options_are_one_clear_error(kw, message):
    with pytest.raises(UsageError, match=message):
        PruneOptions(**kw)


def test_a_gate_with_a_ratio_is_only_a_gate():
    assert PruneOptions(structured=0.3, min_cosine=0.9).search is None
    assert PruneOptions(min_cosine=0.9).search == "quality"
    assert PruneOptions(target_speedup=2, min_cosine=0.9).search == "speedup"


def _calib(tmp_path, n=10):
    path = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((n, 3, 8, 8)).astype(np.float32))
    return path


def test_the_default_scope_of_unstructured_is_global_only_with_calib(tmp_path):
    calib = _calib(tmp_path)
    assert PruneOptions(unstructured=0.5).unstructured_scope == "local"
    assert PruneOptions(unstructured=0.5, calib=calib).unstructured_scope == "global"
    assert PruneOptions(unstructured=0.5, calib=calib, scope="local").unstructured_scope == "local"
    without = prune(small_cnn(), unstructured=0.9, validate=False)
    assert without.report.unstructured.result.scope == "local"
    with_data = prune(small_cnn(), unstructured=0.9, calib=calib, validate=False)
    assert with_data.report.unstructured.result.scope == "global"
    asked = prune(small_cnn(), unstructured=0.9, calib=calib, scope="local", validate=False)
    assert asked.report.unstructured.result.scope == "local"


def test_structured_scope_stays_local_with_calib(tmp_path):
    result = prune(small_cnn(), structured=0.3, calib=_calib(tmp_path), validate=False)
    assert result.report.structured.scope == "local"


def test_target_speedup_on_the_command_line(tmp_path, capsys, run_cli):
    src = tmp_path / "m.onnx"
    onnx.save(residual_block(), src)
    report = tmp_path / "r.json"
    code, out, err = run_cli([src, "--target-speedup", 1.2, "--runs", 5, "--report", report], capsys)
    assert code == 0, err
    assert "target: speed-up 1.2x measured" in out
    t = json.loads(report.read_text())["structured"]["target"]
    assert t["metric"] == "speedup" and t["iterations"]
    code, _, err = run_cli([src, "--target-speedup", 1.0], capsys)
    assert code == 2 and err.startswith("error:")


def test_measured_losses_price_the_allocation_with_calib(tmp_path):
    from onnxprune.targets.measured import losses_hook

    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    calib = _calib(tmp_path)
    hook, priced = losses_hook(path, PruneOptions(target_speedup=2, calib=calib))
    assert hook is not None and priced.startswith("measured after recovery")
    assert losses_hook(path, PruneOptions(target_speedup=2))[0] is None
    bare = {"lstsq": False, "bias_correction": False}  # no recovery: analyze's masked losses
    hook, priced = losses_hook(path, PruneOptions(target_speedup=2, calib=calib, **bare))
    assert hook is not None and priced.startswith("measured (analyze")
    in_memory, why = losses_hook(small_cnn(), PruneOptions(target_speedup=2, calib=calib, **bare))
    assert in_memory is not None and why.startswith("measured without recovery")
    # after recovery needs no file: an in-memory model is measured too
    in_memory, why = losses_hook(small_cnn(), PruneOptions(target_speedup=2, calib=calib))
    assert in_memory is not None and why.startswith("measured after recovery")
    opts = PruneOptions(target_speedup=1.5, calib=calib, runs=5, lstsq=False)
    result = prune_searched(path, opts, prune_with, measure=_fake_measure)
    assert result.report.structured.target["losses"].startswith("measured")


def test_a_measured_curve_is_zero_whole_and_grows_to_one_slot():
    from onnxprune.structured.dependency import analyze
    from onnxprune.targets.measured import measured_curve
    from onnxprune.targets.sensitivity import prunable_groups

    g = prunable_groups(analyze(small_cnn()), ())[0][0]
    scores = np.arange(g.slots, dtype=float)
    curve = measured_curve(g, scores, {"0.25": 0.1, "0.5": 0.3, "0.75": 0.6})
    assert curve.at(g.slots) == 0.0 and curve.keep[0] == 1
    table = curve.table()
    assert np.all(np.diff(table) <= 1e-12)  # fewer kept, more lost
    assert curve.at(1) >= 0.6


def _block_clock(run, group: str, keep: int) -> float:
    """A known staircase: every started block of 4 channels costs 1 ms."""
    run()
    return 10.0 + float(np.ceil(keep / 4))


def test_target_speedup_keeps_counts_on_the_measured_staircase(tmp_path, monkeypatch):
    from onnxprune.targets import measured

    path = tmp_path / "m.onnx"
    onnx.save(residual_block(), path)
    hook, about = measured.staircase_hook(path, PruneOptions(target_speedup=2), timer=_block_clock)
    assert hook is not None and about["used"] and about["groups"] >= 2
    for steps in about["steps"].values():
        assert all(k % 4 == 0 for k in steps[:-1])  # 5..7 run no faster than 8: never chosen
    real = measured.staircase_hook
    monkeypatch.setattr(measured, "staircase_hook",
                        lambda m, o, **kw: real(m, o, timer=_block_clock, budget_s=None, **kw))  # fmt: skip
    opts = PruneOptions(target_speedup=1.6, runs=5)
    result = prune_searched(path, opts, prune_with, measure=_fake_measure)
    t = result.report.structured.target
    assert t["staircase"]["used"]
    for g in result.report.structured.plan.groups:
        assert len(g.kept) in t["staircase"]["steps"][g.id]
    off = prune_searched(path, PruneOptions(target_speedup=1.6, runs=5, staircase=False),
                         prune_with, measure=_fake_measure)  # fmt: skip
    assert off.report.structured.target["staircase"] == {"used": False, "why": "--no-staircase"}


def test_staircase_needs_a_speed_target():
    with pytest.raises(UsageError, match="--staircase prices the --target-speedup search"):
        PruneOptions(structured=0.3, staircase=True)
    assert not PruneOptions(target_speedup=2, staircase=False).uses_staircase
    assert PruneOptions(target_speedup=2).uses_staircase


def test_the_loop_stops_when_a_fraction_gives_a_model_already_measured():
    """On a staircase two fractions can give the same allocation: no third try between."""
    calls: list[float] = []

    def evaluate(f: float) -> Trial:
        calls.append(f)
        macs = 0.25 if f < 0.4 else 0.6  # two models only
        return Trial(f, macs=macs, speedup=1 / macs)

    best, _ = search_speedup(evaluate, 2.5)
    assert len(calls) < SPEEDUP_ITERATIONS and best.macs == 0.25


def test_a_search_saves_its_plan_and_the_plan_reapplies_exactly(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(residual_block(), src)
    plan = tmp_path / "plan.json"
    opts = PruneOptions(target_speedup=1.5, runs=5, save_plan=plan, staircase=False)
    out = tmp_path / "out.onnx"
    result = prune_searched(src, opts, prune_with, output=out, measure=_fake_measure)
    assert out.exists() and plan.exists()
    again = prune(src, plan=plan, validate=False)
    assert again.report.macs_after == result.report.macs_after
    assert again.report.params_after == result.report.params_after


def test_the_staircase_is_timed_on_the_batch_validation_times(tmp_path):
    from pathlib import Path

    from onnxprune.targets.measured import staircase_hook

    models = Path(__file__).resolve().parent.parent / "models"
    cnn, calib = models / "digits_cnn.onnx", models / "digits_cnn_calib.npz"
    opts = PruneOptions(target_speedup=2, calib=calib)  # 256 samples: the last 51 held out
    _, about = staircase_hook(cnn, opts, timer=_block_clock, budget_s=0.2)  # the fewest runs
    assert about["shapes"] == {"input": [51, 1, 8, 8]}
    _, about = staircase_hook(cnn, PruneOptions(target_speedup=2, samples=7), timer=_block_clock,
                              budget_s=0.2)  # fmt: skip
    assert about["shapes"] == {"input": [7, 1, 8, 8]}  # dynamic batch: all random samples


def test_a_candidate_at_the_edge_of_the_tolerance_does_not_end_the_search():
    """1.91x for 2x is within 5% but at its edge, where a final timing can read it outside:
    the search goes on, and keeps a candidate within 2.5% (AIM) over the edge one."""
    from onnxprune.targets.search import AIM, choose

    def evaluate(f: float) -> Trial:
        return Trial(f, macs=f, speedup=0.955 / f)  # 1/2 -> 1.91x

    best, trials = search_speedup(evaluate, 2.0)
    assert trials[0].speedup == pytest.approx(1.91) and len(trials) > 1
    assert best.speedup >= (1 - AIM) * 2.0
    edge, aimed = Trial(0.5, speedup=1.91), Trial(0.45, speedup=2.02)
    assert choose([edge, aimed], 2.0) is aimed
    assert choose([edge], 2.0) is edge  # still met, when nothing better was measured


def test_price_by_macs_searches_the_mac_fraction():
    opts = PruneOptions(target_speedup=1.3, runs=5, price_by="macs")
    result = prune_searched(residual_block(), opts, prune_with, measure=_fake_measure)
    t = result.report.structured.target
    assert t["macs"]["metric"] == "macs" and t["priced_by"] == {"by": "macs",
                                                                "why": "--price-by macs"}
    assert t["met"] and "cuts priced in MACs (--price-by macs)" in result.report.render()
    with pytest.raises(UsageError, match="--price-by"):
        PruneOptions(target_speedup=2, price_by="ms")


def _wide_cnn():
    """Conv(3->96, 3x3) -> Relu -> Conv(96->96, 3x3) at 32x32: some milliseconds a run, so a
    uniform half cut profiles clearly faster (a tiny graph's run is its fixed costs)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(96, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(96, 96, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 96, 32, 32])], [w1, w2],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_search_prices_by_a_real_profile_of_the_model():
    """No hooks: the original and its uniform cut are profiled, and the candidates are
    allocated on the time metric (tools/bench_time_model.py checks the predictions)."""
    result = prune_searched(_wide_cnn(), PruneOptions(target_speedup=1.2, runs=5, threads=1),
                            prune_with, measure=_fake_measure)  # fmt: skip
    t = result.report.structured.target
    assert t["priced_by"]["by"] == "time", t["priced_by"]
    assert t["priced_by"]["cut_ms"] < 0.9 * t["priced_by"]["profiled_ms"]
    assert t["macs"]["metric"] == "time" and 0 <= t["priced_by"]["fixed_share"] <= 1
    assert 0 < t["iterations"][0]["macs"] < 1


def test_a_profile_that_cannot_tell_where_cuts_save_time_prices_by_macs(monkeypatch):
    """A uniform half cut profiled no faster (a graph whose run is fixed costs): priced by
    MACs, and the report says why; a search priced by such a profile would keep it whole."""
    from onnxprune.targets import time_model

    def flat(model, groups, providers, feed, **kw):
        return time_model.TimePrices({n.name: (1.0, 0.0) for n in model.graph.node}, 0.0,
                                     full_ms=3.0, cut_ms=2.9, fixed_share=1.0)  # fmt: skip

    monkeypatch.setattr(time_model, "profile_prices", flat)
    result = prune_searched(small_cnn(), PruneOptions(target_speedup=1.2, runs=5), prune_with,
                            measure=_fake_measure)  # fmt: skip
    t = result.report.structured.target
    assert t["priced_by"]["by"] == "macs" and "97%" in t["priced_by"]["why"]
    assert t["macs"]["metric"] == "macs" and t["met"]


def test_a_profile_read_back_onto_too_few_nodes_prices_by_macs(monkeypatch):
    """90% of the kernel time stood for no node (as ConvNeXt-T's fused MatMul+Add once did):
    priced by MACs, and the report says how much was read back."""
    from onnxprune.targets import time_model

    def unread(model, groups, providers, feed, **kw):
        return time_model.TimePrices({n.name: (0.0, 0.1) for n in model.graph.node}, 9.0,
                                     full_ms=10.0, cut_ms=5.0, fixed_share=0.9,
                                     unattributed_ms=9.0)  # fmt: skip

    monkeypatch.setattr(time_model, "profile_prices", unread)
    result = prune_searched(small_cnn(), PruneOptions(target_speedup=1.2, runs=5), prune_with,
                            measure=_fake_measure)  # fmt: skip
    t = result.report.structured.target
    assert t["priced_by"]["by"] == "macs" and "read 10%" in t["priced_by"]["why"]


def test_with_data_the_speed_search_keeps_the_family_that_keeps_more(tmp_path):
    """With --calib the uniform cut is searched to the same speed-up as the allocation, both
    are recovered and validated, and the run keeps the one with the higher cosine: the final
    run (recovered again, on the same held-out data) reports that cosine."""
    model = small_cnn()
    opts = PruneOptions(target_speedup=1.5, calib=_calib(tmp_path, 20), runs=5,
                        hooks=_timed_as_macs(model))  # fmt: skip
    result = prune_searched(model, opts, prune_with, measure=_fake_measure)
    t = result.report.structured.target
    rows = t["compared"]
    assert [r["allocation"] for r in rows] == ["targeted", "uniform"]
    assert all(r["cosine"] is not None for r in rows)
    (kept,) = [r for r in rows if r["chosen"]]
    reached = [r for r in rows if r["search_speedup"] >= (1 - TOLERANCE) * 1.5]
    assert kept["cosine"] == max(r["cosine"] for r in reached)
    assert t["allocation"] == kept["allocation"] and t["fraction"] == kept["fraction"]
    assert result.report.validation.cosine == pytest.approx(kept["cosine"], abs=1e-6)
    assert {it["allocation"] for it in t["iterations"]} == {"targeted", "uniform"}
    assert "compared after recovery" in result.report.render()
    json.dumps(result.report.to_dict())
    plain = prune_searched(model, replace(opts, calib=None), prune_with, measure=_fake_measure)
    assert "compared" not in plain.report.structured.target  # no data: the allocation alone



def test_the_rounded_family_runs_each_distinct_model_once():
    """Without --round-to the quality search also cuts with the default rounding; most
    fractions round onto the same model, so each distinct model runs once, all of them when
    there are few (a gate is not monotone: a failure above does not rule out a pass below)."""
    from onnxprune.targets.quality_search import distinct_fractions, families
    from onnxprune.targets.scan import MAX_CANDIDATES

    # 64 channels rounded to 16: 48, 32, 16 (and 64, the whole model, left out)
    assert distinct_fractions(lambda f: (max(1, round(64 * f / 16)) * 16,)) == [0.87, 0.62, 0.37]
    assert distinct_fractions(lambda f: (round(f * 100),)) is None  # 98 models: the scan
    assert len(distinct_fractions(lambda f: (round(f * MAX_CANDIDATES),))) <= MAX_CANDIDATES
    assert families(PruneOptions(min_cosine=0.9, round_to=8)) == ("targeted", "uniform")

    result = prune(residual_block(), min_cosine=0.9, runs=5)
    rounded = [i for i in result.report.structured.target["iterations"]
               if i["allocation"] == "rounded"]  # fmt: skip
    assert rounded and all(i["phase"] == "all" for i in rounded)
    assert len({round(i["macs"], 9) for i in rounded}) == len(rounded)
    assert [i["fraction"] for i in rounded] == sorted((i["fraction"] for i in rounded),
                                                      reverse=True)  # fmt: skip
