"""Typed sections of the report, converted once from what each stage returns.

The stages' own results (``UnstructuredResult`` from unstructured/magnitude.py,
``RecoveryResult`` from recovery/recover.py) are turned into these at one boundary, the
``from_result`` constructors, so nothing downstream reads a result back by string key. The
structured section is the engine's ``StructuredResult`` and the validation section the
runtime's ``ValidationResult`` directly: both are typed already. Dicts appear only in
``to_dict()``, whose keys are the documented JSON (README "Report").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class UnstructuredSummary:
    """The report's ``unstructured`` section: ``prune_unstructured``'s ``UnstructuredResult``
    (mode, target, scope, selected, zeroed, tensors, skipped: typed attributes) with what the
    run adds to it, the criterion and, after OBS re-chose the zeroed weights, a recount."""

    result: Any
    """The ``UnstructuredResult`` as returned (unstructured/magnitude.py)."""
    criterion: str = "magnitude"
    recount: int | None = None
    """Zeroed weights counted again after recovery; None: ``result.zeroed`` stands."""

    @classmethod
    def from_result(cls, result: Any, criterion: str) -> UnstructuredSummary:
        return cls(result, criterion)

    def with_zeroed(self, zeroed: int) -> UnstructuredSummary:
        """The same section with a recount (OBS re-chooses the zeroed weights)."""
        return replace(self, recount=zeroed)

    @property
    def zeroed(self) -> int:
        return self.result.zeroed if self.recount is None else self.recount

    @property
    def tensors(self) -> list[dict]:
        """Per pruned tensor: tensor, op, shape, zeroed, size, sparsity_after (leaf records)."""
        return self.result.tensors

    @property
    def skipped(self) -> list[dict]:
        """Per tensor left alone: tensor, reason (leaf records)."""
        return self.result.skipped

    @property
    def weights(self) -> list[str]:
        """The names of the pruned weight tensors."""
        return [t["tensor"] for t in self.tensors]

    def to_dict(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "zeroed": self.zeroed, "criterion": self.criterion}


@dataclass(frozen=True)
class RecoverySummary:
    """One recovery pass (after structured or after unstructured pruning)."""

    steps: list[str]
    samples: int
    waves: int
    seconds: float
    layers_refit: int
    mean_err_before: float | None
    mean_err_after: float | None
    layers: list[dict] = field(default_factory=list)
    """Per refit layer: name, op, method, rows, err_before, err_after (leaf records)."""
    skipped: list[dict] = field(default_factory=list)
    """Per layer left alone: layer, reason (leaf records)."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Where ``seconds`` went: taps, gram, factor, solve (``RecoveryResult.stage_seconds``)."""

    @classmethod
    def from_result(cls, result: Any) -> RecoverySummary:
        """From ``recover_*``'s ``RecoveryResult``, whose ``to_dict`` computes the means
        and makes the errors JSON-safe (the one conversion point)."""
        d = result.to_dict()
        return cls(
            steps=list(d["steps"]), samples=d["samples"], waves=d["waves"],
            seconds=d["seconds"], layers_refit=d["layers_refit"],
            mean_err_before=d["mean_err_before"], mean_err_after=d["mean_err_after"],
            layers=d["layers"], skipped=d["skipped"], stage_seconds=d.get("stage_seconds", {}),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "samples": self.samples,
            "waves": self.waves,
            "seconds": self.seconds,
            "stage_seconds": dict(self.stage_seconds),
            "layers_refit": self.layers_refit,
            "mean_err_before": self.mean_err_before,
            "mean_err_after": self.mean_err_after,
            "layers": self.layers,
            "skipped": self.skipped,
        }


@dataclass
class Recoveries:
    """The report's ``recovery`` section: one pass per pruning kind that was recovered."""

    structured: RecoverySummary | None = None
    unstructured: RecoverySummary | None = None

    def items(self) -> list[tuple[str, RecoverySummary]]:
        """(kind, pass) for each pass that ran, structured first (the order they run in)."""
        kinds = (("structured", self.structured), ("unstructured", self.unstructured))
        return [(kind, rec) for kind, rec in kinds if rec is not None]

    def to_dict(self) -> dict[str, Any]:
        return {kind: rec.to_dict() for kind, rec in self.items()}
