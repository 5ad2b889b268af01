"""Stage timing and progress for one run: what ``onnxprune.prune`` shows on stderr and
records in the report's ``timings_s``."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from onnxprune.metrics.memory import memory_section, peak_rss_bytes
from onnxprune.progress import Counter, progress_bar


class Stages:
    """Times each stage and drives one progress bar over them (stderr; hidden when not a TTY).

    ``names`` lists every entry in order, a name entered twice listed twice (the bar counts
    entries; ``timings`` adds the time of every entry of a name under that name).
    """

    def __init__(self, names: Sequence[str], progress: bool):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        """For each stage that raised the process's peak resident memory, the peak it
        reached (the last one listed set the run's peak)."""
        self._bar = None
        if progress:
            self._bar = progress_bar(total=len(names), desc="onnxprune", unit="step")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self._bar is not None:
            self._bar.set_description(name)
        t0, peak0 = time.perf_counter(), peak_rss_bytes()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            peak = peak_rss_bytes()
            if peak > peak0:  # this stage raised the peak
                self.peak_rss[name] = max(peak, self.peak_rss.get(name, 0))
            if self._bar is not None:
                self._bar.update(1)

    def memory(self, weight_bytes: int) -> dict:
        """The report's ``memory`` section: peak resident bytes, per stage and over all."""
        return memory_section(self.peak_rss, weight_bytes)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def layer_bar(progress: bool):
    """A progress callback counting refit layers (None when progress is off); a
    ``progress.Counter``, so recovery can give it the number of layers (time left)."""
    if not progress:
        return None
    return Counter(progress_bar(total=None, desc="recover", unit="layer"))


def pass_bar(progress: bool):
    """A progress callback counting the tensors calibration has tapped (None when off)."""
    if not progress:
        return None
    return Counter(progress_bar(total=None, desc="calibrate", unit="tensor"))
