"""How much did pruning cost on real data? Outputs compared, and accuracy when labels exist.

``validate.validate`` answers "is it still the same model, and faster?" while pruning;
this module answers the question a user asks afterwards about two files on disk: on my data,
how often do the two models agree, and what accuracy did I lose? It runs both models once
(no latency), reusing ``validate``'s sessions, batching and comparison so the numbers mean
exactly what they mean in a prune report, and adds top-1 accuracy against integer labels.
``onnxprune validate ORIGINAL PRUNED`` is its command line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.runtime.validate import (
    InputBatch,
    _chunked,
    _feeds,
    _guess_hint,
    _join_chunks,
    _ort_message,
    _run,
    _session,
    accuracy,
    check_labels,
    compare_outputs,
    make_inputs,
    resolve_providers,
)

__all__ = ["evaluate", "evaluate_files", "load_labels", "render_evaluation"]

#: Random inputs (no --calib) get this many samples when the batch is dynamic: one row
#: would make top-1 agreement all or nothing.
RANDOM_SAMPLES = 16


def load_labels(
    path: str | os.PathLike, n: int | None = None, *, max_samples: int | None = None
) -> np.ndarray:
    """Integer class labels from a ``.npy`` file: shape [N] (or [N, 1]), values >= 0.

    ``max_samples`` keeps the first labels, as ``--calib-samples`` keeps the first inputs;
    ``n``, when given, is the number of input samples the labels must match.
    """
    shown = os.fspath(path)
    if not Path(path).is_file():
        raise OnnxPruneError(f"labels {shown} is not a file")
    try:
        labels = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise OnnxPruneError(
            f"cannot read labels {shown}: not a numpy .npy file ({_ort_message(exc)})"
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


def _sample_count(inputs: dict) -> int | None:
    """The batch size shared by every input, or None when they share none."""
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else None


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
) -> dict:
    """Run both models on ``inputs`` and compare; with ``labels``, top-1 accuracy of each.

    Returns ``validate.compare_outputs``'s dict (``max_abs_diff``, ``rel_diff``, ``cosine``,
    ``top1_agreement``, ``per_output``, ``notes``) plus ``provider``, ``samples`` and, with
    labels, ``accuracy_before`` and ``accuracy_after`` (argmax of the first [N, C] float
    output against the labels). Inputs run in the chunks ``validate`` uses, so a model with
    a fixed batch drops the last partial chunk, and its labels with it (noted).
    """
    roles = ["original model", "pruned model"]
    n = _sample_count(inputs)
    if labels is not None:
        labels = np.asarray(labels)
        check_labels(labels, inputs)
    sessions = [_session(p, providers, r) for p, r in zip((original, pruned), roles, strict=True)]
    _check_interfaces(sessions, roles)
    hint = _guess_hint(inputs)
    outputs, notes = [], list(getattr(inputs, "notes", []))
    samples = n
    for session, role in zip(sessions, roles, strict=True):
        chunk_notes: list[str] = []
        chunks = _chunked(session, _feeds(session, inputs, role), chunk_notes)
        outputs.append(_join_chunks([_run(session, c, role, hint) for c in chunks]))
        if role == roles[0]:
            # validate's notes also speak of latency, which is not measured here
            notes.extend(note.split(";")[0] for note in chunk_notes)
            if n is not None:
                samples = sum(np.shape(next(iter(c.values())))[0] for c in chunks)
    names = [o.name for o in sessions[0].get_outputs()]
    result = compare_outputs(outputs[0], outputs[1], names)
    result["provider"] = sessions[0].get_providers()[0]
    if result["provider"] != providers[0]:
        notes.append(f"asked for {providers[0]} but onnxruntime ran on {result['provider']}")
    result["samples"] = samples
    if labels is not None:
        kept = labels[:samples]
        result["accuracy_before"] = accuracy(outputs[0], names, kept)
        result["accuracy_after"] = accuracy(outputs[1], names, kept)
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
) -> dict:
    """``evaluate`` on two model files, inputs from ``calib`` (or random), labels from a file.

    What ``onnxprune validate`` runs. The result also names both files and the inputs.
    """
    from onnxprune.graph.modelfile import _parse_model

    if labels is not None and calib is None:
        raise UsageError("--labels needs --calib: labels describe real inputs, not random ones")
    chosen = resolve_providers(providers)
    for path in (original, pruned):
        if not Path(path).is_file():
            raise OnnxPruneError(f"{os.fspath(path)} is not a file")
    try:  # the graph's inputs only; onnxruntime reads the weights (external data included)
        content = Path(original).read_bytes()
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {os.fspath(original)}: {exc.strerror or exc}") from exc
    model = _parse_model(content, os.fspath(original))
    del content
    inputs = make_inputs(
        model,
        calib=calib,
        seed=seed,
        batch_size=RANDOM_SAMPLES,
        max_samples=calib_samples,
        preprocess=calib_preprocess,
    )
    if calib is None:
        inputs.notes[0] += ": pass --calib for real inputs"
    label_array = None
    if labels is not None:
        label_array = load_labels(labels, _sample_count(inputs), max_samples=calib_samples)
    result = evaluate(original, pruned, inputs, chosen, labels=label_array)
    where = {
        "original": os.fspath(original),
        "pruned": os.fspath(pruned),
        "inputs": os.fspath(calib) if calib is not None else "random",
    }
    return {**where, **result}


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_evaluation(result: dict) -> str:
    """A short table: samples, accuracy, agreement, drift overall and per output, notes."""
    from onnxprune.report.results import table

    out = []
    if "original" in result:
        out += [f"original  {result['original']}", f"pruned    {result['pruned']}"]
    out.append(f"inputs    {result.get('inputs', '-')} on {result.get('provider', '-')}")
    out.append("")
    rows = [["samples", str(result.get("samples", "-"))]]
    if result.get("accuracy_before") is not None:
        before, after = result["accuracy_before"], result["accuracy_after"]
        rows += [
            ["accuracy before", f"{before:.3f}"],
            ["accuracy after", f"{after:.3f}"],
            ["accuracy drop (points)", f"{100 * (before - after):.2f}"],
        ]
    rows += [
        ["top-1 agreement", _num(result.get("top1_agreement"), ".4f")],
        ["cosine", f"{result['cosine']:.6f}"],
        ["max abs diff", f"{result['max_abs_diff']:.3g}"],
        ["rel diff", f"{result['rel_diff']:.3g}"],
    ]
    out.append(table(rows, ["", "value"]))
    per = [
        [
            p["name"],
            "x".join(str(d) for d in p.get("shape", [])) or "-",
            f"{p['max_abs_diff']:.3g}",
            f"{p['rel_diff']:.3g}",
            f"{p['cosine']:.6f}",
            _num(p.get("top1_agreement"), ".4f"),
        ]
        for p in result.get("per_output", [])
    ]
    if per:
        out.append("")
        header = ["output", "shape", "max abs diff", "rel diff", "cosine", "top-1"]
        out.append(table(per, header))
    if result.get("notes"):
        out.append("")
        out.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(out)
