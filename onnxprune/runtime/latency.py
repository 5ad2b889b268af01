"""Latency measured the way the model is deployed, and *interleaved*.

Sessions are opened from the file with full graph optimization; runs alternate A, B, B, A,
... so that noise from the rest of the machine lands on every model alike.
"""

from __future__ import annotations

import os
import time

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.progress import progress_bar
from onnxprune.runtime.session import open_session, run_session, session_feeds

__all__ = ["measure_latency", "measure_sessions"]

_MIN_RUNS = 5  # latency runs per model kept even when the time budget is spent


def measure_sessions(
    sessions: list,
    feeds: list[dict[str, np.ndarray]],
    roles: list[str],
    *,
    runs: int,
    warmup: int,
    budget_s: float | None,
    progress: bool = False,
) -> list[list[float]]:
    """Time already-open sessions; shared by ``measure_latency`` and ``validate``.

    ``validate`` reuses the sessions it compared outputs with: opening a big model twice
    would double the wait for nothing.
    """
    if runs < 1:
        raise UsageError(f"latency runs must be at least 1, got {runs}")
    if warmup < 0:
        raise UsageError(f"warm-up runs cannot be negative, got {warmup}")
    for session, feed, role in zip(sessions, feeds, roles, strict=True):
        for _ in range(warmup):
            _timed(session, feed, role)
    n = len(sessions)
    times: list[list[float]] = [[] for _ in sessions]
    floor = min(runs, _MIN_RUNS)
    start = time.perf_counter()
    bar = progress_bar(total=runs, desc="latency", unit="run", enabled=progress)
    with bar:
        for r in range(runs):
            if budget_s is not None and r >= floor and time.perf_counter() - start > budget_s:
                break
            for k in range(n):  # rotate who goes first: A B, B A, ...
                i = (r + k) % n
                times[i].append(_timed(sessions[i], feeds[i], roles[i]))
            bar.update(1)
    return times


def _timed(session, feed: dict[str, np.ndarray], role: str) -> float:
    t0 = time.perf_counter()
    run_session(session, feed, role)
    return (time.perf_counter() - t0) * 1000.0


def measure_latency(
    paths: list[str | os.PathLike],
    inputs: dict,
    providers: list[str],
    *,
    runs: int = 30,
    warmup: int = 5,
    budget_s: float | None = 10.0,
    progress: bool = False,
) -> list[list[float]]:
    """Per-model lists of run times (ms), measured interleaved.

    All sessions are opened and warmed up first, then each round runs every model once in a
    rotating order, so slow spells of the machine hit all models alike. After ``budget_s``
    seconds of measuring, stops early once every model has at least 5 runs.
    """
    roles = [f"model {os.fspath(p)}" for p in paths]
    sessions = [open_session(p, providers, role=role) for p, role in zip(paths, roles, strict=True)]
    feeds = [session_feeds(s, inputs, role) for s, role in zip(sessions, roles, strict=True)]
    return measure_sessions(
        sessions, feeds, roles, runs=runs, warmup=warmup, budget_s=budget_s, progress=progress
    )
