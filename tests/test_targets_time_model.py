"""The time model: per-node fixed + variable prices fitted from two profiles."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.graph.view import GraphView
from onnxprune.structured.dependency import analyze
from onnxprune.structured.plan import prunable_groups
from onnxprune.targets.costs import CostModel
from onnxprune.targets.profile import named_copy
from onnxprune.targets.time_model import fit_prices, profile_prices, uniform_keep
from onnxprune.testing.graphs import depthwise_block, residual_block, small_cnn


def _setup(build):
    model = named_copy(build())
    groups, _ = prunable_groups(analyze(model), ())
    return model, groups


@pytest.mark.parametrize("build", [small_cnn, residual_block, depthwise_block])
def test_prices_fitted_on_an_affine_clock_predict_any_cut_exactly(build):
    """Kernel times drawn from a known fixed + variable x work model: the fit recovers it,
    so the cost model prices the cut copy and every other cut at their true time."""
    model, groups = _setup(build)
    rng = np.random.default_rng(0)
    probe = CostModel(model, groups, None, node_ms={n.name: 1.0 for n in model.graph.node})
    truth = {n.name: (float(rng.uniform(0, 0.3)), float(rng.uniform(0.5, 2.0)))
             for n in model.graph.node}  # fmt: skip
    rest_fixed, rest_var = 0.2, 0.4

    def clock(keep):
        r = probe.work_ratios(keep)
        nodes = {k: a + b * r[k] for k, (a, b) in truth.items()}
        attributed = sum(b for _, b in truth.values())
        kept = sum(b * r[k] for k, (_, b) in truth.items())
        return nodes, rest_fixed + rest_var * kept / attributed

    half = uniform_keep(groups)
    full, full_rest = clock({})
    cut, cut_rest = clock(half)
    full_plain = {k: a + b for k, (a, b) in truth.items()}
    assert full == pytest.approx(full_plain)
    prices = fit_prices(full, full_rest, cut, cut_rest, probe.work_ratios(half))
    costs = CostModel(model, groups, None, node_ms=prices.node_ms, overhead_ms=prices.overhead_ms)
    assert costs.total("time") == pytest.approx(prices.full_ms)
    assert costs.total("time", half) == pytest.approx(sum(cut.values()) + cut_rest)
    for _ in range(3):
        keep = {g.id: int(rng.integers(1, g.slots + 1)) for g in groups}
        nodes, rest = clock(keep)
        # the rest is fitted against the nodes' work, weighted by their full time
        assert costs.total("time", keep) == pytest.approx(sum(nodes.values()) + rest, rel=0.05)


def test_noise_is_clamped_and_missing_kernels_stay_variable():
    prices = fit_prices({"a": 1.0, "b": 1.0, "c": 1.0}, 0.0, {"a": 0.1, "b": 1.2}, 0.0,
                        {"a": 0.5, "b": 0.5, "c": 0.5})  # fmt: skip
    assert prices.node_ms["a"] == (0.0, 1.0)  # faster than linear: no fixed part
    assert prices.node_ms["b"] == (1.0, 0.0)  # slower than whole: all fixed
    assert prices.node_ms["c"] == (0.0, 1.0)  # not in the cut copy's profile


def test_uniform_keep_lands_on_steps_of_eight_channels():
    _, groups = _setup(small_cnn)
    keep = uniform_keep(groups)
    for g in groups:
        assert 1 <= keep[g.id] <= g.slots and (keep[g.id] * g.width) % 8 == 0


def test_real_profiles_give_prices_that_add_up_to_the_profile():
    model, groups = _setup(small_cnn)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    prices = profile_prices(model, groups, ["CPUExecutionProvider"], {"x": x}, threads=1, runs=3)
    assert prices.node_ms and 0.0 <= prices.fixed_share <= 1.0
    costs = CostModel(model, groups, None, view=GraphView(model), node_ms=prices.node_ms,
                      overhead_ms=prices.overhead_ms)  # fmt: skip
    assert costs.total("time") == pytest.approx(prices.full_ms)
    assert costs.total("time", uniform_keep(groups)) <= costs.total("time")
