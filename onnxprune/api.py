"""The public ``prune(...)``: composes load, prune, measure, validate and save.

This is the only place that knows the order of the stages; the CLI is a thin layer over it
so that a deployment pipeline calling ``onnxprune.prune`` gets exactly what the command
line gets, including the refusal to leave a half-written or unvalidated output behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxprune.graph import modelfile as io
from onnxprune.graph.outputs import require_loaded
from onnxprune.metrics.counts import (
    compressed_size,
    compression_note,
    compute_metrics,
    is_compression_sampled,
)
from onnxprune.options import PruneOptions, check_path
from onnxprune.report.outcome import (
    quantized_ops,
    refuse_if_nothing_pruned,
    with_recovery_note,
    zeroed_between,
)
from onnxprune.report.results import Report
from onnxprune.report.sections import UnstructuredSummary
from onnxprune.stages import Stages, layer_bar
from onnxprune.unstructured.magnitude import find_prunable_weights, magnitude, prune_unstructured

_CPU = ("CPUExecutionProvider",)
"""Calibration statistics run on CPU (validation runs on the chosen providers)."""


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    output_path: Path | None


def prune(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    output: str | os.PathLike | None = None,
    structured: float | None = None,
    heads: float | None = None,
    unstructured: float | None = None,
    nm: str | tuple[int, int] | None = None,
    scope: str = "local",
    criterion: str = "l1",
    round_to: int | None = None,
    max_group_ratio: float = 0.9,
    exclude: Sequence[str] = (),
    validate: bool = True,
    calib: str | os.PathLike | None = None,
    seed: int = 0,
    providers: str = "cpu",
    runs: int = 30,
    force: bool = False,
    external_data: bool | None = None,
    calib_samples: int | None = None,
    calib_preprocess: str | None = None,
    labels: str | os.PathLike | None = None,
    bias_correction: bool | None = None,
    lstsq: bool | None = None,
    obs: bool | None = None,
    progress: bool = False,
) -> PruneResult:
    """Prune an ONNX model and prove the result with onnxruntime.

    ``model`` is a path or an in-memory ``ModelProto`` (never modified). ``structured`` removes
    that fraction of channels/neurons physically (smaller dense model, real speed-up);
    ``unstructured`` zeroes that fraction of weights by magnitude and ``nm`` ("2:4") zeroes to
    an N:M pattern (smaller on disk once compressed; fast only with sparse kernels). ``heads``
    removes that fraction of the heads of each attention layer (whole key/value groups in
    grouped-query attention). Structured pruning runs first when combined with either.

    With ``output`` the result is written atomically, and only after validation passed; without
    it nothing is written (validation then uses a temporary folder). ``validate`` compares the
    original and pruned models on ``calib`` inputs (an .npz keyed by input name) or on random
    inputs drawn with ``seed``, and measures latency interleaved on ``providers``.

    ``calib`` also turns on recovery (each step can be switched with its flag): after
    structured pruning, ``bias_correction`` and ``lstsq`` refit every layer whose input
    changed so its output matches the original on the calibration data; after unstructured
    or N:M pruning, ``obs`` re-chooses and compensates the zeroed weights layer by layer
    (SparseGPT). ``calib_samples`` caps the samples read; ``calib_preprocess`` says how to
    turn images into tensors; ``labels`` (a .npy of class indices for the ``calib`` samples)
    adds accuracy before and after to the validation.

    Raises ``UsageError`` for bad options and ``OnnxPruneError`` for model problems, each with
    a message meant for a person.
    """
    opts = PruneOptions(
        structured=structured, heads=heads, unstructured=unstructured, nm=nm, scope=scope,
        criterion=criterion, round_to=round_to, max_group_ratio=max_group_ratio,
        exclude=exclude, validate=validate, calib=calib, seed=seed, providers=providers,
        runs=runs, force=force, external_data=external_data, calib_samples=calib_samples,
        calib_preprocess=calib_preprocess, labels=labels, bias_correction=bias_correction,
        lstsq=lstsq, obs=obs,
    )  # fmt: skip
    return prune_with(model, opts, output=output, progress=progress)


def prune_with(
    model: str | os.PathLike | onnx.ModelProto,
    opts: PruneOptions,
    *,
    output: str | os.PathLike | None = None,
    progress: bool = False,
) -> PruneResult:
    """``prune`` with the options already built (what the CLI calls)."""
    check_path(output, "output")
    stages = Stages(opts.stages(), progress)
    # Compressed sizes take about as long as pruning a big model: they run on a background
    # thread while the main thread prunes and saves, and are joined for the report.
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxprune-gzip")
    try:
        return _run(model, None if output is None else Path(output), opts, stages, background)
    finally:
        background.shutdown(wait=True, cancel_futures=True)
        stages.close()


@dataclass
class _Source:
    model: onnx.ModelProto
    path: Path | None
    used_external_data: bool
    size_bytes: int


def _load(model: str | os.PathLike | onnx.ModelProto, report: Report) -> _Source:
    if isinstance(model, onnx.ModelProto):
        require_loaded(model)
        original = model
        if io.needs_normalization(model):
            original = onnx.ModelProto()
            original.CopyFrom(model)  # never modify the caller's model
            report.notes.extend(io.normalize_model(original))
        size = 0 if io.model_needs_external_data(original) else original.ByteSize()
        return _Source(original, None, False, size)
    loaded = io.load_model(check_path(model, "model"))
    report.notes.extend(loaded.notes)
    return _Source(loaded.model, loaded.path, loaded.used_external_data, loaded.size_bytes)


def _calibration(opts: PruneOptions, model: onnx.ModelProto):
    """The calibration samples, read once and shared by scoring, recovery and validation."""
    if opts.calib is None:
        return None
    from onnxprune.calibration.data import make_inputs

    extra = {"preprocess": opts.calib_preprocess} if opts.calib_preprocess else {}
    return make_inputs(model, calib=opts.calib, max_samples=opts.calib_samples, **extra)


def _apply(
    original: onnx.ModelProto, opts: PruneOptions, report: Report, progress: bool, inputs
) -> onnx.ModelProto:
    """Structured pruning first, then unstructured, each followed by its recovery."""
    pruned = original
    if opts.wants_structured:
        pruned = _structured(original, opts, report, progress, inputs)
    if opts.wants_unstructured:
        pruned = _unstructured(pruned, opts, report, progress, inputs)
    quantized = find_prunable_weights(original).quantized_ops
    refuse_if_nothing_pruned(report, quantized)
    if quantized:
        report.notes.append(f"quantized weights left untouched ({quantized_ops(quantized)})")
    return pruned


def _structured(original, opts: PruneOptions, report: Report, progress: bool, inputs):
    from onnxprune.calibration import stats as calibrate
    from onnxprune.recovery import recover
    from onnxprune.structured.engine import StructuredOptions, prune_structured

    def stats_for(targets: dict[str, int], view):
        return calibrate.channel_stats(original, inputs, targets, providers=_CPU, view=view)

    pruned, result = prune_structured(
        original, StructuredOptions.from_prune(opts), progress=progress,
        stats_for=stats_for if inputs else None,
    )  # fmt: skip
    report.structured = result
    steps = recover.RecoveryOptions(
        bias=opts.step("bias"), lstsq=opts.step("lstsq"), obs=False, seed=opts.seed
    )
    if inputs is not None and steps.any and pruned is not original:
        pruned, rec = recover.recover_structured(
            original, pruned, result.plan, inputs, steps, progress=layer_bar(progress)
        )
        report.add_recovery("structured", rec)
    return pruned


def _unstructured(reference, opts: PruneOptions, report: Report, progress: bool, inputs):
    from onnxprune.calibration import stats as calibrate
    from onnxprune.recovery import recover

    scorer = magnitude
    if opts.criterion == "wanda" and inputs is not None:
        scorer = calibrate.wanda_scorer(reference, inputs, providers=_CPU)
    pruned, result = prune_unstructured(
        reference, ratio=opts.unstructured, nm=opts.nm, scope=opts.scope,
        exclude=opts.exclude, scorer=scorer,
    )  # fmt: skip
    criterion = "wanda" if scorer is not magnitude else "magnitude"
    report.unstructured = UnstructuredSummary.from_result(result, criterion)
    steps = recover.RecoveryOptions(
        bias=opts.step("bias"), lstsq=False, obs=opts.step("obs"), seed=opts.seed
    )
    weights = report.unstructured.weights
    if inputs is not None and steps.any and weights:
        pruned, rec = recover.recover_unstructured(
            reference, pruned, weights, inputs, steps, nm=opts.nm, progress=layer_bar(progress)
        )
        report.add_recovery("unstructured", rec)
        if steps.obs:
            zeroed = zeroed_between(reference, pruned, weights)
            report.unstructured = report.unstructured.with_zeroed(zeroed)
    return pruned


def _run(model, output_path: Path | None, opts: PruneOptions, stages: Stages, background):
    report = Report()
    with stages.stage("load"):
        src = _load(model, report)
        if output_path is not None:
            io.check_output_path(src.path or Path("<memory>"), output_path, opts.force)
    provider_list: list[str] = []
    if opts.validate:
        # Resolve providers before the long work so a missing CUDA fails fast.
        from onnxprune.runtime.session import resolve_providers

        provider_list = resolve_providers(opts.providers)

    gzip_before = background.submit(compressed_size, src.model)
    with stages.stage("measure"):
        before = compute_metrics(src.model, compressed=False)
    with stages.stage("calibrate"):
        inputs = _calibration(opts, src.model)
        labels = None
        if opts.labels is not None:  # a bad labels file fails now, not after the pruning
            from onnxprune.runtime.validate import load_labels

            labels = load_labels(opts.labels, max_samples=opts.calib_samples)
    with stages.stage("prune"):
        pruned = _apply(src.model, opts, report, stages.progress, inputs)
    gzip_after = background.submit(compressed_size, pruned)
    with stages.stage("measure pruned"):
        after = compute_metrics(pruned, compressed=False)

    report.input_path = str(src.path) if src.path else None
    report.params_before, report.params_after = before.params, after.params
    report.nonzero_before, report.nonzero_after = before.nonzeros, after.nonzeros
    report.macs_before, report.macs_after = before.macs, after.macs
    report.size_bytes_before = src.size_bytes
    report.notes.extend(n for n in before.notes if n not in report.notes)

    ext = opts.external_data
    if ext is None and src.used_external_data:
        ext = True
    scratch = None if output_path is not None else Path(tempfile.mkdtemp(prefix="onnxprune-"))
    try:
        with stages.stage("save"):
            target = output_path if output_path is not None else scratch / "pruned.onnx"
            staged = io.stage_model(pruned, target, external_data=ext)
        with staged:  # discarded if validation (or anything) fails: no output left behind
            report.size_bytes_after = staged.size_bytes
            if opts.validate:
                with stages.stage("validate"):
                    validation = _validate(
                        src, staged.path, opts, provider_list, stages.progress, inputs, labels
                    )
                    report.validation = with_recovery_note(validation, report.recovery)
            if output_path is not None:
                report.output_path = str(staged.commit())
            else:
                staged.discard()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    with stages.stage("measure"):
        report.gzip_bytes_before = gzip_before.result()
        report.gzip_bytes_after = gzip_after.result()
    if is_compression_sampled(src.model):
        report.notes.append(compression_note())
    report.timings_s = dict(stages.timings)
    return PruneResult(model=pruned, report=report, output_path=_path_or_none(report.output_path))


def _path_or_none(path: str | None) -> Path | None:
    return Path(path) if path else None


def _validate(
    src: _Source, pruned_path: Path, opts: PruneOptions, providers, progress, inputs, labels
):
    """The runtime's ``ValidationResult`` of the staged output against the original."""
    from onnxprune.calibration.data import make_inputs
    from onnxprune.runtime import validate as v

    tmpdir = None
    try:
        original_path = src.path
        if original_path is None:
            tmpdir = Path(tempfile.mkdtemp(prefix="onnxprune-orig-"))
            original_path = io.stage_model(src.model, tmpdir / "original.onnx").commit()
        if inputs is None:
            inputs = make_inputs(src.model, seed=opts.seed)
        return v.validate(
            original_path, pruned_path, inputs, providers, runs=opts.runs, progress=progress,
            labels=labels,
        )
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
