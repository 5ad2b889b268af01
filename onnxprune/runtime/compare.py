"""How far one model's outputs are from another's: drift, top-1 agreement, accuracy.

Pure numpy on outputs already computed (``onnxprune.runtime.validate`` runs the models):
max and relative absolute difference, cosine similarity, top-1 agreement of class scores,
and top-1 accuracy against integer labels, and whether the comparison can prove anything
(``verdict``): outputs of the original that are constant, all zero or non-finite, or class
scores that pick fewer than 2 classes, agree with a broken pruned model as well as with a
good one, so such a comparison is *inconclusive* and no gate may pass on it.
"""

from __future__ import annotations

import numpy as np

from onnxprune.errors import OnnxPruneError
from onnxprune.runtime.feeds import shared_batch

__all__ = [
    "CONCLUSIVE",
    "INCONCLUSIVE",
    "accuracy",
    "check_labels",
    "compare_outputs",
    "inconclusive_reasons",
    "is_class_scores",
    "per_sample_cosine",
]

CONCLUSIVE, INCONCLUSIVE = "conclusive", "inconclusive"
INPUT_DEPENDENCE = 1e-3
"""An output whose values move across samples by less than this fraction of its largest
magnitude hardly depends on the input (a deep net at its initialization whose signal has
died out, a head dominated by its bias): any model giving about that constant matches it, so
the comparison is inconclusive."""


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


def is_class_scores(x: np.ndarray) -> bool:
    """An [N, C>=2] float output, read as class scores (top-1 agreement, accuracy)."""
    return x.ndim == 2 and x.dtype.kind == "f" and x.shape[1] >= 2 and x.shape[0] >= 1


def _degenerate(name: str, r: np.ndarray) -> str | None:
    """Why the original's float output ``r`` cannot tell a good pruned model from a bad one."""
    if r.size == 0:
        return None
    if not np.isfinite(r).all():
        return f"output {name!r} of the original has NaN or Inf values"
    if not np.any(r):
        return f"output {name!r} of the original is all zero"
    rows = r.reshape(r.shape[0], -1) if r.ndim >= 1 and r.shape[0] >= 2 else r.reshape(1, -1)
    if rows.shape[0] >= 2 and np.all(rows == rows[0]):
        return f"output {name!r} of the original is the same for every sample"
    if rows.shape[0] >= 2:
        wide = rows.astype(np.float64)
        spread = float(np.max(np.abs(wide - wide[0])))
        if spread <= INPUT_DEPENDENCE * float(np.max(np.abs(wide))):
            return (
                f"output {name!r} of the original hardly depends on the input (it varies "
                f"across samples by {spread:.2g}, under {INPUT_DEPENDENCE:g} of its scale): a "
                "model that ignored its input would agree with it"
            )
    if rows.shape[0] == 1 and np.all(rows == rows.flat[0]) and rows.size > 1:
        return f"output {name!r} of the original is constant"
    if is_class_scores(r):
        classes = np.unique(np.argmax(r, axis=1)).size
        if classes < 2:
            return (
                f"output {name!r} of the original predicts {classes} class over "
                f"{r.shape[0]} sample(s): top-1 agreement cannot tell models apart"
            )
    return None


def inconclusive_reasons(reference: list[np.ndarray], names: list[str]) -> list[str]:
    """Why comparing against these outputs of the original proves nothing (empty: it can).

    Only float outputs are judged (integer outputs such as shapes or indices may be
    constant by design). Any degenerate float output makes the whole comparison
    inconclusive: the overall cosine and agreement would otherwise hide it.
    """
    reasons = []
    for name, r in zip(names, reference, strict=False):
        r = np.asarray(r)
        if r.dtype.kind == "f":
            why = _degenerate(name, r)
            if why:
                reasons.append(why)
    return reasons


def _nonfinite_where_finite(name: str, r: np.ndarray, c: np.ndarray) -> bool:
    if r.dtype.kind != "f" or c.dtype.kind != "f":
        return False
    return bool(np.any(~np.isfinite(c) & np.isfinite(r)))


def compare_outputs(
    reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str]
) -> dict:
    """How far ``candidate`` is from ``reference``: keys of ``ValidationResult`` minus latency.

    Returns ``max_abs_diff``, ``rel_diff`` (max_abs_diff / max |reference|, over all
    outputs), ``cosine`` (of all outputs flattened and concatenated), ``top1_agreement``
    (rows of every [N, C>=2] float output whose argmax agrees, else None), ``per_output``
    and ``notes``; ``verdict`` (``"conclusive"`` or ``"inconclusive"``), its
    ``inconclusive_reasons``, and ``nonfinite_outputs``: outputs where the pruned model gives
    NaN or Inf but the original is finite (a broken model, whatever the other figures say).
    Outputs must match in number and shape: a pruned model that changed an
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
    nonfinite: list[str] = []
    for name, r, c in zip(names, reference, candidate, strict=False):
        r, c = np.asarray(r), np.asarray(c)
        if r.shape != c.shape:
            raise OnnxPruneError(
                f"output {name!r} of the pruned model has shape {c.shape} but the original has {r.shape}"
            )
        if _nonfinite_where_finite(name, r, c):
            nonfinite.append(name)
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
        if is_class_scores(r):
            hits = int(np.count_nonzero(np.argmax(r, axis=1) == np.argmax(c, axis=1)))
            entry["top1_agreement"] = hits / r.shape[0]
            agree, rows = agree + hits, rows + r.shape[0]
        per_output.append(entry)
        flat_ref.append(rf[both])
        flat_cand.append(cf[both])
        max_abs, max_ref = max(max_abs, out_max), max(max_ref, out_ref)
    cat_ref = np.concatenate(flat_ref) if flat_ref else np.zeros(0)
    cat_cand = np.concatenate(flat_cand) if flat_cand else np.zeros(0)
    reasons = inconclusive_reasons(reference, names)
    return {
        "max_abs_diff": max_abs,
        "rel_diff": _relative(max_abs, max_ref),
        "cosine": _cosine(cat_ref, cat_cand),
        "top1_agreement": agree / rows if rows else None,
        "per_output": per_output,
        "notes": notes,
        "verdict": INCONCLUSIVE if reasons else CONCLUSIVE,
        "inconclusive_reasons": reasons,
        "nonfinite_outputs": nonfinite,
    }


def per_sample_cosine(reference: list[np.ndarray], candidate: list[np.ndarray]) -> list[float]:
    """One cosine per sample, so one bad input shows (an overall cosine of 0.999 can hide a
    sample at 0.6): each sample's rows of every float output whose first axis is the batch
    (the first axis of the first float output of rank >= 1), flattened and concatenated.
    Empty when no float output has a batch axis or the batch is a single sample."""
    pairs = [
        (np.asarray(r), np.asarray(c))
        for r, c in zip(reference, candidate, strict=False)
        if np.asarray(r).dtype.kind == "f" and np.asarray(r).ndim >= 1
    ]
    if not pairs or pairs[0][0].shape[0] < 2:
        return []
    n = pairs[0][0].shape[0]
    pairs = [(r, c) for r, c in pairs if r.shape[0] == n and c.shape == r.shape]
    ref = np.concatenate([r.reshape(n, -1).astype(np.float64) for r, _ in pairs], axis=1)
    cand = np.concatenate([c.reshape(n, -1).astype(np.float64) for _, c in pairs], axis=1)
    out = []
    for a, b in zip(ref, cand, strict=True):
        both = np.isfinite(a) & np.isfinite(b)
        out.append(_cosine(a[both], b[both]))
    return out


def check_labels(labels: np.ndarray, inputs: dict) -> int:
    """The sample count, after checking there is one label per sample."""
    n = shared_batch(inputs)
    if n is None:
        raise OnnxPruneError("--labels needs inputs that share one batch axis")
    if len(labels) != n:
        raise OnnxPruneError(f"there are {len(labels)} labels but {n} input samples")
    return n


def accuracy(outputs: list[np.ndarray], names: list[str], labels: np.ndarray) -> float:
    """Top-1 accuracy of the first [N, C] float output against integer ``labels``."""
    for name, out in zip(names, outputs, strict=True):
        if not is_class_scores(out):
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
