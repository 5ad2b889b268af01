"""The public ``prune(...)``: composes load, prune, measure, validate and save.

This is the only place that knows the order of the stages; the CLI is a thin layer over it
so that a deployment pipeline calling ``onnxprune.prune`` gets exactly what the command
line gets, including the refusal to leave a half-written or unvalidated output behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph import modelfile as io
from onnxprune.metrics.counts import (
    compressed_size,
    compression_note,
    compute_metrics,
    is_compression_sampled,
)
from onnxprune.progress import progress_bar
from onnxprune.report.results import Report
from onnxprune.structured.importance import CRITERIA, DATA_AWARE
from onnxprune.unstructured.magnitude import (
    check_ratio,
    find_prunable_weights,
    magnitude,
    parse_nm,
    prune_unstructured,
)


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    output_path: Path | None


class _Stages:
    """Times each stage and drives one progress bar over them (stderr; hidden when not a TTY)."""

    def __init__(self, names: Sequence[str], progress: bool):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._bar = None
        if progress:
            self._bar = progress_bar(total=len(names), desc="onnxprune", unit="step")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._bar is not None:
            self._bar.set_description(name)
        first = name not in self.timings  # a stage entered twice ("measure") is one step
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            if self._bar is not None and first:
                self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass(frozen=True)
class PruneOptions:
    """Every knob of one run, checked once up front so bad options fail before any work."""

    structured: float | None = None
    heads: float | None = None
    unstructured: float | None = None
    nm: str | tuple[int, int] | None = None
    scope: str = "local"
    criterion: str = "l1"
    round_to: int | None = None
    max_group_ratio: float = 0.9
    exclude: tuple[str, ...] = ()
    validate: bool = True
    calib: str | os.PathLike | None = None
    seed: int = 0
    providers: str = "cpu"
    runs: int = 30
    force: bool = False
    external_data: bool | None = None
    calib_samples: int | None = None
    calib_preprocess: str | None = None
    labels: str | os.PathLike | None = None
    bias_correction: bool | None = None
    lstsq: bool | None = None
    obs: bool | None = None

    def step(self, name: str) -> bool:
        """Whether recovery step ``name`` runs: as asked, else on exactly when --calib is."""
        asked = {"bias": self.bias_correction, "lstsq": self.lstsq, "obs": self.obs}[name]
        return self.calib is not None if asked is None else bool(asked)

    def check(self) -> None:
        if all(x is None for x in (self.structured, self.heads, self.unstructured, self.nm)):
            raise UsageError(
                "nothing to do: pass --structured RATIO, --heads RATIO, --unstructured RATIO "
                "or --nm N:M"
            )
        if self.unstructured is not None and self.nm is not None:
            raise UsageError("choose one of --unstructured and --nm")
        if self.structured is not None:
            check_ratio(self.structured, "--structured")
        if self.heads is not None:
            check_ratio(self.heads, "--heads")
        if self.unstructured is not None:
            check_ratio(self.unstructured, "--unstructured")
        if isinstance(self.nm, str):
            parse_nm(self.nm)
        if self.scope not in ("local", "global"):
            raise UsageError(f"--scope must be 'local' or 'global', got {self.scope!r}")
        if self.criterion not in CRITERIA:
            raise UsageError(
                f"unknown --criterion {self.criterion!r}; choose from {', '.join(CRITERIA)}"
            )
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise UsageError(f"--round-to must be a positive integer, got {self.round_to!r}")
        if not 0.0 < self.max_group_ratio < 1.0:
            raise UsageError(f"--max-group-ratio must be in (0, 1), got {self.max_group_ratio!r}")
        if self.providers not in ("cpu", "cuda", "auto"):
            raise UsageError(f"--providers must be cpu, cuda or auto, got {self.providers!r}")
        if self.calib is None:
            flags = {"--bias-correction": self.bias_correction, "--lstsq": self.lstsq,
                     "--obs": self.obs, "--labels": self.labels,
                     "--calib-samples": self.calib_samples,
                     "--calib-preprocess": self.calib_preprocess}  # fmt: skip
            asked = [f for f, v in flags.items() if v]
            if asked:
                raise UsageError(f"{asked[0]} needs calibration data: pass --calib PATH")
            if self.criterion in DATA_AWARE:
                raise UsageError(
                    f"--criterion {self.criterion} scores from activations: pass --calib PATH"
                )
        if self.calib_samples is not None and self.calib_samples < 1:
            raise UsageError(f"--calib-samples must be at least 1, got {self.calib_samples}")


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
        exclude=tuple(exclude), validate=validate, calib=calib, seed=seed, providers=providers,
        runs=runs, force=force, external_data=external_data, calib_samples=calib_samples,
        calib_preprocess=calib_preprocess, labels=labels, bias_correction=bias_correction,
        lstsq=lstsq, obs=obs,
    )  # fmt: skip
    opts.check()
    names = ["load", "measure", "calibrate", "prune", "measure pruned", "save"] + (
        ["validate"] if validate else []
    )
    stages = _Stages(names, progress)
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
        original = model
        if io.needs_normalization(model):
            original = onnx.ModelProto()
            original.CopyFrom(model)  # never modify the caller's model
            report.notes.extend(io.normalize_model(original))
        size = 0 if io.model_needs_external_data(original) else original.ByteSize()
        return _Source(original, None, False, size)
    loaded = io.load_model(model)
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
    from onnxprune.calibration import stats as calibrate
    from onnxprune.recovery import recover

    providers = ("CPUExecutionProvider",)
    pruned = original
    if opts.structured is not None or opts.heads is not None:
        from onnxprune.structured.engine import StructuredOptions, prune_structured

        options = StructuredOptions(
            ratio=opts.structured or 0.0, heads=opts.heads, scope=opts.scope,
            criterion=opts.criterion,
            round_to=opts.round_to, max_group_ratio=opts.max_group_ratio,
            exclude=opts.exclude, seed=opts.seed,
        )  # fmt: skip

        def stats_for(targets: dict[str, int], view):
            return calibrate.channel_stats(
                original, inputs, targets, providers=providers, view=view
            )

        pruned, sresult = prune_structured(
            pruned, options, progress=progress, stats_for=stats_for if inputs else None
        )
        report.structured = sresult.to_dict()
        steps = recover.RecoveryOptions(
            bias=opts.step("bias"), lstsq=opts.step("lstsq"), obs=False, seed=opts.seed
        )
        if inputs is not None and steps.any and pruned is not original:
            pruned, rec = recover.recover_structured(
                original, pruned, sresult.plan, inputs, steps, progress=_layer_bar(progress)
            )
            report.recovery = {**(report.recovery or {}), "structured": rec.to_dict()}
    if opts.unstructured is not None or opts.nm is not None:
        reference = pruned
        scorer = magnitude
        if opts.criterion == "wanda" and inputs is not None:
            scorer = calibrate.wanda_scorer(reference, inputs, providers=providers)
        pruned, uresult = prune_unstructured(
            reference, ratio=opts.unstructured, nm=opts.nm, scope=opts.scope,
            exclude=opts.exclude, scorer=scorer,
        )  # fmt: skip
        report.unstructured = uresult.to_dict()
        report.unstructured["criterion"] = "wanda" if scorer is not magnitude else "magnitude"
        steps = recover.RecoveryOptions(
            bias=opts.step("bias"), lstsq=False, obs=opts.step("obs"), seed=opts.seed
        )
        weights = [t["tensor"] for t in uresult.tensors]
        if inputs is not None and steps.any and weights:
            nm = (parse_nm(opts.nm) if isinstance(opts.nm, str) else opts.nm) if opts.nm else None
            pruned, rec = recover.recover_unstructured(
                reference, pruned, weights, inputs, steps, nm=nm, progress=_layer_bar(progress)
            )
            report.recovery = {**(report.recovery or {}), "unstructured": rec.to_dict()}
            if steps.obs:
                report.unstructured["zeroed"] = _zeroed(reference, pruned, weights)
    _refuse_if_nothing_pruned(report, original)
    quantized = find_prunable_weights(original).quantized_ops
    if quantized:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(quantized.items()))
        report.notes.append(f"quantized weights left untouched ({ops})")
    return pruned


def _zeroed(reference: onnx.ModelProto, pruned: onnx.ModelProto, names: list[str]) -> int:
    """Weights zeroed by the run: OBS re-chooses them, so count again."""
    from onnx import numpy_helper

    wanted = set(names)
    count = 0
    for model, sign in ((pruned, 1), (reference, -1)):
        for t in model.graph.initializer:
            if t.name in wanted:
                a = numpy_helper.to_array(t)
                count += sign * int(a.size - np.count_nonzero(a))
    return count


def _layer_bar(progress: bool):
    """A progress callback counting refit layers (a no-op when progress is off)."""
    if not progress:
        return None
    bar = progress_bar(total=None, desc="recover", unit="layer")
    return bar.update


def _run(model, output_path: Path | None, opts: PruneOptions, stages: _Stages, background):
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
                    report.validation = _validate(
                        src, staged.path, opts, provider_list, stages.progress, inputs, labels
                    )
                    if report.recovery:
                        report.validation["notes"].append(
                            "recovery was fitted to these samples: for an unbiased figure run "
                            "`onnxprune validate` on held-out data"
                        )
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


def _refuse_if_nothing_pruned(report: Report, model: onnx.ModelProto) -> None:
    """A run that could change nothing is a model problem, not a success with zero effect."""
    has_unstructured = report.unstructured is not None and report.unstructured["tensors"]
    has_structured = report.structured is not None and any(
        g["channels_before"] > 0 for g in report.structured.get("groups", [])
    )
    asked_unstructured = report.unstructured is not None
    asked_structured = report.structured is not None
    if (asked_unstructured and has_unstructured) or (asked_structured and has_structured):
        return
    reasons = []
    if report.unstructured is not None:
        reasons += [f"{s['tensor']}: {s['reason']}" for s in report.unstructured["skipped"][:3]]
    if report.structured is not None:
        reasons += [
            f"{b['where']}: {b['reason']}" for b in report.structured.get("blocked", [])[:3]
        ]
    quantized = find_prunable_weights(model).quantized_ops
    detail = ""
    if quantized:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(quantized.items()))
        detail = f" (quantized weights are left untouched: {ops})"
    elif reasons:
        detail = f" ({'; '.join(reasons)})"
    raise OnnxPruneError(
        "no prunable weights found: the model has no float Conv, ConvTranspose, Gemm or MatMul "
        f"weights that can be pruned{detail}"
    )


def _validate(
    src: _Source, pruned_path: Path, opts: PruneOptions, providers, progress, inputs, labels
) -> dict:
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
        result = v.validate(
            original_path, pruned_path, inputs, providers, runs=opts.runs, progress=progress,
            labels=labels,
        ).to_dict()  # fmt: skip
        return result
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
