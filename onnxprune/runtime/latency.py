"""Latency measured the way the model is deployed, and *interleaved*.

Sessions are opened from the file with full graph optimization; runs alternate A, B, B, A,
... so that noise from the rest of the machine lands on every model alike. Each model's
figure is its median with the p10-p90 spread; a speed-up is *significant* only when the two
spreads do not overlap (``speedup_significant``): a machine whose run times wander between
48 and 115 ms cannot show a 10% gain.

With more than one intra-op thread, models alternate in *blocks* of ``BLOCK_RUNS`` timed
runs (more for a fast model: as many as fill the settling time), each after ``SETTLE_S`` of
untimed runs. onnxruntime's idle pool threads spin for tens
of milliseconds after every run (2^20 pause instructions), so a model timed right after
another shares the cores with the other's spinning threads. On 2 cores (``python
tools/bench_settle.py ORIGINAL PRUNED``, 4 repeats of 30 runs), run for run alternation timed
ResNet-50 at 42.5 ms against 23.1 ms run alone, and read a cut MobileNetV2 at 1.63x-2.04x;
settled blocks read 24.0 ms, and the pairs within 1-8% of timing each model alone with a
spread of 0.6-5.4% over repeats (alone: 2.1-3.2%, as it does not interleave). A deployment
runs one model back to back, which is what the settled blocks measure. At one thread there
is no pool, and runs alternate one by one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.progress import progress_bar
from onnxprune.runtime.session import open_session, run_session, session_feeds

__all__ = ["latency_summary", "measure_latency", "measure_sessions", "speedup_significant"]

_MIN_RUNS = 5  # latency runs per model kept even when the time budget is spent
SETTLE_S = 0.1
"""Seconds of untimed runs a model gets when the timing turns to it, at more than one
thread: the model timed before stops spinning (about 70 ms on this machine's CPU)."""
BLOCK_RUNS = 5
"""Timed runs per turn when turns settle first (the settling is paid once per block)."""
MIN_TURNS = 3
"""Turns per model at least when turns settle (A B B A A B: a drift of the machine lands
on both alike)."""


def spread(times: list[float]) -> tuple[float, float, float]:
    """(p10, median, p90) of run times."""
    p10, median, p90 = np.percentile(np.asarray(times, dtype=float), [10, 50, 90])
    return float(p10), float(median), float(p90)


def speedup_significant(before: list[float], after: list[float]) -> bool:
    """True when the p10-p90 spreads of the two models' run times do not overlap."""
    b10, _, b90 = spread(before)
    a10, _, a90 = spread(after)
    return a90 < b10 or b90 < a10


def latency_summary(before: list[float], after: list[float]) -> dict:
    """The report's latency keys for two lists of run times (ms): medians, p10, p90,
    ``speedup`` (median before / median after) and ``speedup_significant``."""
    b10, bmed, b90 = spread(before)
    a10, amed, a90 = spread(after)
    return {
        "latency_ms_before": bmed, "latency_ms_after": amed,
        "latency_p10_ms_before": b10, "latency_p10_ms_after": a10,
        "latency_p90_ms_before": b90, "latency_p90_ms_after": a90,
        "speedup": bmed / amed if amed > 0 else None,
        "speedup_significant": speedup_significant(before, after),
    }  # fmt: skip


def measure_sessions(
    sessions: list,
    feeds: list[dict[str, np.ndarray]],
    roles: list[str],
    *,
    runs: int,
    warmup: int,
    budget_s: float | None,
    progress: bool = False,
    threads: int | None = None,
) -> list[list[float]]:
    """Time already-open sessions; shared by ``measure_latency`` and ``validate``. With
    ``threads`` 1 on the CPU the runs are timed by thread CPU time (``clock_for``), one run
    per turn; otherwise in settled blocks (``settling``).

    ``validate`` reuses the sessions it compared outputs with: opening a big model twice
    would double the wait for nothing.
    """
    if runs < 1:
        raise UsageError(f"latency runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"warm-up runs cannot be negative, got {warmup}")
    clock = clock_for(sessions, threads)
    for session, feed, role in zip(sessions, feeds, roles, strict=True):
        for _ in range(warmup):
            _timed(session, feed, role, clock)
    n = len(sessions)
    settle, block = settling(n, clock)
    times: list[list[float]] = [[] for _ in sessions]
    floor = min(runs, _MIN_RUNS)
    start = time.perf_counter()
    bar = progress_bar(total=runs, desc="latency", unit="run", enabled=progress)

    def spent(kept: list[float]) -> bool:  # the budget is spent and this model has its floor
        return budget_s is not None and len(kept) >= floor \
            and time.perf_counter() - start > budget_s  # fmt: skip

    with bar:
        r = 0
        while min(len(t) for t in times) < runs and not all(spent(t) for t in times):
            done = len(times[0])
            for k in range(n):  # rotate who goes first: A B, B A, ...
                i = (r + k) % n
                if len(times[i]) >= runs or spent(times[i]):
                    continue
                run_ms = _settle(sessions[i], feeds[i], roles[i], settle)
                for _ in range(min(_block(block, settle, run_ms, runs), runs - len(times[i]))):
                    times[i].append(_timed(sessions[i], feeds[i], roles[i], clock))
                    if spent(times[i]):
                        break
            bar.update(len(times[0]) - done)
            r += 1
    return times


def settling(n: int, clock: Callable[[], float]) -> tuple[float, int]:
    """(untimed seconds before each turn, timed runs per turn at least) for ``n`` models
    timed by ``clock``: settled blocks when several models share a multi-threaded machine
    (the wall clock), one run per turn otherwise."""
    if n > 1 and clock is not time.thread_time:
        return SETTLE_S, BLOCK_RUNS
    return 0.0, 1


def _block(least: int, settle: float, run_ms: float, total: int) -> int:
    """Timed runs in a turn: ``least``, or more for a fast model, as many as last as long as
    the settling did (a model of 0.1 ms would otherwise spend 99% of its turns settling),
    but never so many that the ``total`` runs take fewer than ``MIN_TURNS`` turns: one turn
    per model times each at another moment (a cut MobileNetV2 read 1.02x-1.47x)."""
    if settle <= 0 or run_ms <= 0:
        return least
    fill = math.ceil(settle * 1000.0 / run_ms)
    return max(least, min(fill, math.ceil(total / MIN_TURNS)))


def _settle(session, feed: dict[str, np.ndarray], role: str, seconds: float) -> float:
    """Untimed runs for ``seconds`` (at least one when ``seconds`` > 0); the mean ms of one
    (0 when none ran)."""
    if seconds <= 0:
        return 0.0
    t0 = time.perf_counter()
    run_session(session, feed, role)
    count = 1
    while time.perf_counter() - t0 < seconds:
        run_session(session, feed, role)
        count += 1
    return (time.perf_counter() - t0) * 1000.0 / count


def clock_for(sessions: list, threads: int | None) -> Callable[[], float]:
    """The clock that times a run. One intra-op thread on the CPU provider: onnxruntime
    computes on the calling thread, so that thread's CPU time is the run's own work, and
    other processes on the machine do not add to it (at a load of 20 on 2 cores the wall
    clock read 0.95x, 1.36x and 3.10x for one pair; thread time 1.38x and 1.33x). Otherwise
    (more threads, or a GPU): the wall clock."""
    cpu_only = all(s.get_providers()[:1] == ["CPUExecutionProvider"] for s in sessions)
    return time.thread_time if threads == 1 and cpu_only else time.perf_counter


def clock_name(clock: Callable[[], float]) -> str:
    """What the report says was timed."""
    return "thread CPU time (1 thread)" if clock is time.thread_time else "wall clock"


def _timed(session, feed: dict[str, np.ndarray], role: str, clock=time.perf_counter) -> float:
    t0 = clock()
    run_session(session, feed, role)
    return (clock() - t0) * 1000.0


def measure_latency(
    paths: list[str | os.PathLike],
    inputs: dict,
    providers: list[str],
    *,
    runs: int = 30,
    warmup: int = 5,
    budget_s: float | None = 10.0,
    progress: bool = False,
    threads: int = 0,
) -> list[list[float]]:
    """Per-model lists of run times (ms), measured interleaved.

    All sessions are opened and warmed up first, then each round runs every model once (a
    settled block of runs, with more than one thread) in a rotating order, so slow spells of
    the machine hit all models alike. After ``budget_s``
    seconds of measuring, stops early once every model has at least 5 runs. ``threads`` is
    onnxruntime's intra-op thread count (0: its own choice).
    """
    roles = [f"model {os.fspath(p)}" for p in paths]
    sessions = [
        open_session(p, providers, role=role, threads=threads)
        for p, role in zip(paths, roles, strict=True)
    ]
    feeds = [session_feeds(s, inputs, role) for s, role in zip(sessions, roles, strict=True)]
    return measure_sessions(
        sessions, feeds, roles, runs=runs, warmup=warmup, budget_s=budget_s, progress=progress,
        threads=threads,
    )
