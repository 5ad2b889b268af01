"""Structured pruning benchmarks: zoo coverage, pruning speed, latency efficiency.

    python tools/bench_structured.py coverage [--zoo zoo] [--ratio 0.3] [--only a,b]
    python tools/bench_structured.py speed [--model zoo/resnet50.onnx] [--repeat 5]
    python tools/bench_structured.py latency [--zoo zoo] [--only resnet50,mobilenet_v2,convnext_tiny]

coverage: prunes every zoo model with the default options at ``--ratio`` and prints one row
per model: prunable groups pruned, blocked groups, MAC ratio (pruned / original), the
planted-dead oracle (dead channels planted, global scope, exact counts: outputs unchanged?),
the exactness oracle on the default prune, and the time spent in ``prune_structured``.

speed: ``onnx.load`` + ``onnx.save`` of a model against the CLI
(``onnxprune M --structured 0.3 --no-validate``) and against the in-process stages.

latency: original vs pruned latency on onnxruntime CPU, measured interleaved in one process,
and the latency efficiency (latency ratio / MAC ratio).

When ``zoo/`` is missing, ``--synthetic`` writes a ResNet-50-shaped model (torchvision
layout, BatchNorm folded into the convolutions, random weights) so speed can be measured
without torch.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.view import GraphView
from onnxprune.metrics.counts import count_macs
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.oracles import assert_close, plant_dead, random_feeds, zeroed

ROOT = Path(__file__).resolve().parents[1]

ZOO_ORDER = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_y_400mf",
    "mnasnet1_0",
    "densenet121",
    "googlenet",
    "squeezenet1_1",
    "shufflenet_v2_x1_0",
    "vgg11_bn",
    "alexnet",
    "convnext_tiny",
    "unet",
    "yolov8",
]


# ---------------------------------------------------------------------------- measuring
def macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates as the report counts them (``onnxprune.metrics.counts``), given the
    shapes ``GraphView`` infers: ONNX inference alone cannot see through the Div of a torch
    ``chunk`` (ShuffleNet) and would count those convolutions with one channel."""
    typed = onnx.ModelProto()
    typed.CopyFrom(model)
    del typed.graph.value_info[:]
    typed.graph.value_info.extend(GraphView(model).value_info)
    return count_macs(typed)[0]


def session(model: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def interleaved_latency(
    models: list[onnx.ModelProto], feeds: dict, runs: int = 30, warmup: int = 5, threads: int = 0
) -> list[float]:
    """Median seconds per run of each model; every round runs every model once, in a
    rotating order, so slow spells of the machine hit all alike (the method of
    ``onnxprune.runtime.validate.measure_latency``, plus a thread count: on this 2-vCPU machine the
    default two threads make timings noisy, one thread is stable)."""
    sessions = [session(m, threads) for m in models]
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(runs):
        for k in range(len(sessions)):
            i = (r + k) % len(sessions)
            t0 = time.perf_counter()
            sessions[i].run(None, feeds)
            times[i].append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


# ---------------------------------------------------------------------------- synthetic
def synthetic_resnet50(seed: int = 0) -> onnx.ModelProto:
    """torchvision ResNet-50 as its TorchScript export looks with BatchNorm folded."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    count = [0]

    def conv(x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        count[0] += 1
        n = f"conv{count[0]}"
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, f"{n}.weight"))
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal(cout) * 0.1).astype(np.float32), f"{n}.bias"
            )
        )
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{n}.weight", f"{n}.bias"], [f"{n}_out"], name=n,
                kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4,
            )
        )  # fmt: skip
        if not relu:
            return f"{n}_out"
        nodes.append(helper.make_node("Relu", [f"{n}_out"], [f"{n}_relu"], name=f"{n}_relu"))
        return f"{n}_relu"

    x = conv("input", 3, 64, 7, 2)
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4
        )
    )
    x, cin = "pool", 64
    for i, (width, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
    ):
        for j in range(blocks):
            s = stride if j == 0 else 1
            y = conv(x, cin, width, 1)
            y = conv(y, width, width, 3, s)
            y = conv(y, width, width * 4, 1, relu=False)
            short = conv(x, cin, width * 4, 1, s, relu=False) if j == 0 else x
            add = f"add{i}_{j}"
            nodes.append(helper.make_node("Add", [y, short], [add]))
            nodes.append(helper.make_node("Relu", [add], [f"{add}_relu"]))
            x, cin = f"{add}_relu", width * 4
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
    inits.append(
        numpy_helper.from_array(
            (rng.standard_normal((1000, 2048)) * 0.02).astype(np.float32), "fc.weight"
        )
    )
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc.bias"))
    nodes.append(
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc")
    )
    graph = helper.make_graph(
        nodes,
        "resnet50_synthetic",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# ---------------------------------------------------------------------------- commands
def zoo_models(zoo: Path, only: list[str] | None) -> list[Path]:
    """The zoo's CNNs in the issue's order; ``only`` may name any other file (``resnet50_bn``)."""
    found = {p.stem: p for p in zoo.glob("*.onnx")}
    names = only or [n for n in ZOO_ORDER if n in found]
    return [found[n] for n in names if n in found]


def load(path: Path) -> onnx.ModelProto:
    try:
        from onnxprune.graph import modelfile as io
        return io.load(path)
    except (ImportError, AttributeError, TypeError):
        return onnx.load(str(path))


def coverage_row(path: Path, ratio: float) -> dict:
    model = load(path)
    t0 = time.perf_counter()
    pruned, res = prune_structured(model, StructuredOptions(ratio=ratio))
    elapsed = time.perf_counter() - t0
    before, after = macs(model), macs(pruned) if pruned is not model else None
    exact_counts, _ = prune_structured(model, StructuredOptions(ratio=ratio, round_to=1))
    after1 = macs(exact_counts) if exact_counts is not model else before
    feeds = random_feeds(model, 0)
    d = res.to_dict()
    exact = "-"
    if not res.plan.empty:
        ref = session(zeroed(model, res.plan)).run(None, feeds)
        got = session(pruned).run(None, feeds)
        exact = _verdict(ref, got)
    planted_model, planted, _ = plant_dead(model, 0.4)
    dead = "-"
    if planted:
        p2, r2 = prune_structured(
            planted_model, StructuredOptions(ratio=0.3, scope="global", round_to=1)
        )
        ok_only_dead = all(
            set(range(g.slots)) - set(g.kept) <= set(planted.get(g.id, []).tolist())
            for g in r2.plan.groups
        )
        dead = _verdict(session(planted_model).run(None, feeds), session(p2).run(None, feeds))
        dead = dead if ok_only_dead else "live pruned"
    reasons = sorted({b["reason"].split(" (")[0].split(":")[0] for b in d["blocked"]})
    return {
        "model": path.stem,
        "pruned": sum(g["channels_after"] < g["channels_before"] for g in d["groups"]),
        "groups": len(d["groups"]),
        "blocked": len({b["where"].split(" (at")[0] for b in d["blocked"]}),
        "mac_ratio": (after / before) if after is not None and before else 1.0,
        "mac_ratio_1": after1 / before if before else 1.0,
        "exact": exact,
        "dead": dead,
        "seconds": elapsed,
        "reasons": reasons,
    }


def _verdict(ref: list[np.ndarray], got: list[np.ndarray]) -> str:
    try:
        assert_close(ref, got, 1e-5)
        return "exact"
    except AssertionError as e:
        return f"DIFF {str(e).split(':', 1)[1].strip()[:40]}"


def cmd_coverage(args: argparse.Namespace) -> None:
    paths = zoo_models(Path(args.zoo), args.only)
    if not paths:
        sys.exit(f"no models under {args.zoo}: run tools/export_zoo.py first")
    print(f"--structured {args.ratio}, default options; onnxruntime {ort.__version__}")
    head = ["model", "groups pruned", "blocked groups", "MACs after/before", "(--round-to 1)",
            "exactness", "planted-dead", "prune time"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    notes = []
    for p in paths:
        r = coverage_row(p, args.ratio)
        cells = [r["model"], f"{r['pruned']}/{r['groups']}", r["blocked"], f"{r['mac_ratio']:.3f}",
                 f"{r['mac_ratio_1']:.3f}", r["exact"], r["dead"], f"{r['seconds']:.2f} s"]  # fmt: skip
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
        notes.append((r["model"], r["reasons"]))
    print("\nblocked reasons per model:")
    for name, reasons in notes:
        print(f"- {name}: {'; '.join(reasons) or 'none'}")


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["failed"])[-1])
    return time.perf_counter() - t0


def cmd_speed(args: argparse.Namespace) -> None:
    """Wall clock of two commands a user would run, and the in-process stages."""
    from onnxprune.structured.dependency import analyze
    from onnxprune.structured.importance import score_groups
    from onnxprune.structured.plan import make_plan
    from onnxprune.structured.rewrite import apply_plan

    src = Path(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="onnxprune-bench-"))
    if not src.exists():
        src = tmp / "resnet50_synthetic.onnx"
        onnx.save(synthetic_resnet50(), str(src))
        print(f"({args.model} not found: wrote {src.name}, a ResNet-50-shaped model)")
    py = sys.executable
    io_cmd = [
        py,
        "-c",
        f"import onnx; onnx.save(onnx.load({str(src)!r}), {str(tmp / 'copy.onnx')!r})",
    ]
    cli_cmd = [py, "-m", "onnxprune", str(src), "--structured", "0.3", "--no-validate", "-q",
               "-o", str(tmp / "cli.onnx"), "--force"]  # fmt: skip
    t_io, t_cli, t_io_in, stages = [], [], [], {}
    for _ in range(args.repeat):
        t_io.append(_wall(io_cmd))
        if not args.no_cli:
            t_cli.append(_wall(cli_cmd))
        t0 = time.perf_counter()
        onnx.save(onnx.load(str(src)), str(tmp / "copy.onnx"))
        t_io_in.append(time.perf_counter() - t0)
        marks = [("load", time.perf_counter())]
        m = onnx.load(str(src))
        marks.append(("view+shapes", time.perf_counter()))
        view = GraphView(m)
        marks.append(("analyze", time.perf_counter()))
        groups = analyze(m, view=view)
        marks.append(("score", time.perf_counter()))
        scores = score_groups(groups, view, "l1")
        marks.append(("plan", time.perf_counter()))
        plan = make_plan(groups, scores, ratio=0.3)
        marks.append(("rewrite+check", time.perf_counter()))
        pruned = apply_plan(m, plan, view=view)
        marks.append(("save", time.perf_counter()))
        onnx.save(pruned, str(tmp / "pruned.onnx"))
        marks.append(("end", time.perf_counter()))
        for (name, t), (_, t_next) in itertools.pairwise(marks):
            stages.setdefault(name, []).append(t_next - t)
    med = lambda xs: float(np.median(xs))  # noqa: E731
    in_process = sum(med(v) for v in stages.values())
    print(
        f"model: {src.name} ({src.stat().st_size / 2**20:.0f} MiB), median of {args.repeat}, {os.cpu_count()} cores"
    )
    print(f"python -c 'onnx.save(onnx.load(...))':        {med(t_io):.3f} s")
    if t_cli:
        print(
            f"onnxprune M --structured 0.3 --no-validate:  {med(t_cli):.3f} s  ({med(t_cli) / med(t_io):.2f}x)"
        )
    print(f"in process: onnx.load + onnx.save            {med(t_io_in):.3f} s")
    print(
        f"in process: load, prune_structured stages, save {in_process:.3f} s  ({in_process / med(t_io_in):.2f}x)"
    )
    print("stages: " + ", ".join(f"{k} {med(v):.3f}" for k, v in stages.items()))


def cmd_latency(args: argparse.Namespace) -> None:
    paths = zoo_models(Path(args.zoo), args.only) if Path(args.zoo).exists() else []
    models = [(p.stem, load(p)) for p in paths] or [("resnet50_synthetic", synthetic_resnet50())]
    print(
        f"onnxruntime {ort.__version__} CPU, {os.cpu_count()} cores, threads {args.threads or 'default'}, "
        f"median of {args.runs} interleaved runs"
    )
    print("| model | MACs ratio | latency orig | latency pruned | speed-up | efficiency |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, model in models:
        pruned, _ = prune_structured(
            model, StructuredOptions(ratio=args.ratio, round_to=args.round_to)
        )
        feeds = random_feeds(model, 0)
        lo, lp = interleaved_latency([model, pruned], feeds, args.runs, threads=args.threads)
        mr = macs(model) / max(macs(pruned), 1)
        print(
            f"| {name} | {1 / mr:.3f} | {lo * 1e3:.2f} ms | {lp * 1e3:.2f} ms | {lo / lp:.2f}x | {(lo / lp) / mr:.2f} |",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("coverage")
    c.add_argument("--zoo", default=str(ROOT / "zoo"))
    c.add_argument("--ratio", type=float, default=0.3)
    c.add_argument("--only", type=lambda s: s.split(","), default=None)
    s = sub.add_parser("speed")
    s.add_argument("--model", default=str(ROOT / "zoo" / "resnet50.onnx"))
    s.add_argument("--repeat", type=int, default=5)
    s.add_argument("--no-cli", action="store_true")
    lat = sub.add_parser("latency")
    lat.add_argument("--zoo", default=str(ROOT / "zoo"))
    lat.add_argument(
        "--only", type=lambda s: s.split(","), default=["resnet50", "mobilenet_v2", "convnext_tiny"]
    )
    lat.add_argument("--ratio", type=float, default=0.3)
    lat.add_argument("--round-to", type=int, default=None)
    lat.add_argument("--runs", type=int, default=30)
    lat.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)"
    )
    args = ap.parse_args()
    {"coverage": cmd_coverage, "speed": cmd_speed, "latency": cmd_latency}[args.cmd](args)


if __name__ == "__main__":
    main()
