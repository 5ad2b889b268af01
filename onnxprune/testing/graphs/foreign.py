"""Graphs as foreign exporters write them (jax2tf, tf2onnx/keras, low-precision weights).

Shared by the tests of load-time normalization and by ``tools/coverage_table.py``, which
reports each family: constant chains that produce weights, NHWC Transpose sandwiches, and
fp16/bf16 weights read through Cast.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxprune.testing.graphs.builder import Builder

C = 8
"""Channels of the prunable layers."""


def jax2tf_model(shared_view: bool = False) -> onnx.ModelProto:
    """HWIO conv kernels reach the Conv through Transpose; the dense kernel is stored flat
    and reaches the MatMul through Reshape then Mul by a folded scalar; the conv bias is a
    Squeeze of a [1, C] constant. ``shared_view``: the transposed kernel is also a graph
    output (its node must stay for it)."""
    b = Builder(seed=1)
    x = b.input([1, 3, 6, 6])
    hwio = b.rand([3, 3, 3, C], "k1_hwio", 0.3)
    w1 = b.op("Transpose", [hwio], perm=[3, 2, 0, 1], name="k1_t")
    w1 = b.op("Mul", [w1, b.const(np.float32(0.5))], name="k1_scale")
    bias = b.op("Squeeze", [b.rand([1, C], "b1_2d", 0.1), b.ints([0])], name="b1_sq")
    y = b.op("Conv", [x, w1, bias], pads=[1, 1, 1, 1], name="conv1")
    y = b.relu(y)
    hwio2 = b.rand([1, 1, C, C], "k2_hwio", 0.3)
    w2 = b.op("Reshape", [b.op("Transpose", [hwio2], perm=[3, 2, 0, 1]), b.ints([C, C, 1, 1])])
    y = b.op("Conv", [y, w2], name="conv2")
    y = b.op("GlobalAveragePool", [b.relu(y)])
    y = b.op("Flatten", [y])
    dense = b.op("Reshape", [b.rand([C * 4], "dense_flat", 0.3), b.ints([C, 4])], name="d_r")
    dense = b.op("Mul", [dense, b.const(np.float32(2.0))], name="d_scale")
    outs = [b.op("MatMul", [y, dense], name="dense")]
    if shared_view:
        outs.append(w1)
    return b.build(outs)


def nhwc_block(extra: list[tuple[str, list]] | None = None) -> onnx.ModelProto:
    """x (NHWC) -> Transpose -> Conv -> Transpose -> Add[C] (BiasAdd) -> Relu -> Mul[C]
    -> ``extra`` ops (NHWC) -> Transpose -> Conv -> Transpose, as tf2onnx writes keras."""
    b = Builder(seed=3)
    x = b.input([1, 6, 6, 3], "x_nhwc")
    y = b.op("Transpose", [x], perm=[0, 3, 1, 2])
    y = b.conv(y, 3, C, bias=False, name="producer")
    y = b.op("Transpose", [y], perm=[0, 2, 3, 1])
    y = b.op("Add", [y, b.rand([C], "bias_add", 0.2)])
    y = b.relu(y)
    y = b.op("Mul", [y, b.rand([C], "scale", 1.0, positive=True)])
    for op, consts in extra or []:
        y = b.op(op, [y, *(b.const(c) for c in consts)])
    y = b.op("Transpose", [y], perm=[0, 3, 1, 2])
    y = b.conv(y, C, 2, k=1, name="consumer")
    return b.build([b.op("Transpose", [y], perm=[0, 2, 3, 1])])


def cast_weights(dtype: np.dtype, elem: int = TensorProto.FLOAT16) -> onnx.ModelProto:
    """Conv weights and bias stored in ``dtype``, each read through Cast(to=float)."""
    b = Builder(seed=6)
    x = b.input([1, 3, 6, 6])

    def low(shape, name):
        v = (b.rng.standard_normal(shape) * 0.3).astype(np.float32).astype(dtype)
        b.inits.append(numpy_helper.from_array(v, name))
        return b.op("Cast", [name], to=TensorProto.FLOAT, name=f"{name}_cast")

    y = b.op("Conv", [x, low([C, 3, 3, 3], "w1"), low([C], "b1")], pads=[1, 1, 1, 1], name="c1")
    y = b.op("Conv", [b.relu(y), low([2, C, 1, 1], "w2")], name="c2")
    return b.build([y])
