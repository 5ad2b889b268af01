"""How much to prune, and where: plans chosen to meet a target (issue 11).

This package *produces plans*: it prices each prunable group's slots (``costs``: MACs and
params, analytic; ``latency``: measured), says what losing them costs in quality
(``sensitivity``), chooses per-group kept counts under a budget (``solver``), and saves and
re-applies the decision (``plans``). It never rewrites a graph itself: the kept counts go to
``onnxprune.structured.plan.make_plan(keep=...)`` through the structured engine.

The modules meet on one plain table, :class:`GroupCurve`: one value (MACs, params, ms or a
quality loss) per kept slot count of one group (``Group.id`` from
``onnxprune.structured.dependency.analyze``). This module stays import-light (numpy only),
so every part of the package can use the table without pulling in the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GroupCurve"]


@dataclass
class GroupCurve:
    """``value[i]`` is what group ``group_id`` costs (or loses) with ``keep[i]`` of its
    ``slots`` slots kept. ``keep`` need not list every count: :meth:`at` interpolates
    linearly between listed counts and holds the end values outside them."""

    group_id: str
    slots: int
    keep: list[int]
    value: list[float]

    def __post_init__(self) -> None:
        if len(self.keep) != len(self.value) or not self.keep:
            raise ValueError(
                f"curve of {self.group_id!r}: keep and value must be non-empty and equally "
                f"long, got {len(self.keep)} and {len(self.value)}"
            )
        order = np.argsort(np.asarray(self.keep), kind="stable")
        keep = [int(self.keep[i]) for i in order]
        if len(set(keep)) != len(keep) or keep[0] < 1 or keep[-1] > self.slots:
            raise ValueError(
                f"curve of {self.group_id!r}: keep counts must be distinct and in "
                f"[1, {self.slots}], got {sorted(self.keep)}"
            )
        self.keep = keep
        self.value = [float(self.value[i]) for i in order]

    def at(self, keep: int | Sequence[int] | np.ndarray) -> np.ndarray | float:
        """The value at ``keep`` kept slots (one count or many), linearly interpolated."""
        out = np.interp(np.asarray(keep, dtype=np.float64), self.keep, self.value)
        return float(out) if np.ndim(out) == 0 else out

    def table(self) -> np.ndarray:
        """The value at every count 1..slots (index ``k - 1``)."""
        return np.asarray(self.at(np.arange(1, self.slots + 1)), dtype=np.float64)

    def to_dict(self) -> dict:
        return {"group_id": self.group_id, "slots": self.slots, "keep": list(self.keep),
                "value": list(self.value)}  # fmt: skip
