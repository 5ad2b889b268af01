"""Interleaved latency of several ONNX models on onnxruntime CPU, at 1 thread and at the default.

    python tools/time_models.py ORIGINAL.onnx PRUNED_A.onnx [PRUNED_B.onnx ...] [--runs 40]

Timed as onnxprune's validation times (``onnxprune.runtime.latency``): every round runs every
model in a rotating order, so the machine's slow spells hit all alike; at 1 thread run by run,
each timed by the thread's CPU time (other jobs on the machine do not count), at onnxruntime's
default thread count by the wall clock, in blocks of runs that each start after 0.1 s of
untimed runs (the model before stops spinning its idle threads). Prints the median per model and its speed-up over the first.
One random input per model input (float32 standard normal; integer inputs zero), batch 1 for
symbolic dimensions.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

from onnxprune.runtime.latency import measure_sessions
from onnxprune.runtime.session import open_session

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(bool)": np.bool_}  # fmt: skip


def random_feed(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    """One random input per model input (see the module doc)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = _NUMPY.get(i.type, np.float32)
        feed[i.name] = (rng.standard_normal(shape).astype(dtype) if np.issubdtype(dtype, np.floating)
                        else np.zeros(shape, dtype))  # fmt: skip
    return feed


def cpu_sessions(paths, threads: int) -> list:
    """onnxruntime CPU sessions opened as onnxprune's validation opens them (full graph
    optimization, ``threads`` intra-op threads, 0 for onnxruntime's default)."""
    return [open_session(p, ["CPUExecutionProvider"], role=f"model {p}", threads=threads)
            for p in paths]  # fmt: skip


def medians(paths: list[str], threads: int, runs: int, warmup: int = 3) -> list[float]:
    """Median seconds per run of each model, timed as onnxprune's validation times."""
    sessions = cpu_sessions(paths, threads)
    feeds = [random_feed(s) for s in sessions]
    times = measure_sessions(sessions, feeds, list(paths), runs=runs, warmup=warmup,
                             budget_s=None, threads=threads)  # fmt: skip
    return [float(np.median(t)) / 1000.0 for t in times]


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
