"""The prune progress bar: one step per stage, even for a stage entered twice."""

from __future__ import annotations

from typing import ClassVar

import onnxprune.api as api
import onnxprune.stages as stages
from onnxprune.testing.graphs import gemm_mlp


class _Bar:
    made: ClassVar[list[_Bar]] = []

    def __init__(self, *args, total=None, **kwargs) -> None:
        self.total, self.n = total, 0
        _Bar.made.append(self)

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_description(self, _: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_bar_ends_at_its_total_although_measure_runs_twice(monkeypatch):
    # "measure" runs before pruning (parameter counts) and after (compressed sizes)
    monkeypatch.setattr(stages, "progress_bar", _Bar)
    _Bar.made.clear()
    for validate in (False, True):
        api.prune(gemm_mlp(), structured=0.5, validate=validate, runs=1, progress=True)
        bar = _Bar.made[-1]
        assert bar.total is not None and bar.n == bar.total
