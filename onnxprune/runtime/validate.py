"""Does the pruned model still compute what the original did, and is it faster?

One module for both questions onnxprune answers about two models:

* ``validate``, run by ``prune``: both models on the same inputs (calibration data or random
  inputs of the right type and shape), outputs compared, latency measured interleaved on the
  same sessions (``onnxprune.runtime.latency``);
* ``evaluate``/``evaluate_files``, run by ``onnxprune validate ORIGINAL PRUNED``: the same
  comparison on the user's data without latency, with top-1 accuracy against integer labels
  (``load_labels``) and a table (``render_evaluation``).

Both run each model in the same chunks (``feeds.chunked``) and compare with
``compare.compare_outputs``, so the numbers mean the same in a prune report and in the
``validate`` command. Sessions are opened from the file path, never from bytes, so that
models with external data or over 2 GB work; every onnxruntime failure says which of the
two models failed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxprune.calibration.data import make_inputs
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph.load import parse_model
from onnxprune.report.render import evaluation_facts, latency_rows
from onnxprune.report.results import table
from onnxprune.report.text import gate_row
from onnxprune.runtime.compare import accuracy, check_labels, compare_outputs
from onnxprune.runtime.feeds import (
    InputBatch,
    chunked,
    guess_hint,
    join_chunks,
    rows_of,
    run_facts,
    shared_batch,
)
from onnxprune.runtime.latency import latency_summary, measure_sessions
from onnxprune.runtime.session import (
    fixed_batch,
    open_session,
    ort_message,
    resolve_providers,
    run_session,
    session_feeds,
)
from onnxprune.runtime.shapes import parse_input_shapes, random_validation_inputs, resolve_shapes

__all__ = [
    "ValidationResult",
    "evaluate",
    "evaluate_files",
    "load_labels",
    "render_evaluation",
    "validate",
]

ROLES = ("original model", "pruned model")
_BUDGET_S = 10.0  # seconds of latency measurement in validate()
#: Random inputs of ``onnxprune validate`` (no --calib) get this many samples when the batch
#: is dynamic: one row would make top-1 agreement all or nothing.
RANDOM_SAMPLES = 16


def _outputs(session, inputs: dict, role: str, hint: str):
    """Run ``session`` on ``inputs`` in chunks: (chunks, joined outputs, chunk notes)."""
    notes: list[str] = []
    step = fixed_batch(session) or getattr(inputs, "run_batch", None)
    chunks = chunked(session_feeds(session, inputs, role), step, notes)
    outputs = join_chunks([run_session(session, c, role, hint=hint) for c in chunks])
    return chunks, outputs, notes


def _provider_notes(session, providers: list[str]) -> tuple[str, list[str]]:
    """The provider onnxruntime really used, and a note when it is not the one asked for."""
    actual = session.get_providers()[0]
    if actual != providers[0]:
        return actual, [f"asked for {providers[0]} but onnxruntime ran on {actual}"]
    return actual, []


# --------------------------------------------------------------------------------------------
# prune's validation: drift and latency
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
    verdict: str = "conclusive"
    """``conclusive``, or ``inconclusive`` when the original's outputs cannot tell a good
    pruned model from a bad one (``inconclusive_reasons`` says why; ``compare``)."""
    inconclusive_reasons: list[str] = field(default_factory=list)
    nonfinite_outputs: list[str] = field(default_factory=list)
    """Outputs where the pruned model gives NaN/Inf but the original is finite."""
    data: str | None = None
    """Which data the figures come from: ``random``, ``val``, ``calib-held-out`` or
    ``calib`` (the samples recovery was fitted to: not a gate)."""
    gates: list[dict] = field(default_factory=list)
    """One ``{"gate", "threshold", "value", "passed"}`` per gate asked for."""
    passed: bool = True
    """Every gate passed and no output turned non-finite."""
    """Samples compared (with or without labels)."""
    latency_p10_ms_before: float | None = None
    latency_p10_ms_after: float | None = None
    speedup: float | None = None
    """Median before / median after."""
    speedup_significant: bool | None = None
    """False when the p10-p90 spreads of the two models overlap (``latency.speedup_significant``)."""
    batch: int | None = None
    """Samples per run in the latency measurement (the latency is per run of this batch)."""
    threads: int = 0
    """onnxruntime intra-op threads of the sessions (0: onnxruntime's own choice)."""
    input_shapes: dict = field(default_factory=dict)
    """One run's shape per input, {name: [dims]}."""
    shape_source: dict = field(default_factory=dict)
    """Where each input's shape came from: "calib", "val", "--input-shape", "declared", "default"."""

    def to_dict(self) -> dict:
        scored = (
            {"accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after}
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
            "verdict": self.verdict,
            "inconclusive_reasons": list(self.inconclusive_reasons),
            "nonfinite_outputs": list(self.nonfinite_outputs),
            "data": self.data,
            "gates": [dict(g) for g in self.gates],
            "passed": self.passed,
            "samples": self.samples,
            "latency_p10_ms_before": self.latency_p10_ms_before,
            "latency_p10_ms_after": self.latency_p10_ms_after,
            "speedup": self.speedup,
            "speedup_significant": self.speedup_significant,
            "batch": self.batch,
            "threads": self.threads,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "shape_source": dict(self.shape_source),
        }


def validate(
    original: str | os.PathLike,
    pruned: str | os.PathLike,
    inputs: dict,
    providers: list[str],
    *,
    runs: int = 30,
    progress: bool = False,
    labels: np.ndarray | None = None,
    threads: int = 0,
) -> ValidationResult:
    """Run both models on ``inputs``, compare their outputs, and time them interleaved.

    Each model gets one session (``threads`` intra-op threads, 0: onnxruntime's choice), used
    for the comparison and for the timing. Errors say whether the original or the pruned
    model failed to load or run. With ``labels`` (one per sample) the same outputs also give
    each model's top-1 accuracy.
    """
    if runs < 1:
        raise UsageError(f"latency runs must be at least 1, got {runs}")
    hint = guess_hint(inputs)
    sessions, feeds, outputs = [], [], []
    chunk_notes: list[str] = []
    samples = 0
    for path, role in zip((original, pruned), ROLES, strict=True):
        session = open_session(path, providers, role=role, threads=threads)
        chunks, out, notes = _outputs(session, inputs, role, hint)
        chunk_notes += notes
        outputs.append(out)
        sessions.append(session)
        feeds.append(chunks[0])  # latency is measured on one chunk
        samples = samples or rows_of(chunks)
    names = [o.name for o in sessions[0].get_outputs()]
    compared = compare_outputs(outputs[0], outputs[1], names)
    scored: dict = {}
    if labels is not None:
        check_labels(labels, inputs)
        kept = labels[: outputs[0][0].shape[0]] if outputs[0] else labels  # a dropped remainder
        scored = {
            "accuracy_before": accuracy(outputs[0], names, kept),
            "accuracy_after": accuracy(outputs[1], names, kept),
        }
        samples = len(kept)
    times = measure_sessions(
        sessions, feeds, list(ROLES), runs=runs, warmup=5, budget_s=_BUDGET_S, progress=progress
    )
    notes = list(getattr(inputs, "notes", [])) + chunk_notes[:1]
    actual, asked = _provider_notes(sessions[0], providers)
    notes += asked
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
        runs=done,
        notes=notes,
        samples=samples,
        threads=threads,
        **latency_summary(times[0], times[1]),
        **run_facts(feeds[0], inputs),
        **scored,
        verdict=compared["verdict"],
        inconclusive_reasons=list(compared["inconclusive_reasons"]),
        nonfinite_outputs=list(compared["nonfinite_outputs"]),
        passed=not compared["nonfinite_outputs"],
    )


# --------------------------------------------------------------------------------------------
# The ``onnxprune validate`` command: agreement and accuracy on the user's data
# --------------------------------------------------------------------------------------------


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
        chunks, out, chunk_notes = _outputs(session, inputs, role, hint)
        outputs.append(out)
        feeds.append(chunks[0])
        if role == roles[0]:
            # validate's notes also speak of latency, which is not measured here
            notes.extend(note.split(";")[0] for note in chunk_notes)
            if n is not None:
                samples = rows_of(chunks)
    names = [o.name for o in sessions[0].get_outputs()]
    result = compare_outputs(outputs[0], outputs[1], names)
    result["provider"], asked = _provider_notes(sessions[0], providers)
    notes += asked
    result["samples"] = samples
    if labels is not None:
        kept = labels[:samples]
        result["accuracy_before"] = accuracy(outputs[0], names, kept)
        result["accuracy_after"] = accuracy(outputs[1], names, kept)
    times = measure_sessions(sessions, feeds, roles, runs=runs, warmup=5, budget_s=_BUDGET_S)
    done = min(len(t) for t in times)
    if done < runs:
        notes.append(f"latency stopped after {done} of {runs} runs ({_BUDGET_S:g} s budget)")
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


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_evaluation(result: dict) -> str:
    """A short table: samples, accuracy, agreement, drift overall and per output, notes."""
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
    if result.get("verdict") == "inconclusive":
        # the numbers stay in the JSON; a table of perfect scores here would be a lie
        rows.append(["verdict", "inconclusive: " + "; ".join(result["inconclusive_reasons"])])
    else:
        rows += [
            ["top-1 agreement", _num(result.get("top1_agreement"), ".4f")],
            ["cosine", f"{result['cosine']:.6f}"],
            ["max abs diff", f"{result['max_abs_diff']:.3g}"],
            ["rel diff", f"{result['rel_diff']:.3g}"],
        ]
    if result.get("nonfinite_outputs"):
        shown = ", ".join(result["nonfinite_outputs"])
        rows.append(["non-finite", f"the pruned model gives NaN/Inf in {shown}"])
    rows += [gate_row(g) for g in result.get("gates", [])]
    rows += latency_rows(result)
    out.append(table(rows, ["", "value"]))
    out.extend(f"  {f}" for f in evaluation_facts(result))
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
    if per and result.get("verdict") != "inconclusive":
        out.append("")
        header = ["output", "shape", "max abs diff", "rel diff", "cosine", "top-1"]
        out.append(table(per, header))
    if result.get("notes"):
        out.append("")
        out.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(out)
