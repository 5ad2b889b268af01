"""How well each price predicts the measured speed-up of a cut: MACs, linear time, fitted time.

    python tools/bench_time_model.py zoo/mobilenet_v2.onnx [MORE.onnx ...] [--cuts 10] [--threads 1]

For each model: the prices a --target-speedup search uses (``onnxprune.targets.time_model``:
the original and a uniform half cut profiled together, each node fitted as fixed + variable
x work kept), then ``--cuts`` random non-uniform cuts (every group at its own fraction around
0.8 down to 0.3, kept channels on multiples of 8), each timed against the original as
validation times it (``onnxprune.runtime.latency``). Prints, per cut, the measured speed-up
and what each price predicts, then the mean and rms of log(predicted / measured):

* ``macs``: MACs before / after (what the search spent before the time prices);
* ``linear``: each node's profiled time times the fraction of its work kept;
* ``fitted``: the time model the search uses now.

``--threads 0`` is onnxruntime's default (validation's settled blocks); both settings print
when ``--threads`` is not given.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx

from onnxprune.runtime.latency import measure_sessions
from onnxprune.runtime.session import open_session
from onnxprune.structured.dependency import analyze
from onnxprune.structured.plan import make_plan, prunable_groups
from onnxprune.structured.rewrite import apply_plan
from onnxprune.targets.costs import CostModel
from onnxprune.targets.profile import named_copy
from onnxprune.targets.time_model import profile_prices, stepped_keep


def _random_keep(groups, fraction: float, rng) -> dict[str, int]:
    """Each group at its own fraction, 0.5x to 1.5x ``fraction``, on steps of 8 channels."""
    return {g.id: stepped_keep(g, float(np.clip(fraction * rng.uniform(0.5, 1.5), 0.05, 1.0)))
            for g in groups}  # fmt: skip


def _feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    init = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d.dim_value or 1 for d in i.type.tensor_type.shape.dim])
            .astype(np.float32) for i in model.graph.input if i.name not in init}  # fmt: skip


def bench(path: str, threads: int, cuts: int, runs: int) -> dict[str, list[float]]:
    model = named_copy(onnx.load(path))
    groups, _ = prunable_groups(analyze(model), ())
    feed = _feed(model)
    t = threads or None
    prices = profile_prices(model, groups, ["CPUExecutionProvider"], feed, threads=t, runs=20)
    fitted = CostModel(model, groups, None, node_ms=prices.node_ms, overhead_ms=prices.overhead_ms)
    plain = {k: a + b for k, (a, b) in prices.node_ms.items()}
    linear = CostModel(model, groups, None, node_ms=plain,
                       overhead_ms=prices.full_ms - sum(plain.values()))  # fmt: skip
    rng = np.random.default_rng(1)
    errors: dict[str, list[float]] = {"macs": [], "linear": [], "fitted": []}
    fractions = np.linspace(0.8, 0.3, cuts)
    print(f"\n{path} at {threads or 'default'} thread(s): profiled {prices.full_ms:.2f} ms, "
          f"uniform half {prices.cut_ms:.2f} ms, fixed share {prices.fixed_share:.3f}")
    print("  fraction  measured  macs    linear  fitted")
    scores = {g.id: np.zeros(g.slots) for g in groups}
    for f in fractions:
        keep = _random_keep(groups, float(f), rng)
        pruned = apply_plan(model, make_plan(groups, scores, ratio=0.0, round_to=1, keep=keep))
        sessions = [open_session(m, ["CPUExecutionProvider"], role="model", threads=t)
                    for m in (model, pruned)]  # fmt: skip
        times = measure_sessions(sessions, [feed, feed], ["original", "pruned"], runs=runs,
                                 warmup=3, budget_s=None, threads=t)  # fmt: skip
        measured = float(np.median(times[0]) / np.median(times[1]))
        predicted = {
            "macs": fitted.total("macs") / fitted.total("macs", keep),
            "linear": linear.total("time") / linear.total("time", keep),
            "fitted": fitted.total("time") / fitted.total("time", keep),
        }
        for k, v in predicted.items():
            errors[k].append(float(np.log(v / measured)))
        print(f"  {f:8.2f}  {measured:7.2f}x " + " ".join(f"{predicted[k]:6.2f}x"
                                                         for k in errors), flush=True)  # fmt: skip
    for k, e in errors.items():
        print(f"  {k:7s} log error mean {np.mean(e):+.3f}, rms {np.sqrt(np.mean(np.square(e))):.3f}")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--cuts", type=int, default=10)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="1, or 0 for the default [both]")
    args = ap.parse_args()
    settings = [1, 0] if args.threads is None else [args.threads]
    print(f"python tools/bench_time_model.py {' '.join(args.models)} --cuts {args.cuts}"
          + ("" if args.threads is None else f" --threads {args.threads}"))
    summary = []
    for path in args.models:
        for threads in settings:
            e = bench(path, threads, args.cuts, args.runs)
            summary.append((path, threads, {k: float(np.sqrt(np.mean(np.square(v))))
                                            for k, v in e.items()}))  # fmt: skip
    print("\n| model | threads | rms log error: MACs | linear time | fitted time |")
    print("| --- | --- | --- | --- | --- |")
    for path, threads, rms in summary:
        print(f"| {path} | {threads or 'default'} | {rms['macs']:.1%} | {rms['linear']:.1%} | "
              f"{rms['fitted']:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
