"""Per-node time on the target as a fixed part plus a part that scales with the work kept.

A --target-speedup search prices its cuts in milliseconds (``targets.costs``' ``time``
metric). Scaling each profiled kernel's time by the fraction of its MACs kept (linear)
overstates what cutting small layers saves: a kernel has a cost that does not shrink with
its channels (launch, blocking, the reorders around it), and on MobileNetV2 most kernels are
small. So the original and one uniformly cut copy (every group at about half its channels,
on multiples of 8) are profiled together, runs alternating (``profile.profile_models``),
and each node's time is fitted as ``fixed + variable x work kept`` through the two points.
Kernel time no node stands for (fused Gelu kernels, reorders) is fitted the same way against
the whole model's work.

Predicted against measured speed-up of 10 random non-uniform cuts per model at 1 thread
(``tools/bench_time_model.py``; rms of the log error): MobileNetV2 linear 40%, fitted 7%,
MACs 56%; ResNet-50 16%, 11%, 17%; ConvNeXt-T 10%, 2%, 6%.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.structured.dependency import Group

__all__ = ["HALF", "TimePrices", "fit_prices", "profile_prices", "stepped_keep", "uniform_keep"]

HALF = 0.5
"""The fraction of each group's channels the second profiled copy keeps."""
STEP = 8
"""Kept channels of that copy are multiples of this (onnxruntime's NCHWc block on AVX2),
so its kernels are the fast ones a search's counts land on."""


@dataclass
class TimePrices:
    """What ``targets.costs.CostModel`` takes for its ``time`` metric, and how it was fitted."""

    node_ms: dict[str, tuple[float, float]]
    """Node label -> (fixed ms, ms that scale with the node's work kept)."""
    overhead_ms: float
    """Time no node's work changes."""
    full_ms: float
    """The original's profiled kernel time (the sum of the prices at full width)."""
    cut_ms: float
    """The uniformly cut copy's."""
    fixed_share: float
    """The fitted fixed time over the full time."""
    unattributed_ms: float = 0.0
    """The original's kernel time no node stands for (before the fit folds its variable
    part into the nodes): what says how well the profile was read back."""


def stepped_keep(g: Group, fraction: float, step: int = STEP) -> int:
    """About ``fraction`` of ``g``'s slots, kept channels a multiple of ``step`` where the
    group is wide enough (at least one step, never more than the group)."""
    per = max(1, step // int(np.gcd(step, g.width)))
    return min(g.slots, max(per, round(g.slots * fraction / per) * per))


def uniform_keep(groups: Sequence[Group], fraction: float = HALF, step: int = STEP) -> dict[str, int]:
    """Every group at ``stepped_keep(g, fraction, step)``."""
    return {g.id: stepped_keep(g, fraction, step) for g in groups}


def fit_prices(
    full: Mapping[str, float],
    full_rest: float,
    cut: Mapping[str, float] | None,
    cut_rest: float,
    ratios: Mapping[str, float],
) -> TimePrices:
    """Each node's (fixed, variable) split from its time in the original (``full``) and in
    the cut copy (``cut``, None: not profiled, all variable), where ``ratios`` says the
    fraction of its work the copy kept. The fixed part is clamped to [0, full time]: noise
    can make a kernel look faster than linear (fixed 0) or slower than whole (all fixed).
    A node the copy did not change, or whose kernel it does not have (fused otherwise),
    stays all variable. The unattributed rest is split the same way against the whole
    attributed work and folded into the nodes' variable parts, so prices stay per node."""
    node_ms: dict[str, tuple[float, float]] = {}
    for label, t0 in full.items():
        r = ratios.get(label, 1.0)
        t1 = None if cut is None else cut.get(label)
        fixed = 0.0
        if t1 is not None and r < 0.999:
            fixed = float(np.clip(t0 - (t0 - t1) / (1.0 - r), 0.0, t0))
        node_ms[label] = (fixed, t0 - fixed)
    attributed = sum(full.values())
    kept = sum(t * ratios.get(label, 1.0) for label, t in full.items())
    r_all = kept / attributed if attributed else 1.0
    rest_fixed = full_rest
    if cut is not None and r_all < 0.999:
        rest_fixed = float(np.clip(full_rest - (full_rest - cut_rest) / (1.0 - r_all), 0.0,
                                   full_rest))  # fmt: skip
    scale = (full_rest - rest_fixed) / attributed if attributed else 0.0
    if scale:  # the rest's variable part follows the nodes' work, node by node
        node_ms = {k: (a, b + scale * full[k]) for k, (a, b) in node_ms.items()}
    fixed_total = sum(a for a, _ in node_ms.values()) + rest_fixed
    total = attributed + full_rest
    return TimePrices(
        node_ms=node_ms, overhead_ms=rest_fixed, full_ms=total,
        cut_ms=(sum(cut.values()) + cut_rest) if cut is not None else total,
        fixed_share=fixed_total / total if total else 0.0, unattributed_ms=full_rest,
    )  # fmt: skip


def profile_prices(
    model: onnx.ModelProto,
    groups: Sequence[Group],
    providers: Sequence[str],
    feed: Mapping[str, np.ndarray],
    *,
    threads: int | None,
    runs: int,
    warmup: int = 3,
) -> TimePrices:
    """Profile ``model`` (every node named, ``profile.named_copy``) and its uniform cut
    together and fit the prices. Without prunable groups there is no second copy: linear."""
    from onnxprune.structured.plan import make_plan
    from onnxprune.structured.rewrite import apply_plan
    from onnxprune.targets.costs import CostModel
    from onnxprune.targets.profile import node_times, profile_models

    slots = {g.id: g.slots for g in groups}
    cuts = {gid: k for gid, k in uniform_keep(groups).items() if k < slots[gid]}
    models = [model]
    if cuts:
        scores = {g.id: np.zeros(g.slots) for g in groups}
        plan = make_plan(list(groups), scores, ratio=0.0, round_to=1, keep=cuts)
        models.append(apply_plan(model, plan, check=False))
    times = profile_models(models, providers, feed, threads=threads, runs=runs, warmup=warmup)
    full, rest = node_times(times[0], model)
    if len(times) == 1:
        return fit_prices(full, rest, None, 0.0, {})
    cut, cut_rest = node_times(times[1], models[1])
    ratios = CostModel(model, list(groups), None, node_ms=full).work_ratios(cuts)
    return fit_prices(full, rest, cut, cut_rest, ratios)
