"""The one record of a pruning run: what changed, what was measured, what was left alone.

Composed of counts from metrics and typed sections handed over by the stages (``StructuredResult``, ``UnstructuredSummary``, ``Recoveries``, ``ValidationResult``), never
patched after the fact, so the JSON and the terminal table always agree. Dicts appear only
in ``to_dict()``. The top-level JSON key names are a contract with users' pipelines: add
keys, never rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxprune.report.render import render_report
from onnxprune.report.sections import Recoveries, RecoverySummary, UnstructuredSummary
from onnxprune.report.text import human_bytes, human_count, table

if TYPE_CHECKING:
    from onnxprune.runtime.validate import ValidationResult
    from onnxprune.structured.engine import StructuredResult

__all__ = [
    "Recoveries",
    "RecoverySummary",
    "Report",
    "UnstructuredSummary",
    "human_bytes",
    "human_count",
    "render_report",
    "table",
]


@dataclass
class Report:
    input_path: str | None = None
    output_path: str | None = None
    params_before: int = 0
    params_after: int = 0
    nonzero_before: int = 0
    nonzero_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    size_bytes_before: int = 0
    size_bytes_after: int = 0
    gzip_bytes_before: int = 0
    gzip_bytes_after: int = 0
    unstructured: UnstructuredSummary | None = None
    structured: StructuredResult | None = None
    validation: ValidationResult | None = None
    recovery: Recoveries | None = None
    """One pass per pruning kind that was recovered; None when no recovery ran."""
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    """Peak resident memory (``metrics.memory.memory_section``); empty when not measured."""

    def add_recovery(self, kind: str, result: Any) -> None:
        """Record a recovery pass (``kind`` is ``structured`` or ``unstructured``)."""
        if self.recovery is None:
            self.recovery = Recoveries()
        setattr(self.recovery, kind, RecoverySummary.from_result(result))

    def to_dict(self) -> dict[str, Any]:
        def section(s: Any) -> dict | None:
            return None if s is None else s.to_dict()

        return {
            "input_path": self.input_path,
            "output_path": self.output_path,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "nonzero_before": self.nonzero_before,
            "nonzero_after": self.nonzero_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "size_bytes_before": self.size_bytes_before,
            "size_bytes_after": self.size_bytes_after,
            "gzip_bytes_before": self.gzip_bytes_before,
            "gzip_bytes_after": self.gzip_bytes_after,
            "unstructured": section(self.unstructured),
            "structured": section(self.structured),
            "validation": section(self.validation),
            "recovery": section(self.recovery),
            "notes": list(self.notes),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "memory": dict(self.memory),
        }

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def render(self, verbose: bool = False) -> str:
        return render_report(self, max_rows=None if verbose else 25)
