"""Why multi-threaded timing settles each model before its runs (``onnxprune.runtime.latency``).

    python tools/bench_settle.py ORIGINAL.onnx PRUNED.onnx [--repeats 5] [--runs 30] [--threads 0]

Times one pair ``--repeats`` times under three schedules and prints, per schedule, the
original's median run time and the speed-up (median / median) as mean, range and spread
(coefficient of variation) over the repeats:

* ``run by run``: A, B, B, A, ... one run per turn (what onnxprune did before).
* ``settled blocks``: onnxprune's validation timing (``measure_sessions``): each turn first runs
  the model untimed for ``SETTLE_S``, then times ``BLOCK_RUNS`` runs.
* ``each alone``: all of A's runs after a settle, then all of B's (one model back to back, as a
  deployment runs it; no interleaving, so the machine's slow spells are not shared alike).

At more than one intra-op thread, onnxruntime's idle pool threads spin for tens of ms after a
run; the model timed next shares the cores with them, which ``run by run`` measures and a
deployment never sees. At 1 thread (thread CPU time, no pool) the schedules agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_models import cpu_sessions, random_feed

from onnxprune.runtime.latency import SETTLE_S, clock_for, measure_sessions


def run_by_run(sessions, feeds, runs: int, clock) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(runs):
        for k in range(len(sessions)):
            i = (r + k) % len(sessions)
            t0 = clock()
            sessions[i].run(None, feeds[i])
            times[i].append((clock() - t0) * 1000.0)
    return times


def each_alone(sessions, feeds, runs: int, threads: int) -> list[list[float]]:
    out = []
    for s, f in zip(sessions, feeds, strict=True):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < SETTLE_S:
            s.run(None, f)
        out += measure_sessions([s], [f], ["m"], runs=runs, warmup=0, budget_s=None,
                                threads=threads)  # fmt: skip
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("original")
    ap.add_argument("pruned")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: default)")
    args = ap.parse_args()
    paths = [args.original, args.pruned]
    sessions = cpu_sessions(paths, args.threads)
    feeds = [random_feed(s) for s in sessions]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(5):
            s.run(None, f)
    clock = clock_for(sessions, args.threads)
    schedules = {
        "run by run": lambda: run_by_run(sessions, feeds, args.runs, clock),
        "settled blocks": lambda: measure_sessions(
            sessions, feeds, paths, runs=args.runs, warmup=0, budget_s=None, threads=args.threads
        ),
        "each alone": lambda: each_alone(sessions, feeds, args.runs, args.threads),
    }
    figures: dict[str, list[tuple[float, float]]] = {k: [] for k in schedules}
    for _ in range(args.repeats):  # the schedules take turns, so drifts hit each alike
        for name, timed in schedules.items():
            a, b = (float(np.median(t)) for t in timed())
            figures[name].append((a, a / b))
    print(f"$ python tools/bench_settle.py {' '.join(sys.argv[1:])}")
    print(f"threads {args.threads or 'default'}, {args.runs} runs per model, {args.repeats} "
          f"repeats, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("| schedule | original median ms | speed-up mean | range | spread |")
    print("| --- | --- | --- | --- | --- |")
    for name, rows in figures.items():
        ms, sp = np.asarray(rows).T
        print(f"| {name} | {ms.mean():.1f} | {sp.mean():.2f}x | {sp.min():.2f}-{sp.max():.2f}x "
              f"| {100 * sp.std() / sp.mean():.1f}% |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
