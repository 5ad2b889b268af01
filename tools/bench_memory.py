"""Peak memory and wall time of `onnxprune` on models with external data, each case in a
fresh process under `/usr/bin/time -v` (its "Maximum resident set size").

Cases: prune (--no-validate), prune + validate, prune + calib (recovery on --calib data and
validation on its held-out part). Models (made under --zoo when missing):
  resnet50  /work/main/zoo/resnet50.onnx re-saved with external data
  mlp       6 Gemm of 10000 x 10000 (2.4 GB), tools/build_decoder.py --mlp 10000x6
  0.5B 1B 2B  Llama-style decoders (onnxprune.testing.decoder), pruned with --heads 0.25 too

    python tools/bench_memory.py --models mlp resnet50 --cases prune validate calib
    python tools/bench_memory.py --models 0.5B 1B 2B --cases prune calib --markdown table.md

The table: weights (bytes of the model and data files), wall time, max RSS, RSS / weights,
and the stage that set the peak (the report's memory.peak_rss_by_stage).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ZOO = Path("/work/zoo2/large")
DECODERS = ("0.5B", "1B", "2B")
SEQ = 16  # tokens per random validation sequence of a decoder (prune + validate)


def weight_bytes(path: Path) -> int:
    """The model file plus every data file beside it that it names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def make_model(name: str, zoo: Path) -> Path:
    """The benchmark model ``name`` under ``zoo``, written first when missing."""
    from onnxprune.testing.decoder import PRESETS, write_decoder, write_mlp

    path = zoo / ("mlp.onnx" if name == "mlp" else f"{name}-ext.onnx" if name == "resnet50"
                  else f"llama-{name}.onnx")  # fmt: skip
    if path.exists():
        return path
    if name == "mlp":
        write_mlp(path, 10000, 6)
    elif name == "resnet50":
        import onnx

        model = onnx.load("/work/main/zoo/resnet50.onnx")
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        write_decoder(path, PRESETS[name])
    return path


def make_calib(name: str, zoo: Path) -> Path:
    """Calibration data: 24 token sequences of 32 (decoders), 32 random images (ResNet-50),
    32 random rows (MLP)."""
    path = zoo / f"calib-{'decoder' if name in DECODERS else name}.npz"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    if name in DECODERS:
        ids = rng.integers(0, 32000, (24, 32), dtype=np.int64)
        pos = np.broadcast_to(np.arange(32, dtype=np.int64), (24, 32)).copy()
        np.savez(path, input_ids=ids, position_ids=pos)
    elif name == "resnet50":
        np.savez(
            path,
            **{
                _first_input(make_model(name, zoo)): rng.standard_normal((32, 3, 224, 224)).astype(
                    np.float32
                )
            },
        )
    else:
        np.savez(path, x=rng.standard_normal((32, 10000)).astype(np.float32))
    return path


def _first_input(path: Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def command(name: str, case: str, model: Path, out: Path, report: Path, zoo: Path) -> list[str]:
    """The onnxprune command line of one case."""
    cmd = ["onnxprune", str(model), "--structured", "0.3", "-o", str(out), "--force",
           "--report", str(report), "--runs", "5"]  # fmt: skip
    if name in DECODERS:
        cmd += ["--heads", "0.25"]
    if case == "prune":
        cmd.append("--no-validate")
    elif case == "validate":
        cmd += ["--samples", "2"]
        if name in DECODERS:
            cmd += ["--input-shape", f"input_ids=1x{SEQ}", "--input-shape", f"position_ids=1x{SEQ}"]
    elif case == "calib":
        cmd += ["--calib", str(make_calib(name, zoo))]
    return cmd


def run_case(name: str, case: str, zoo: Path, reports: Path | None = None) -> dict:
    """One case in a fresh process: wall time, max RSS and the report's memory section;
    the report and the (deleted) output go to ``reports`` (default: ``zoo``)."""
    model = make_model(name, zoo)
    where = reports or zoo
    out, report = where / f"bench-{name}.pruned.onnx", where / f"bench-{name}-{case}.json"
    load = os.getloadavg()[0]
    cmd = command(name, case, model, out, report, zoo)
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(m.group(1)) * 1024 if m else 0
    weights = weight_bytes(model)
    row = {"model": name, "case": case, "weights": weights, "wall_s": round(wall, 1),
           "max_rss": rss, "ratio": round(rss / weights, 2), "rc": proc.returncode,
           "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1),
           "command": " ".join(cmd)}  # fmt: skip
    if report.exists():
        d = json.loads(report.read_text())
        peaks = d.get("memory", {}).get("peak_rss_by_stage", {})
        row["peak_stage"] = max(peaks, key=peaks.get) if peaks else ""
        row["timings_s"] = d.get("timings_s")
        v = d.get("validation") or {}
        row["cosine"] = v.get("cosine")
        rec = (d.get("recovery") or {}).get("structured") or {}
        if rec:
            row["recovery"] = {k: rec.get(k) for k in ("waves", "seconds", "stage_seconds")}
    else:
        row["error"] = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
    for f in (out, out.with_name(out.name + ".data")):
        f.unlink(missing_ok=True)  # the outputs are big and not needed
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| model | weights | case | wall (s) | max RSS | RSS / weights | peak stage |",
             "|---|---:|---|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['weights'] / 1e9:.2f} GB | {r['case']} | {r['wall_s']} | "
                     f"{r['max_rss'] / 1e9:.2f} GB | {r['ratio']}x | {r.get('peak_stage', r.get('error'))} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["mlp", "resnet50", *DECODERS])
    p.add_argument("--cases", nargs="+", default=["prune", "validate", "calib"],
                   choices=["prune", "validate", "calib"])  # fmt: skip
    p.add_argument("--zoo", type=Path, default=ZOO)
    p.add_argument("--reports", type=Path, help="folder for the reports (default: --zoo)")
    p.add_argument("--json", type=Path, help="append each row to this JSON-lines file")
    p.add_argument("--markdown", type=Path, help="write the table here too")
    a = p.parse_args(argv)
    a.zoo.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for name in a.models:
        for case in a.cases:
            row = run_case(name, case, a.zoo, a.reports)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    table = markdown(rows)
    print(table)
    if a.markdown:
        a.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
