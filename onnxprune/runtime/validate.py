"""Does the pruned model still compute what the original did, and is it faster?

Both models run in onnxruntime on the same inputs (a calibration file, or random inputs of
the right type and shape) and their outputs are compared. Latency is measured the way the
model is deployed (sessions opened from the file, full graph optimization) and *interleaved*:
A, B, B, A, ... so that noise from the rest of the machine lands on both models alike.

Sessions are opened from the file path, never from bytes, so that models with external data
or over 2 GB work. Every onnxruntime failure is turned into an ``OnnxPruneError`` that says
which of the two models failed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.calibration.stats import fixed_batch
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.progress import progress_bar

__all__ = [
    "InputBatch",
    "ValidationResult",
    "compare_outputs",
    "make_inputs",
    "measure_latency",
    "resolve_providers",
    "run_model",
    "validate",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_MIN_RUNS = 5  # latency runs per model kept even when the time budget is spent
_BUDGET_S = 10.0  # seconds of latency measurement in validate()
#: Calibration sets are compared in chunks of this many samples when the batch is dynamic
#: (bounded memory), and in chunks of the model's batch size when it is fixed.
MAX_VALIDATION_BATCH = 256
_TOKEN_ID_HIGH = 100  # random token ids are drawn in [0, 100): valid for any real vocabulary


# --------------------------------------------------------------------------------------------
# Providers and sessions
# --------------------------------------------------------------------------------------------


def resolve_providers(choice: str) -> list[str]:
    """Execution providers for 'cpu', 'cuda' or 'auto' (CUDA when onnxruntime has it).

    Asking for CUDA on an onnxruntime without it is an error rather than a silent CPU run:
    the user asked for GPU figures.
    """
    import onnxruntime as ort

    key = str(choice).strip().lower()
    available = ort.get_available_providers()
    if key == "cpu":
        return [CPU]
    if key == "cuda":
        if CUDA not in available:
            raise OnnxPruneError(
                "CUDA requested but onnxruntime has no CUDAExecutionProvider "
                "(install onnxprune[gpu] / onnxruntime-gpu)"
            )
        return [CUDA, CPU]
    if key == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise UsageError(f"unknown providers {choice!r}: choose cpu, cuda or auto")


def _ort_message(exc: BaseException) -> str:
    """The first line of an onnxruntime error, without its '[ONNXRuntimeError] : 1 : FAIL :'."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if line.startswith("[ONNXRuntimeError]"):
        parts = line.split(" : ", 3)
        line = parts[3] if len(parts) == 4 else line
    return line.strip()


def _session(path: str | os.PathLike, providers: Sequence[str], role: str):
    """An onnxruntime session as a deployment would open it; errors name ``role``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's problem
    try:
        return ort.InferenceSession(
            os.fspath(path), sess_options=options, providers=list(providers)
        )
    except Exception as exc:  # onnxruntime raises its own pybind types (Fail, InvalidGraph...)
        raise OnnxPruneError(f"onnxruntime cannot run the {role}: {_ort_message(exc)}") from exc


def _feeds(session, inputs: dict[str, np.ndarray], role: str) -> dict[str, np.ndarray]:
    """The inputs the session takes (a pruned model may have lost an unused input)."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise OnnxPruneError(
            f"onnxruntime cannot run the {role}: no value for input(s) {', '.join(missing)}"
        )
    return {n: inputs[n] for n in names}


def _chunked(session, feed: dict[str, np.ndarray], notes: list[str]) -> list[dict]:
    """Split a feed along the batch axis into what the model accepts.

    A model exported with a fixed batch (1 for most CNN exports) cannot take a calibration
    set of N samples in one run; a dynamic one can, but memory grows with N. Inputs must
    share their first dimension to be split; otherwise the feed is used whole.
    """
    sizes = {v.shape[0] for v in feed.values() if v.ndim}
    if len(sizes) != 1 or any(v.ndim == 0 for v in feed.values()):
        return [feed]
    n = sizes.pop()
    fixed = fixed_batch(session)
    step = fixed or MAX_VALIDATION_BATCH
    if n <= step:
        return [feed]
    # A fixed batch cannot take a short last chunk; a dynamic one can.
    usable = n - n % step if fixed else n
    if usable < n:
        notes.append(f"last {n - usable} of {n} samples dropped: the model's batch is {step}")
    notes.append(f"{usable} samples run in batches of {step}; latency measured on one batch")
    return [{k: v[a : a + step] for k, v in feed.items()} for a in range(0, usable, step)]


def _join_chunks(results: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Outputs of all chunks, concatenated along the batch axis where they have one."""
    if len(results) == 1:
        return results[0]
    joined = []
    for parts in zip(*results, strict=True):
        if all(p.ndim and p.shape[1:] == parts[0].shape[1:] for p in parts):
            joined.append(np.concatenate(parts, axis=0))
        else:
            joined.append(np.stack(parts))
    return joined


def _run(session, feeds: dict[str, np.ndarray], role: str, hint: str = "") -> list[np.ndarray]:
    try:
        return [np.asarray(o) for o in session.run(None, feeds)]
    except Exception as exc:
        raise OnnxPruneError(
            f"onnxruntime cannot run the {role}: {_ort_message(exc)}{hint}"
        ) from exc


def run_model(
    path: str | os.PathLike,
    inputs: dict[str, np.ndarray],
    providers: list[str],
    *,
    role: str = "model",
) -> list[np.ndarray]:
    """Run the model at ``path`` once on ``inputs``; outputs in the graph's order.

    ``role`` ("original model", "pruned model") is how an error names the model.
    """
    session = _session(path, providers, role)
    return _run(session, _feeds(session, inputs, role), role, _guess_hint(inputs))


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


class InputBatch(dict):
    """A ``dict`` of input name to array, plus ``notes`` on what was guessed to make it.

    ``validate`` copies the notes into its result, so a report says when a symbolic
    dimension was set to 1 or the inputs were random.
    """

    def __init__(self, *args, notes: list[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[str] = list(notes or [])


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a caller must feed: old IR versions also list initializers as inputs."""
    inits = {t.name for t in model.graph.initializer}
    inits |= {t.values.name for t in model.graph.sparse_initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _input_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    t = vi.type
    if not t.HasField("tensor_type"):
        kind = t.WhichOneof("value") or "unknown"
        raise OnnxPruneError(
            f"input {vi.name!r} is a {kind.replace('_type', '')}, not a tensor: "
            "onnxprune can only feed tensor inputs"
        )
    elem = t.tensor_type.elem_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, ValueError, TypeError) as exc:
        raise OnnxPruneError(
            f"input {vi.name!r} has element type {elem}, which onnxprune cannot feed"
        ) from exc
    if dtype.kind not in "fiub" or elem == onnx.TensorProto.BFLOAT16:
        name = onnx.TensorProto.DataType.Name(elem)
        raise OnnxPruneError(
            f"input {vi.name!r} has type {name}: onnxprune can feed float, integer and "
            "bool inputs only"
        )
    return dtype


def _input_dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _random_shape(vi: onnx.ValueInfoProto, batch_size: int, notes: list[str]) -> tuple[int, ...]:
    dims = _input_dims(vi)
    if dims is None:
        raise OnnxPruneError(
            f"input {vi.name!r} has no shape, so random inputs cannot be made: "
            "pass calibration data (--calib file.npz)"
        )
    shape = []
    for axis, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif axis == 0:
            shape.append(batch_size)
        else:
            shape.append(1)
            what = f"dimension {d!r}" if isinstance(d, str) and d else f"dimension {axis}"
            notes.append(f"input {vi.name!r}: {what} set to 1 (pass --calib to choose it)")
    return tuple(shape)


def _random_values(
    name: str, dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """Values a real input of this kind could hold, so the model runs its normal path.

    Floats are standard normal. Integers are bounded: masks are all ones, token type and
    segment ids are zeros, positions count up the last axis, and anything else (token ids,
    class indices) is drawn in [0, 100), valid for any vocabulary. uint8 (images) covers
    [0, 256).
    """
    lower = name.lower()
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        if "mask" in lower:
            return np.ones(shape, dtype=bool)
        return rng.integers(0, 2, size=shape).astype(bool)
    if "mask" in lower:
        return np.ones(shape, dtype=dtype)
    if "type" in lower or "segment" in lower:
        return np.zeros(shape, dtype=dtype)
    if "position" in lower and len(shape) >= 1:
        return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
    high = 256 if dtype == np.uint8 else _TOKEN_ID_HIGH
    return rng.integers(0, high, size=shape).astype(dtype)


def make_inputs(
    model: onnx.ModelProto,
    *,
    calib: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 1,
    max_samples: int | None = None,
    preprocess: str | None = None,
) -> InputBatch:
    """Inputs for every real graph input: from calibration data or random.

    ``calib`` is an ``.npz`` keyed by input name, a folder of ``.npy`` files or a folder of
    images (``onnxprune.calibration.data.load_calibration``: dtype, rank and fixed dims must match
    the model, mismatches are errors that name the array or file; ``max_samples`` keeps the
    first samples; ``preprocess`` normalizes images). Without it, random inputs get the
    input's dtype and shape, with a symbolic first dim set to ``batch_size`` and other
    symbolic dims to 1 (noted in ``.notes``).
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"max samples must be at least 1, got {max_samples}")
    if calib is not None:
        from onnxprune.calibration.data import load_calibration  # it builds on this module

        return load_calibration(calib, model, max_samples=max_samples, preprocess=preprocess)
    if preprocess is not None:
        raise UsageError("--calib-preprocess needs --calib (a folder of images)")
    wanted = _real_inputs(model)
    rng = np.random.default_rng(seed)
    batch = InputBatch(notes=[])
    for vi in wanted:
        dtype = _input_dtype(vi)
        shape = _random_shape(vi, batch_size, batch.notes)
        batch[vi.name] = _random_values(vi.name, dtype, shape, rng)
    batch.notes.insert(0, f"random inputs (seed {seed})")
    return batch


def _guess_hint(inputs: dict) -> str:
    """Said after a run failure when the inputs were partly guessed."""
    guessed = [n for n in getattr(inputs, "notes", []) if "set to 1" in n]
    if not guessed:
        return ""
    return " (random inputs had guessed dimensions; pass --calib with real inputs)"


# --------------------------------------------------------------------------------------------
# Comparing outputs
# --------------------------------------------------------------------------------------------


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity; 1.0 when both are all zero, 0.0 when only one is.

    Identical vectors give exactly 1.0 (not 1 - 1e-16), so "no drift" reads as such.
    """
    if np.array_equal(a, b):
        return 1.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| elementwise; equal values (NaN with NaN, inf with inf) differ by 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a - b)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    diff[same] = 0.0
    diff[np.isnan(diff)] = np.inf
    return diff


def _is_class_scores(x: np.ndarray) -> bool:
    return x.ndim == 2 and x.dtype.kind == "f" and x.shape[1] >= 2 and x.shape[0] >= 1


def compare_outputs(
    reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str]
) -> dict:
    """How far ``candidate`` is from ``reference``: keys of ``ValidationResult`` minus latency.

    Returns ``max_abs_diff``, ``rel_diff`` (max_abs_diff / max |reference|, over all
    outputs), ``cosine`` (of all outputs flattened and concatenated), ``top1_agreement``
    (rows of every [N, C>=2] float output whose argmax agrees, else None), ``per_output``
    and ``notes``. Outputs must match in number and shape: a pruned model that changed an
    output's shape is broken, not merely inaccurate.
    """
    if len(reference) != len(candidate):
        raise OnnxPruneError(
            f"the pruned model has {len(candidate)} outputs but the original has {len(reference)}"
        )
    names = list(names) + [f"output{i}" for i in range(len(names), len(reference))]
    per_output: list[dict] = []
    flat_ref, flat_cand = [], []
    max_abs = max_ref = 0.0
    agree = rows = 0
    notes: list[str] = []
    for name, r, c in zip(names, reference, candidate, strict=False):
        r, c = np.asarray(r), np.asarray(c)
        if r.shape != c.shape:
            raise OnnxPruneError(
                f"output {name!r} of the pruned model has shape {c.shape} but the original has {r.shape}"
            )
        if r.dtype.kind not in "fiub" or c.dtype.kind not in "fiub":
            same = bool(np.array_equal(r, c))
            gap = 0.0 if same else float("inf")
            per_output.append(
                {"name": name, "max_abs_diff": gap, "rel_diff": gap, "cosine": float(same)}
            )
            notes.append(f"output {name!r} is not numeric: compared for equality only")
            max_abs = max(max_abs, gap)
            continue
        rf, cf = r.astype(np.float64).ravel(), c.astype(np.float64).ravel()
        diff = _abs_diff(rf, cf)
        out_max = float(diff.max()) if diff.size else 0.0
        finite_ref = rf[np.isfinite(rf)]
        out_ref = float(np.abs(finite_ref).max()) if finite_ref.size else 0.0
        both = np.isfinite(rf) & np.isfinite(cf)
        if not both.all():
            notes.append(f"output {name!r} has NaN or Inf values: cosine uses the finite ones")
        entry = {
            "name": name,
            "shape": list(r.shape),
            "max_abs_diff": out_max,
            "rel_diff": _relative(out_max, out_ref),
            "cosine": _cosine(rf[both], cf[both]),
        }
        if _is_class_scores(r):
            hits = int(np.count_nonzero(np.argmax(r, axis=1) == np.argmax(c, axis=1)))
            entry["top1_agreement"] = hits / r.shape[0]
            agree, rows = agree + hits, rows + r.shape[0]
        per_output.append(entry)
        flat_ref.append(rf[both])
        flat_cand.append(cf[both])
        max_abs, max_ref = max(max_abs, out_max), max(max_ref, out_ref)
    cat_ref = np.concatenate(flat_ref) if flat_ref else np.zeros(0)
    cat_cand = np.concatenate(flat_cand) if flat_cand else np.zeros(0)
    return {
        "max_abs_diff": max_abs,
        "rel_diff": _relative(max_abs, max_ref),
        "cosine": _cosine(cat_ref, cat_cand),
        "top1_agreement": agree / rows if rows else None,
        "per_output": per_output,
        "notes": notes,
    }


def check_labels(labels: np.ndarray, inputs: dict) -> int:
    """The sample count, after checking there is one label per sample."""
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in inputs.values()}
    n = sizes.pop() if len(sizes) == 1 else None
    if n is None:
        raise OnnxPruneError("--labels needs inputs that share one batch axis")
    if len(labels) != n:
        raise OnnxPruneError(f"there are {len(labels)} labels but {n} input samples")
    return n


def accuracy(outputs: list[np.ndarray], names: list[str], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first [N, C] float output against integer ``labels``."""
    for name, out in zip(names, outputs, strict=True):
        if not _is_class_scores(out):
            continue
        if out.shape[0] != len(labels):
            raise OnnxPruneError(
                f"output {name!r} has {out.shape[0]} rows but there are {len(labels)} labels"
            )
        if labels.size and labels.max() >= out.shape[1]:
            raise OnnxPruneError(
                f"label {labels.max()} is out of range: output {name!r} scores "
                f"{out.shape[1]} classes"
            )
        return float(np.mean(np.argmax(out, axis=1) == labels))
    shown = ", ".join(f"{n} {list(o.shape)}" for n, o in zip(names, outputs, strict=True))
    raise OnnxPruneError(
        f"--labels needs an output of class scores [N, C] (float); the model gives {shown}"
    )


def _relative(diff: float, scale: float) -> float:
    if scale > 0.0:
        return diff / scale
    return 0.0 if diff == 0.0 else float("inf")


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


def _measure(
    sessions: list,
    feeds: list[dict[str, np.ndarray]],
    roles: list[str],
    *,
    runs: int,
    warmup: int,
    budget_s: float | None,
    progress: bool = False,
) -> list[list[float]]:
    """Time already-open sessions; shared by ``measure_latency`` and ``validate``.

    ``validate`` reuses the sessions it compared outputs with: opening a big model twice
    would double the wait for nothing.
    """
    if runs < 1:
        raise UsageError(f"latency runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"warm-up runs cannot be negative, got {warmup}")
    for session, feed, role in zip(sessions, feeds, roles, strict=True):
        for _ in range(warmup):
            _timed(session, feed, role)
    n = len(sessions)
    times: list[list[float]] = [[] for _ in sessions]
    floor = min(runs, _MIN_RUNS)
    start = time.perf_counter()
    bar = progress_bar(total=runs, desc="latency", unit="run", enabled=progress)
    with bar:
        for r in range(runs):
            if budget_s is not None and r >= floor and time.perf_counter() - start > budget_s:
                break
            for k in range(n):  # rotate who goes first: A B, B A, ...
                i = (r + k) % n
                times[i].append(_timed(sessions[i], feeds[i], roles[i]))
            bar.update(1)
    return times


def _timed(session, feed: dict[str, np.ndarray], role: str) -> float:
    t0 = time.perf_counter()
    try:
        session.run(None, feed)
    except Exception as exc:
        raise OnnxPruneError(f"onnxruntime cannot run the {role}: {_ort_message(exc)}") from exc
    return (time.perf_counter() - t0) * 1000.0


def measure_latency(
    paths: list[str | os.PathLike],
    inputs: dict,
    providers: list[str],
    *,
    runs: int = 30,
    warmup: int = 5,
    budget_s: float | None = 10.0,
    progress: bool = False,
) -> list[list[float]]:
    """Per-model lists of run times (ms), measured interleaved.

    All sessions are opened and warmed up first, then each round runs every model once in a
    rotating order, so slow spells of the machine hit all models alike. After ``budget_s``
    seconds of measuring, stops early once every model has at least 5 runs.
    """
    roles = [f"model {os.fspath(p)}" for p in paths]
    sessions = [_session(p, providers, role) for p, role in zip(paths, roles, strict=True)]
    feeds = [_feeds(s, inputs, role) for s, role in zip(sessions, roles, strict=True)]
    return _measure(
        sessions, feeds, roles, runs=runs, warmup=warmup, budget_s=budget_s, progress=progress
    )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@dataclass
class ValidationResult:
    """How the pruned model compares with the original on the same inputs.

    ``rel_diff`` is ``max_abs_diff / max(|reference|)`` over all outputs (0 when both are 0,
    inf when only the reference is all zero). ``cosine`` is the cosine similarity of all
    outputs flattened and concatenated (1.0 when both are all zero). ``top1_agreement`` is the
    fraction of rows of [N, C>=2] float outputs whose argmax agrees, None when no output
    looks like class scores. Latencies are the median and 90th percentile of ``runs``
    interleaved runs, in milliseconds.
    """

    provider: str
    max_abs_diff: float
    rel_diff: float
    cosine: float
    top1_agreement: float | None
    per_output: list[dict]
    latency_ms_before: float
    latency_ms_after: float
    latency_p90_ms_before: float
    latency_p90_ms_after: float
    runs: int
    notes: list[str] = field(default_factory=list)
    accuracy_before: float | None = None
    """Top-1 accuracy against the labels, when labels were given (with ``samples``)."""
    accuracy_after: float | None = None
    samples: int | None = None

    def to_dict(self) -> dict:
        scored = (
            {"accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
             "samples": self.samples}
            if self.accuracy_before is not None
            else {}
        )  # fmt: skip
        return {
            "provider": self.provider,
            "max_abs_diff": self.max_abs_diff,
            "rel_diff": self.rel_diff,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "per_output": [dict(p) for p in self.per_output],
            "latency_ms_before": self.latency_ms_before,
            "latency_ms_after": self.latency_ms_after,
            "latency_p90_ms_before": self.latency_p90_ms_before,
            "latency_p90_ms_after": self.latency_p90_ms_after,
            "runs": self.runs,
            "notes": list(self.notes),
            **scored,
        }


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def validate(
    original: str | os.PathLike,
    pruned: str | os.PathLike,
    inputs: dict,
    providers: list[str],
    *,
    runs: int = 30,
    progress: bool = False,
    labels: np.ndarray | None = None,
) -> ValidationResult:
    """Run both models on ``inputs``, compare their outputs, and time them interleaved.

    Each model gets one session, used for the comparison and for the timing. Errors say
    whether the original or the pruned model failed to load or run. With ``labels`` (one
    per sample) the same outputs also give each model's top-1 accuracy.
    """
    if runs < 1:
        raise UsageError(f"latency runs must be at least 1, got {runs}")
    roles = ["original model", "pruned model"]
    hint = _guess_hint(inputs)
    sessions, feeds, outputs = [], [], []
    chunk_notes: list[str] = []
    for path, role in zip((original, pruned), roles, strict=True):
        session = _session(path, providers, role)
        chunks = _chunked(session, _feeds(session, inputs, role), chunk_notes)
        results = [_run(session, chunk, role, hint) for chunk in chunks]
        outputs.append(_join_chunks(results))
        sessions.append(session)
        feeds.append(chunks[0])  # latency is measured on one chunk
    names = [o.name for o in sessions[0].get_outputs()]
    compared = compare_outputs(outputs[0], outputs[1], names)
    scored: dict = {}
    if labels is not None:
        check_labels(labels, inputs)
        kept = labels[: outputs[0][0].shape[0]] if outputs[0] else labels  # a dropped remainder
        scored = {
            "accuracy_before": accuracy(outputs[0], names, kept),
            "accuracy_after": accuracy(outputs[1], names, kept),
            "samples": len(kept),
        }
    times = _measure(
        sessions, feeds, roles, runs=runs, warmup=5, budget_s=_BUDGET_S, progress=progress
    )
    notes = list(getattr(inputs, "notes", [])) + chunk_notes[:1]
    actual = sessions[0].get_providers()[0]
    if actual != providers[0]:
        notes.append(f"asked for {providers[0]} but onnxruntime ran on {actual}")
    done = min(len(t) for t in times)
    if done < runs:
        notes.append(f"latency stopped after {done} of {runs} runs ({_BUDGET_S:g} s budget)")
    notes.extend(compared["notes"])
    return ValidationResult(
        provider=actual,
        max_abs_diff=compared["max_abs_diff"],
        rel_diff=compared["rel_diff"],
        cosine=compared["cosine"],
        top1_agreement=compared["top1_agreement"],
        per_output=compared["per_output"],
        latency_ms_before=statistics.median(times[0]),
        latency_ms_after=statistics.median(times[1]),
        latency_p90_ms_before=_p90(times[0]),
        latency_p90_ms_after=_p90(times[1]),
        runs=done,
        notes=notes,
        **scored,
    )
