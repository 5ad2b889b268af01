"""Does the pruned model still compute what the original did, and is it faster?

One module for both questions onnxprune answers about two models:

* ``validate``, run by ``prune``: both models on the same inputs (calibration data or random
  inputs of the right type and shape), outputs compared, latency measured interleaved on the
  same sessions (``onnxprune.runtime.latency``);
* ``onnxprune validate ORIGINAL PRUNED`` (``runtime.compare_models``) runs the same
  comparison on two model files, with top-1 accuracy against integer labels.

Both run each model in the same chunks (``feeds.chunked``) and compare with
``compare.compare_outputs``, so the numbers mean the same in a prune report and in the
``validate`` command. Sessions are opened from the file path, never from bytes, so that
models with external data or over 2 GB work; every onnxruntime failure says which of the
two models failed.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.runtime.compare import (
    accuracy,
    check_labels,
    compare_outputs,
    per_sample_cosine,
)
from onnxprune.runtime.feeds import (
    chunked,
    guess_hint,
    join_chunks,
    rows_of,
    run_facts,
)
from onnxprune.runtime.latency import clock_for, clock_name, latency_summary, measure_sessions
from onnxprune.runtime.session import (
    fixed_batch,
    open_session,
    run_session,
    session_feeds,
)

__all__ = [
    "LATENCY_BUDGET_S",
    "ROLES",
    "ValidationResult",
    "chunked_outputs",
    "provider_notes",
    "validate",
]

ROLES = ("original model", "pruned model")
LATENCY_BUDGET_S = 10.0  # seconds of latency measurement in validate()
#: Random inputs of ``onnxprune validate`` (no --calib) get this many samples when the batch
#: is dynamic: one row would make top-1 agreement all or nothing.
RANDOM_SAMPLES = 16
PER_SAMPLE_IN_JSON = 64
"""``per_sample_cosine`` is written to the JSON report only up to this many samples (a
distribution of thousands belongs in the HTML report's histogram, not in every JSON)."""


SEQUENTIAL_BYTES = 256 << 20
"""Above this many bytes on disk (model and data files), the two models are run one after
the other, each session closed before the next opens: only their outputs are kept, so
validation needs the memory of one model, not two (latency is then timed per model)."""


def _one_at_a_time(original: str | os.PathLike, pruned: str | os.PathLike) -> bool:
    return _disk_bytes(original) + _disk_bytes(pruned) > SEQUENTIAL_BYTES


def _disk_bytes(path: str | os.PathLike) -> int:
    """The model file and the data files beside it that it names (external data)."""
    import onnx

    path = os.fspath(path)
    try:
        total = os.path.getsize(path)
        if total > SEQUENTIAL_BYTES:
            return total
        model = onnx.load(path, load_external_data=False)
    except Exception:  # unreadable here: opening the session says why
        return 0
    folder = os.path.dirname(os.path.abspath(path))
    files = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return total + sum(os.path.getsize(os.path.join(folder, f)) for f in files
                       if os.path.isfile(os.path.join(folder, f)))  # fmt: skip


def chunked_outputs(session, inputs: dict, role: str, hint: str):
    """Run ``session`` on ``inputs`` in chunks: (chunks, joined outputs, chunk notes)."""
    notes: list[str] = []
    step = fixed_batch(session) or getattr(inputs, "run_batch", None)
    chunks = chunked(session_feeds(session, inputs, role), step, notes)
    outputs = join_chunks([run_session(session, c, role, hint=hint) for c in chunks])
    return chunks, outputs, notes


def provider_notes(session, providers: list[str]) -> tuple[str, list[str]]:
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
    per_sample_cosine: list[float] = field(default_factory=list)
    """One cosine per sample (``compare.per_sample_cosine``); in ``to_dict`` only up to
    ``PER_SAMPLE_IN_JSON`` samples."""

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
            **(
                {"per_sample_cosine": list(self.per_sample_cosine)}
                if 0 < len(self.per_sample_cosine) <= PER_SAMPLE_IN_JSON
                else {}
            ),
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
    each model's top-1 accuracy. Models over ``SEQUENTIAL_BYTES`` run one after the other:
    each session is timed and closed before the next opens, only outputs are kept.

    Long because both orders (sessions kept for interleaved timing, or one at a time) share
    the comparison and the result they fill in.
    """
    if runs < 1:
        raise UsageError(f"latency runs must be at least 1, got {runs}")
    hint = guess_hint(inputs)
    sequential = _one_at_a_time(original, pruned)
    sessions, feeds, outputs, times, names = [], [], [], [], []
    chunk_notes: list[str] = []
    samples = 0
    for path, role in zip((original, pruned), ROLES, strict=True):
        session = open_session(path, providers, role=role, threads=threads)
        chunks, out, notes = chunked_outputs(session, inputs, role, hint)
        chunk_notes += notes
        outputs.append(out)
        feeds.append(chunks[0])  # latency is measured on one chunk
        samples = samples or rows_of(chunks)
        names = names or [o.name for o in session.get_outputs()]
        if sequential:  # time it now and let it go: the next model's weights take its place
            times += measure_sessions([session], [chunks[0]], [role], runs=runs, warmup=1,
                                      budget_s=LATENCY_BUDGET_S / 2, progress=progress,
                                      threads=threads)  # fmt: skip
            clock = clock_for([session], threads)
            if role == ROLES[0]:
                actual, asked = provider_notes(session, providers)
            del session, chunks
            gc.collect()
        else:
            sessions.append(session)
            clock = clock_for(sessions, threads)
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
    if not sequential:
        times = measure_sessions(
            sessions, feeds, list(ROLES), runs=runs, warmup=5, budget_s=LATENCY_BUDGET_S,
            progress=progress, threads=threads,
        )  # fmt: skip
        actual, asked = provider_notes(sessions[0], providers)
    notes = list(getattr(inputs, "notes", [])) + chunk_notes[:1]
    if clock_name(clock) != "wall clock":
        notes.append("latency timed by each run's thread CPU time (1 thread: onnxruntime "
                     "computes on the calling thread; other processes do not add to it)")  # fmt: skip
    notes += asked
    if sequential:
        notes.append(
            f"models over {SEQUENTIAL_BYTES >> 20} MB run one after the other (never both in "
            "memory): latency timed per model, not interleaved"
        )
    done = min(len(t) for t in times)
    if done < runs:
        notes.append(f"latency stopped after {done} of {runs} runs ({LATENCY_BUDGET_S:g} s budget)")
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
        per_sample_cosine=per_sample_cosine(outputs[0], outputs[1]),
    )
