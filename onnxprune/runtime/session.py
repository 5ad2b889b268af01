"""The one place that opens onnxruntime sessions, runs them and words their errors.

Every caller (validation, latency, calibration taps, recovery) opens its sessions through
``open_session``; what differs between them (from a file or from memory, full graph
optimization or onnxruntime's default, spinning threads or not) is a parameter, not a second
factory. Every onnxruntime failure becomes an ``OnnxPruneError`` whose message names the
model that failed (``role``) and keeps only the first line of onnxruntime's text
(``ort_message``).

This module imports nothing from calibration: calibration builds on it.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph.proto import LAZY_ROOT, is_lazy
from onnxprune.runtime.feeds import guess_hint

__all__ = [
    "CPU",
    "CUDA",
    "fixed_batch",
    "live_sessions",
    "open_session",
    "ort_message",
    "resolve_providers",
    "run_model",
    "run_session",
    "session_feeds",
]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_LIVE: weakref.WeakSet = weakref.WeakSet()  # every session open_session made, while alive
_MOST_LIVE = [0]


def live_sessions(*, most: bool = False, reset: bool = False) -> int:
    """How many sessions made by ``open_session`` are alive now; with ``most``, the most
    alive at once since the last ``reset`` (``reset`` starts the count again from now).

    Why: each session holds (maps) its model's weights, so how many are alive together is
    what a big model's peak memory depends on; this is how that is checked without mocks.
    """
    if reset:
        _MOST_LIVE[0] = len(_LIVE)
    return _MOST_LIVE[0] if most else len(_LIVE)


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


def ort_message(exc: BaseException) -> str:
    """The first line of an onnxruntime error, without its '[ONNXRuntimeError] : 1 : FAIL :'."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if line.startswith("[ONNXRuntimeError]"):
        parts = line.split(" : ", 3)
        line = parts[3] if len(parts) == 4 else line
    return line.strip()


def open_session(
    model: str | os.PathLike | onnx.ModelProto | bytes,
    providers: Sequence[str],
    *,
    role: str,
    optimize_all: bool = True,
    spinning: bool = True,
    spin_between_runs: bool = True,
    threads: int | None = None,
    profile: str | None = None,
):
    """An onnxruntime session on a model file or an in-memory model; errors name ``role``.

    Log level is fatal only: onnxruntime's warnings are not the user's problem, and its error
    lines would repeat (outside our one `error:` line) what ``ort_message`` already says.
    ``optimize_all`` asks for full graph optimization explicitly, as a deployment opens the
    model (validation and latency); otherwise onnxruntime's default level applies.
    ``spinning=False`` stops idle intra-op threads from spinning after each run, so numpy
    BLAS work between runs (recovery's Gram matrices and solves) gets the cores.
    ``spin_between_runs=False`` stops them only once a run ends (they still spin within it):
    many models timed in turn then do not share the cores with the last one's spinning
    threads, at the price of a wake-up per run (``targets.latency``, where that price
    cancels in the differences it keeps).
    ``threads`` sets onnxruntime's intra-op thread count (None: its default, all cores).
    ``profile`` (a file prefix) turns on onnxruntime's per-node profiling: ``end_profiling()``
    then returns the JSON trace's path (``onnxprune.targets.profile`` reads it).
    ``model`` may also be serialized bytes (many variants of one model, serialized once each).

    Models are best opened from their file path: external data and models over 2 GB work.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # session creation logs through the default logger
    options = ort.SessionOptions()
    if optimize_all:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # fatal only: a failed run is reported once, as our error line
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not spin_between_runs:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
    if profile is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    if isinstance(model, bytes | onnx.ModelProto):
        # Lazy weights (graph.proto) name their data files from the root: the model stays
        # small in memory and onnxruntime maps the weights from their files.
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", LAZY_ROOT
        )
        if isinstance(model, onnx.ModelProto) and any(map(is_lazy, model.graph.initializer)):
            # Prepacked MatMul weights are private copies: a big model's weights would be
            # held twice (mapped and packed). Packing per run costs little for many rows.
            options.add_session_config_entry("session.disable_prepacking", "1")
        source: str | bytes = model if isinstance(model, bytes) else model.SerializeToString()
    else:
        source = os.fspath(model)
    if isinstance(source, str) and not _utf8(source):
        source = _read_for_session(source, options)
    try:
        sess = ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own pybind types (Fail, InvalidGraph...)
        raise OnnxPruneError(f"onnxruntime cannot run the {role}: {ort_message(exc)}") from exc
    _LIVE.add(sess)
    _MOST_LIVE[0] = max(_MOST_LIVE[0], len(_LIVE))
    return sess


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a file name that is not UTF-8 (surrogate-escaped bytes)
        return False


def _read_for_session(path: str, options) -> bytes:
    """The model's bytes, for a file name onnxruntime cannot take (it wants UTF-8 text);
    external data is then found through the folder given in the session options."""
    folder = os.path.dirname(os.path.abspath(path))
    if _utf8(folder):
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", folder
        )
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {path}: {exc.strerror or exc}") from exc


def fixed_batch(session) -> int | None:
    """The batch size every input of an onnxruntime session fixes, or None when dynamic."""
    fixed = {i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    return max(1, fixed.pop()) if len(fixed) == 1 else None


def session_feeds(session, inputs: Mapping[str, np.ndarray], role: str) -> dict[str, np.ndarray]:
    """The inputs the session takes (a pruned model may have lost an unused input)."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise OnnxPruneError(
            f"onnxruntime cannot run the {role}: no value for input(s) {', '.join(missing)}"
        )
    return {n: inputs[n] for n in names}


def run_session(
    session,
    feed: Mapping[str, np.ndarray],
    role: str,
    *,
    outputs: Sequence[str] | None = None,
    hint: str = "",
    failure: str | None = None,
) -> list[np.ndarray]:
    """``session.run`` with an error a user can read.

    The message is ``failure`` (default "onnxruntime cannot run the ``role``"), onnxruntime's
    first line, then ``hint`` (see ``feeds.guess_hint``).
    """
    try:
        return [
            np.asarray(o) for o in session.run(None if outputs is None else list(outputs), feed)
        ]
    except Exception as exc:
        prefix = failure or f"onnxruntime cannot run the {role}"
        raise OnnxPruneError(f"{prefix}: {ort_message(exc)}{hint}") from exc


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
    session = open_session(path, providers, role=role)
    return run_session(session, session_feeds(session, inputs, role), role, hint=guess_hint(inputs))
