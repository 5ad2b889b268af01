"""Prune packed, windowed and fused attention models and check them (issue 12, item 2).

    python tools/check_attention.py MODEL.onnx [...] [--heads 0.25] [--structured 0.3]
        [--batch 2,3]

For each model: the heads per attention group before and after ``--heads`` (with
``--structured`` neurons), the MACs and parameter ratios, the exactness oracle (the original
with the removed heads' and neurons' outgoing weights zeroed, ``onnxprune.testing.zeroed``)
as the max abs difference on random inputs at each ``--batch`` size, and whether the pruned
model passes ``onnx.checker`` (full check) and runs in onnxruntime (CPU). Weights that are
all zero (torchvision initializes ViT's classifier so) get random values first, so that the
output depends on every head. Prints one markdown table; exits 1 when a model is not exact.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from onnxprune.graph.load import load_model
from onnxprune.metrics.counts import count_macs, count_params
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.oracles import randomize_zero_weights, run, zeroed


def _feeds(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [  # the batch first, then 7 tokens (or other symbolic sizes)
            d.dim_value if d.HasField("dim_value") else (batch if i == 0 else 7)
            for i, d in enumerate(t.shape.dim)
        ]
        if t.elem_type == onnx.TensorProto.INT64:
            out[vi.name] = (
                np.ones(shape, np.int64) if "mask" in vi.name else rng.integers(0, 100, shape)
            )
        else:
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def check(path: Path, heads: float, neurons: float, batches: list[int]) -> tuple[list[str], bool]:
    model = load_model(str(path)).model
    randomize_zero_weights(model)
    t0 = time.perf_counter()
    pruned, result = prune_structured(model, StructuredOptions(ratio=neurons, heads=heads))
    dt = time.perf_counter() - t0
    hg = [(g.heads, g.heads_after) for g in result.groups if g.heads]
    before, after = sum(b for b, _ in hg), sum(a for _, a in hg)
    valid, diff, scale = "yes", 0.0, 0.0
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:  # the checker raises several types
        valid = f"check: {str(exc).splitlines()[0][:60]}"
    ok = False
    if result.plan is not None and not result.plan.empty:
        ref = zeroed(model, result.plan)
        try:
            for seed, b in enumerate(batches):
                f = _feeds(model, b, seed)
                r, g = run(ref, f), run(pruned, f)
                diff = max(diff, *(float(np.max(np.abs(x - y))) for x, y in zip(r, g, strict=True)))
                scale = max(scale, *(float(np.max(np.abs(x))) for x in r))
            ok = diff <= 1e-4 * max(scale, 1e-6)
        except Exception as exc:  # onnxruntime refuses the pruned model
            valid = f"onnxruntime: {str(exc).splitlines()[0][:60]}"
    m0, m1 = count_macs(model)[0], count_macs(pruned)[0]
    p0, p1 = count_params(model)[0], count_params(pruned)[0]
    row = [
        path.stem, f"{len(hg)} groups, {before} -> {after}", f"{m1 / m0:.3f}", f"{p1 / p0:.3f}",
        f"{diff:.2g} (scale {scale:.2g})" if ok or diff else "-", valid, f"{dt:.0f}s",
    ]  # fmt: skip
    return row, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--heads", type=float, default=0.25)
    ap.add_argument("--structured", type=float, default=0.3)
    ap.add_argument("--batch", default="1,2")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    head = ["model", "heads (all groups)", "MACs", "params", "max abs diff vs oracle", "valid", "time"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    bad = 0
    for p in args.models:
        row, ok = check(p, args.heads, args.structured, batches)
        bad += not ok
        print("| " + " | ".join(row) + " |", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
