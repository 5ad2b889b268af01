"""``onnxprune validate ORIGINAL PRUNED``: two model files compared on the user's data.

The same comparison ``prune`` validates with (``runtime.validate``: the same chunks, the same
``compare.compare_outputs``, the same latency), on two files the user names, with top-1
accuracy against integer labels and the gates of ``runtime.gates``. The table is
``report.render.render_evaluation``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onnxprune.calibration.data import make_inputs
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph.load import parse_model
from onnxprune.runtime.compare import accuracy, check_labels, compare_outputs
from onnxprune.runtime.feeds import InputBatch, guess_hint, rows_of, run_facts, shared_batch
from onnxprune.runtime.latency import latency_summary, measure_sessions
from onnxprune.runtime.session import open_session, ort_message, resolve_providers
from onnxprune.runtime.shapes import parse_input_shapes, random_validation_inputs, resolve_shapes
from onnxprune.runtime.validate import (
    LATENCY_BUDGET_S,
    RANDOM_SAMPLES,
    ROLES,
    chunked_outputs,
    provider_notes,
)

__all__ = ["evaluate", "evaluate_files", "load_labels"]


def load_labels(
    path: str | os.PathLike, n: int | None = None, *, max_samples: int | None = None
) -> np.ndarray:
    """Integer class labels from a ``.npy`` file: shape [N] (or [N, 1]), values >= 0.

    ``max_samples`` keeps the first labels, as ``--calib-samples`` keeps the first inputs;
    ``n``, when given, is the number of input samples the labels must match.
    """
    shown = os.fspath(path)
    if not Path(path).exists():
        raise OnnxPruneError(f"labels {shown} does not exist")
    if not Path(path).is_file():
        raise OnnxPruneError(f"labels {shown} is not a file")
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise OnnxPruneError(
            f"cannot read labels {shown}: not a numpy .npy file ({ort_message(exc)})"
        ) from exc
    if not isinstance(labels, np.ndarray):  # an .npz archive loads as NpzFile
        raise OnnxPruneError(f"labels {shown} is an .npz archive: save the labels with np.save")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise OnnxPruneError(
            f"labels {shown} has shape {labels.shape}: expected one class index per sample [N]"
        )
    if labels.dtype.kind not in "iu":
        raise OnnxPruneError(
            f"labels {shown} are {labels.dtype}, not integers: save them with .astype(np.int64)"
        )
    if labels.size and labels.min() < 0:
        raise OnnxPruneError(f"labels {shown} hold {labels.min()}: class indices start at 0")
    if max_samples is not None:
        labels = labels[:max_samples]
    if n is not None and len(labels) != n:
        raise OnnxPruneError(f"labels {shown} hold {len(labels)} labels but there are {n} samples")
    return labels.astype(np.int64)


def _arg_text(arg) -> str:
    shape = arg.shape if isinstance(arg.shape, list) else []
    return f"{arg.type}[{', '.join(str(d) for d in shape)}]"


def _same_arg(a, b) -> bool:
    """Same element type, rank and fixed sizes (symbolic names may differ between exports)."""
    if a.type != b.type:
        return False
    sa, sb = a.shape, b.shape
    if not isinstance(sa, list) or not isinstance(sb, list):
        return True
    if len(sa) != len(sb):
        return False
    return all(
        not (isinstance(x, int) and isinstance(y, int)) or x == y
        for x, y in zip(sa, sb, strict=True)
    )


def _check_interfaces(sessions: list, roles: list[str]) -> None:
    """Both models take the same inputs and give the same outputs, or comparing is moot.

    The pruned model may lack an input the original has (pruning can leave one unused).
    """
    ins = [{i.name: i for i in s.get_inputs()} for s in sessions]
    outs = [s.get_outputs() for s in sessions]
    extra = [n for n in ins[1] if n not in ins[0]]
    changed = [n for n in ins[1] if n in ins[0] and not _same_arg(ins[1][n], ins[0][n])]
    if extra or changed:
        if extra:
            what = f"takes input(s) the {roles[0]} lacks: {', '.join(extra)}"
        else:
            what = "has input(s) of another type or shape: " + ", ".join(
                f"{n} {_arg_text(ins[1][n])} vs {_arg_text(ins[0][n])}" for n in changed
            )
        raise OnnxPruneError(f"the {roles[1]} {what}; both models must have the same inputs")
    same = len(outs[0]) == len(outs[1]) and all(
        a.name == b.name and _same_arg(a, b) for a, b in zip(*outs, strict=False)
    )
    if not same:
        show = ["[" + ", ".join(f"{o.name} {_arg_text(o)}" for o in out) + "]" for out in outs]
        raise OnnxPruneError(
            f"the models have different outputs: {roles[0]} {show[0]}, {roles[1]} {show[1]}; "
            "both models must have the same outputs"
        )


def evaluate(
    original: str | os.PathLike,
    pruned: str | os.PathLike,
    inputs: InputBatch | dict,
    providers: list[str],
    *,
    labels: np.ndarray | None = None,
    runs: int = 30,
    threads: int = 0,
) -> dict:
    """Run both models on ``inputs`` and compare; with ``labels``, top-1 accuracy of each.

    Returns ``compare.compare_outputs``'s dict (``max_abs_diff``, ``rel_diff``, ``cosine``,
    ``top1_agreement``, ``per_output``, ``notes``) plus ``provider``, ``samples`` and, with
    labels, ``accuracy_before`` and ``accuracy_after`` (argmax of the first [N, C] float
    output against the labels). Inputs run in the chunks ``validate`` uses, so a model with
    a fixed batch drops the last partial chunk, and its labels with it (noted). Latency is
    measured as ``validate`` measures it (same keys: ``latency_ms_before``, ``speedup``, ...).
    """
    roles = list(ROLES)
    n = shared_batch(inputs)
    if labels is not None:
        labels = np.asarray(labels)
        check_labels(labels, inputs)
    sessions = [
        open_session(p, providers, role=r, threads=threads)
        for p, r in zip((original, pruned), roles, strict=True)
    ]
    _check_interfaces(sessions, roles)
    hint = guess_hint(inputs)
    outputs, notes = [], list(getattr(inputs, "notes", []))
    samples = n
    feeds = []
    for session, role in zip(sessions, roles, strict=True):
        chunks, out, chunk_notes = chunked_outputs(session, inputs, role, hint)
        outputs.append(out)
        feeds.append(chunks[0])
        if role == roles[0]:
            # validate's notes also speak of latency, which is not measured here
            notes.extend(note.split(";")[0] for note in chunk_notes)
            if n is not None:
                samples = rows_of(chunks)
    names = [o.name for o in sessions[0].get_outputs()]
    result = compare_outputs(outputs[0], outputs[1], names)
    result["provider"], asked = provider_notes(sessions[0], providers)
    notes += asked
    result["samples"] = samples
    if labels is not None:
        kept = labels[:samples]
        result["accuracy_before"] = accuracy(outputs[0], names, kept)
        result["accuracy_after"] = accuracy(outputs[1], names, kept)
    times = measure_sessions(
        sessions, feeds, roles, runs=runs, warmup=5, budget_s=LATENCY_BUDGET_S, threads=threads
    )
    done = min(len(t) for t in times)
    if done < runs:
        notes.append(f"latency stopped after {done} of {runs} runs ({LATENCY_BUDGET_S:g} s budget)")
    result.update(latency_summary(times[0], times[1]), runs=done, threads=threads)
    result.update(run_facts(feeds[0], inputs))
    result["notes"] = notes + result["notes"]
    return result


def evaluate_files(
    original: str | os.PathLike,
    pruned: str | os.PathLike,
    *,
    calib: str | os.PathLike | None = None,
    calib_samples: int | None = None,
    calib_preprocess: str | None = None,
    labels: str | os.PathLike | None = None,
    providers: str = "cpu",
    seed: int = 0,
    min_cosine: float | None = None,
    max_drop: float | None = None,
    max_rel_diff: float | None = None,
    input_shapes: object = None,
    samples: int = RANDOM_SAMPLES,
    threads: int = 0,
    runs: int = 30,
) -> dict:
    """``evaluate`` on two model files, inputs from ``calib`` (or random), labels from a file.

    What ``onnxprune validate`` runs. The result also names both files and the inputs, says
    which data the figures come from (``data``), and checks the gates asked for
    (``gates``, ``passed``): a failed gate raises ``GateError`` (exit 3) whose ``report`` is
    this result, so the caller can still write it. Two unrelated models with the same
    interface are a legitimate comparison with a bad result: reported, failing only a gate.
    Random inputs are ``samples`` samples at the shapes ``runtime.shapes`` resolves
    (``input_shapes`` as ``--input-shape`` takes them).
    """
    from onnxprune.runtime.gates import Gates, check_gates, raise_if_failed

    if max_drop is not None and labels is None:
        raise UsageError("--max-drop compares accuracy before and after: pass --labels")
    if labels is not None and calib is None:
        raise UsageError("--labels needs --calib: labels describe real inputs, not random ones")
    chosen = resolve_providers(providers)
    for path in (original, pruned):
        if not Path(path).exists():
            raise OnnxPruneError(f"{os.fspath(path)} does not exist")
        if not Path(path).is_file():
            raise OnnxPruneError(f"{os.fspath(path)} is not a file")
    try:  # the graph's inputs only; onnxruntime reads the weights (external data included)
        content = Path(original).read_bytes()
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {os.fspath(original)}: {exc.strerror or exc}") from exc
    model = parse_model(content, os.fspath(original))
    del content
    given = parse_input_shapes(input_shapes)
    if calib is None:
        inputs = random_validation_inputs(model, resolve_shapes(model, given), samples, seed)
        inputs.notes[0] += ": pass --calib for real inputs"
    else:
        inputs = make_inputs(
            model, calib=calib, seed=seed, max_samples=calib_samples, preprocess=calib_preprocess
        )
        inputs.sources = resolve_shapes(model, given, inputs).sources
    label_array = None
    if labels is not None:
        label_array = load_labels(labels, shared_batch(inputs), max_samples=calib_samples)
    result = evaluate(
        original, pruned, inputs, chosen, labels=label_array, runs=runs, threads=threads
    )
    where = {
        "original": os.fspath(original),
        "pruned": os.fspath(pruned),
        "inputs": os.fspath(calib) if calib is not None else "random",
        "data": "calib" if calib is not None else "random",
    }
    full = {**where, **result}
    full["gates"] = check_gates(full, Gates(min_cosine, max_drop, max_rel_diff))
    full["passed"] = all(g["passed"] for g in full["gates"]) and not full["nonfinite_outputs"]
    raise_if_failed(full["gates"], full)
    return full
