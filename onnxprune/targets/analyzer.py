"""``onnxprune analyze``'s door: read the model and the data, check the options, consult the
cache, run ``targets.sensitivity.analyze_model`` with onnxruntime's profiler as the clock.

The CLI only parses and prints; a caller from Python gets the same ``Analysis`` here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from onnxprune.errors import UsageError
from onnxprune.graph import modelfile as io
from onnxprune.options import check_has_activations, check_int, check_patterns
from onnxprune.runtime.shapes import parse_input_shapes, random_validation_inputs, resolve_shapes
from onnxprune.structured.importance import CRITERIA
from onnxprune.targets import cache
from onnxprune.targets.profile import named_copy, profile_model
from onnxprune.targets.sensitivity import DEFAULT_FRACTIONS, Analysis, analyze_model

__all__ = ["DEFAULT_SAMPLES", "analyze_path", "parse_fractions"]

DEFAULT_SAMPLES = 8
"""Samples scored per candidate: enough to rank groups, and cheap: a candidate costs this
many runs of the model (one session serves them all, ``targets.masking``), so ResNet-50's
111 candidates cost about 900 runs (measured: 158 s on 2 busy cores, load 5-7)."""


def parse_fractions(value: str | Sequence[float]) -> list[float]:
    """``"0.25,0.5,0.75"`` (or numbers) as sorted unique fractions in (0, 1)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[float] = []
    for item in items:
        try:
            f = float(item)
        except (TypeError, ValueError):
            raise UsageError(f"--fractions must be numbers in (0, 1), got {value!r}") from None
        if not 0.0 < f < 1.0:
            raise UsageError(f"--fractions must be numbers in (0, 1), got {item!r}")
        out.append(f)
    if not out:
        raise UsageError(f"--fractions must list at least one fraction, got {value!r}")
    return sorted(set(out))


def analyze_path(
    path: str | os.PathLike,
    *,
    calib: str | os.PathLike | None = None,
    calib_preprocess: str | None = None,
    input_shapes: object = None,
    samples: int = DEFAULT_SAMPLES,
    providers: str = "cpu",
    threads: int = 0,
    criterion: str | None = None,
    fractions: str | Sequence[float] = DEFAULT_FRACTIONS,
    exclude: Sequence[str] = (),
    seed: int = 0,
    use_cache: bool = True,
    cache_folder: str | os.PathLike | None = None,
    progress: bool = False,
) -> Analysis:
    """Sensitivity, cost shares and measured latency of every prunable group of the model
    at ``path``; see ``targets.sensitivity``. Cached unless ``use_cache`` is False.

    Long because each input (data, shapes, providers) is read and checked in turn, before
    any long work, so a bad option fails at once.
    """
    from onnxprune.runtime.session import resolve_providers
    from onnxprune.structured.importance import resolve_criterion

    criterion = resolve_criterion(criterion, calib is not None)
    if criterion not in CRITERIA:
        raise UsageError(f"--criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    check_has_activations(criterion, calib is not None)
    samples = check_int(samples, "--samples", 1)
    threads = check_int(threads, "--threads", 0)
    check_patterns(exclude, "--exclude")
    fracs = parse_fractions(fractions)
    given = parse_input_shapes(input_shapes)
    provider_list = resolve_providers(providers)
    loaded = io.load_model(path)
    model = named_copy(loaded.model)
    if calib is not None:
        from onnxprune.calibration.data import make_inputs

        extra = {"preprocess": calib_preprocess} if calib_preprocess else {}
        inputs = make_inputs(model, calib=calib, max_samples=samples, **extra)
        resolved = resolve_shapes(model, given, inputs)
        data = "calib"
    else:
        resolved = resolve_shapes(model, given)
        inputs = random_validation_inputs(model, resolved, samples, seed)
        data = "random"
    blob = model.SerializeToString()
    entry = cache.key(
        hashlib.sha256(blob).hexdigest(), providers=provider_list, threads=threads,
        shapes={k: list(v) for k, v in resolved.shapes.items()}, criterion=criterion,
        fractions=fracs, data=cache.data_digest(inputs), exclude=list(exclude), seed=seed,
    )  # fmt: skip
    folder = None if cache_folder is None else os.fspath(cache_folder)
    if use_cache:
        hit = _cached(entry, folder)
        if hit is not None:
            hit.model = os.fspath(path)  # the same bytes may live under another name
            return hit
    feed = {
        k: v[: resolved.shapes[k][0]] if resolved.shapes.get(k) else v for k, v in inputs.items()
    }
    stats_for = None
    if calib is not None:
        from onnxprune.calibration import stats as calibrate

        def stats_for(targets, view):
            return calibrate.channel_stats(model, inputs, targets, view=view)

    bar = _bar if progress else None
    result = analyze_model(
        model, inputs, feed,
        lambda m, f: profile_model(m, provider_list, f, threads=threads or None),
        providers=provider_list, threads=threads or None, criterion=criterion,
        fractions=fracs, exclude=exclude, shapes=resolved.shapes, stats_for=stats_for,
        seed=seed, run_batch=getattr(inputs, "run_batch", None), progress=bar,
    )  # fmt: skip
    result.model = os.fspath(path)
    result.data = data
    result.samples = _rows(inputs)
    result.notes.extend(getattr(inputs, "notes", []))
    if use_cache:
        cache.store(entry, result.to_dict(), None if folder is None else _folder(folder))
    return result


def _folder(folder: str):
    from pathlib import Path

    return Path(folder)


def _cached(entry: str, folder: str | None) -> Analysis | None:
    """The cached analysis, or None: an entry that does not parse back is ignored."""
    value = cache.load(entry, None if folder is None else _folder(folder))
    if value is None:
        return None
    try:
        hit = Analysis.from_dict(value)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    hit.cached = True
    return hit


def _rows(inputs) -> int:
    from onnxprune.runtime.feeds import shared_batch

    return int(shared_batch(inputs) or 1)


def _bar(total: int):
    from onnxprune.progress import progress_bar

    bar = progress_bar(total=total, desc="analyze", unit="candidate")

    def step(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return step
