"""What a run did to the model, read from the typed sections: the refusal of a run that
pruned nothing, the notes on quantized weights and on validating on the recovery's own
samples, and the recount of zeroed weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.proto import tensor_array

if TYPE_CHECKING:
    from onnxprune.report.results import Report
    from onnxprune.report.sections import Recoveries

FITTED_NOTE = (
    "recovery was fitted to these samples: for an unbiased figure run "
    "`onnxprune validate` on held-out data"
)


def quantized_ops(quantized: Mapping[str, int]) -> str:
    """``Conv x2, MatMul x1``: the quantized weights a run leaves untouched."""
    return ", ".join(f"{k} x{v}" for k, v in sorted(quantized.items()))


def refuse_if_nothing_pruned(report: Report, quantized: Mapping[str, int]) -> None:
    """A run that could change nothing is a model problem, not a success with zero effect."""
    u, s = report.unstructured, report.structured
    if (u is not None and u.tensors) or (s is not None and s.prunable):
        return
    reasons = []
    if u is not None:
        reasons += [f"{k['tensor']}: {k['reason']}" for k in u.skipped[:3]]
    if s is not None:
        reasons += [f"{b['where']}: {b['reason']}" for b in s.blocked[:3]]
    detail = ""
    if quantized:
        detail = f" (quantized weights are left untouched: {quantized_ops(quantized)})"
    elif reasons:
        detail = f" ({'; '.join(reasons)})"
    raise OnnxPruneError(
        "no prunable weights found: the model has no float Conv, ConvTranspose, Gemm or MatMul "
        f"weights that can be pruned{detail}"
    )


def zeroed_between(reference: onnx.ModelProto, pruned: onnx.ModelProto, names: Sequence[str]) -> int:
    """Weights of ``names`` zero in ``pruned`` but not in ``reference`` (OBS re-chooses the
    zeroed weights, so the count is taken again)."""
    wanted = set(names)
    count = 0
    for model, sign in ((pruned, 1), (reference, -1)):
        for t in model.graph.initializer:
            if t.name in wanted:
                a = tensor_array(t)
                count += sign * int(a.size - np.count_nonzero(a))
    return count


def with_recovery_note(validation: Any, recovery: Recoveries | None) -> Any:
    """The ``ValidationResult``, with a note when recovery was fitted to the same samples
    (``data`` is ``calib``: no holdout); held-out or ``--val`` data needs no such note."""
    if recovery is None or getattr(validation, "data", None) not in (None, "calib"):
        return validation
    return replace(validation, notes=[*validation.notes, FITTED_NOTE])
