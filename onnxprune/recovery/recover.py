"""Recover accuracy after pruning from a few hundred unlabeled samples, without retraining.

Every refit layer ``y = W x + b`` (``onnxprune.recovery.layers``) is fitted so that, on calibration data,
the *pruned* model's input to it, ``x_p``, gives the *original* layer's output ``V x_o + c``:

    min_W  sum ||W x_p - (V x_o + c)||^2 + lam ||W - W_0||^2

Both sides come from onnxruntime runs of the two models on the same samples, reduced to the
Gram matrices ``G_pp = sum x_p x_p^T`` and ``G_op = sum x_o x_p^T`` (with a constant 1 appended
to ``x`` so the bias is fitted too), so memory is ``O(d^2)`` per layer, not ``O(samples)``.
Layers are processed in topological order in a few *waves*; each wave reads the model as
recovered so far, so a layer is fitted to the inputs it will really see and errors do not
accumulate (He et al. 2017, ThiNet; SparseGPT does the same block by block).

Three steps, each optional:

- ``bias``: only the mean: ``b += V mean(x_o) - W mean(x_p)`` (the expected contribution of
  removed channels and weights folded into the bias);
- ``lstsq`` (structured): the ridge least-squares solution above for every layer whose input
  changed; ``lam`` is ``damp`` times the mean diagonal of ``G_pp`` and pulls toward ``W_0``;
- ``obs`` (unstructured, N:M): the least-squares target is then sparsified column by column
  with the optimal-brain-surgeon update of SparseGPT (Frantar & Alistarh 2023): the weights
  with the lowest ``w^2 / [H^-1]_jj`` go and the others absorb their error through the
  Cholesky factor of the damped inverse Hessian ``H = G_pp``.

Rows (tokens, patch positions) are sampled up to ``max_rows`` per layer: a Gram matrix is
well estimated from a few times ``d`` rows, and a 56x56 feature map over 128 images would give
400k of them.

This module is the driver: which layers to refit, the waves, the onnxruntime passes (through
``onnxprune.calibration.stats``) and the public entry points. The parts it drives:
``recovery.gram`` (``LayerStats``: the Gram matrices and held-out rows of one layer),
``recovery.solvers`` (``least_squares``, ``mean_shift``, ``obs_factor``, ``obs_sparsify``) and
``recovery.params`` (``ModelParams``: reading and writing weights and biases; a refit layer
that had no bias gets one, which for a MatMul inserts an ``Add`` node: recovery changes the
graph's structure there, and only there).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.calibration.stats import DEFAULT_BUDGET_BYTES
from onnxprune.graph import quant
from onnxprune.graph.external import spill_weights
from onnxprune.graph.proto import is_lazy
from onnxprune.graph.view import GraphView
from onnxprune.metrics.memory import release_freed_memory
from onnxprune.progress import expect_total
from onnxprune.recovery.gram import LayerStats, rel_err
from onnxprune.recovery.layers import Layer, find_layers
from onnxprune.recovery.params import NONFINITE_REASON, ModelParams, augmented, write
from onnxprune.recovery.passes import wave_stats
from onnxprune.recovery.solvers import (
    blas_limit,
    inverse_product,
    least_squares,
    mean_shift,
    obs_factor,
    obs_sparsify,
)
from onnxprune.recovery.waves import gram_budget, split_waves, stats_size, wave_count
from onnxprune.runtime.feeds import sample_count
from onnxprune.structured.plan import Plan


@dataclass(frozen=True)
class RecoveryOptions:
    bias: bool = True
    lstsq: bool = True
    obs: bool = True
    damp: float = 0.01
    """Ridge / Hessian damping, relative to the mean diagonal of the input Gram matrix."""
    max_rows: int = 3072
    """Input rows sampled per layer (tokens, patch positions) over all calibration samples."""
    waves: int = 16
    """Most passes over the data; each refits a consecutive run of layers."""
    pass_budget_s: float | None = 25.0
    """Fewer waves when ``waves`` passes of onnxruntime over the calibration data would take
    longer than this (measured on one batch); None: always ``waves``."""
    block: int = 128
    """Columns per OBS block (SparseGPT's lazy batch update)."""
    downstream: bool = False
    """Structured: refit every layer whose input changed, not only the consumers that lost
    input channels. More layers fitted to few samples generalize worse: on MiniLM (65
    sentences) held-out cosine 0.948 against 0.951 for consumers only."""
    seed: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    budget_bytes: int = DEFAULT_BUDGET_BYTES
    gram_budget_bytes: int | None = None
    """Most bytes the Gram matrices (with the buffered rows and the original's kept rows)
    of one wave may hold: a wave whose layers would need more is split, one more pass each.
    None: ``waves.gram_budget`` (1.5 GiB, or a third of the weights of a model whose weights
    are read lazily, so that a wave's sums beside one model's weights stay in the memory
    bound; ResNet-50's 54 layers need at most 0.98 GB in one wave, MobileNetV2's 0.53 GB)."""
    blas_threads: int | None = 1
    """BLAS threads for recovery's Gram products, factors and solves (None: as the libraries
    choose; onnxruntime's threads are its own). On this shared 2-core machine OpenBLAS's
    threaded potrf/trtri ran 4x slower than one thread (4.5 against 0.76 CPU s for a
    4609-wide factor at load 18; ResNet-50's factor stage 195 s against 26 s): numpy and
    scipy each bring an OpenBLAS, whose idle threads spin against each other."""

    @property
    def any(self) -> bool:
        return self.bias or self.lstsq or self.obs


@dataclass
class RecoveryResult:
    steps: list[str]
    layers: list[dict] = field(default_factory=list)
    """Per refit layer: name, op, method, rows, err_before, err_after (relative output
    error ``||W x_p - V x_o|| / ||V x_o||`` on calibration rows; for bias and lstsq, rows
    held out of the first fit, which decides whether the refit is kept)."""
    skipped: list[dict] = field(default_factory=list)
    samples: int = 0
    waves: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    """CPU time of this process during recovery (all threads, onnxruntime's too): on a
    shared machine a steadier measure of the work than ``seconds``."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Where ``seconds`` went: ``taps`` (onnxruntime runs of both models), ``gram`` (Gram
    matrices from the sampled rows), ``factor`` (OBS: the inverse-Hessian factor and the
    dense target), ``solve`` (the per-layer solvers: OBS sparsification, least squares,
    bias shift, and the error measurements around them)."""

    def timed(self, stage: str, t0: float) -> float:
        """Add the time since ``t0`` to ``stage``; the new start time."""
        now = time.perf_counter()
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + now - t0
        return now

    def to_dict(self) -> dict:
        known = [x for x in self.layers if np.isfinite(x["err_before"])]
        errs_b = [x["err_before"] for x in known]
        errs_a = [x["err_after"] for x in known]
        return {
            "steps": list(self.steps),
            "samples": self.samples,
            "waves": self.waves,
            "seconds": self.seconds,
            "cpu_seconds": round(self.cpu_seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "layers_refit": len(self.layers),
            "mean_err_before": float(np.mean(errs_b)) if errs_b else None,
            "mean_err_after": float(np.mean(errs_a)) if errs_a else None,
            "layers": [{k: _finite_or_none(v) for k, v in x.items()} for x in self.layers],
            "skipped": [dict(x) for x in self.skipped],
        }


def _finite_or_none(v: object) -> object:
    """JSON has no NaN: an error that could not be measured is null."""
    return None if isinstance(v, float) and not np.isfinite(v) else v


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class _Target:
    lp: Layer
    lo: Layer
    rows: np.ndarray | None
    """Kept output rows of the original weight (flat over groups); None: all."""
    group_map: np.ndarray | None
    """Kept groups of a grouped Conv that lost whole groups; None: the same groups."""
    method: str
    zeros: int | None = None
    nm: tuple[int, int] | None = None


def _reference(lo: Layer, params_o: ModelParams, t: _Target) -> np.ndarray:
    """``[g_p, out_p, do+1]``: the original weight and bias rows the pruned layer must match."""
    full = augmented(lo, params_o)  # [g_o, opg_o, do+1]
    g_o, opg_o, _ = full.shape
    if t.rows is None:
        return full
    rows = np.asarray(t.rows)
    groups = t.group_map if t.group_map is not None else np.arange(g_o)
    out = []
    for kg in groups:
        local = rows[(rows >= kg * opg_o) & (rows < (kg + 1) * opg_o)] - kg * opg_o
        out.append(full[kg, local])
    return np.stack(out)


def _run(
    original: onnx.ModelProto,
    current: onnx.ModelProto,
    targets: list[_Target],
    inputs: Mapping[str, np.ndarray],
    opts: RecoveryOptions,
    result: RecoveryResult,
    progress: Callable[[int], None] | None,
) -> onnx.ModelProto:
    release_freed_memory()  # what the caller freed (a pruned model spilled to a file)
    params_o = ModelParams(original)
    params_p = ModelParams(current)
    rng = np.random.default_rng(opts.seed)
    result.samples = sample_count(inputs)
    count, batch = wave_count(original, inputs, len(targets), opts, result.samples)
    per_batch = math.ceil(opts.max_rows / max(1, result.samples // batch))
    rows = per_batch * math.ceil(result.samples / batch)  # the most any layer is fed
    sizes = [stats_size(t.lp, t.lo, params_o, params_p, rows, per_batch) for t in targets]
    waves = split_waves(targets, count, sizes, gram_budget(original, opts.gram_budget_bytes))
    result.waves = len(waves)
    spilled = any(map(is_lazy, current.graph.initializer))
    expect_total(progress, len(targets))  # the bar shows the time left
    for wave in waves:
        stats = {id(t): _layer_stats(t, params_o) for t in wave}
        wave_stats(original, current, wave, stats, inputs, opts, rng, result)
        t0 = time.perf_counter()
        for t in wave:
            stats[id(t)].fold()
            t0 = result.timed("gram", t0)
            factor_s = result.stage_seconds.get("factor", 0.0)
            _refit(t, stats.pop(id(t)), params_o, params_p, opts, result)
            # the rest of the refit (solvers, error measurements, writing) is "solve"
            result.stage_seconds["factor"] = result.stage_seconds.get("factor", 0.0)
            t0 = result.timed("solve", t0 + result.stage_seconds["factor"] - factor_s)
        if spilled:  # refit weights back to a file, so the next wave's session maps them
            current = spill_weights(current, min_bytes=0)
            params_p = ModelParams(current)
        release_freed_memory()  # the wave's sums and solver copies, before the next wave
        if progress is not None:
            progress(len(wave))
    return current


def _layer_stats(t: _Target, params_o: ModelParams) -> LayerStats:
    """The Gram accumulator of ``t``, which knows its target so that it can sum
    ``(T x_o) x_p^T`` instead of ``x_o x_p^T`` when that is cheaper."""
    target = _reference(t.lo, params_o, t)
    return LayerStats(t.lp, t.lo, t.group_map, t.method != "obs", target=target)


def _refit(
    t: _Target, st: LayerStats, params_o: ModelParams, params_p: ModelParams,
    opts: RecoveryOptions, result: RecoveryResult,
) -> None:  # fmt: skip
    if st.gpp is None:
        result.skipped.append({"layer": t.lp.label, "reason": "no calibration rows reached it"})
        return
    target = _reference(t.lo, params_o, t)
    if st.target is not None and np.array_equal(st.target, target):
        target = st.target  # float32 weights: the same values, half the bytes of float64
    tgop = st.target_gop(target)
    w0 = augmented(t.lp, params_p)
    before = rel_err(w0, target, st)
    if t.method == "obs":
        shares = _shares(t.zeros, target.shape[0])
        rows = []
        t0 = time.perf_counter()
        for k in range(target.shape[0]):
            u, h = obs_factor(st.gpp[k], opts.damp)
            # The dense least-squares target, with the same damped H, toward the original.
            rhs = tgop[k] + target[k] * (np.diagonal(h) - np.diagonal(st.gpp[k]))
            dense = inverse_product(rhs, u)  # rhs H^-1, H^-1 = U^T U
            result.timed("factor", t0)
            rows.append(obs_sparsify(dense, st.gpp[k], zeros=shares[k], nm=t.nm,
                                     block=opts.block, factor=u))  # fmt: skip
            t0 = time.perf_counter()
        new = np.stack(rows)
        if not opts.bias:
            new[..., -1] = w0[..., -1]
    else:
        new, tgop = _fit(t, st, target, w0, opts, tgop), None  # the fit may consume tgop
    after = rel_err(new, target, st)
    if t.method != "obs":
        if np.isnan(before):  # no held-out row (a layer seen once): keep the fit, say nothing
            pass
        elif not after <= before:
            new, after = w0, before  # never make a layer worse on rows it was not fitted to
        elif st.fold_held_out():  # the refit generalizes: fit once more with every row
            new = None
            new = _fit(t, st, target, w0, opts, st.target_gop(target))
    if not write(t.lp, params_p, new, opts.bias or t.method == "lstsq"):
        result.skipped.append({"layer": t.lp.label, "reason": NONFINITE_REASON})
        return
    result.layers.append(
        {"layer": t.lp.label, "op": t.lp.op, "method": t.method, "rows": st.rows,
         "err_before": before, "err_after": after}
    )  # fmt: skip


def _fit(
    t: _Target, st: LayerStats, target: np.ndarray, w0: np.ndarray, opts: RecoveryOptions,
    tgop: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The layer's new ``[g, out, d+1]`` weights from ``tgop`` (``st.target_gop(target)``),
    which the least-squares solve may overwrite: one d x out float64 copy fewer (392 MB for
    a 7000-wide layer of the 2.4 GB MLP, whose solves set its peak memory)."""
    if t.method == "lstsq":
        return least_squares(target, w0, st.gpp, None, opts.damp, opts.bias, prior_rows=True,
                             tgop=tgop, overwrite_tgop=tgop is not st.tgop)  # fmt: skip
    return mean_shift(target, w0, st.gpp, None, tgop=tgop)


def _shares(zeros: int | None, groups: int) -> list[int | None]:
    """``zeros`` split over the groups of a grouped Conv, summing exactly."""
    if zeros is None:
        return [None] * groups
    return [zeros // groups + (1 if k < zeros % groups else 0) for k in range(groups)]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _recover(
    reference: onnx.ModelProto,
    pruned: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    options: RecoveryOptions,
    steps: tuple[str, ...],
    choose: Callable[[onnx.ModelProto, RecoveryResult], list[_Target]],
    progress: Callable[[int], None] | None,
) -> tuple[onnx.ModelProto, RecoveryResult]:
    """What both entry points do: refit ``choose(copy, result)``'s targets in a copy of
    ``pruned``, with a result naming the ``steps`` that ``options`` turn on (none: no run)."""
    t0, c0 = time.perf_counter(), time.process_time()
    current = onnx.ModelProto()
    current.CopyFrom(pruned)
    result = RecoveryResult([s for s in steps if getattr(options, s)])
    if not result.steps:
        return current, result
    targets = choose(current, result)
    with blas_limit(options.blas_threads):
        current = _run(reference, current, targets, inputs, options, result, progress)
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - c0
    return current, result


def recover_structured(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: Plan,
    inputs: Mapping[str, np.ndarray],
    options: RecoveryOptions = RecoveryOptions(),
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[onnx.ModelProto, RecoveryResult]:
    """Refit, in a copy of ``pruned``, the consumers that lost input channels (every layer
    whose input differs from the original's with ``options.downstream``).

    ``pruned`` must come from ``apply_plan(original, plan)``: tensor names match and the plan
    says which output rows each weight kept.
    """

    def choose(current: onnx.ModelProto, result: RecoveryResult) -> list[_Target]:
        return _structured_targets(original, current, plan, options, result)

    return _recover(original, pruned, inputs, options, ("bias", "lstsq"), choose, progress)


def _structured_targets(
    original: onnx.ModelProto, current: onnx.ModelProto, plan: Plan,
    options: RecoveryOptions, result: RecoveryResult,
) -> list[_Target]:  # fmt: skip
    """The layers of ``current`` to refit after ``plan``; the others that would be are noted."""
    cuts = {(c.name, c.axis): c for c in plan.params}
    lo_by_y = {lay.y: lay for lay in find_layers(original)}
    changed = _changed_tensors(original, plan)
    method = "lstsq" if options.lstsq else "bias"
    targets = []
    for lp in find_layers(current):
        lo = lo_by_y.get(lp.y)
        consumer = (lo.weight, lo.in_axis) in cuts if lo is not None else False
        if lo is None or lp.x not in changed or not (consumer or options.downstream):
            continue
        if lo.op != lp.op:
            result.skipped.append({"layer": lp.label, "reason": "does not match the original"})
            continue
        out_cut = cuts.get((lo.weight, lo.out_axis))
        rows = np.asarray(out_cut.kept) if out_cut is not None else None
        group_map = None
        if lo.groups != lp.groups:
            opg = _out_channels(original, lo.weight) // lo.groups
            group_map = np.unique(rows // opg) if rows is not None else None
            if group_map is None or len(group_map) != lp.groups:
                result.skipped.append({"layer": lp.label, "reason": "groups changed unevenly"})
                continue
        targets.append(_Target(lp, lo, rows, group_map, method))
    view = GraphView(original, shapes=False)  # quantized layers are not refit: said so
    named = quant.quantized_inputs(view.initializers, view.quantized, plan.params)
    result.skipped.extend({"layer": n, "reason": quant.NOT_REFIT} for n in named)
    return targets



def _out_channels(model: onnx.ModelProto, conv_weight: str) -> int:
    return int(next(t for t in model.graph.initializer if t.name == conv_weight).dims[0])


def _changed_tensors(original: onnx.ModelProto, plan: Plan) -> set[str]:
    """Tensors whose values differ after the rewrite: downstream of any cut parameter."""
    view = GraphView(original, shapes=False)
    cut_names = {c.name for c in plan.params}
    changed: set[str] = set()
    for node in view.nodes:
        if any(i in cut_names or i in changed for i in node.input if i):
            changed.update(o for o in node.output if o)
    return changed


def recover_unstructured(
    reference: onnx.ModelProto,
    pruned: onnx.ModelProto,
    weights: Sequence[str],
    inputs: Mapping[str, np.ndarray],
    options: RecoveryOptions = RecoveryOptions(),
    *,
    nm: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[onnx.ModelProto, RecoveryResult]:
    """Reconstruct the layers of the zeroed ``weights`` of ``pruned`` (same graph as
    ``reference``, weights partly zeroed).

    With ``obs`` each layer is re-pruned to the same number of zeros (or the same N:M
    pattern) by SparseGPT on the pruned model's own inputs; otherwise its mask stays and only
    the bias moves (``bias``).
    """

    def choose(current: onnx.ModelProto, result: RecoveryResult) -> list[_Target]:
        return _unstructured_targets(reference, current, weights, options, nm, result)

    return _recover(reference, pruned, inputs, options, ("bias", "obs"), choose, progress)


def _unstructured_targets(
    reference: onnx.ModelProto, current: onnx.ModelProto, weights: Sequence[str],
    options: RecoveryOptions, nm: tuple[int, int] | None, result: RecoveryResult,
) -> list[_Target]:  # fmt: skip
    """The layers of the zeroed ``weights`` in ``current``; shared or misfit ones are noted."""
    wanted = set(weights)
    lo_by_y = {lay.y: lay for lay in find_layers(reference)}
    params_p = ModelParams(current)
    params_o = ModelParams(reference)
    targets = []
    seen: set[str] = set()
    for lp in find_layers(current):
        lo = lo_by_y.get(lp.y)
        if lp.weight not in wanted or lo is None:
            continue
        if lp.weight in seen:
            result.skipped.append({"layer": lp.label, "reason": "weight shared with another node"})
            continue
        seen.add(lp.weight)
        w = params_p.get(lp.weight)
        zeros = int(w.size - np.count_nonzero(w))
        original_w = params_o.get(lo.weight)
        already = int(original_w.size - np.count_nonzero(original_w))
        if options.obs:
            if nm is not None and (lp.matrix(w).shape[-1] // (lp.kernel[0] * lp.kernel[1])) % nm[1]:
                result.skipped.append({"layer": lp.label, "reason": f"channels not a multiple of {nm[1]}"})
                continue
            targets.append(_Target(lp, lo, None, None, "obs", None if nm else max(zeros, already), nm))
        else:
            targets.append(_Target(lp, lo, None, None, "bias"))
    return targets
