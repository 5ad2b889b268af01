"""Per-layer sparsity for ``--unstructured``: OWL, outlier-weighted layerwise sparsity.

One ratio everywhere (``--scope local``) treats a layer whose outputs hang on a few large
weight x activation products like any other; one global ranking (``--scope global``)
compares scores across layers whose scales differ. OWL (Yin et al. 2023, "Outlier Weighed
Layerwise Sparsity") sets each layer's ratio from its *outlier ratio*: the fraction of its
Wanda scores ``|W_ij| * ||X_j||`` above ``M`` times the layer's mean score (``M`` = 5).
Layers with more outliers lose less. The paper's rule (its reference code): the outlier
ratios are scaled to [0, 2 lambda] by min and max, centred on their mean, and subtracted
from the target sparsity, so every layer's ratio lies in ``target +- lambda`` (lambda 0.08
in the paper) and the *unweighted* mean is the target.

What this module adds to the rule: the model's overall sparsity must be the one asked,
and the paper's mean is over layers, not weights, so a large layer off the mean moves the
total. The ratios are therefore shifted by one common amount (bisection; each clipped to
``[target - lambda, target + lambda]`` within ``[0, MAX_SPARSITY]``) until the weighted
mean is the target, and turned into whole counts that sum to exactly
``round(target * selected weights)`` (largest remainders). Equal outlier ratios give the
uniform allocation. N:M is not allocated: a sparse kernel runs one pattern.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "LAMBDA",
    "MAX_SPARSITY",
    "OUTLIER_M",
    "outlier_ratio",
    "owl_ratios",
    "owl_zeros",
    "whole_counts",
]  # fmt: skip

OUTLIER_M = 5.0
"""A score counts as an outlier above this many times its layer's mean (the paper's M)."""
LAMBDA = 0.08
"""How far a layer's sparsity may move from the target, either way (the paper's lambda)."""
MAX_SPARSITY = 0.99
"""No layer loses more than this fraction of its weights."""


def outlier_ratio(scores: np.ndarray, m: float = OUTLIER_M) -> float:
    """The fraction of ``scores`` above ``m`` times their mean (0 for an all-zero layer)."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    mean = float(flat.mean()) if flat.size else 0.0
    if mean <= 0.0:
        return 0.0
    return float((flat > m * mean).mean())


def owl_ratios(
    outliers: Mapping[str, float],
    sizes: Mapping[str, int],
    target: float,
    lam: float = LAMBDA,
) -> dict[str, float]:
    """Per layer, its sparsity: the paper's rule, then shifted so that the layers' sizes
    weigh the mean to exactly ``target`` (see the module doc)."""
    names = list(outliers)
    if not names:
        return {}
    d = np.array([outliers[n] for n in names], dtype=np.float64)
    spread = d.max() - d.min()
    if spread <= 0.0:
        raw = np.full(len(names), float(target))
    else:
        scaled = (d - d.min()) / spread * 2.0 * lam
        raw = target - (scaled - scaled.mean())  # more outliers: less sparse
    lo, hi = max(0.0, target - lam), min(MAX_SPARSITY, target + lam)
    w = np.array([sizes[n] for n in names], dtype=np.float64)

    def mean(shift: float) -> float:
        return float((np.clip(raw + shift, lo, hi) * w).sum() / w.sum())

    a, b = -2.0 * lam - 1.0, 2.0 * lam + 1.0
    for _ in range(100):  # mean(shift) is monotone: bisect to the target
        c = (a + b) / 2
        if mean(c) < target:
            a = c
        else:
            b = c
    ratios = np.clip(raw + (a + b) / 2, lo, hi)
    return {n: float(r) for n, r in zip(names, ratios, strict=True)}


def whole_counts(ratios: Mapping[str, float], sizes: Mapping[str, int], total: int,
                 lo: float = 0.0, hi: float = MAX_SPARSITY) -> dict[str, int]:  # fmt: skip
    """Weights to zero per layer: ``floor(ratio * size)``, then one more for the layers with
    the largest remainders (within ``[lo, hi]`` of their size) until they sum to ``total``."""
    names = list(ratios)
    exact = {n: ratios[n] * sizes[n] for n in names}
    counts = {n: int(np.floor(exact[n] + 1e-9)) for n in names}
    order = sorted(names, key=lambda n: (counts[n] - exact[n], n))  # largest remainder first
    short = total - sum(counts.values())
    while short > 0:
        grown = False
        for n in order:
            if short == 0:
                break
            if counts[n] + 1 <= max(int(np.floor(hi * sizes[n])), counts[n]):
                counts[n] += 1
                short -= 1
                grown = True
        if not grown:
            break
    while short < 0:  # only when bounds or rounding overshot: take back from the most cut
        n = max(names, key=lambda x: counts[x] - max(int(np.ceil(lo * sizes[x])), 0))
        counts[n] -= 1
        short += 1
    return counts


def owl_zeros(
    arrays: Mapping[str, np.ndarray],
    refs: Sequence,
    scorer,
    target: float,
    *,
    lam: float = LAMBDA,
    m: float = OUTLIER_M,
) -> tuple[dict[str, int], dict[str, float]]:
    """(weights to zero per tensor, each tensor's outlier ratio) for overall sparsity
    ``target`` over the weights ``refs`` (``magnitude.WeightRef``) whose values are in
    ``arrays``; ``scorer`` is the Wanda scorer (``calibration.stats.wanda_scorer``)."""
    outliers = {r.name: outlier_ratio(scorer(arrays[r.name], r), m) for r in refs}
    sizes = {r.name: int(arrays[r.name].size) for r in refs}
    ratios = owl_ratios(outliers, sizes, target, lam)
    total = round(target * sum(sizes.values()))
    lo, hi = max(0.0, target - lam), min(MAX_SPARSITY, target + lam)
    return whole_counts(ratios, sizes, total, lo, hi), outliers
