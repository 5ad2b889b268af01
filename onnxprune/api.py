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

from onnxprune.calibration.run_data import read_run_data
from onnxprune.graph import modelfile as io
from onnxprune.graph.check import check_in_memory, require_loaded
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
from onnxprune.runtime.shapes import random_validation_inputs, resolve_shapes
from onnxprune.stages import Stages, layer_bar, pass_bar
from onnxprune.targets.decide import read_run_plan, save_run_plan
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
    heads: float | None = None, hidden: float | None = None,
    unstructured: float | None = None,
    nm: str | tuple[int, int] | None = None,
    scope: str | None = None,
    criterion: str | None = None,
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
    min_cosine: float | None = None,
    max_drop: float | None = None,
    max_rel_diff: float | None = None,
    val: str | os.PathLike | None = None,
    val_labels: str | os.PathLike | None = None,
    holdout: bool = True,
    keep_failed: bool = False,
    input_shapes: dict | Sequence[str] | str | None = None,
    samples: int = 16,
    threads: int = 0,
    target_macs: float | None = None,
    target_params: float | None = None,
    save_plan: str | os.PathLike | None = None,
    plan: str | os.PathLike | None = None,
    target_speedup: float | None = None, staircase: bool | None = None, price_by: str = "time",
    jobs: int = 1, ray: str | None = None,
) -> PruneResult:
    """Prune an ONNX model and prove the result with onnxruntime.

    ``model`` is a path or an in-memory ``ModelProto`` (never modified). ``structured`` removes
    that fraction of channels/neurons physically (smaller dense model, real speed-up);
    ``unstructured`` zeroes that fraction of weights by magnitude and ``nm`` ("2:4") zeroes to
    an N:M pattern (smaller on disk once compressed; fast only with sparse kernels). ``heads``
    removes that fraction of heads per attention layer (whole KV groups in GQA), ``hidden``
    of each LayerNorm-normalized residual stream (approximate). Structured runs first.

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

    Validation scores data recovery never saw: ``val`` (same formats as ``calib``, labels in
    ``val_labels``), else the last 20% of the ``calib`` samples (when there are at least 5;
    their ``labels`` give the accuracy), held out of scoring and recovery; ``holdout=False``
    fits and validates on all of them (and then refuses gates). ``report.validation.data``
    says which. Gates (``min_cosine``, ``max_drop`` in accuracy points, ``max_rel_diff``)
    raise ``GateError`` (exit code 3) carrying the report (``exc.report``) when failed or
    when the validation is inconclusive; nothing is written then unless ``keep_failed``
    (written as ``<stem>.failed.onnx``). A pruned model giving NaN/Inf where the original is
    finite is an ``OnnxPruneError`` and is never written.

    ``input_shapes`` (``{"x": (1, 3, 640, 640)}`` or ``"x=1x3x640x640"`` strings) fixes the
    symbolic input sizes for random validation inputs and MACs; without it they come from
    ``calib``, the declared shape or a default per dimension role (README "Validation").
    Random validation draws ``samples`` samples; ``threads`` sets onnxruntime's intra-op
    threads for validation and latency (0: onnxruntime's own choice).

    ``target_macs``/``target_params`` (instead of ``structured``) keep at most that fraction of
    MACs/params, cut where it costs least; ``target_speedup``: that much faster, measured (on the
    latency staircase unless ``staircase=False``; cuts priced in profiled milliseconds unless
    ``price_by="macs"``); a gate alone: the fewest MACs passing it;
    ``save_plan`` writes the decision with the model's hash, ``plan`` re-applies it to that model.
    ``jobs``/``ray``: where a search's candidates and the calibration shards run.

    Raises ``UsageError`` for bad options and ``OnnxPruneError`` for model problems, each with
    a message meant for a person.

    Long because every option is spelled out as a keyword, with its default, for the reader.
    """
    opts = PruneOptions(
        structured=structured, heads=heads, hidden=hidden, unstructured=unstructured, nm=nm,
        scope=scope, criterion=criterion, round_to=round_to, max_group_ratio=max_group_ratio,
        exclude=exclude, validate=validate, calib=calib, seed=seed, providers=providers,
        runs=runs, force=force, external_data=external_data, calib_samples=calib_samples,
        calib_preprocess=calib_preprocess, labels=labels, bias_correction=bias_correction,
        lstsq=lstsq, obs=obs, min_cosine=min_cosine, max_drop=max_drop,
        max_rel_diff=max_rel_diff, val=val, val_labels=val_labels, holdout=holdout,
        keep_failed=keep_failed, input_shapes=input_shapes, samples=samples, threads=threads,
        target_macs=target_macs, target_params=target_params, save_plan=save_plan, plan=plan,
        target_speedup=target_speedup, staircase=staircase, price_by=price_by, jobs=jobs,
        ray=ray)  # fmt: skip
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
    if opts.search is not None:  # --target-speedup, or a gate alone: runs of this function
        from onnxprune.targets.search import prune_searched
        return prune_searched(model, opts, prune_with, output=output, progress=progress)
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


def _load(model: str | os.PathLike | onnx.ModelProto, report: Report, progress: bool = False) -> _Source:
    if isinstance(model, onnx.ModelProto):
        require_loaded(model)
        original = model
        if io.needs_normalization(model):
            original = onnx.ModelProto()
            original.CopyFrom(model)  # never modify the caller's model
            report.notes.extend(io.normalize_model(original))
        original, notes = check_in_memory(original, owned=original is not model)
        report.notes.extend(notes)
        size = 0 if io.model_needs_external_data(original) else original.ByteSize()
        return _Source(original, None, False, size)
    loaded = io.load_model(check_path(model, "model"), progress=progress)
    report.notes.extend(loaded.notes)
    return _Source(loaded.model, loaded.path, loaded.used_external_data, loaded.size_bytes)


def _failed_path(output_path: Path) -> Path:
    """``model.pruned.onnx`` -> ``model.failed.onnx``; ``out.onnx`` -> ``out.failed.onnx``."""
    name = output_path.name
    for suffix in (".pruned.onnx", ".onnx"):
        if name.endswith(suffix):
            return output_path.with_name(name[: -len(suffix)] + ".failed.onnx")
    return output_path.with_name(name + ".failed.onnx")


def _apply(
    original: onnx.ModelProto, opts: PruneOptions, report: Report, progress: bool, inputs,
    **structured,
) -> onnx.ModelProto:
    """Structured pruning first, then unstructured, each followed by its recovery."""
    pruned = original
    if opts.wants_structured:
        pruned = _structured(original, opts, report, progress, inputs, **structured)
    if opts.wants_unstructured:
        pruned = _unstructured(pruned, opts, report, progress, inputs)
    quantized = find_prunable_weights(original).quantized_ops
    refuse_if_nothing_pruned(report, quantized)
    if quantized:
        report.notes.append(f"quantized weights left untouched ({quantized_ops(quantized)})")
    return pruned


def _structured(original, opts: PruneOptions, report: Report, progress: bool, inputs, **kw):
    from onnxprune.calibration import stats as calibrate
    from onnxprune.recovery import recover
    from onnxprune.targets.decide import prune_structured_run

    def stats_for(targets: dict[str, int], view):
        if opts.jobs > 1 or opts.ray is not None:  # shards of the samples, their sums added
            from onnxprune.targets.executor import make_executor

            executor = make_executor(opts.jobs, opts.ray)
            return calibrate.sharded_channel_stats(original, inputs, targets, executor)
        return calibrate.channel_stats(
            original, inputs, targets, providers=_CPU, view=view, progress=pass_bar(progress)
        )

    pruned, result = prune_structured_run(
        original, opts, progress=progress, stats_for=stats_for if inputs else None, **kw
    )
    report.structured = result
    steps = recover.RecoveryOptions(
        bias=opts.step("bias"), lstsq=opts.step("lstsq"), obs=False, seed=opts.seed
    )
    if inputs is not None and steps.any and pruned is not original:
        pruned, rec = recover.recover_structured(
            original, (pruned := io.spill_weights(pruned)), result.plan, inputs, steps, progress=layer_bar(progress)
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
        reference, ratio=opts.unstructured, nm=opts.nm, scope=opts.unstructured_scope,
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
            reference, (pruned := io.spill_weights(pruned)), weights, inputs, steps, nm=opts.nm, progress=layer_bar(progress)
        )
        report.add_recovery("unstructured", rec)
        if steps.obs:
            zeroed = zeroed_between(reference, pruned, weights)
            report.unstructured = report.unstructured.with_zeroed(zeroed)
    return pruned


def _run(model, output_path: Path | None, opts: PruneOptions, stages: Stages, background):
    report = Report()
    with stages.stage("load"):
        src = _load(model, report, stages.progress)
        if output_path is not None:
            io.check_output_path(src.path or Path("<memory>"), output_path, opts.force)
        shapes = resolve_shapes(src.model, opts.input_shapes)  # a bad --input-shape fails now
        saved = read_run_plan(src.model, src.path, opts)
    provider_list: list[str] = []
    if opts.validate:
        # Resolve providers before the long work so a missing CUDA fails fast.
        from onnxprune.runtime.session import resolve_providers

        provider_list = resolve_providers(opts.providers)

    gzip_before = background.submit(compressed_size, src.model)
    with stages.stage("measure"):
        before = compute_metrics(src.model, compressed=False, input_shapes=shapes.shapes)
    with stages.stage("calibrate"):
        data = read_run_data(opts, src.model)
        inputs = data.fit
        if inputs is not None:  # the data's sizes, for MACs and the report
            shapes = _shapes_from_data(src.model, opts, inputs, shapes, before)
    with stages.stage("prune"):
        pruned = _apply(src.model, opts, report, stages.progress, inputs,
                        input_shapes=shapes.shapes, saved=saved)  # fmt: skip
    gzip_after = background.submit(compressed_size, pruned)
    with stages.stage("measure pruned"):
        after = compute_metrics(pruned, compressed=False, input_shapes=shapes.shapes)

    report.input_path = str(src.path) if src.path else None
    report.params_before, report.params_after = before.params, after.params
    report.nonzero_before, report.nonzero_after = before.nonzeros, after.nonzeros
    report.macs_before, report.macs_after = before.macs, after.macs
    report.size_bytes_before = src.size_bytes
    report.notes.extend(n for n in before.notes if n not in report.notes)
    report.notes.extend(_defaults_note(shapes))

    ext = opts.external_data
    if ext is None and src.used_external_data:
        ext = True
    scratch = None if output_path is not None else Path(tempfile.mkdtemp(prefix="onnxprune-"))
    gate_tail = None  # set when a gate failed: how the message ends
    try:
        with stages.stage("save"):
            target = output_path if output_path is not None else scratch / "pruned.onnx"
            staged, pruned = io.stage_lending(pruned, target, ext, stages.progress, gzip_after.result)
        with staged:  # discarded if validation (or anything) fails: no output left behind
            report.size_bytes_after = staged.size_bytes
            if opts.validate:
                with stages.stage("validate"):
                    validation = _validate(
                        src, staged.path, opts, provider_list, stages.progress, data, shapes
                    )
                    report.validation = with_recovery_note(validation, report.recovery)
                    _refuse_nonfinite(validation)
            if report.validation is not None and not report.validation.passed:
                staged.discard()
                gate_tail = _keep_failed(src, pruned, output_path, opts, ext, report)
            elif output_path is not None:
                report.output_path = str(staged.commit())
            else:
                staged.discard()
            if gate_tail is None and opts.save_plan is not None:
                save_run_plan(report.structured, src.model, src.path, opts)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    with stages.stage("measure"):
        report.gzip_bytes_before = gzip_before.result()
        report.gzip_bytes_after = gzip_after.result()
    if is_compression_sampled(src.model):
        report.notes.append(compression_note())
    report.timings_s, report.memory = dict(stages.timings), stages.memory(src.size_bytes)
    if gate_tail is not None:
        from onnxprune.runtime.gates import raise_if_failed

        raise_if_failed(report.validation.gates, report, gate_tail)
    written = Path(report.output_path) if report.output_path else None
    return PruneResult(model=pruned, report=report, output_path=written)


def _refuse_nonfinite(validation) -> None:
    """A pruned model giving NaN/Inf where the original is finite is broken: never written."""
    if validation.nonfinite_outputs:
        from onnxprune.errors import OnnxPruneError

        raise OnnxPruneError(
            "the pruned model gives NaN or Inf in output(s) "
            f"{', '.join(validation.nonfinite_outputs)} where the original is finite "
            f"(validation on {validation.data} data): not written"
        )


def _keep_failed(src, pruned, output_path: Path | None, opts: PruneOptions, ext, report) -> str:
    """After a failed gate: write ``<stem>.failed.onnx`` with ``keep_failed``; the message's end."""
    if not opts.keep_failed or output_path is None:
        return "; no output was written" + ("" if output_path is None else " (--keep-failed keeps it)")
    failed = _failed_path(output_path)
    io.check_output_path(src.path or Path("<memory>"), failed, opts.force)
    written = io.stage_model(pruned, failed, external_data=ext).commit()
    report.notes.append(f"a gate failed: the pruned model was kept as {written}")
    return f"; the pruned model was kept as {written}"


def _shapes_from_data(model, opts: PruneOptions, inputs, shapes, before):
    """Shapes resolved again with the calibration data; ``before``'s MACs recounted at them."""
    resolved = resolve_shapes(model, opts.input_shapes, inputs)
    inputs.sources = resolved.sources
    if resolved.shapes != shapes.shapes:
        before.macs = compute_metrics(model, compressed=False, input_shapes=resolved.shapes).macs
    return resolved


def _defaults_note(shapes) -> list[str]:
    """Say which sizes were a default guess, since MACs and random inputs depend on them."""
    guessed = [k for k, src in shapes.sources.items() if src == "default"]
    if not guessed:
        return []
    shown = ", ".join(f"{k}={'x'.join(map(str, shapes.shapes[k]))}" for k in guessed)
    return [f"symbolic input sizes set to defaults ({shown}): pass --input-shape to choose them"]


def _validate(
    src: _Source, pruned_path: Path, opts: PruneOptions, providers, progress, data, shapes=None
):
    """The runtime's ``ValidationResult`` of the staged output against the original, with
    the data it was scored on and the gates checked."""
    from dataclasses import replace

    from onnxprune.runtime import validate as v
    from onnxprune.runtime.gates import check_gates

    inputs, labels = data.val, data.val_labels

    tmpdir = None
    try:
        original_path = src.path
        if original_path is None:
            tmpdir = Path(tempfile.mkdtemp(prefix="onnxprune-orig-"))
            original_path = io.stage_model(src.model, tmpdir / "original.onnx").commit()
        if inputs is None:
            resolved = shapes or resolve_shapes(src.model, opts.input_shapes)
            inputs = random_validation_inputs(src.model, resolved, opts.samples, opts.seed)
        elif not inputs.sources:  # a split or a --val file: say where its sizes came from
            kind = "val" if data.source == "val" else "calib"
            inputs.sources = resolve_shapes(src.model, opts.input_shapes, inputs, kind).sources
        result = v.validate(
            original_path, pruned_path, inputs, providers, runs=opts.runs, progress=progress,
            labels=labels, threads=opts.threads,
        )
        gates = check_gates(result.to_dict(), opts.gates)
        passed = result.passed and all(g["passed"] for g in gates)
        return replace(result, data=data.source, gates=gates, passed=passed)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
