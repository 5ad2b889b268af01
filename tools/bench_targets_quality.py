"""Quality of the targets (issue 11): the allocation against one uniform ratio, measured here.

    python tools/bench_targets_quality.py [--only digits,minilm,minilm_curve,cost] [--threads 1]
        [--runs 40] [--curve 0.8,0.7,0.6,0.5]
        [--minilm /work/zoo2/s2-bench11/minilm]   # made by tools/export_transformers.py --minilm
        [--work /work/zoo2/s2-bench11/quality]    # outputs; a run found there is not redone

digits: ``onnxprune models/digits_cnn.onnx --max-drop 1 --calib models/digits_cnn_calib.npz
--val models/digits_cnn_test.npz --val-labels models/digits_test_labels.npy`` (the gate needs
labels; the only labelled split shipped is the test split, so the search is gated on it, as
the README's figure is) against every uniform ``--structured R --no-holdout`` (R = 0.05, 0.10,
..., 0.90, default round-to and ``--round-to 1``, the same calibration and recovery on all 256
calibration samples, as the gated run with ``--val`` has). Test accuracy is
computed here with onnxruntime on the 360 test digits. The figures: the search's candidates
per family (MACs: cosine, accuracy, from its report; the chosen one marked), and the fewest
MACs any uniform ratio keeps at an accuracy at least the targeted model's, against the
targeted model's MACs.

minilm: all-MiniLM-L6-v2 (tools/export_transformers.py --minilm; inputs
``minilm_inputs.npz``): even-numbered sentences are the calibration set, odd-numbered ones
are held out. ``onnxprune minilm.onnx --target-speedup 1.5 --calib even.npz --threads T``
(heads allocated with the FFN neurons, the default) and the same with ``--heads 0`` (FFN
neurons only) against uniform ``--structured R --calib even.npz`` (FFN neurons; R stepped until the measured
speed-up is within 3% of the targeted model's), both with the default recovery; then the mean
per-sentence cosine of ``last_hidden_state`` (padding masked) on the held-out sentences and
the speed-up measured interleaved here (tools/bench_targets_peers.py's timing, on the
held-out sentences at the batch the search validated on). Beside them the peer, Torch-Pruning
(tools/peer_tp_minilm.py: its BERT recipe, L1 magnitude, heads and FFN neurons at one ratio,
no data, no recovery; needs the torch venv of ../shared/PEERS.md), its ratio stepped the same
way to the same measured speed-up.

minilm_curve: the same data; at each ``--curve`` MAC fraction f, ``--target-macs f`` (heads
allocated, the default), ``--target-macs f --heads 0`` and uniform ``--structured 1-f``,
every model timed in one interleaved run and scored on the held-out sentences.

cost: ``onnxprune /work/main/zoo/resnet50.onnx --target-speedup 2 --calib DIR`` with DIR a
folder of ``--cost-images`` 224x224 PNG crops of the packaged photos (tools/bench_pretrained.py's
crops; the default imagenet preprocessing), at onnxruntime's default threads: the wall time
and the report's seconds per stage (``timings_s``) and inside recovery.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pretrained import prune
from bench_structured import macs
from bench_targets_peers import TORCH_PY, interpolate, load_avg, speedups
from bench_transformers import sentence_cosines

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
WORK = Path("/work/zoo2/s2-bench11/quality")
"""Where the outputs go (``--work``): ``bench_pretrained.prune`` reuses a run it finds there."""


def accuracy(path: Path, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the model at ``path`` on ``x``, in onnxruntime CPU."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return float((s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) == labels).mean())


def digits(args: argparse.Namespace) -> None:
    """The targeted quality search against the uniform ratios, on the digits CNN."""
    model = MODELS / "digits_cnn.onnx"
    calib, test = MODELS / "digits_cnn_calib.npz", MODELS / "digits_cnn_test.npz"
    labels = np.load(MODELS / "digits_test_labels.npy")
    x = np.load(test)["input"]
    base_macs = macs(onnx.load(str(model)))
    acc0 = accuracy(model, x, labels)
    val = ["--val", str(test), "--val-labels", str(MODELS / "digits_test_labels.npy")]
    out = WORK / "digits_maxdrop1.onnx"
    before = load_avg()
    tgt = prune(model, ["--max-drop", "1", *val], out, calib, 0)
    print(
        f"\n### digits CNN, --max-drop 1 (original {acc0:.2%} on the 360 test digits); {before}"
    )
    print(f"$ {tgt['cmd']}  ({tgt['wall']:.0f} s, exit {tgt['rc']}; {load_avg()} after)")
    if tgt["rc"] != 0:
        print(tgt["stderr"])
        return
    candidates(tgt["report"])
    t_acc, t_macs = accuracy(out, x, labels), macs(onnx.load(str(out))) / base_macs
    print(f"chosen: MACs {t_macs:.3f}, test accuracy {t_acc:.2%}")
    rows, best = [], {}
    for rt in (None, 1):
        for r in np.arange(0.05, 0.91, 0.05):
            path = WORK / f"digits_uniform_{r:.2f}_rt{rt or 'def'}.onnx"
            flags = ["--structured", f"{r:.2f}", "--no-validate", "--no-holdout"]
            flags += ["--round-to", str(rt)] if rt else []
            info = prune(model, flags, path, calib, 0)
            if info["rc"] != 0:
                continue
            acc, m = accuracy(path, x, labels), macs(onnx.load(str(path))) / base_macs
            rows.append((rt, r, m, acc))
            if acc >= t_acc and m < best.get(rt, (9, 0, 0))[0]:
                best[rt] = (m, r, acc)
    print("\n| uniform | round-to | MACs kept | test accuracy |\n| --- | --- | --- | --- |")
    for rt, r, m, acc in rows:
        print(f"| --structured {r:.2f} | {rt or 'default'} | {m:.3f} | {acc:.2%} |")
    print("\n| allocation | MACs kept | test accuracy |\n| --- | --- | --- |")
    print(f"| `--max-drop 1` (the search) | {t_macs:.3f} | {t_acc:.2%} |")
    for rt, (m, r, acc) in best.items():
        print(f"| best uniform at >= {t_acc:.2%}, round-to {rt or 'default'}: --structured {r:.2f} "
              f"| {m:.3f} | {acc:.2%} |")  # fmt: skip
    print(f"({load_avg()})")


def candidates(report: dict) -> None:
    """The quality search's candidates per family, most MACs first (the chosen in bold)."""
    t = (report.get("structured") or {}).get("target") or {}
    its = t.get("iterations") or []
    print(f"{len(its)} candidates, search {report.get('timings_s', {}).get('search', 0):.0f} s")
    print("\n| family | candidates (MACs: cosine, accuracy) |\n| --- | --- |")
    for family in ("targeted", "uniform", "rounded"):
        cells = []
        for i in sorted((i for i in its if i.get("allocation") == family),
                        key=lambda i: -i["macs"]):  # fmt: skip
            cell = f"{i['macs']:.3f}: {i.get('cosine') or 0:.4f}, {i.get('accuracy_after') or 0:.2%}"
            cell += "" if i.get("passed") else " (failed)"
            chosen = (family, i["fraction"]) == (t.get("allocation"), t.get("fraction"))
            cells.append(f"**{cell}**" if chosen else cell)
        print(f"| {family} | {' · '.join(cells)} |")


def minilm_split(folder: Path, work: Path):
    """(model, the even sentences saved as the calibration file, the odd ones held out, a
    function path -> ``last_hidden_state`` on the held-out sentences)."""
    model = folder / "minilm.onnx"
    data = dict(np.load(folder / "minilm_inputs.npz"))
    feeds = {k: data[k] for k in ("input_ids", "attention_mask")}
    n = len(feeds["input_ids"])
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)
    calib = work / "minilm_even.npz"
    np.savez(calib, **{k: v[even] for k, v in feeds.items()})
    held = {k: v[odd] for k, v in feeds.items()}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3

    def hidden(path: Path) -> np.ndarray:
        s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = {i.name for i in s.get_inputs()}
        return s.run(None, {k: v for k, v in held.items() if k in names})[0]

    return model, calib, held, hidden


def match_speed(make, target: float, label: str, model: Path, feeds: dict,
                args: argparse.Namespace) -> tuple[float, Path, float] | None:
    """Step a uniform ratio until ``make(ratio)``'s measured speed-up is within 3% of
    ``target`` (at most ``--steps`` tries, from 0.3, interpolating the measured points):
    (ratio, path, speed-up) of the closest, or None when nothing could be made."""
    points, best, ratio = [(0.0, 1.0)], None, 0.3
    for _ in range(args.steps):
        path = make(ratio)
        if path is None:
            break
        (s,) = speedups(model, [path], args.threads, args.runs, feeds=feeds)
        print(f"  {label} {ratio:.3f}: {s:.2f}x", flush=True)
        if best is None or abs(s / target - 1) < abs(best[2] / target - 1):
            best = (ratio, path, s)
        if abs(s / target - 1) <= 0.03:
            break
        points.append((ratio, s))
        nxt = round(interpolate(points, target), 3)
        ratio = nxt if abs(nxt - ratio) > 1e-3 else ratio + (0.01 if s < target else -0.01)
    return best


def tp_minilm(ratio: float) -> Path | None:
    """Torch-Pruning's MiniLM at ``ratio`` (tools/peer_tp_minilm.py in the torch venv), or
    None when that venv is missing."""
    path = WORK / "tp" / f"minilm_tp_{ratio:.4f}.onnx"
    if not path.exists():
        if not Path(TORCH_PY).exists():
            print(f"Torch-Pruning skipped: no {TORCH_PY} (../shared/PEERS.md)")
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        peer = Path(__file__).resolve().parent / "peer_tp_minilm.py"
        subprocess.run([TORCH_PY, str(peer), f"{ratio:.4f}", str(path.parent)], check=True,
                       capture_output=True, text=True)  # fmt: skip
    return path


def minilm(args: argparse.Namespace) -> None:
    """Targeted --target-speedup 1.5 against uniform FFN pruning at the same measured speed."""
    model, calib, held, hidden = minilm_split(args.minilm, WORK)
    odd = held["input_ids"]

    ref = hidden(model)
    base = macs(onnx.load(str(model)))
    print(f"\n### MiniLM-L6, {len(odd)} held-out sentences; {load_avg()}")
    targeted = []  # (label, path): heads allocated with the FFN (the default), FFN alone
    for label, extra in (("`--target-speedup 1.5`", []),
                         ("`--target-speedup 1.5 --heads 0` (FFN only)", ["--heads", "0"])):
        tag = "heads0" if extra else "default"
        out = WORK / f"minilm_target1.5_{tag}_t{args.threads}.onnx"
        tgt = prune(model, ["--target-speedup", "1.5", *extra], out, calib, args.threads)
        print(f"$ {tgt['cmd']}  ({tgt['wall']:.0f} s, exit {tgt['rc']})")
        if tgt["rc"] != 0:
            print(tgt["stderr"])
            return
        groups = tgt["report"]["structured"]["groups"]
        heads = [f"{g['heads_before']}->{g['heads_after']}" for g in groups if g.get("heads_before")]
        ffn = [f"{g['channels_before']}->{g['channels_after']}" for g in groups
               if not g.get("heads_before")]
        print(f"  heads per layer: {heads or 'kept'}; FFN neurons: {ffn}")
        targeted.append((label, out, tgt))
    tgt, out = targeted[0][2], targeted[0][1]
    batch = int((tgt["report"].get("validation") or {}).get("batch") or len(odd))
    tfeeds = {k: v[:batch] for k, v in held.items()}
    (ts,) = speedups(model, [out], args.threads, args.runs, feeds=tfeeds)
    print(f"targeted measured here: {ts:.2f}x (batch {batch})", flush=True)
    def uniform(ratio: float) -> Path | None:
        path = WORK / f"minilm_uniform_{ratio:.3f}.onnx"
        info = prune(model, ["--structured", f"{ratio:.3f}", "--no-validate"], path, calib,
                     args.threads)  # fmt: skip
        if info["rc"] != 0:
            print(f"uniform {ratio:.3f}: exit {info['rc']}: {info['stderr'][-300:]}")
            return None
        return path

    best = match_speed(uniform, ts, "uniform --structured", model, tfeeds, args)
    peer = match_speed(tp_minilm, ts, "Torch-Pruning ratio", model, tfeeds, args)
    if best is None:
        return
    load = load_avg()
    rows = [(label, path) for label, path, _ in targeted]
    rows.append((f"uniform `--structured {best[0]:.3f}`", best[1]))
    if peer is not None:
        rows.append((f"Torch-Pruning ratio {peer[0]:.3f} (L1, heads + FFN, no recovery)", peer[1]))
    sp = speedups(model, [p for _, p in rows], args.threads, args.runs, feeds=tfeeds)
    mask = held["attention_mask"]
    print("\n| allocation | measured speed-up | MACs kept | held-out cosine (mean) | min | load |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (label, path), speed in zip(rows, sp, strict=True):
        cos = sentence_cosines(ref, hidden(path), mask)
        print(f"| {label} | {speed:.2f}x | {macs(onnx.load(str(path))) / base:.3f} | "
              f"{cos.mean():.4f} | {cos.min():.4f} | {load} |")  # fmt: skip


def minilm_curve(args: argparse.Namespace) -> None:
    """Heads allocated with the FFN (the default) against FFN neurons only (``--heads 0``)
    and uniform FFN pruning, at several ``--target-macs`` (uniform: ``--structured R``),
    every model timed in one interleaved run and scored on the held-out sentences: the two
    curves compared at equal measured speed, not at one search's landing point."""
    model, calib, held, hidden = minilm_split(args.minilm, WORK)
    odd = held["input_ids"]

    ref, base = hidden(model), macs(onnx.load(str(model)))
    print(f"\n### MiniLM-L6 curves, {len(odd)} held-out sentences; {load_avg()}")
    families = {"heads allocated (default)": [], "`--heads 0` (FFN only)": [], "uniform FFN": []}
    for f in args.curve:
        for label, flags in (("heads allocated (default)", ["--target-macs", f"{f:g}"]),
                             ("`--heads 0` (FFN only)", ["--target-macs", f"{f:g}", "--heads", "0"]),
                             ("uniform FFN", ["--structured", f"{1 - f:g}"])):  # fmt: skip
            tag = "_".join(x.strip("-") for x in flags)
            out = WORK / f"minilm_curve_{tag}.onnx"
            info = prune(model, [*flags, "--no-validate"], out, calib, args.threads)
            print(f"$ {info['cmd']}  ({info['wall']:.0f} s, exit {info['rc']})", flush=True)
            if info["rc"] == 0:
                families[label].append((f, out))
    rows = [(label, f, path) for label, runs in families.items() for f, path in runs]
    sp = speedups(model, [p for _, _, p in rows], args.threads, args.runs,
                  feeds={k: v[:13] for k, v in held.items()})  # fmt: skip
    mask = held["attention_mask"]
    print(f"\n(timed interleaved, batch 13, threads {args.threads or 'default'}; {load_avg()})")
    print("| family | asked | measured speed-up | MACs kept | held-out cosine (mean) | min |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (label, f, path), speed in zip(rows, sp, strict=True):
        cos = sentence_cosines(ref, hidden(path), mask)
        print(f"| {label} | {f:g} | {speed:.2f}x | {macs(onnx.load(str(path))) / base:.3f} | "
              f"{cos.mean():.4f} | {cos.min():.4f} |")  # fmt: skip


def cost(args: argparse.Namespace) -> None:
    """Wall time of a calibrated --target-speedup 2 search on ResNet-50, split by stage."""
    import json

    from bench_pretrained import CALIB_PHOTOS, crops
    from PIL import Image

    folder = WORK / f"r50_images_{args.cost_images}"
    folder.mkdir(parents=True, exist_ok=True)
    x = crops(CALIB_PHOTOS, args.cost_images, 224, seed=2)
    for i, img in enumerate(x):
        arr = ((img.transpose(1, 2, 0) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:03d}.png")
    out = WORK / "r50_cost.onnx"
    print(f"\n### search cost, ResNet-50 --target-speedup 2 --calib ({args.cost_images} images); "
          f"{load_avg()}", flush=True)  # fmt: skip
    info = prune(Path("/work/main/zoo/resnet50.onnx"), ["--target-speedup", "2"], out, folder,
                 args.cost_threads)  # fmt: skip
    print(f"$ {info['cmd']}  (exit {info['rc']}, wall {info['wall']:.0f} s; {load_avg()} after)")
    if info["rc"] != 0:
        print(info["stderr"])
    rep = info["report"]
    if not rep:
        return
    t = (rep.get("structured") or {}).get("target") or {}
    print(f"reached {t.get('reached')}, met {t.get('met')}, MACs {rep['macs_after'] / rep['macs_before']:.3f}, "
          f"staircase {((t.get('staircase') or {}).get('spent_s') or 0):.0f} s, losses: {t.get('losses')}")  # fmt: skip
    print("| stage | seconds |\n| --- | --- |")
    for k, v in (rep.get("timings_s") or {}).items():
        print(f"| {k} | {v:.1f} |")
    rec = (rep.get("recovery") or {}).get("structured") or rep.get("recovery") or {}
    if isinstance(rec, dict):
        print(
            "recovery:",
            json.dumps({k: rec.get(k) for k in ("seconds", "stage_seconds", "layers_refit")}),
        )


def main() -> None:
    global WORK
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=lambda s: s.split(","), default=["digits", "minilm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--curve", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.8, 0.7, 0.6, 0.5], help="minilm_curve: MAC fractions kept")
    ap.add_argument("--cost-images", type=int, default=128)
    ap.add_argument("--cost-threads", type=int, default=0)
    ap.add_argument("--minilm", type=Path, default=Path("/work/zoo2/s2-bench11/minilm"))
    ap.add_argument("--work", type=Path, default=WORK)
    args = ap.parse_args()
    WORK = args.work
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"$ python tools/bench_targets_quality.py {shlex.join(sys.argv[1:])}", flush=True)
    if "digits" in args.only:
        digits(args)
    if "minilm" in args.only:
        minilm(args)
    if "minilm_curve" in args.only:
        minilm_curve(args)
    if "cost" in args.only:
        cost(args)


if __name__ == "__main__":
    main()
