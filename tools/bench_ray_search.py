"""The latency-table build through a Ray cluster vs local processes (issue 11, item 7).

    pip install 'onnxprune[ray]'   # tools only: Ray is never a core dependency
    python tools/bench_ray_search.py [--model /work/main/zoo/mobilenet_v2.onnx] [--port 6391]
                                     [--runs 10] [--jobs 2]

Starts a local Ray head on this machine (``ray start --head --block`` in its own process
group, stopped at the end by that group's id), then builds the same latency table (every
prunable group, a fixed ``--runs`` rounds per group so every executor does the same work,
onnxruntime at 1 thread per job) three ways: in this process, with ``--jobs`` spawned local
workers, and as Ray tasks (1 CPU each) on the head, and prints each wall time and whether
the tables agree on their structure (groups and kept counts; the times themselves are
measurements and differ). On a machine with few cores, parallel jobs time each other's
contention: the point here is the plumbing and its overhead, not faster honest timing.

Measured 2026-12-01 (ray 2.60.0 from the registry, 2 cores shared with other sessions, load
average about 5), MobileNetV2, 25 groups, 10 rounds each: in-process 26.1 s; 2 spawned local
processes 39.5 s (spawning and each worker loading and analyzing the model, and two
timings fighting for 2 cores: the original's median rose from 8.5 to 22.4 ms); Ray head up
in 9.4 s, then 2 Ray tasks at once 25.4 s (original 14.6 ms); all three tables had the same
groups and kept counts. Many machines, not many processes on one, is where it pays.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx

from onnxprune.runtime.feeds import random_inputs
from onnxprune.targets.executor import LocalExecutor, RayExecutor
from onnxprune.targets.latency import TableSpec, build_latency_table


def start_head(port: int) -> subprocess.Popen:
    ray_cli = Path(sys.executable).parent / "ray"
    cmd = [str(ray_cli), "start", "--head", "--block", f"--port={port}",
           "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def stop_head(head: subprocess.Popen) -> None:
    """SIGTERM to the head's own process group (``ray start --block`` then stops what it
    started), SIGKILL to the group if it has not gone after 30 s."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    except ProcessLookupError:
        pass


def timed(label: str, spec: TableSpec, executor) -> tuple[float, object]:
    t0 = time.perf_counter()
    table = build_latency_table(spec, time_budget_s=None, executor=executor)
    wall = time.perf_counter() - t0
    print(f"  {label:<28} {wall:6.1f} s  ({len(table.curves)} groups, original "
          f"{table.baseline_ms:.2f} ms)", flush=True)  # fmt: skip
    return wall, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/work/main/zoo/mobilenet_v2.onnx")
    ap.add_argument("--port", type=int, default=6391)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        sys.exit("error: Ray is not installed: pip install 'onnxprune[ray]'")
    inputs = dict(random_inputs(onnx.load(args.model, load_external_data=False)))
    spec = TableSpec(args.model, inputs, threads=1, min_runs=args.runs, max_runs=args.runs)
    print(f"{args.model}: latency table, {args.runs} rounds per group, {os.cpu_count()} cores")
    _, alone = timed("in-process (jobs=1)", spec, None)
    with LocalExecutor(jobs=args.jobs) as ex:
        _, local = timed(f"local processes (jobs={args.jobs})", spec, ex)
    t0 = time.perf_counter()
    head = start_head(args.port)
    try:
        with RayExecutor(f"127.0.0.1:{args.port}", cpus=1) as ex:
            for _ in range(60):  # the head takes a few seconds to accept drivers
                try:
                    workers = ex.workers
                    break
                except Exception:
                    time.sleep(1)
            else:
                sys.exit("error: the Ray head did not come up within 60 s")
            print(f"  ray head up in {time.perf_counter() - t0:.1f} s, {workers} task slots")
            _, remote = timed(f"ray tasks ({workers} at once)", spec, ex)
    finally:
        stop_head(head)
    same = all(
        {g: c.keep for g, c in t.curves.items()} == {g: c.keep for g, c in alone.curves.items()}
        for t in (local, remote)
    )
    print(f"  tables agree on groups and kept counts: {same}")


if __name__ == "__main__":
    main()
