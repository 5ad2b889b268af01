"""Quantized ops: their presence means the model carries quantized weights, never touched.

The integer and QLinear forms of Conv and MatMul count their MACs like the float forms (the
weight is input 3 of the QLinear ones); none of them has a channel rule, so they block.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from onnxprune.ops.macs import Dims, Shape, conv_macs, matmul_macs
from onnxprune.ops.spec import OpSpec

QUANTIZED = (
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QuantizeLinear",
    "DequantizeLinear", "DynamicQuantizeLinear", "QGemm", "DynamicQuantizeMatMul", "MatMulNBits",
)  # fmt: skip


def _qlinear_conv_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims) -> int:
    return conv_macs(node, shapes, d, w_input=3)


def _qlinear_matmul_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims) -> int:
    return matmul_macs(node, shapes, d, b_input=3)


_MACS = {
    "ConvInteger": conv_macs,
    "QLinearConv": _qlinear_conv_macs,
    "MatMulInteger": matmul_macs,
    "QLinearMatMul": _qlinear_matmul_macs,
}

#: Every quantized name in the ONNX domain and in onnxruntime's com.microsoft; MACs are
#: counted for the ONNX-domain forms only.
SPECS = [OpSpec(op, quantized=True, macs=_MACS.get(op)) for op in QUANTIZED] + [
    OpSpec(op, "com.microsoft", quantized=True) for op in QUANTIZED
]
