"""Quantize zoo models with onnxruntime's own tools, for the quantized-model benchmarks.

Writes, for each model NAME given (default: resnet50 and mobilenet_v2 from /work/main/zoo),
under OUT (default /work/zoo2/quant):

* ``NAME_qdq.onnx``: ``quantize_static`` in QDQ format (int8 weights per channel, int8
  activations, MinMax calibration on a few random inputs: the numbers are not meaningful
  accuracies, the graph is what deployments ship);
* ``NAME_qop.onnx``: the same in QOperator format (QLinearConv, QLinearAdd, ...);
* ``NAME_dyn.onnx``: ``quantize_dynamic`` (ConvInteger / MatMulInteger);
* ``NAME_nbits.onnx``: 4-bit ``MatMulNBits`` weights (only for models with MatMul/Gemm and
  when ``onnxruntime.quantization.matmul_nbits_quantizer`` imports: it needs ``onnx_ir``).

The model is first pre-processed with ``quant_pre_process`` (shape inference and ORT's
graph optimizations), as onnxruntime recommends before ``quantize_static``.

Usage: ``python tools/export_quantized.py [--out DIR] [--samples N] [MODEL.onnx ...]``;
``python tools/export_quantized.py --measure 0.3 /work/zoo2/quant/*.onnx`` prunes each
quantized model and prints one JSON line per model (MACs ratio, valid in onnxruntime, the
exactness oracle's relative error, cosine against the unpruned model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

ZOO = Path("/work/main/zoo")
DEFAULT_MODELS = [ZOO / "resnet50.onnx", ZOO / "mobilenet_v2.onnx"]


class RandomReader:
    """A calibration reader with ``n`` standard-normal batches for the model's inputs."""

    def __init__(self, model: onnx.ModelProto, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        inits = {t.name for t in model.graph.initializer}
        self.batches = []
        for _ in range(n):
            feed = {}
            for vi in model.graph.input:
                if vi.name in inits:
                    continue
                dims = [d.dim_value or 8 for d in vi.type.tensor_type.shape.dim]
                dims[0] = vi.type.tensor_type.shape.dim[0].dim_value or 1
                if vi.type.tensor_type.elem_type == onnx.TensorProto.INT64:  # token ids, masks
                    ids = rng.integers(0, 100, dims) if "mask" not in vi.name else np.ones(dims)
                    feed[vi.name] = ids.astype(np.int64)
                else:
                    feed[vi.name] = rng.standard_normal(dims).astype(np.float32)
            self.batches.append(feed)
        self._it = iter(self.batches)

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.batches)


def export(src: Path, out: Path, samples: int) -> list[Path]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    name = src.stem
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / f"{name}_pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        model = onnx.load(str(pre))
        reader_cls = type("Reader", (RandomReader, CalibrationDataReader), {})
        for fmt, suffix in ((QuantFormat.QDQ, "qdq"), (QuantFormat.QOperator, "qop")):
            dst = out / f"{name}_{suffix}.onnx"
            quantize_static(
                str(pre), str(dst), reader_cls(model, samples), quant_format=fmt,
                per_channel=True, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
            )  # fmt: skip
            written.append(dst)
            print(f"wrote {dst}", flush=True)
        dst = out / f"{name}_dyn.onnx"
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
        written.append(dst)
        print(f"wrote {dst}", flush=True)
        if any(n.op_type in ("MatMul", "Gemm") for n in model.graph.node):
            dst = out / f"{name}_nbits.onnx"
            if nbits(model, dst, block_size=32):
                written.append(dst)
                print(f"wrote {dst}", flush=True)
    return written


def nbits(model: onnx.ModelProto, dst: Path, block_size: int) -> bool:
    """4-bit MatMulNBits weights for the MatMuls (False when the quantizer is missing)."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        print(f"skipped MatMulNBits: {exc}", file=sys.stderr)
        return False
    q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=False)
    q.process()
    if not any(n.op_type == "MatMulNBits" for n in q.model.model.graph.node):
        print(f"skipped {dst.name}: no MatMul was quantized (Gemm is not)", file=sys.stderr)
        return False
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return True


def measure(path: Path, ratio: float) -> dict:
    """Prune ``path`` at ``ratio`` (default options: round-to 16, local L1) and report the
    MACs ratio, whether onnxruntime runs the result, and the exactness oracle: the pruned
    outputs against the original with the removed channels' consumer weights set to their
    zero points (max |diff| relative to the largest output), on two random inputs."""
    import time

    from onnxprune.graph.load import normalize_model
    from onnxprune.metrics.macs import count_macs
    from onnxprune.structured.engine import StructuredOptions, prune_structured
    from onnxprune.testing.oracles import random_feeds, run, zeroed

    model = onnx.load(str(path))
    normalize_model(model)  # what the CLI does at load (constant weight chains folded)
    t0 = time.perf_counter()
    pruned, result = prune_structured(model, StructuredOptions(ratio=ratio))
    seconds = time.perf_counter() - t0
    row = {"model": path.name, "groups": f"{len(result.plan.groups)} pruned",
           "prune_s": round(seconds, 1)}  # fmt: skip
    row["macs_ratio"] = round(count_macs(pruned)[0] / count_macs(model)[0], 3)
    blocked = list(result.blocked)
    row["blocked"] = len(blocked)
    row["first_blocked"] = blocked[0] if blocked else None
    if result.plan.empty:
        row["valid_ort"] = None
        return row
    try:
        reference = zeroed(model, result.plan)
        errors = []
        for seed in (0, 1):
            feeds = random_feeds(model, seed)
            ref, got = run(reference, feeds)[0], run(pruned, feeds)[0]
            scale = max(float(np.abs(ref).max()), 1e-6)
            errors.append(float(np.abs(ref.astype(np.float64) - got).max()) / scale)
        row["valid_ort"] = True
        row["oracle_rel_err"] = max(errors)
        cos = run(model, feeds)[0].ravel().astype(np.float64)
        row["cosine_vs_original"] = round(
            float(cos @ got.ravel() / (np.linalg.norm(cos) * np.linalg.norm(got) + 1e-12)), 4
        )
    except Exception as exc:  # report any failure as the row's result
        row["valid_ort"] = False
        row["error"] = str(exc).splitlines()[0]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--out", type=Path, default=Path("/work/zoo2/quant"))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--measure", type=float, metavar="RATIO", default=None,
                    help="prune the given quantized models at RATIO and print one JSON "
                         "line each (MACs ratio, validity, exactness oracle)")  # fmt: skip
    args = ap.parse_args()
    if args.measure is not None:
        import json

        for path in args.models:
            print(json.dumps(measure(path, args.measure)), flush=True)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for src in args.models:
        export(src, args.out, args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
