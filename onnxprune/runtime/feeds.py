"""What a model is fed: its real inputs, their dtypes and dims, random values, batches.

``InputBatch`` is a feed dict that carries notes on what was guessed to make it. Random
inputs get each input's dtype and shape. A calibration set is split along its sample axis
into batches (calibration taps) or chunks (validation) by the same rule: a model with a
fixed batch cannot take a short last batch, a dynamic one can. Files of user data are read
by ``onnxprune.calibration.data``, which builds on this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError

__all__ = [
    "MAX_VALIDATION_BATCH",
    "InputBatch",
    "batches",
    "chunked",
    "guess_hint",
    "input_dims",
    "input_dtype",
    "join_chunks",
    "random_inputs",
    "real_inputs",
    "rows_of",
    "run_facts",
    "sample_count",
    "shared_batch",
]

#: Calibration sets are compared in chunks of this many samples when the batch is dynamic
#: (bounded memory), and in chunks of the model's batch size when it is fixed.
MAX_VALIDATION_BATCH = 256
_TOKEN_ID_HIGH = 100  # random token ids are drawn in [0, 100): valid for any real vocabulary


class InputBatch(dict):
    """A ``dict`` of input name to array, plus ``notes`` on what was guessed to make it.

    ``validate`` copies the notes into its result, so a report says when a symbolic
    dimension was set to 1 or the inputs were random.
    """

    def __init__(self, *args, notes: list[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[str] = list(notes or [])
        self.sources: dict[str, str] = {}
        """Where each input's shape came from ("--input-shape", "calib", "default", ...)."""
        self.run_batch: int | None = None
        """Samples per run when the rows must be run in batches the model did not fix
        (random inputs at a batch given by ``--input-shape``); None: as the model allows."""


def guess_hint(inputs: Mapping) -> str:
    """Said after a run failure when the inputs were partly guessed."""
    guessed = [n for n in getattr(inputs, "notes", []) if "set to 1" in n]
    if "default" in (getattr(inputs, "sources", None) or {}).values():
        return (
            " (random inputs had default sizes for symbolic dimensions; "
            "pass --input-shape or --calib)"
        )
    if not guessed:
        return ""
    return " (random inputs had guessed dimensions; pass --calib with real inputs)"


# --------------------------------------------------------------------------------------------
# The model's inputs
# --------------------------------------------------------------------------------------------


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs a caller must feed: old IR versions also list initializers as inputs."""
    inits = {t.name for t in model.graph.initializer}
    inits |= {t.values.name for t in model.graph.sparse_initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def input_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    """The numpy dtype of a tensor input; inputs onnxprune cannot feed are errors."""
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


def input_dims(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Each dim as a size, a symbolic name or None (unknown); None when there is no shape."""
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


# --------------------------------------------------------------------------------------------
# Random inputs
# --------------------------------------------------------------------------------------------


def _random_shape(vi: onnx.ValueInfoProto, batch_size: int, notes: list[str]) -> tuple[int, ...]:
    dims = input_dims(vi)
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


def random_inputs(
    model: onnx.ModelProto,
    *,
    seed: int = 0,
    batch_size: int = 1,
    shapes: Mapping[str, Sequence[int]] | None = None,
) -> InputBatch:
    """Random values for every real input, of its dtype and shape.

    Without ``shapes``, a symbolic first dim is set to ``batch_size`` and other symbolic dims
    to 1, each noted in ``.notes`` after a first note naming the seed. With ``shapes`` (one
    run's shape per input, see ``onnxprune.runtime.shapes``), ``batch_size`` samples are drawn
    in runs of that shape: when every input's axis 0 is its batch, the rows are rounded up to
    whole runs and ``.run_batch`` says the run size; otherwise one run at those shapes.
    """
    rng = np.random.default_rng(seed)
    batch = InputBatch(notes=[])
    if shapes is not None:
        return _random_at(model, shapes, batch_size, rng, batch, seed)
    for vi in real_inputs(model):
        dtype = input_dtype(vi)
        shape = _random_shape(vi, batch_size, batch.notes)
        batch[vi.name] = _random_values(vi.name, dtype, shape, rng)
    batch.notes.insert(0, f"random inputs (seed {seed})")
    return batch


def _random_at(
    model: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]],
    samples: int,
    rng: np.random.Generator,
    batch: InputBatch,
    seed: int,
) -> InputBatch:
    """``random_inputs`` at resolved shapes: ``samples`` rows in whole runs where it can."""
    inputs = real_inputs(model)
    runs_of = {shapes[vi.name][0] for vi in inputs if shapes.get(vi.name)}
    batchable = len(runs_of) == 1 and all(vi.name in shapes and shapes[vi.name] for vi in inputs)
    step = runs_of.pop() if batchable else 1
    rows = -(-samples // step) * step if batchable else None
    for vi in inputs:
        if vi.name not in shapes:
            _random_shape(vi, 1, [])  # no shape: the same error as without shapes
        shape = tuple(int(d) for d in shapes[vi.name])
        if rows is not None:
            shape = (rows, *shape[1:])
        batch[vi.name] = _random_values(vi.name, input_dtype(vi), shape, rng)
    if rows is not None and rows > step:
        batch.run_batch = step
    shown = ", ".join(f"{k}={'x'.join(map(str, shapes[k]))}" for k in batch)
    count = f"{rows} random samples" if rows is not None else "one random run"
    batch.notes[:0] = [f"random inputs (seed {seed})", f"{count}, each run fed {shown}"]
    if rows is None and samples > 1:
        batch.notes.append("the inputs do not share a batch axis: random validation ran once")
    return batch


# --------------------------------------------------------------------------------------------
# Samples and batches
# --------------------------------------------------------------------------------------------


def shared_batch(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The first dimension every input shares, or None (a scalar input, or sizes differ)."""
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else None


def sample_count(inputs: Mapping[str, np.ndarray]) -> int:
    """The number of calibration samples: the first dimension of every non-scalar input."""
    sizes = {np.shape(v)[0] for v in inputs.values() if np.ndim(v)}
    if len(sizes) != 1:
        raise OnnxPruneError(
            "calibration inputs must share their first (sample) dimension, got "
            + ", ".join(f"{k}: {np.shape(v)}" for k, v in inputs.items())
        )
    return sizes.pop()


def _starts(n: int, size: int, fixed: bool) -> range:
    """Where batches of ``size`` begin; a fixed batch cannot take a short last one."""
    return range(0, n - n % size if fixed else n, size)


def batches(
    inputs: Mapping[str, np.ndarray], size: int, names: Sequence[str], *, fixed: bool = False
) -> Iterator[dict]:
    """Feeds of ``size`` samples; a model with a fixed batch cannot take the short last one."""
    n = sample_count(inputs)
    if fixed and n < size:
        raise OnnxPruneError(
            f"the model takes batches of exactly {size} but the calibration data has {n} samples"
        )
    for a in _starts(n, size, fixed):
        yield {k: inputs[k][a : a + size] for k in names}


def chunked(
    feed: dict[str, np.ndarray], fixed: int | None, notes: list[str]
) -> list[dict[str, np.ndarray]]:
    """Split a feed along the batch axis into what the model accepts (validation).

    A model exported with a fixed batch (``fixed``: 1 for most CNN exports) cannot take a
    calibration set of N samples in one run; a dynamic one can, but memory grows with N, so
    it gets chunks of ``MAX_VALIDATION_BATCH``. Inputs must share their first dimension to
    be split; otherwise the feed is used whole. What was dropped or split is noted.
    """
    n = shared_batch(feed)
    step = fixed or MAX_VALIDATION_BATCH
    if n is None or n <= step:
        return [feed]
    starts = _starts(n, step, fixed is not None)
    usable = n - n % step if fixed else n
    if usable < n:
        notes.append(f"last {n - usable} of {n} samples dropped: the model's batch is {step}")
    notes.append(f"{usable} samples run in batches of {step}; latency measured on one batch")
    return [{k: v[a : a + step] for k, v in feed.items()} for a in starts]


def rows_of(chunks: list[dict]) -> int:
    """Samples in the chunks that ran: their shared first dimension, else 1 per chunk."""
    return sum(shared_batch(c) or 1 for c in chunks)


def run_facts(feed: Mapping[str, np.ndarray], inputs: Mapping) -> dict:
    """What one timed run was fed: its batch, each input's shape and where it came from
    (the report's ``batch``, ``input_shapes`` and ``shape_source``)."""
    return {
        "batch": shared_batch(feed),
        "input_shapes": {k: list(np.shape(v)) for k, v in feed.items()},
        "shape_source": dict(getattr(inputs, "sources", {}) or {}),
    }


def join_chunks(results: list[list[np.ndarray]]) -> list[np.ndarray]:
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
