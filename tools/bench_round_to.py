"""Which ``--round-to`` makes pruned models fastest on onnxruntime CPU? (README table)

    python tools/bench_round_to.py [--zoo zoo] [--only resnet50,mobilenet_v2,convnext_tiny]
                                   [--ratio 0.3] [--values 1,2,4,8,16,32] [--runs 40]

For each model: the original and one pruned copy per ``round_to`` value (local scope, l1),
all measured interleaved in one process (every run visits every variant, so machine drift
hits them alike; median of ``--runs``). A synthetic stack of 3x3 convolutions (``convstack``)
isolates the effect from the rest of a network. Prints MACs after/before, latency, speed-up
and latency efficiency (speed-up / MAC reduction): 1.0 means the latency fell as much as the
MACs did.

Why it matters: onnxruntime's CPU Conv runs fastest in its blocked NCHWc layout, whose block
is 8 channels (AVX2) or 16 (AVX-512); counts that are not multiples of the block fall back
to slower kernels, so a model pruned to "exact" counts can be slower than the original.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from bench_structured import ROOT, interleaved_latency, load, macs
from onnx import TensorProto, helper, numpy_helper

from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.oracles import random_feeds


def convstack(seed: int = 0) -> onnx.ModelProto:
    """3x3 conv + ReLU blocks at 64/128/256 channels, 56/28/14 pixels, then GAP + Gemm."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, cin = [], [], "input", 3
    for i, (c, s) in enumerate([(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]):
        w = (rng.standard_normal((c, cin, 3, 3)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"c{i}.w"),
            numpy_helper.from_array(np.zeros(c, np.float32), f"c{i}.b"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"c{i}.w", f"c{i}.b"],
                [f"c{i}"],
                kernel_shape=[3, 3],
                pads=[1] * 4,
                strides=[s, s],
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, cin = f"r{i}", c
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(
        numpy_helper.from_array((rng.standard_normal((10, cin)) * 0.1).astype(np.float32), "fc.w")
    )
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w"], ["output"], transB=1))
    graph = helper.make_graph(
        nodes,
        "convstack",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 56, 56])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=["convstack", "resnet50", "mobilenet_v2", "convnext_tiny"],
    )
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument(
        "--values", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8, 16, 32]
    )
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)"
    )
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__} CPU, {os.cpu_count()} cores, threads {args.threads or 'default'}, "
          f"structured {args.ratio} local l1, median of {args.runs} interleaved runs")  # fmt: skip
    for name in args.only:
        path = Path(args.zoo) / f"{name}.onnx"
        if name == "convstack":
            model = convstack()
        elif path.exists():
            model = load(path)
        else:
            print(f"\n{name}: not found under {args.zoo}, skipped")
            continue
        variants, labels = [model], ["original"]
        for r in args.values:
            pruned, _ = prune_structured(model, StructuredOptions(ratio=args.ratio, round_to=r))
            variants.append(pruned)
            labels.append(f"round_to {r}")
        feeds = random_feeds(model, 0)
        lat = interleaved_latency(variants, feeds, args.runs, threads=args.threads)
        base_macs = macs(model)
        print(f"\n{name}")
        print("| variant | MACs after/before | latency | speed-up | efficiency |")
        print("| --- | --- | --- | --- | --- |")
        for label, m, t in zip(labels, variants, lat, strict=True):
            mr = macs(m) / base_macs
            speed = lat[0] / t
            print(
                f"| {label} | {mr:.3f} | {t * 1e3:.2f} ms | {speed:.2f}x | {speed * mr:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
