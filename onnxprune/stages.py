"""Stage timing and progress for one run: what ``onnxprune.prune`` shows on stderr and
records in the report's ``timings_s``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from onnxprune.progress import progress_bar


class Stages:
    """Times each stage and drives one progress bar over them (stderr; hidden when not a TTY).

    ``names`` lists every entry in order, a name entered twice listed twice (the bar counts
    entries; ``timings`` adds the time of every entry of a name under that name).
    """

    def __init__(self, names: Sequence[str], progress: bool):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._bar = None
        if progress:
            self._bar = progress_bar(total=len(names), desc="onnxprune", unit="step")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._bar is not None:
            self._bar.set_description(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            if self._bar is not None:
                self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def layer_bar(progress: bool):
    """A progress callback counting refit layers (None when progress is off)."""
    if not progress:
        return None
    bar = progress_bar(total=None, desc="recover", unit="layer")
    return bar.update
