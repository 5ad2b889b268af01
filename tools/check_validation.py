"""What the validation says on real exports: samples, input shapes, verdict, as a user runs it.

    python tools/check_validation.py [--zoo zoo] [--only resnet50,vit_b_16] [--runs 10]

Runs ``onnxprune MODEL --structured 0.3 --report r.json`` (the CLI, default options, a fresh
process per model) on every model of the zoo (``tools/export_zoo.py``), on the torchvision
ViT-B/16 with its untrained, zero-initialized head and on the YOLOv8-style detector with
symbolic ``[N, 3, H, W]`` input (``tools/export_validation_models.py``), the detector once at
the default sizes and once with ``--input-shape input=1x3x640x640``. Prints one markdown row
per run: samples, input shapes and where they came from, verdict (with the reason when
inconclusive), cosine, MACs and the measured speed-up with its significance.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ZOO = [
    "resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_large",
    "efficientnet_b0", "regnet_y_400mf", "mnasnet1_0", "densenet121", "googlenet",
    "squeezenet1_1", "shufflenet_v2_x1_0", "vgg11_bn", "alexnet", "convnext_tiny", "unet",
    "yolov8",
]  # fmt: skip
EXTRA = [
    ("vit_b_16", []),
    ("yolov8_dynamic", []),
    ("yolov8_dynamic", ["--input-shape", "input=1x3x640x640"]),
]


def run_one(model: Path, extra: list[str], runs: int, workdir: Path) -> dict:
    report = workdir / f"{model.stem}.json"
    out = workdir / f"{model.stem}.pruned.onnx"
    cmd = [
        sys.executable, "-m", "onnxprune", str(model), "--structured", "0.3", "-o", str(out),
        "--report", str(report), "--runs", str(runs), "-q", "--force", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not report.exists():
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    data = json.loads(report.read_text())
    data["exit_code"] = proc.returncode
    return data


def row(name: str, extra: list[str], r: dict) -> str:
    if "error" in r:
        return f"| {name} {' '.join(extra)} | - | - | error: {r['error']} | - | - | - |"
    v = r["validation"]
    shapes = ", ".join(
        f"{k}={'x'.join(map(str, s))} ({v['shape_source'].get(k, '?')})"
        for k, s in v["input_shapes"].items()
    )
    if v["verdict"] == "inconclusive":
        verdict = "inconclusive: " + "; ".join(v["inconclusive_reasons"])
    else:
        verdict = "conclusive"
    macs = r["macs_after"] / r["macs_before"] if r["macs_before"] else float("nan")
    sig = "" if v.get("speedup_significant") else " (not significant)"
    speed = f"{v['speedup']:.2f}x{sig}" if v.get("speedup") else "-"
    return (
        f"| {name} {' '.join(extra)} | {v['samples']} | {shapes} | {verdict} | "
        f"{v['cosine']:.4f} | {macs:.3f} ({r['macs_before'] / 1e9:.2f} GMACs before) | {speed} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path("zoo"))
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--runs", type=int, default=10, help="latency runs per model")
    args = parser.parse_args()
    jobs = [(n, []) for n in ZOO] + EXTRA
    if args.only:
        keep = set(args.only.split(","))
        jobs = [(n, e) for n, e in jobs if n in keep]
    print(f"`python tools/check_validation.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    print()
    print("| model | samples | input shapes (source) | verdict | cosine | MACs after/before | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as tmp:
        for name, extra in jobs:
            path = args.zoo / f"{name}.onnx"
            if not path.exists():
                print(f"| {name} | - | - | missing: run tools/export_zoo.py / export_validation_models.py | - | - | - |")
                continue
            print(row(name, extra, run_one(path, extra, args.runs, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
