"""Hidden-stream pruning (``--hidden``) on real exports: MACs kept, and the stream oracle.

For each model: prune with ``--structured S --hidden R`` (API, round-to 16), then check the
pruned model against ``onnxprune.testing.stream_oracle`` (the original with removed channels
zeroed at their consumers and every stream LayerNorm computed over the kept channels) on
random inputs in onnxruntime, and print the MACs ratio, the oracle's max relative error and
the output cosine against the unpruned original::

    python tools/check_hidden.py /work/main/zoo/convnext_tiny.onnx --structured 0.3 --hidden 0.3

Swin-T as torch exports it reads shapes at run time and shares equal initializers between
layers; ``--fold`` first fixes the batch to 1, lets onnxruntime's basic optimizations fold the
shape arithmetic into constants (no fusions that change ops: MatMulAddFusion and
ConstantSharing are disabled) and gives each reader of a shared initializer its own copy,
writing ``<stem>.static.onnx`` next to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.graph.load import load_model
from onnxprune.metrics.macs import count_macs
from onnxprune.runtime.shapes import resolve_shapes
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.oracles import assert_close, random_feeds, run
from onnxprune.testing.stream_oracle import stream_reference


def fold_static(src: Path, dst: Path) -> Path:
    """Batch 1, shapes folded by onnxruntime (basic level), shared initializers unshared."""
    m = onnx.load(str(src))
    for vi in [*m.graph.input, *m.graph.output]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = 1
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "fixed.onnx"
        onnx.save(m, str(fixed))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        ort.InferenceSession(str(fixed), so, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["ConstantSharing", "MatMulAddFusion"])  # fmt: skip
    m = onnx.load(str(dst))
    inits = {t.name: t for t in m.graph.initializer}
    seen: collections.Counter = collections.Counter()
    for n in m.graph.node:
        for k, name in enumerate(n.input):
            if name in inits:
                seen[name] += 1
                if seen[name] > 1:
                    t = onnx.TensorProto()
                    t.CopyFrom(inits[name])
                    t.name = f"{name}__copy{seen[name]}"
                    m.graph.initializer.append(t)
                    n.input[k] = t.name
    onnx.save(m, str(dst))
    return dst


def fill_zeros(model: onnx.ModelProto) -> None:
    """All-zero float initializers of rank >= 1 get N(0, 0.02) values (in place)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.ndim >= 1 and a.size > 1 and not a.any():
            t.CopyFrom(numpy_helper.from_array(
                (rng.standard_normal(a.shape) * 0.02).astype(np.float32), t.name))  # fmt: skip


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--structured", type=float, default=0.3)
    ap.add_argument("--hidden", type=float, default=0.3)
    ap.add_argument("--round-to", type=int, default=16)
    ap.add_argument("--fold", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("/tmp"))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--fill-zeros", action="store_true",
                    help="give all-zero float weights (ViT's zero-initialized head and class "
                    "token) small random values, so the output is not identically zero")  # fmt: skip
    args = ap.parse_args()
    path = args.model
    if args.fold:
        static = args.out / f"{path.stem}.static.onnx"
        path = static if static.exists() else fold_static(path, static)
    model = load_model(path).model
    if args.fill_zeros:
        fill_zeros(model)
    pruned, result = prune_structured(
        model, StructuredOptions(ratio=args.structured, hidden=args.hidden, round_to=args.round_to)
    )
    shapes = resolve_shapes(model, (), None).shapes  # the CLI's sizes: batch 1, 224, ...
    macs = count_macs(pruned, shapes)[0] / count_macs(model, shapes)[0]
    print(f"{path.name}: --structured {args.structured} --hidden {args.hidden}: "
          f"round-to {args.round_to}: MACs {macs:.3f}x")  # fmt: skip
    for r in result.hidden["groups"]:
        print(f"  stream {r['id']}: {r['channels_before']} -> {r['channels_after']}")
    ref = stream_reference(model, result.plan)
    for seed in range(args.seeds):
        feeds = random_feeds(model, seed)
        want, got, orig = run(ref, feeds), run(pruned, feeds), run(model, feeds)
        scale = float(np.max(np.abs(want[0])))
        err = float(np.max(np.abs(want[0] - got[0]))) / scale
        print(f"  seed {seed}: stream oracle max rel error {err:.2e}; cosine to the original "
              f"{cosine(orig[0], got[0]):.4f}")  # fmt: skip
        assert_close(want, got, 1e-3)
    print("  stream oracle: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
