"""OWL per-layer sparsity (``unstructured.allocation``, ``--scope owl``): the overall sparsity
exactly as asked, every layer within its bounds, fewer zeros where more outliers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import numpy_helper

from onnxprune import prune
from onnxprune.errors import UsageError
from onnxprune.options import PruneOptions
from onnxprune.testing.graphs import mlp_block, small_cnn
from onnxprune.unstructured.allocation import (
    LAMBDA,
    MAX_SPARSITY,
    outlier_ratio,
    owl_ratios,
    owl_zeros,
    whole_counts,
)
from onnxprune.unstructured.magnitude import find_prunable_weights, magnitude


def test_the_outlier_ratio_counts_scores_above_m_times_the_mean():
    scores = np.ones(100)
    scores[:3] = 100.0  # mean 3.97: these three are above 5 x 3.97
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.03)
    assert outlier_ratio(np.ones(10), 5.0) == 0.0
    assert outlier_ratio(np.zeros(10), 5.0) == 0.0


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95])
def test_ratios_meet_the_target_weighted_by_size_and_stay_within_lambda(target):
    rng = np.random.default_rng(0)
    names = [f"w{i}" for i in range(7)]
    outliers = {n: float(x) for n, x in zip(names, rng.uniform(0, 0.05, 7), strict=True)}
    sizes = {n: int(s) for n, s in zip(names, rng.integers(100, 50_000, 7), strict=True)}
    ratios = owl_ratios(outliers, sizes, target)
    total = sum(sizes.values())
    assert sum(ratios[n] * sizes[n] for n in names) / total == pytest.approx(target, abs=1e-9)
    lo, hi = max(0.0, target - LAMBDA), min(MAX_SPARSITY, target + LAMBDA)
    assert all(lo - 1e-12 <= r <= hi + 1e-12 for r in ratios.values())
    ranked = sorted(names, key=lambda n: outliers[n])
    got = [ratios[n] for n in ranked]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(got))  # more outliers: fewer zeros
    assert ratios[ranked[0]] > ratios[ranked[-1]]
    counts = whole_counts(ratios, sizes, round(target * total), lo, hi)
    assert sum(counts.values()) == round(target * total)  # exactly, in whole weights
    assert all(0 <= counts[n] <= sizes[n] for n in names)
    assert all(abs(counts[n] - ratios[n] * sizes[n]) <= 1.0 for n in names)


def test_equal_outliers_give_the_uniform_allocation():
    ratios = owl_ratios({"a": 0.01, "b": 0.01}, {"a": 10, "b": 1000}, 0.6)
    assert ratios == {"a": pytest.approx(0.6), "b": pytest.approx(0.6)}


def test_owl_zeros_on_a_model_meet_the_overall_sparsity():
    model = small_cnn()
    sel = find_prunable_weights(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    arrays = {r.name: inits[r.name] for r in sel.weights}
    zeros, outliers = owl_zeros(arrays, sel.weights, magnitude, 0.7)
    total = sum(a.size for a in arrays.values())
    assert sum(zeros.values()) == round(0.7 * total)
    assert set(outliers) == set(arrays)


def _calib(tmp_path, model, n=12):
    rng = np.random.default_rng(0)
    x = model.graph.input[0]
    dims = [d.dim_value or n for d in x.type.tensor_type.shape.dim]
    dims[0] = n
    path = tmp_path / "calib.npz"
    np.savez(path, **{x.name: rng.standard_normal(dims).astype(np.float32)})
    return path


def test_prune_with_scope_owl_zeroes_exactly_the_fraction_asked(tmp_path):
    model = mlp_block(dim=16, hidden=32)
    calib = _calib(tmp_path, model)
    result = prune(model, unstructured=0.8, scope="owl", criterion="wanda", calib=calib,
                   validate=False)  # fmt: skip
    u = result.report.unstructured
    tensors = u.tensors if hasattr(u, "tensors") else u.to_dict()["tensors"]
    size = sum(t["size"] for t in tensors)
    zeroed = sum(round(t["sparsity_after"] * t["size"]) for t in tensors)
    assert zeroed == round(0.8 * size)
    assert len({round(t["sparsity_after"], 6) for t in tensors}) > 1  # per layer, not one ratio


@pytest.mark.parametrize("kw, words", [
    ({"structured": 0.3}, "--unstructured RATIO alone"),
    ({"nm": "2:4"}, "--unstructured RATIO alone"),
    ({"unstructured": 0.5, "criterion": "l1"}, "--criterion wanda"),
])  # fmt: skip
def test_scope_owl_is_refused_where_it_means_nothing(tmp_path, kw, words):
    with pytest.raises(UsageError, match=words):
        PruneOptions(scope="owl", calib=_calib(tmp_path, small_cnn()), **kw)
