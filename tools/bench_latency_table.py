"""How long a measured latency table takes, and what it shows (issue 11, item 2).

    python tools/bench_latency_table.py [--zoo /work/main/zoo] [--only mobilenet_v2,resnet50]
                                        [--threads 1,default] [--budget 60] [--max-points 8]
                                        [--json out.json] [--estimate paired|min]

For each model and thread setting: builds ``targets.latency.build_latency_table`` on
onnxruntime CPU (every prunable group cut alone to every multiple of 4/8 channels, coarsened
to ``--max-points``, each whole pruned model timed interleaved with the original) within
``--budget`` seconds, and prints the wall time, the original's median, the number of
candidates, and the curves of the narrow early groups (<= 32 channels: MobileNetV2's 16/24/32
layers, which the issue says dominate latency while holding few MACs): per kept count the
median difference against the full width (ms) and what ``staircase`` makes of each count.

Measured 2026-12-01 on this 2-core machine *shared with other sessions* (load average 5-8,
so every figure is noisy, default-thread figures most), onnxruntime CPU, batch 1, random
inputs, ``--budget 120`` (paired estimate):

    model         threads  candidates  table   original  runs/group
    ResNet-50     1        45          120 s   39.3 ms   3..39   (8 points: 214, 140 s at 3 runs)
    ResNet-50     default  45          120 s   94.1 ms   3..38
    MobileNetV2   1        127         46 s    4.50 ms   50 (max_runs)
    MobileNetV2   default  91          103 s   18.2 ms   9..50

(``default`` = onnxruntime's own choice, 2 threads here: slower than 1 thread on a loaded
2-core box.) ResNet-50 does not fit a whole-model table with 8 points per group in 120 s
here, so the adaptive budget coarsened most groups to one cut at half width plus the full
width. MobileNetV2 at 1 thread, 50 interleaved runs, ms against the full width (two runs
agreed on the signs):

    features.1 conv.1   (16 ch)  4:+0.03  8:+0.16  12:+0.29              -> never pays: keep 16
    features.2 conv.2   (24 ch)  4:-0.17  8:-0.10  12:-0.01  16:-0.17  20:+0.01
                                                     -> 16 as fast as 4; 20 becomes 24
    features.0 (stem)   (32 ch)  4..16: -0.13..-0.16  20..28: 0.00..+0.03  -> 16, not 24
    features.4 conv.2   (32 ch)  16:-0.08, the rest within +-0.06 of full width

so the narrow early layers hold about 0.1-0.2 ms each of 4.5 ms, only at multiples of 16,
and 20/24/28 of 32 channels buy nothing: the staircase a fixed round-to cannot see.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnx

from onnxprune.runtime.feeds import random_inputs
from onnxprune.targets.latency import TableSpec, build_latency_table, staircase


def narrow_rows(table, limit: int = 32, show: int = 8) -> list[str]:
    rows = []
    for gid, c in table.curves.items():
        if c.slots * c.width > limit or len(rows) >= show:
            continue
        steps = " ".join(f"{k}:{d:+.3f}" for k, d in zip(c.keep, c.delta_ms, strict=True))
        picks = ",".join(f"{k}->{staircase(table, gid, k)}" for k in c.keep[:-1])
        rows.append(
            f"    {gid} ({c.slots * c.width} ch, {c.runs} runs): {steps}   staircase {picks}"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/work/main/zoo")
    ap.add_argument("--only", default="mobilenet_v2,resnet50")
    ap.add_argument("--threads", default="1,default")
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--max-points", type=int, default=8)
    ap.add_argument("--json", default=None)
    ap.add_argument("--estimate", default="paired", choices=["paired", "min"])
    args = ap.parse_args()
    dump = {}
    for name in args.only.split(","):
        path = Path(args.zoo) / f"{name}.onnx"
        if not path.exists():
            print(f"{name}: {path} not found, skipped")
            continue
        inputs = dict(random_inputs(onnx.load(path, load_external_data=False)))
        for t in args.threads.split(","):
            threads = None if t == "default" else int(t)
            spec = TableSpec(str(path), inputs, threads=threads, estimate=args.estimate)
            t0 = time.perf_counter()
            table = build_latency_table(spec, time_budget_s=args.budget, max_points=args.max_points)
            wall = time.perf_counter() - t0
            cands = sum(len(c.keep) - 1 for c in table.curves.values())
            runs = sorted(c.runs for c in table.curves.values())
            print(
                f"{name} threads={t}: {len(table.curves)} groups, {cands} candidates, "
                f"table in {wall:.1f} s (budget {args.budget:.0f} s, {args.estimate}), original "
                f"{table.baseline_ms:.2f} ms, runs per group {runs[0]}..{runs[-1]}"
            )
            best = sorted(table.curves.values(), key=lambda c: min(c.delta_ms))[:5]
            print("  largest savings (group, kept/slots, ms):")
            for c in best:
                i = c.delta_ms.index(min(c.delta_ms))
                print(f"    {c.group_id}: {c.keep[i]}/{c.slots} {c.delta_ms[i]:+.3f}")
            print("  narrow groups (<= 32 channels), kept:delta ms against full width:")
            print("\n".join(narrow_rows(table)) or "    none")
            dump[f"{name}@{t}"] = {"wall_s": wall, **table.to_dict()}
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
