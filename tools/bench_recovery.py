"""Accuracy and cost of data-aware recovery (issue #5), as markdown tables for the README.

    python tools/bench_recovery.py                       # every section (~2 min + ~3 min zoo)
    python tools/bench_recovery.py --skip-resnet         # digits sections only (~1-2 min)
    python tools/bench_recovery.py --only cnn,mlp        # some sections: cnn, mlp, nm, resnet, mobilenet

Every figure is measured when the script runs. Pruning goes through the public API
(``onnxprune.prune``), calibrated on the ``*_calib.npz`` split (256 unlabeled training
samples); test accuracy is computed here with onnxruntime (argmax of the logits against
``models/digits_test_labels.npy`` on the 360 held-out ``*_test.npz`` samples), not by the
library's validation, and the test split is never used for calibration.

Sections:

- ``cnn``: ``digits_cnn.onnx`` structured. The ratio is the smallest (in steps of 0.01) whose
  MACs are at most 0.5x the original, searched for ``--round-to 1`` and the default round-to;
  the smaller ratio is used. Rows: criteria x recovery steps; then a curve over ratios.
- ``mlp``: ``digits_mlp.onnx`` with 90% of the weights zeroed (local and global scope).
- ``nm``: 2:4 on the MLP and the CNN (the pattern is checked in the output model).
- ``resnet``: ResNet-50 (``zoo/resnet50.onnx``) recovery time with 128 random images, each
  run in a fresh subprocess so its peak RSS is its own; single runs on a shared machine.
- ``mobilenet``: the same for MobileNetV2 (``zoo/mobilenet_v2.onnx``).

Both zoo sections run ``--structured 0.3`` (bias + lstsq) and ``--unstructured 0.5``
(bias + OBS). ``--before DIR`` (a folder holding another ``onnxprune`` package, e.g.
``mkdir /tmp/before && git archive main onnxprune | tar -x -C /tmp/before``) runs every zoo
job with that code too, back to back with this checkout's (before, then after, per job, so
both see about the same machine load), and prints both rows and the stage split.

``--skip-resnet`` drops both zoo sections (``resnet``, ``mobilenet``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
# The exported models: ROOT/zoo when the checkout has one, else the shared copy (--zoo DIR).
ZOO = ROOT / "zoo" if (ROOT / "zoo").is_dir() else Path("/work/main/zoo")
LABELS = MODELS / "digits_test_labels.npy"
SECTIONS = ("cnn", "mlp", "nm", "resnet", "mobilenet")
ZOO_SECTIONS = ("resnet", "mobilenet")
MAC_GOAL = 0.5
DEFAULT_ROUND_TO = None  # the library's default (16 at the time of writing; printed as found)

ERR_NOTE = (
    "Layer err: the report's relative output error of each refit layer on calibration rows "
    "(held out of the fit where the layer sees several rows per sample), before → after, "
    "averaged; a layer's 'before' already includes the refits of earlier waves."
)
CLI_DEFAULTS = {"criterion": "l1", "scope": "global"}  # with --calib, --unstructured is global
# Recovery switches: (label, keyword arguments of prune)
STRUCT_STEPS = [
    ("none", {"bias_correction": False, "lstsq": False}),
    ("bias", {"lstsq": False}),
    ("bias + lstsq", {}),
]
UNSTRUCT_STEPS = [
    ("none", {"bias_correction": False, "obs": False}),
    ("bias", {"obs": False}),
    ("bias + obs", {}),
]


# ---------------------------------------------------------------------------- helpers
def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def digits(name: str) -> tuple[Path, Path, np.ndarray]:
    """(model, calibration file, test inputs) of a shipped digits model."""
    test = np.load(MODELS / f"digits_{name}_test.npz")["input"]
    return MODELS / f"digits_{name}.onnx", MODELS / f"digits_{name}_calib.npz", test


def accuracy(model: onnx.ModelProto | Path, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``x`` computed here in onnxruntime (CPU)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: x})[0]
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def run_prune(model: Path, **kwargs):
    """``prune`` with validation off (accuracy is measured here); (result, seconds)."""
    from onnxprune import prune

    t0 = time.perf_counter()
    result = prune(model, validate=False, **kwargs)
    return result, time.perf_counter() - t0


def cli_flags(kwargs: dict) -> str:
    """The ``onnxprune`` flags equivalent to the ``prune`` keyword arguments (defaults
    left out: every recovery step is on with --calib)."""
    out = []
    for key, value in kwargs.items():
        if CLI_DEFAULTS.get(key, object()) == value:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            out += [flag, shlex.quote(str(value))]
    return " ".join(out)


def recovery_of(report: dict, kind: str) -> dict:
    return (report.get("recovery") or {}).get(kind) or {}


def nan_layers(rec: dict) -> list[str]:
    """Refit layers whose error the report gives as NaN (no rows to measure it on)."""
    return [
        x["layer"]
        for x in (rec or {}).get("layers", [])
        if not (np.isfinite(x["err_before"]) and np.isfinite(x["err_after"]))
    ]


def err_cell(rec: dict) -> str:
    """Mean relative layer output error before -> after recovery, as the report measures it
    (calibration rows held out of the fit), over the layers where it is a number; how many
    layers report NaN is added."""
    layers = (rec or {}).get("layers") or []
    if not layers:
        return "-"
    before = np.array([x["err_before"] for x in layers], dtype=float)
    after = np.array([x["err_after"] for x in layers], dtype=float)
    ok = np.isfinite(before) & np.isfinite(after)
    cell = f"{before[ok].mean():.3f} → {after[ok].mean():.3f}" if ok.any() else "n/a"
    if not ok.all():
        cell += f" ({int((~ok).sum())} NaN)"
    return cell


def secs_cell(rec: dict) -> str:
    return f"{rec['seconds']:.2f}" if rec else "-"


def drop(acc: float, base: float) -> float:
    """Accuracy drop in percentage points (negative: the pruned model scored higher)."""
    return (base - acc) * 100


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def heading(title: str, command: str) -> None:
    print(f"\n### {title}\n")
    print(f"`{command}`\n")


def selected_weights(model: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names}


def nonzero_ratio(model: onnx.ModelProto, names: set[str]) -> float:
    arrays = selected_weights(model, names)
    total = sum(a.size for a in arrays.values())
    return sum(int(np.count_nonzero(a)) for a in arrays.values()) / total


def reduction_axes(model: onnx.ModelProto) -> dict[str, int]:
    """Weight name -> axis the N:M groups run along (Conv: input channels; Gemm: K,
    following transB; MatMul: axis 0 of B), read from the graph here."""
    axes = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            axes[node.input[1]] = 1 if node.op_type == "Conv" else 0
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 1 if trans_b else 0
        elif node.op_type == "MatMul":
            axes[node.input[1]] = 0
    return axes


def nm_holds(model: onnx.ModelProto, names: set[str], n: int, m: int) -> bool:
    """Every run of ``m`` consecutive weights along the reduction axis has at most ``n``
    nonzeros, in every selected tensor."""
    axes = reduction_axes(model)
    for name, a in selected_weights(model, names).items():
        moved = np.moveaxis(a, axes[name], -1)
        if moved.shape[-1] % m:
            return False
        groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
        if int(np.count_nonzero(groups, axis=-1).max()) > n:
            return False
    return True


# ---------------------------------------------------------------------------- cnn
def mac_ratio(report: dict) -> float:
    return report["macs_after"] / report["macs_before"]


def smallest_ratio(model: Path, round_to: int | None) -> tuple[float, float, list, int]:
    """Smallest structured ratio (a multiple of 0.01) whose MAC ratio is <= MAC_GOAL, by
    bisection (kept channel counts never grow with the ratio); no calibration needed: with
    --scope local the counts do not depend on the criterion. Also the round-to the report
    says was used."""
    cache: dict[int, dict] = {}

    def at(pct: int) -> dict:
        if pct not in cache:
            res, _ = run_prune(model, structured=pct / 100, round_to=round_to)
            cache[pct] = res.report.to_dict()
        return cache[pct]

    lo, hi = 1, 95
    if mac_ratio(at(hi)) > MAC_GOAL:
        raise SystemExit(f"no ratio <= 0.95 reaches {MAC_GOAL}x MACs at round_to={round_to}")
    while lo < hi:
        mid = (lo + hi) // 2
        if mac_ratio(at(mid)) <= MAC_GOAL:
            hi = mid
        else:
            lo = mid + 1
    rep = at(lo)
    counts = [(g["channels_before"], g["channels_after"]) for g in rep["structured"]["groups"]]
    return lo / 100, mac_ratio(rep), counts, rep["structured"]["round_to"]


def section_cnn(labels: np.ndarray) -> None:
    model, calib, test = digits("cnn")
    base = accuracy(model, test, labels)
    found, default_rt = {}, None
    for rt in (1, DEFAULT_ROUND_TO):
        ratio, macs, counts, used = smallest_ratio(model, rt)
        found[rt] = ratio
        if rt is None:
            default_rt = used
        rt_name = f"default ({used})" if rt is None else str(rt)
        kept = ", ".join(f"{b}→{a}" for b, a in counts)
        print(
            f"- round-to {rt_name}: smallest --structured giving MACs <= {MAC_GOAL}x is "
            f"{ratio:.2f} (MACs {macs:.3f}x; channels per group {kept})"
        )
    rt_used = 1 if found[1] <= found[DEFAULT_ROUND_TO] else DEFAULT_ROUND_TO
    ratio = found[rt_used]
    rt_flag = {} if rt_used is None else {"round_to": rt_used}
    print(
        f"- used: --structured {ratio:.2f}"
        + (f" --round-to {rt_used}" if rt_used else f" (default round-to, {default_rt})")
        + f"; original test accuracy {base:.4f} (360 samples: one sample is "
        f"{100 / len(labels):.2f} points)"
    )

    common = {"structured": ratio, **rt_flag, "calib": rel(calib)}
    heading(
        f"CNN structured, MACs <= {MAC_GOAL}x (`{rel(model)}`, test accuracy {base:.4f})",
        f"onnxprune {rel(model)} {cli_flags(common)} --no-validate [--criterion C] "
        "[--no-bias-correction] [--no-lstsq]",
    )
    header = ["criterion", "recovery", "flags", "MAC ratio", "params ratio", "test acc",
              "drop (pts)", "recovery s", "layer err (calib)"]  # fmt: skip
    rows, calibrated = [], []
    plan = [(c, s) for c in ("l1", "activation", "apoz", "wanda") for s in STRUCT_STEPS]
    plan += [(c, STRUCT_STEPS[-1]) for c in ("l2", "fpgm", "bn-scale")]
    for crit, (label, steps) in plan:
        kw = {**common, "criterion": crit, **steps}
        res, _ = run_prune(model, **kw)
        rep = res.report.to_dict()
        acc = accuracy(res.model, test, labels)
        rec = recovery_of(rep, "structured")
        if label != "none":
            calibrated.append((drop(acc, base), crit, label))
        rows.append([crit, label, cli_flags({"criterion": crit, **steps}) or "(defaults)",
                     f"{mac_ratio(rep):.3f}", f"{rep['params_after'] / rep['params_before']:.3f}",
                     f"{acc:.4f}", f"{drop(acc, base):+.2f}", secs_cell(rec), err_cell(rec)])  # fmt: skip
    print(table(header, rows))
    print(f"\n{ERR_NOTE}")
    met = [c for c in calibrated if c[0] <= 1.0]
    best = min(calibrated)
    print(
        f"\nGoal drop <= 1 point with calibration: met by {len(met)} of {len(calibrated)} "
        f"calibrated rows; best {best[1]} + {best[2]} ({best[0]:+.2f})."
    )

    # The curve: more aggressive ratios with exact counts, and the default round-to at the
    # ratio used above and at its own smallest ratio reaching the MAC goal.
    curve = [(1, r) for r in sorted({ratio, 0.4, 0.5, 0.6, 0.7})]
    curve += [(DEFAULT_ROUND_TO, r) for r in sorted({ratio, found[DEFAULT_ROUND_TO]})]
    heading(
        "CNN structured: accuracy against MACs",
        f"onnxprune {rel(model)} --structured R [--round-to 1] --calib {rel(calib)} "
        "--no-validate [--criterion C] [--no-bias-correction --no-lstsq]",
    )
    header = ["ratio", "round-to", "MAC ratio", "l1, none", "l1, bias + lstsq",
              "activation, bias + lstsq", "wanda, bias + lstsq"]  # fmt: skip
    rows = []
    for rt, r in curve:
        rt_kw = {} if rt is None else {"round_to": rt}
        cells = []
        macs = None
        for crit, steps in (("l1", STRUCT_STEPS[0][1]), ("l1", {}), ("activation", {}),
                            ("wanda", {})):  # fmt: skip
            res, _ = run_prune(model, structured=r, **rt_kw, calib=rel(calib),
                               criterion=crit, **steps)  # fmt: skip
            macs = mac_ratio(res.report.to_dict())
            acc = accuracy(res.model, test, labels)
            cells.append(f"{acc:.4f} ({drop(acc, base):+.1f})")
        rt_name = f"default ({default_rt})" if rt is None else str(rt)
        rows.append([f"{r:.2f}", rt_name, f"{macs:.3f}", *cells])
    print(table(header, rows))
    print("\nCells: test accuracy (drop in points).")


# ---------------------------------------------------------------------------- mlp / nm
def unstructured_rows(model: Path, calib: Path, test: np.ndarray, labels: np.ndarray,
                      base: float, mode: dict, scopes: tuple[str, ...]) -> tuple[list, list]:  # fmt: skip
    rows, measured = [], []
    nm = None
    if "nm" in mode:
        nm = tuple(int(v) for v in mode["nm"].split(":"))
    for scope in scopes:
        for crit in ("l1", "wanda"):
            for label, steps in UNSTRUCT_STEPS:
                kw = {**mode, "scope": scope, "criterion": crit, "calib": rel(calib), **steps}
                res, _ = run_prune(model, **kw)
                rep = res.report.to_dict()
                names = {t["tensor"] for t in rep["unstructured"]["tensors"]}
                acc = accuracy(res.model, test, labels)
                rec = recovery_of(rep, "unstructured")
                crit_name = rep["unstructured"].get("criterion", crit)
                row = [scope, crit_name, label,
                       cli_flags({"scope": scope, "criterion": crit, **steps}) or "(defaults)",
                       f"{nonzero_ratio(res.model, names):.3f}"]  # fmt: skip
                if nm is not None:
                    row.append("yes" if nm_holds(res.model, names, *nm) else "**no**")
                row += [f"{acc:.4f}", f"{drop(acc, base):+.2f}", secs_cell(rec), err_cell(rec)]
                rows.append(row)
                measured.append((drop(acc, base), scope, crit_name, label))
    return rows, measured


def section_mlp(labels: np.ndarray) -> None:
    model, calib, test = digits("mlp")
    base = accuracy(model, test, labels)
    mode = {"unstructured": 0.9}
    heading(
        f"MLP, 90% of the weights zeroed (`{rel(model)}`, test accuracy {base:.4f})",
        f"onnxprune {rel(model)} --unstructured 0.9 --calib {rel(calib)} --no-validate "
        "[--scope S] [--criterion wanda] [--no-bias-correction] [--no-obs]",
    )
    header = ["scope", "criterion", "recovery", "flags", "nonzero ratio", "test acc",
              "drop (pts)", "recovery s", "layer err (calib)"]  # fmt: skip
    rows, measured = unstructured_rows(model, calib, test, labels, base, mode, ("local", "global"))
    print(table(header, rows))
    print(f"\n{ERR_NOTE}")
    goal_line(measured, 1.0)
    print("Nonzero ratio: nonzeros / elements of the selected weight tensors, counted in the "
          "pruned model (OBS re-chooses the zeros, keeping each tensor's count).")  # fmt: skip


def goal_line(measured: list, limit: float) -> None:
    met = [m for m in measured if m[3] != "none" and m[0] <= limit]
    cal = [m for m in measured if m[3] != "none"]
    best = min(cal)
    print(
        f"\nGoal drop <= {limit:g} point with calibration: met by {len(met)} of {len(cal)} "
        f"calibrated rows ({', '.join(f'{m[1]} {m[2]} {m[3]}' for m in met) or 'none'}); "
        f"best {best[1]} {best[2]} {best[3]} ({best[0]:+.2f})."
    )


def section_nm(labels: np.ndarray) -> None:
    for name in ("mlp", "cnn"):
        model, calib, test = digits(name)
        base = accuracy(model, test, labels)
        heading(
            f"{name.upper()} 2:4 (`{rel(model)}`, test accuracy {base:.4f})",
            f"onnxprune {rel(model)} --nm 2:4 --calib {rel(calib)} --no-validate "
            "[--criterion wanda] [--no-bias-correction] [--no-obs]",
        )
        header = ["scope", "criterion", "recovery", "flags", "nonzero ratio", "2:4 holds",
                  "test acc", "drop (pts)", "recovery s", "layer err (calib)"]  # fmt: skip
        rows, measured = unstructured_rows(model, calib, test, labels, base, {"nm": "2:4"},
                                           ("local",))  # fmt: skip
        print(table(header, rows))
        print(f"\n{ERR_NOTE}")
        goal_line(measured, 0.5)


# ---------------------------------------------------------------------------- zoo timings
def child(spec: str) -> None:
    """Run one prune in this (fresh) process and write what it measured as JSON."""
    job = json.loads(spec)
    from onnxprune import prune

    t0 = time.perf_counter()
    res = prune(job["model"], calib=job["calib"], validate=False, **job["kwargs"])
    seconds = time.perf_counter() - t0
    rep = res.report.to_dict()
    rec = {k: {kk: v for kk, v in r.items() if kk != "skipped"}
           for k, r in (rep.get("recovery") or {}).items()}  # fmt: skip
    for k, r in (rep.get("recovery") or {}).items():
        finite = [x for x in r["layers"] if np.isfinite(x["err_after"])]
        rec[k]["worst_layers"] = sorted(finite, key=lambda x: -x["err_after"])[:3]
        rec[k]["skipped"] = len(r["skipped"])
    import onnxprune

    out = {
        "code": str(Path(onnxprune.__file__).resolve().parent.parent),
        "prune_s": seconds,
        "recovery": rec,
        "timings_s": rep["timings_s"],
        "mac_ratio": rep["macs_after"] / rep["macs_before"],
        "nonzero_ratio": rep["nonzero_after"] / rep["nonzero_before"],
        "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    Path(job["out"]).write_text(json.dumps(out))


def run_child(model: Path, calib: Path, kwargs: dict, tmp: Path, code: Path | None = None) -> dict:
    """A fresh interpreter for one job: wall time from the parent, peak RSS from wait4.
    ``code``: a folder whose ``onnxprune`` package the child imports instead of this one."""
    out = tmp / f"job{time.monotonic_ns()}.json"
    spec = json.dumps({"model": str(model), "calib": str(calib), "kwargs": kwargs,
                       "out": str(out)})  # fmt: skip
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", spec], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {kwargs}")
    data = json.loads(out.read_text())
    data["wall_s"] = wall
    data["load_before"] = load
    data["cpu_s"] = usage.ru_utime + usage.ru_stime
    data["maxrss_kb"] = usage.ru_maxrss  # KiB on Linux
    data["load_after"] = os.getloadavg()[0]
    return data


def section_zoo(name: str, jobs: list[dict], samples: int = 128, before: Path | None = None) -> None:
    """Long because: one table of every job (before/after), then a line per job."""
    model = ZOO / f"{name}.onnx"
    if not model.exists():
        print(f"\n### {name}: skipped, {rel(model)} is missing "
              f"(/tmp/torchvenv/bin/python tools/export_zoo.py --only {name})")  # fmt: skip
        return
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [samples, *inp.shape[1:]]
    # A machine-speed reference: one forward pass at the model's own batch size.
    one = {inp.name: np.random.default_rng(1).standard_normal([1, *shape[1:]], dtype=np.float32)}
    sess.run(None, one)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        sess.run(None, one)
        times.append(time.perf_counter() - t0)
    forward_ms = float(np.median(times)) * 1000
    del sess
    codes: list[tuple[str, Path | None]] = [("after", None)]
    if before is not None:
        codes.insert(0, ("before", before))
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as d:
        tmp = Path(d)
        calib = tmp / "calib.npz"
        rng = np.random.default_rng(0)
        np.savez(calib, **{inp.name: rng.standard_normal(shape, dtype=np.float32)})
        heading(
            f"{name} recovery time ({samples} random normal images {shape[1:]} drawn with "
            "numpy seed 0, random weights; single runs, each in a fresh process)",
            f"onnxprune {rel(model)} <job> --calib CALIB.npz --no-validate",
        )
        print(f"Machine reference: one forward pass of the original at batch 1 takes "
              f"{forward_ms:.0f} ms here (onnxruntime CPU, default threads, median of 10).\n")  # fmt: skip
        header = ["job", "code", "recovery s", "taps s", "gram s",
                  "factor s", "solve s", "waves", "layers refit", "process wall s",
                  "process CPU s", "peak RSS MB", "nonzero ratio", "layer err (calib)",
                  "load avg start/end"]  # fmt: skip
        rows, results = [], []
        for kwargs in jobs:
            for label, code in codes:
                data = run_child(model, calib, kwargs, tmp, code)
                kind = "structured" if "structured" in kwargs else "unstructured"
                rec = data["recovery"].get(kind, {})
                st = rec.get("stage_seconds", {})
                rows.append([f"`{cli_flags(kwargs)}`", label, f"{rec.get('seconds', float('nan')):.1f}",
                             *(f"{st.get(k, float('nan')):.1f}" for k in ("taps", "gram", "factor", "solve")),
                             str(rec.get("waves", "-")), str(rec.get("layers_refit", "-")),
                             f"{data['wall_s']:.1f}", f"{data['cpu_s']:.1f}",
                             f"{data['maxrss_kb'] / 1024:.0f}", f"{data['nonzero_ratio']:.3f}",
                             err_cell(rec), f"{data['load_before']:.1f}/{data['load_after']:.1f}"])  # fmt: skip
                results.append((kwargs, label, data, rec))
        print(table(header, rows))
        print(
            f"\nSingle runs on a shared {os.cpu_count()}-CPU machine: wall times move with other "
            "work (load average at start and end above); process CPU s (user + system of the "
            "whole child, all threads) is the steadier measure of the work. Stages "
            "are wall seconds: taps (onnxruntime), gram, factor (OBS inverse-Hessian factor "
            "and dense target), solve. Peak RSS: the child process's ru_maxrss from wait4."
        )
        for kwargs, label, data, rec in results:
            worst = "; ".join(f"{w['layer']} {w['err_before']:.2f}→{w['err_after']:.2f}"
                              for w in rec.get("worst_layers", []))  # fmt: skip
            ok = "met" if rec.get("seconds", 1e9) <= 60 else "NOT met"
            print(f"\n- `{cli_flags(kwargs)}` ({label}, {data['code']}): recovery "
                  f"{rec.get('seconds', 0):.1f} s, goal <= 60 s {ok}; worst layers after "
                  f"recovery: {worst}; samples {rec.get('samples')}, skipped layers "
                  f"{rec.get('skipped')}; layers with NaN error: "
                  f"{', '.join(nan_layers(rec)) or 'none'}")  # fmt: skip


# ---------------------------------------------------------------------------- main
def cpu_info() -> str:
    """CPU model and its widest SIMD (onnxruntime and BLAS speed depend on it)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")), platform.machine())  # fmt: skip
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), "?")
    return f"{model}, {simd.upper()}"


def source_state() -> str:
    """The checkout the figures came from: commit, and a hash of uncommitted library changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        diff = subprocess.run(["git", "diff", "HEAD", "--", "onnxprune"], cwd=ROOT,
                              capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    if not diff:
        return head
    import hashlib

    return (
        f"{head} + uncommitted onnxprune/ changes (diff sha1 {hashlib.sha1(diff).hexdigest()[:10]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma list of sections: {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument("--skip-resnet", action="store_true",
                        help="skip the zoo timing sections (resnet, mobilenet)")  # fmt: skip
    parser.add_argument("--before", type=Path, default=None,
                        help="a folder with another onnxprune package: zoo jobs run with it too")  # fmt: skip
    parser.add_argument("--zoo", type=Path, default=None, help="the exported models [ROOT/zoo, else /work/main/zoo]")
    parser.add_argument("--samples", type=int, default=128, help="random images for the zoo jobs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.zoo is not None:
        globals()["ZOO"] = args.zoo
    if args.before is not None and not (args.before / "onnxprune" / "__init__.py").exists():
        parser.error(f"--before {args.before}: no onnxprune package there")
    if args.child:
        child(args.child)
        return
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.skip_resnet:
        wanted = [s for s in wanted if s not in ZOO_SECTIONS]

    import onnxprune

    print(f"`python tools/bench_recovery.py {' '.join(sys.argv[1:])}`".replace(" `", "`"))
    print(
        f"\nMachine: {os.cpu_count()} CPUs ({cpu_info()}), "
        f"load average {os.getloadavg()[0]:.2f}; Python {platform.python_version()}, "
        f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}, "
        f"onnxprune {getattr(onnxprune, '__version__', '?')} at {source_state()}; "
        "times are wall-clock."
    )
    state = source_state()
    labels = np.load(LABELS)
    spent = {}
    for section in wanted:
        t0 = time.perf_counter()
        if section == "cnn":
            section_cnn(labels)
        elif section == "mlp":
            section_mlp(labels)
        elif section == "nm":
            section_nm(labels)
        elif section in ZOO_SECTIONS:
            jobs = [{"unstructured": 0.5}, {"structured": 0.3}]
            name = "resnet50" if section == "resnet" else "mobilenet_v2"
            section_zoo(name, jobs, args.samples, args.before)
        spent[section] = time.perf_counter() - t0
    print("\n### Section times\n")
    print(table(["section", "wall s"], [[k, f"{v:.1f}"] for k, v in spent.items()]
                + [["total", f"{sum(spent.values()):.1f}"]]))  # fmt: skip
    if source_state() != state:
        print(f"\n**The library changed during the run** ({state} -> {source_state()}): rerun.")


if __name__ == "__main__":
    main()
