"""Speed targets against Torch-Pruning at an equal *measured* speed-up (issue 11, README table).

    python tools/bench_targets_peers.py [--only resnet50,mobilenet_v2,convnext_tiny]
        [--speedups 1.5,2.0] [--threads 1,0] [--runs 40] [--work /work/zoo2/s2-bench11]

For each model (a torchvision export with random weights, 1x3x224x224, from /work/main/zoo):

1. ``onnxprune MODEL --target-speedup S [--threads 1]`` for each S and thread setting (the CLI,
   in a subprocess; its JSON report gives the search's own final measurement and stage times).
2. Torch-Pruning (tools/peer_torch_pruning.py under the torch venv: magnitude L1, local ratio,
   classifier ignored, opset-17 export), ``round_to=16`` and its default, exported on a grid of
   ratios; the grid is timed once, then for each of our measured speed-ups the ratio is
   interpolated on the grid and exported, and re-stepped (interpolating inside the bracket
   the measurements give) until its measured speed-up is within ``--tol`` of ours, at most
   ``--steps`` exports; the closest is kept (TP's speed jumps where round_to steps).
3. One final interleaved run per thread setting over the original, our models and the matched
   Torch-Pruning models (same timing function for all: onnxruntime CPU, every round runs every
   model in a rotating order, ``--runs`` runs each after warm-up, as onnxprune's validation
   times: ``runtime.latency``; each model's time is the median of its runs, ``--estimate
   p10`` for the 10th percentile; at 1 thread a run is timed by the thread's CPU time, at
   default threads by the wall clock in settled blocks), printing
   speed-up, MACs and parameters kept (more kept at the same speed is better).

Threads: 0 means onnxruntime's default; our models for thread setting T are the ones searched
with ``--threads T``. Prints the load average with every table: on a shared 2-core machine the
figures move with it. Existing outputs under ``--work`` are reused (``--fresh`` redoes them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_structured import macs
from time_models import cpu_sessions

from onnxprune.metrics.params import count_params
from onnxprune.runtime.latency import measure_sessions

ROOT = Path(__file__).resolve().parents[1]
ZOO = Path("/work/main/zoo")
TORCH_PY = "/tmp/torchvenv/bin/python"
PEER = ROOT / "tools" / "peer_torch_pruning.py"
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
# Which per-model time the speed-ups divide: "median" of the interleaved runs, or "p10" (their
# 10th percentile, the fastest runs). On this machine under a load of ~20 from other jobs the
# fastest runs exaggerate speed-ups (a short run more often fits a quiet slice whole: TP at
# the same ratio read 2x apart), while the median keeps each model's fair share of the CPU
# proportional to its work. Set by --estimate.
ESTIMATE = "median"


def load_avg() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def interleaved(
    paths: list[Path], threads: int, runs: int, warmup: int = 5, feeds: dict | None = None
) -> list[dict]:
    """Median, p10 and spread (IQR / median) of seconds per run of each model, timed as
    onnxprune's validation times (``runtime.latency.measure_sessions``: rounds in a rotating
    order; at 1 thread run by run on thread CPU time, with more threads in settled blocks on
    the wall clock). Each model gets the same input values (the first model's input shape, 1
    for a free dimension) under its own input name; ``feeds`` (name -> array) gives the
    inputs instead."""
    sessions = cpu_sessions(paths, threads)
    if feeds is None:
        shape = [d if isinstance(d, int) else 1 for d in sessions[0].get_inputs()[0].shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        per = [{s.get_inputs()[0].name: x} for s in sessions]
    else:
        per = [{i.name: feeds[i.name] for i in s.get_inputs()} for s in sessions]
    times = measure_sessions(sessions, per, [str(p) for p in paths], runs=runs, warmup=warmup,
                             budget_s=None, threads=threads)  # fmt: skip
    out = []
    for t in times:
        p10, q1, med, q3 = np.percentile(np.asarray(t) / 1000.0, [10, 25, 50, 75])
        out.append({"median": float(med), "p10": float(p10), "spread": float((q3 - q1) / med)})
    return out


def speedups(
    orig: Path, paths: list[Path], threads: int, runs: int, feeds: dict | None = None
) -> list[float]:
    """Speed-up of each of ``paths`` over ``orig``, measured in one interleaved run."""
    lat = interleaved([orig, *paths], threads, runs, feeds=feeds)
    return [lat[0][ESTIMATE] / t[ESTIMATE] for t in lat[1:]]


class Counts:
    """MACs and parameters of ONNX files, cached by path (counted as onnxprune's report does)."""

    def __init__(self) -> None:
        self.cache: dict[str, tuple[int, int]] = {}

    def __call__(self, path: Path) -> tuple[int, int]:
        key = str(path)
        if key not in self.cache:
            model = onnx.load(key)
            self.cache[key] = (macs(model), count_params(model)[0])
        return self.cache[key]


def run_ours(model: str, speedup: float, threads: int, work: Path, fresh: bool) -> dict:
    """``onnxprune --target-speedup`` in a subprocess; its report and wall time."""
    tag = f"{model}_ours_s{speedup:g}_t{threads}"
    out, report = work / f"{tag}.onnx", work / f"{tag}.json"
    cmd = ["onnxprune", str(ZOO / f"{model}.onnx"), "--target-speedup", f"{speedup:g}"]
    cmd += ["--threads", str(threads)] if threads else []
    shown = " ".join(cmd)
    cmd += ["-o", str(out), "--report", str(report), "--force", "-q"]
    meta = work / f"{tag}.meta.json"
    if fresh or not (out.exists() and meta.exists()):
        load = load_avg()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        meta.write_text(json.dumps({"wall": wall, "rc": proc.returncode, "load": load,
                                    "stderr": proc.stderr[-2000:], "cmd": shown}))  # fmt: skip
    info = json.loads(meta.read_text())
    info["path"] = out
    info["report"] = json.loads(report.read_text()) if report.exists() else {}
    return info


def tp_paths(model: str, round_to: int | None, ratios: list[float], work: Path) -> list[Path]:
    """Export Torch-Pruning models at ``ratios`` (those not yet under ``work``)."""
    tp_dir = work / "tp"
    tp_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{model}_tp{round_to or 'def'}_{r:.4f}.onnx" for r in ratios]
    todo = [r for r, n in zip(ratios, names, strict=True) if not (tp_dir / n).exists()]
    if todo:
        cmd = [TORCH_PY, str(PEER), model, ",".join(f"{r:.4f}" for r in todo), str(tp_dir)]
        cmd += ["--round-to", str(round_to)] if round_to else []
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    return [tp_dir / n for n in names]


def interpolate(points: list[tuple[float, float]], target: float) -> float:
    """The next ratio to try for speed-up ``target`` given measured (ratio, speed-up) points.
    Speed-up grows with the ratio, but measurements on a loaded machine need not: take the
    bracket [largest ratio measured below target, smallest ratio measured above it] that is
    consistent (lo < hi), and interpolate linearly inside it; with no point above, step up
    by 0.15 (no point below: halve). Clamped to (0.01, 0.9)."""
    below = [(r, s) for r, s in points if s < target]
    above = [(r, s) for r, s in points if s >= target]
    lo = max(below, default=None)
    hi = min((p for p in above if lo is None or p[0] > lo[0]), default=None)
    if lo is None:
        return float(np.clip(hi[0] / 2, 0.01, 0.9))
    if hi is None:
        return float(np.clip(lo[0] + 0.15, 0.01, 0.9))
    (r0, s0), (r1, s1) = lo, hi
    return float(np.clip(r0 + (target - s0) * (r1 - r0) / (s1 - s0), 0.01, 0.9))


def match_tp(model: str, round_to: int | None, target: float, threads: int,
             grid: list[tuple[float, float]], args: argparse.Namespace) -> tuple[float, Path, float]:  # fmt: skip
    """Step Torch-Pruning's ratio until its measured speed-up is within ``args.tol`` of
    ``target``: interpolate on the measured points (grid, then each new try), at most
    ``args.steps`` exports. Returns (ratio, path, measured speed-up) of the closest try."""
    orig = ZOO / f"{model}.onnx"
    points = list(grid)
    best: tuple[float, Path, float] | None = None
    for _ in range(args.steps):
        ratio = round(interpolate(points, target), 4)
        (path,) = tp_paths(model, round_to, [ratio], args.work)
        (s,) = speedups(orig, [path], threads, args.runs)
        points.append((ratio, s))
        if best is None or abs(s / target - 1) < abs(best[2] / target - 1):
            best = (ratio, path, s)
        print(f"    TP round_to={round_to} ratio {ratio:.3f}: {s:.2f}x (target {target:.2f}x)",
              flush=True)  # fmt: skip
        if abs(s / target - 1) <= args.tol:
            break
    assert best is not None
    return best


def fmt_kept(counts: tuple[int, int], base: tuple[int, int]) -> str:
    return f"{counts[0] / base[0]:.3f} / {counts[1] / base[1]:.3f}"


def bench_model(model: str, args: argparse.Namespace, counts: Counts) -> list[str]:
    """All rows of one model: ours at every (threads, speed-up), TP matched to each."""
    orig = ZOO / f"{model}.onnx"
    base = counts(orig)
    rows = []
    for threads in args.threads:
        ours = {}
        for s in args.speedups:
            print(f"  onnxprune {model} --target-speedup {s:g} threads {threads or 'default'}",
                  flush=True)  # fmt: skip
            ours[s] = run_ours(model, s, threads, args.work, args.fresh)
            if ours[s]["rc"] != 0:
                print(f"    exit {ours[s]['rc']}: {ours[s]['stderr'][-400:]}", flush=True)
        done = {s: o for s, o in ours.items() if o["path"].exists()}
        if not done:
            continue
        measured = dict(zip(done, speedups(orig, [o["path"] for o in done.values()], threads,
                                            args.runs), strict=True))  # fmt: skip
        tp: dict[tuple[int | None, float], tuple[float, Path, float]] = {}
        for rt in args.round_to:
            grid_paths = tp_paths(model, rt, list(GRID), args.work)
            grid = list(zip(GRID, speedups(orig, grid_paths, threads, args.runs), strict=True))
            print(f"    TP round_to={rt} grid: " + ", ".join(f"{r}: {v:.2f}x" for r, v in grid))
            for s in done:
                tp[rt, s] = match_tp(model, rt, measured[s], threads, grid, args)
        # the final, interleaved run: original, ours, every matched TP model
        final = [o["path"] for o in done.values()] + [v[1] for v in tp.values()]
        load = load_avg()
        sp = dict(zip(final, speedups(orig, final, threads, args.runs), strict=True))
        for s, o in done.items():
            rep = o["report"]
            own = _report_speedup(rep)
            row = (f"| {model} | {threads or 'default'} | {s:g}x | {sp[o['path']]:.2f}x "
                   f"(search: {own}) | {fmt_kept(counts(o['path']), base)} |")  # fmt: skip
            for rt in args.round_to:
                ratio, path, _ = tp[rt, s]
                row += f" {sp[path]:.2f}x @ {ratio:.3f} | {fmt_kept(counts(path), base)} |"
            row += f" {o['wall']:.0f} s | {load} |"
            rows.append(row)
            print(row, flush=True)
    return rows


def _report_speedup(rep: dict) -> str:
    """The search's own final measured speed-up (``structured.target.reached``) and whether the
    report calls the target met."""
    target = (rep.get("structured") or {}).get("target") or {}
    if not isinstance(target.get("reached"), (int, float)):
        return "n/a"
    return f"{target['reached']:.2f}x{'' if target.get('met') else ', not met'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=lambda s: s.split(","),
                    default=["resnet50", "mobilenet_v2", "convnext_tiny"])  # fmt: skip
    ap.add_argument("--speedups", type=lambda s: [float(v) for v in s.split(",")],
                    default=[1.5, 2.0])  # fmt: skip
    ap.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[1, 0])
    ap.add_argument("--round-to", type=lambda s: [int(v) or None for v in s.split(",")],
                    default=[16, None], help="Torch-Pruning round_to values (0: its default)")  # fmt: skip
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--tol", type=float, default=0.03, help="match TP within this fraction")
    ap.add_argument("--steps", type=int, default=3, help="most TP exports per match")
    ap.add_argument("--work", type=Path, default=Path("/work/zoo2/s2-bench11"))
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--estimate", choices=["p10", "median"], default="median",
                    help="per-model time of a speed-up: 10th percentile of the runs or median")  # fmt: skip
    args = ap.parse_args()
    global ESTIMATE
    ESTIMATE = args.estimate
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"$ python tools/bench_targets_peers.py {shlex.join(sys.argv[1:])}")
    print(f"onnxruntime {ort.__version__} CPU, {os.cpu_count()} cores, thread CPU time at 1 thread, "
          f"settled blocks on the wall clock at more, {args.estimate} of {args.runs} "
          f"interleaved runs; {load_avg()}", flush=True)  # fmt: skip
    counts = Counts()
    rows = []
    for model in args.only:
        rows += bench_model(model, args, counts)
    print("\n| model | threads | target | onnxprune measured | MACs / params kept | "
          "TP round_to=16 measured @ ratio | MACs / params kept | TP default measured @ ratio | "
          "MACs / params kept | onnxprune search wall | load at final run |")  # fmt: skip
    print("| --- " * 11 + "|")
    print("\n".join(rows))
    print(f"\n{load_avg()}")


if __name__ == "__main__":
    main()
