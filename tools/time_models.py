"""Interleaved latency of several ONNX models on onnxruntime CPU, at 1 thread and at the default.

    python tools/time_models.py ORIGINAL.onnx PRUNED_A.onnx [PRUNED_B.onnx ...] [--runs 40]

Every round runs every model once, in a rotating order, so the machine's slow spells hit all
alike; at 1 thread each run is timed by the thread's CPU time (what onnxprune's validation
does at ``--threads 1``: other jobs on the machine do not count), at onnxruntime's default
thread count by the wall clock. Prints the median per model and its speed-up over the first.
One random input per model input (float32 standard normal; integer inputs zero), batch 1 for
symbolic dimensions.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(bool)": np.bool_}  # fmt: skip


def _feed(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = _NUMPY.get(i.type, np.float32)
        feed[i.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                        else np.zeros(shape, dtype))  # fmt: skip
    return feed


def medians(paths: list[str], threads: int, runs: int, warmup: int = 3) -> list[float]:
    """Median seconds per run of each model, interleaved (see the module doc)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"]) for p in paths]
    feeds = [_feed(s) for s in sessions]
    clock = time.thread_time if threads == 1 else time.perf_counter
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(runs):
        for k in range(len(sessions)):
            i = (r + k) % len(sessions)
            t0 = clock()
            sessions[i].run(None, feeds[i])
            times[i].append(clock() - t0)
    return [float(np.median(t)) for t in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="the first is the reference")
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    for threads, label in ((1, "1 thread (thread CPU time)"), (0, "default threads (wall clock)")):
        med = medians(args.models, threads, args.runs)
        print(f"{label}:")
        for path, m in zip(args.models, med, strict=True):
            print(f"  {path}: {m * 1e3:.1f} ms, speed-up {med[0] / m:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
