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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxprune import io
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.metrics import compute_metrics
from onnxprune.progress import progress_bar
from onnxprune.report import Report
from onnxprune.unstructured import check_ratio, find_prunable_weights, parse_nm, prune_unstructured

CRITERIA = ("l1", "l2", "bn-scale", "fpgm", "random")


@dataclass
class PruneResult:
    model: onnx.ModelProto
    report: Report
    output_path: Path | None


class _Stages:
    """Times each stage and drives one progress bar over them (stderr; hidden when not a TTY)."""

    def __init__(self, names: Sequence[str], progress: bool):
        self.timings: dict[str, float] = {}
        self._bar = None
        if progress:
            self._bar = progress_bar(total=len(names), desc="onnxprune", unit="step")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._bar is not None:
            self._bar.set_description(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            if self._bar is not None:
                self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _check_options(
    structured, unstructured, nm, scope, criterion, round_to, max_group_ratio, providers
):
    if structured is None and unstructured is None and nm is None:
        raise UsageError("nothing to do: pass --structured RATIO, --unstructured RATIO or --nm N:M")
    if unstructured is not None and nm is not None:
        raise UsageError("choose one of --unstructured and --nm")
    if structured is not None:
        check_ratio(structured, "--structured")
    if unstructured is not None:
        check_ratio(unstructured, "--unstructured")
    if nm is not None and isinstance(nm, str):
        parse_nm(nm)
    if scope not in ("local", "global"):
        raise UsageError(f"--scope must be 'local' or 'global', got {scope!r}")
    if criterion not in CRITERIA:
        raise UsageError(f"unknown --criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise UsageError(f"--round-to must be a positive integer, got {round_to!r}")
    if not 0.0 < max_group_ratio < 1.0:
        raise UsageError(f"--max-group-ratio must be in (0, 1), got {max_group_ratio!r}")
    if providers not in ("cpu", "cuda", "auto"):
        raise UsageError(f"--providers must be cpu, cuda or auto, got {providers!r}")


def prune(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    output: str | os.PathLike | None = None,
    structured: float | None = None,
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
    progress: bool = False,
) -> PruneResult:
    """Prune an ONNX model and prove the result with onnxruntime.

    ``model`` is a path or an in-memory ``ModelProto`` (never modified). ``structured`` removes
    that fraction of channels/neurons physically (smaller dense model, real speed-up);
    ``unstructured`` zeroes that fraction of weights by magnitude and ``nm`` ("2:4") zeroes to
    an N:M pattern (smaller on disk once compressed; fast only with sparse kernels). Structured
    pruning runs first when combined with either.

    With ``output`` the result is written atomically, and only after validation passed; without
    it nothing is written (validation then uses a temporary folder). ``validate`` compares the
    original and pruned models on ``calib`` inputs (an .npz keyed by input name) or on random
    inputs drawn with ``seed``, and measures latency interleaved on ``providers``.

    Raises ``UsageError`` for bad options and ``OnnxPruneError`` for model problems, each with
    a message meant for a person.
    """
    _check_options(
        structured, unstructured, nm, scope, criterion, round_to, max_group_ratio, providers
    )
    names = ["load", "measure", "prune", "measure pruned", "save"] + (
        ["validate"] if validate else []
    )
    stages = _Stages(names, progress)
    try:
        return _prune(
            stages, model, output, structured, unstructured, nm, scope, criterion, round_to,
            max_group_ratio, exclude, validate, calib, seed, providers, runs, force, external_data,
            progress,
        )  # fmt: skip
    finally:
        stages.close()


def _prune(
    stages, model, output, structured, unstructured, nm, scope, criterion, round_to,
    max_group_ratio, exclude, validate, calib, seed, providers, runs, force, external_data, progress,
):  # fmt: skip
    report = Report()
    output_path = Path(output) if output is not None else None
    with stages.stage("load"):
        if isinstance(model, onnx.ModelProto):
            original, input_path, used_external = model, None, False
            if io.needs_normalization(original):
                original = onnx.ModelProto()
                original.CopyFrom(model)  # never modify the caller's model
                report.notes.extend(io.normalize_model(original))
            size_before = original.ByteSize() if not io.model_needs_external_data(original) else 0
        else:
            loaded = io.load_model(model)
            original, input_path, used_external = (
                loaded.model,
                loaded.path,
                loaded.used_external_data,
            )
            size_before = loaded.size_bytes
            report.notes.extend(loaded.notes)
        if output_path is not None:
            io.check_output_path(input_path or Path("<memory>"), output_path, force)
    if validate:
        # Resolve providers before the long work so a missing CUDA fails fast.
        from onnxprune.validate import resolve_providers

        provider_list = resolve_providers(providers)

    with stages.stage("measure"):
        before = compute_metrics(original)
    pruned = original
    with stages.stage("prune"):
        if structured is not None:
            from onnxprune.structured import StructuredOptions, prune_structured

            options = StructuredOptions(
                ratio=structured, scope=scope, criterion=criterion, round_to=round_to,
                max_group_ratio=max_group_ratio, exclude=tuple(exclude), seed=seed,
            )  # fmt: skip
            pruned, sresult = prune_structured(pruned, options, progress=progress)
            report.structured = sresult.to_dict()
        if unstructured is not None or nm is not None:
            pruned, uresult = prune_unstructured(
                pruned, ratio=unstructured, nm=nm, scope=scope, exclude=exclude
            )
            report.unstructured = uresult.to_dict()
        _refuse_if_nothing_pruned(report, original)
        quantized = find_prunable_weights(original).quantized_ops
        if quantized:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(quantized.items()))
            report.notes.append(f"quantized weights left untouched ({ops})")
    with stages.stage("measure pruned"):
        after = compute_metrics(pruned)

    report.input_path = str(input_path) if input_path else None
    report.params_before, report.params_after = before.params, after.params
    report.nonzero_before, report.nonzero_after = before.nonzeros, after.nonzeros
    report.macs_before, report.macs_after = before.macs, after.macs
    report.gzip_bytes_before, report.gzip_bytes_after = before.gzip_bytes, after.gzip_bytes
    report.size_bytes_before = size_before
    for note in before.notes:
        if note not in report.notes:
            report.notes.append(note)

    ext = external_data if external_data is not None else (True if used_external else None)
    scratch = None if output_path is not None else Path(tempfile.mkdtemp(prefix="onnxprune-"))
    try:
        with stages.stage("save"):
            target = output_path if output_path is not None else scratch / "pruned.onnx"
            staged = io.stage_model(pruned, target, external_data=ext)
        try:
            report.size_bytes_after = staged.size_bytes
            if validate:
                with stages.stage("validate"):
                    report.validation = _validate(
                        original,
                        input_path,
                        staged.path,
                        calib,
                        seed,
                        provider_list,
                        runs,
                        progress,
                        scratch,
                    )
            if output_path is not None:
                final = staged.commit()
                report.output_path = str(final)
            else:
                staged.discard()
        except BaseException:
            staged.discard()
            raise
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    report.timings_s = dict(stages.timings)
    return PruneResult(
        model=pruned,
        report=report,
        output_path=Path(report.output_path) if report.output_path else None,
    )


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


def _validate(original, input_path, pruned_path, calib, seed, providers, runs, progress, scratch):
    from onnxprune import validate as v

    original_path = input_path
    tmpdir = None
    try:
        if original_path is None:
            tmpdir = Path(tempfile.mkdtemp(prefix="onnxprune-orig-"))
            original_path = io.stage_model(original, tmpdir / "original.onnx").commit()
        inputs = v.make_inputs(original, calib=calib, seed=seed)
        result = v.validate(
            original_path, pruned_path, inputs, providers, runs=runs, progress=progress
        )
        return result.to_dict()
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
