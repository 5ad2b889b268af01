"""Wall time of the CLI on a real model, and the validated figures, for the README.

    python tools/bench_foundation.py zoo/resnet50.onnx [--repeat 3]

For each job (--unstructured 0.5, --nm 2:4, --structured 0.3) it times the whole
`onnxprune` process without validation (best and median of --repeat runs, interpreter start
included), then runs it once more with validation on CPU and a JSON report, and prints one
markdown table. The baseline row is a Python process doing `onnx.load` + `onnx.save` of the
same file, timed the same way, so the ratio column is machine-independent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = [["--unstructured", "0.5"], ["--nm", "2:4"], ["--structured", "0.3"]]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--jobs", default="all", help="comma list of indices into the job list, or all"
    )
    args = parser.parse_args()
    jobs = JOBS if args.jobs == "all" else [JOBS[int(i)] for i in args.jobs.split(",")]
    out_dir = Path(tempfile.mkdtemp(prefix="bench-foundation-"))
    out = out_dir / "out.onnx"
    baseline_cmd = [
        sys.executable,
        "-c",
        f"import onnx; onnx.save(onnx.load({str(args.model)!r}), {str(out_dir / 'copy.onnx')!r})",
    ]
    cli = [sys.executable, "-m", "onnxprune", str(args.model), "-o", str(out), "-q"]
    # Interleave: baseline, job1, job2, ... repeated, so machine noise hits all alike.
    times: dict[str, list[float]] = {"baseline": []}
    for _ in range(args.repeat):
        times["baseline"].append(timed(baseline_cmd))
        for job in jobs:
            times.setdefault(" ".join(job), []).append(timed([*cli, *job, "--no-validate"]))
    base = statistics.median(times["baseline"])
    rows = []
    for job in jobs:
        key = " ".join(job)
        report = out_dir / "report.json"
        timed([*cli, *job, "--report", str(report)])
        r = json.loads(report.read_text())
        v = r["validation"]
        med = statistics.median(times[key])
        rows.append(
            f"| `{key}` | {min(times[key]):.2f} | {med:.2f} | {med / base:.2f} | "
            f"{r['nonzero_after'] / r['nonzero_before']:.3f} | {r['macs_after'] / r['macs_before']:.3f} | "
            f"{r['gzip_bytes_after'] / r['gzip_bytes_before']:.3f} | {v['max_abs_diff']:.3g} | {v['cosine']:.4f} | "
            f"{v['latency_ms_before']:.1f} → {v['latency_ms_after']:.1f} |"
        )
    print(f"model: {args.model}  (baseline onnx.load+onnx.save process: median {base:.2f} s)\n")
    print(
        "| job | wall s (best) | wall s (median) | × load+save | nonzero ratio | MAC ratio | gzip ratio "
        "| max abs diff | cosine | CPU latency ms before → after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
