"""Named convolutional and MLP blocks (``conv_bn_relu``, ``residual_block``, ``se_block``,
``chain``, ...), the recovery tests' MLPs and the command line's ``small_cnn``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.testing.graphs.builder import OPSET, Builder


# ---- named blocks ---------------------------------------------------------------------
def conv_bn_relu(
    c_in: int = 3, c_mid: int = 16, c_out: int = 8, hw: int = 8, seed: int = 0
) -> onnx.ModelProto:
    """conv-bn-relu -> conv: the first conv's filters are one prunable group."""
    b = Builder(seed)
    x = b.input([1, c_in, hw, hw])
    y = b.relu(b.bn(b.conv(x, c_in, c_mid, name="conv1"), c_mid, name="bn1"))
    return b.build([b.conv(y, c_mid, c_out, name="conv2")])


def residual_block(
    c: int = 16, hw: int = 8, seed: int = 0, downsample: bool = True
) -> onnx.ModelProto:
    """stem -> (conv-bn-relu-conv-bn) + shortcut -> relu -> head conv."""
    b = Builder(seed)
    x = b.input([1, 3, hw, hw])
    stem = b.relu(b.bn(b.conv(x, 3, c, name="stem"), c))
    y = b.relu(b.bn(b.conv(stem, c, c, name="c1"), c))
    y = b.bn(b.conv(y, c, 2 * c if downsample else c, name="c2"), 2 * c if downsample else c)
    short = b.bn(b.conv(stem, c, 2 * c, k=1, name="down"), 2 * c) if downsample else stem
    out = b.relu(b.op("Add", [y, short]))
    return b.build([b.conv(out, 2 * c if downsample else c, 4, name="head")])


def se_block(
    c: int = 16, squeeze: int = 8, hw: int = 8, seed: int = 0, gate: str = "Sigmoid"
) -> onnx.ModelProto:
    """Squeeze-and-excitation: GAP -> conv -> relu -> conv -> sigmoid, times the input."""
    b = Builder(seed)
    x = b.input([1, 3, hw, hw])
    f = b.relu(b.conv(x, 3, c, name="feat"))
    s = b.op("GlobalAveragePool", [f])
    s = b.relu(b.conv(s, c, squeeze, k=1, name="se_reduce"))
    s = b.op(gate, [b.conv(s, squeeze, c, k=1, name="se_expand")])
    y = b.op("Mul", [f, s])
    return b.build([b.conv(y, c, 4, name="head")])


def concat_block(hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Two producers concatenated on channels, then one consumer (inception / dense style)."""
    b = Builder(seed)
    x = b.input([1, 3, hw, hw])
    a = b.relu(b.conv(x, 3, 8, name="branch_a"))
    c = b.relu(b.conv(x, 3, 12, k=1, name="branch_b"))
    cat = b.op("Concat", [a, c], axis=1)
    y = b.relu(b.bn(cat, 20, name="bn_cat"))
    return b.build([b.conv(y, 20, 4, name="head")])


def split_block(
    hw: int = 8, seed: int = 0, opset: int = OPSET, use_slice: bool = False
) -> onnx.ModelProto:
    """C2f-style: conv -> split in two -> one half through a bottleneck -> concat all."""
    b = Builder(seed, opset)
    x = b.input([1, 3, hw, hw])
    y = b.op("Sigmoid", [b.conv(x, 3, 16, k=1, name="cv1")])
    if use_slice:
        y0 = b.op("Slice", [y, b.ints([0]), b.ints([6]), b.ints([1])])
        y1 = b.op("Slice", [y, b.ints([6]), b.ints([16]), b.ints([1])])
        sizes = (6, 10)
    elif opset >= 13:
        y0, y1 = b.op("Split", [y, b.ints([6, 10])], n_out=2, axis=1)
        sizes = (6, 10)
    else:
        y0, y1 = b.op("Split", [y], n_out=2, axis=1, split=[8, 8])
        sizes = (8, 8)
    m = b.relu(b.conv(y1, sizes[1], 8, name="m1"))
    m = b.conv(m, 8, sizes[1], name="m2")
    m = b.op("Add", [m, y1])
    cat = b.op("Concat", [y0, y1, m], axis=1)
    return b.build([b.conv(cat, sizes[0] + 2 * sizes[1], 4, k=1, name="cv2")])


def depthwise_block(hw: int = 8, seed: int = 0, multiplier: int = 1) -> onnx.ModelProto:
    """MobileNet-style: expand -> depthwise -> project."""
    b = Builder(seed)
    x = b.input([1, 3, hw, hw])
    e = (
        b.op("Clip", [b.bn(b.conv(x, 3, 16, k=1, name="expand"), 16)], min=0.0, max=6.0)
        if b.opset < 11
        else b.op(
            "Clip",
            [
                b.bn(b.conv(x, 3, 16, k=1, name="expand"), 16),
                b.const(np.float32(0)),
                b.const(np.float32(6)),
            ],
        )
    )
    d = b.relu(b.bn(b.conv(e, 16, 16 * multiplier, group=16, name="dw"), 16 * multiplier))
    return b.build([b.conv(d, 16 * multiplier, 4, k=1, name="project")])


def grouped_block(hw: int = 8, seed: int = 0, groups: int = 4) -> onnx.ModelProto:
    """ResNeXt-style: 1x1 -> grouped 3x3 -> 1x1."""
    b = Builder(seed)
    x = b.input([1, 3, hw, hw])
    a = b.relu(b.conv(x, 3, 16, k=1, name="reduce"))
    g = b.relu(b.bn(b.conv(a, 16, 16, group=groups, name="grouped"), 16))
    return b.build([b.conv(g, 16, 4, k=1, name="expand")])


def flatten_gemm(hw: int = 4, seed: int = 0, reshape: str | None = None) -> onnx.ModelProto:
    """conv -> (Flatten | Reshape) -> Gemm: channel c owns rows c*HW..(c+1)*HW."""
    b = Builder(seed)
    x = b.input([1, 3, hw, hw])
    f = b.relu(b.conv(x, 3, 8, name="conv"))
    if reshape is None:
        flat = b.op("Flatten", [f], axis=1)
    elif reshape == "const":
        flat = b.op("Reshape", [f, b.ints([1, 8 * hw * hw])])
    elif reshape == "minus1":
        flat = b.op("Reshape", [f, b.ints([1, -1])])
    else:  # computed like torch's x.view(x.size(0), -1)
        shape = b.op("Shape", [f])
        n = b.op("Unsqueeze", [b.op("Gather", [shape, b.const(np.int64(0))], axis=0), b.ints([0])])
        flat = b.op("Reshape", [f, b.op("Concat", [n, b.ints([-1])], axis=0)])
    h = b.relu(b.gemm(flat, 8 * hw * hw, 6, name="fc1"))
    return b.build([b.gemm(h, 6, 3, name="fc2")])


def mlp_block(seed: int = 0, tokens: int = 5, dim: int = 8, hidden: int = 16) -> onnx.ModelProto:
    """Transformer-style MLP on [N, T, D]: MatMul+Add -> GELU(erf) -> MatMul+Add."""
    b = Builder(seed)
    x = b.input([1, tokens, dim])
    h = b.matmul(x, dim, hidden, name="fc1")
    g = b.op(
        "Mul",
        [
            b.op(
                "Mul",
                [
                    h,
                    b.op(
                        "Add",
                        [
                            b.op("Erf", [b.op("Div", [h, b.const(np.float32(1.4142135))])]),
                            b.const(np.float32(1.0)),
                        ],
                    ),
                ],
            ),
            b.const(np.float32(0.5)),
        ],
    )
    return b.build([b.matmul(g, hidden, dim, name="fc2")])


def unet_block(hw: int = 8, seed: int = 0) -> onnx.ModelProto:
    """Encoder conv -> pool -> conv -> ConvTranspose up -> concat with the skip -> conv."""
    b = Builder(seed)
    x = b.input([1, 3, hw, hw])
    e1 = b.relu(b.conv(x, 3, 8, name="enc1"))
    p = b.op("MaxPool", [e1], kernel_shape=[2, 2], strides=[2, 2])
    e2 = b.relu(b.conv(p, 8, 16, name="enc2"))
    up = b.conv_t(e2, 16, 8, name="up")
    cat = b.op("Concat", [up, e1], axis=1)
    d = b.relu(b.conv(cat, 16, 8, name="dec"))
    return b.build([b.conv(d, 8, 2, k=1, name="out")])


def chain(
    ops: Sequence[tuple[str, dict]],
    hw: int = 8,
    seed: int = 0,
    c: int = 8,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """conv -> each op in ``ops`` -> 1x1 conv. ``attrs["_inputs"]`` lists extra inputs:
    arrays become constants, strings are tensor names ("" for an absent optional input)."""
    b = Builder(seed, opset)
    x = b.input([1, 3, hw, hw])
    y = b.conv(x, 3, c, name="producer")
    for op, attrs in ops:
        attrs = dict(attrs)
        ins = [y] + [b.const(v) if not isinstance(v, str) else v for v in attrs.pop("_inputs", [])]
        y = b.op(op, ins, **attrs)
    return b.build([b.conv(y, c, 4, k=1, name="consumer")])


# ---- recovery (issue #5) ----------------------------------------------------------------
def dynamic_batch(model: onnx.ModelProto, name: str = "N") -> onnx.ModelProto:
    """A copy whose inputs and outputs take any batch (first dimension ``name``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = name
    del out.graph.value_info[:]
    onnx.checker.check_model(out, full_check=True)
    return out


def gemm_mlp(
    dims: Sequence[int] = (16, 32, 24, 8), seed: int = 0, trans_b: bool = True
) -> onnx.ModelProto:
    """LeNet-style MLP on [N, D]: (Gemm -> Relu) * k -> Gemm, dynamic batch."""
    b = Builder(seed)
    y = b.input(["N", dims[0]])
    for k in range(len(dims) - 1):
        y = b.gemm(y, dims[k], dims[k + 1], trans_b=trans_b, name=f"fc{k + 1}")
        if k < len(dims) - 2:
            y = b.relu(y)
    return b.build([y])


# ---- the command line's and the API's test model -------------------------------------------
def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->16)+Relu -> Conv(16->16) -> GlobalAveragePool -> Flatten -> Gemm(16->10)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), "c1.w"),
        numpy_helper.from_array(rng.normal(size=(16,)).astype(np.float32), "c1.b"),
        numpy_helper.from_array(rng.normal(size=(16, 16, 3, 3)).astype(np.float32), "c2.w"),
        numpy_helper.from_array(rng.normal(size=(10, 16)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(size=(10,)).astype(np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["a"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "c2.w"], ["b"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["b"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mixed_cnn(seed: int = 3) -> onnx.ModelProto:
    """Conv+BN+Relu, Conv+Relu, pooling, MatMul+Add+Relu, Gemm: every kind of weighted layer
    and a BatchNorm in one small graph (the fuzz and load-check tests mutate it)."""
    b = Builder(seed=seed)
    x = b.input([1, 3, 8, 8])
    h = b.relu(b.bn(b.conv(x, 3, 8), 8))
    h = b.relu(b.conv(h, 8, 8))
    h = b.op("GlobalAveragePool", [h])
    h = b.op("Flatten", [h], axis=1)
    h = b.relu(b.matmul(h, 8, 16))
    return b.build([b.gemm(h, 16, 4)])
