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

Usage: ``python tools/export_quantized.py [--out DIR] [--samples N] [MODEL.onnx ...]``
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
                dims = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
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
    q.model.save_model_to_file(str(dst), use_external_data_format=False)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path, default=DEFAULT_MODELS)
    ap.add_argument("--out", type=Path, default=Path("/work/zoo2/quant"))
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for src in args.models:
        export(src, args.out, args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
