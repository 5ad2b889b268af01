"""Tiny ONNX graphs built with ``onnx.helper``, reused by every structured-pruning test.

``Builder`` writes graphs the way exporters do (NCHW, constant weights as initializers,
random values from a seed); the functions below it are the named blocks the tests and the
property tests compose: ``conv_bn_relu``, ``residual_block``, ``se_block``, ...
Every builder returns a checked ``ModelProto`` whose outputs have inferred shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Builder:
    """Accumulates nodes and initializers; ``op`` returns the output name(s)."""

    def __init__(self, seed: int = 0, opset: int = OPSET) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def input(self, shape: Sequence[int | str], name: str = "x") -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(
        self, value: np.ndarray | Sequence, name: str | None = None, dtype: DTypeLike = None
    ) -> str:
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = name or self.name("c")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: Sequence[int], name: str | None = None) -> str:
        return self.const(np.asarray(values, dtype=np.int64), name)

    def rand(
        self,
        shape: Sequence[int],
        name: str | None = None,
        scale: float = 0.5,
        positive: bool = False,
        floor: float = 0.1,
    ) -> str:
        """Seeded normal values; ``positive``: |v| + ``floor`` (scales, variances)."""
        v = self.rng.standard_normal(shape).astype(np.float32) * scale
        return self.const(np.abs(v) + floor if positive else v, name)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        n_out: int = 1,
        name: str | None = None,
        **attrs: Any,
    ) -> str | list[str]:
        """Append a node; its output name, or the list of ``n_out`` names."""
        name = name or self.name(op_type.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    # ---- layers -------------------------------------------------------------------
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        group: int = 1,
        bias: bool = True,
        stride: int = 1,
        name: str | None = None,
    ) -> str:
        name = name or self.name("conv")
        w = self.rand([cout, cin // group, k, k], f"{name}.weight", (cin // group * k * k) ** -0.5)
        ins = [x, w] + ([self.rand([cout], f"{name}.bias", 0.1)] if bias else [])
        return self.op(
            "Conv",
            ins,
            name=name,
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            group=group,
            strides=[stride, stride],
        )

    def conv_t(
        self, x: str, cin: int, cout: int, k: int = 2, group: int = 1, name: str | None = None
    ) -> str:
        name = name or self.name("convt")
        w = self.rand([cin, cout // group, k, k], f"{name}.weight", (cin // group) ** -0.5)
        b = self.rand([cout], f"{name}.bias", 0.1)
        return self.op(
            "ConvTranspose", [x, w, b], name=name, kernel_shape=[k, k], strides=[2, 2], group=group
        )

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        name = name or self.name("bn")
        return self.op(
            "BatchNormalization",
            [
                x,
                self.rand([c], f"{name}.scale", 1.0, positive=True),
                self.rand([c], f"{name}.bias", 0.2),
                self.rand([c], f"{name}.mean", 0.2),
                self.rand([c], f"{name}.var", 0.5, positive=True, floor=0.5),
            ],
            name=name,
        )

    def gemm(self, x: str, k: int, n: int, trans_b: bool = True, name: str | None = None) -> str:
        name = name or self.name("fc")
        w = self.rand([n, k] if trans_b else [k, n], f"{name}.weight", k**-0.5)
        b = self.rand([n], f"{name}.bias", 0.1)
        return self.op("Gemm", [x, w, b], name=name, transB=int(trans_b))

    def matmul(self, x: str, k: int, n: int, bias: bool = True, name: str | None = None) -> str:
        name = name or self.name("mm")
        y = self.op("MatMul", [x, self.rand([k, n], f"{name}.weight", k**-0.5)], name=name)
        return self.op("Add", [y, self.rand([n], f"{name}.bias", 0.1)]) if bias else y

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def build(self, outputs: Sequence[str] | None = None, name: str = "tiny") -> onnx.ModelProto:
        outputs = list(outputs or self.outputs)
        graph = helper.make_graph(
            self.nodes,
            name,
            self.inputs,
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {vi.name: vi for vi in inferred.graph.output}
        del model.graph.output[:]
        model.graph.output.extend(known[o] for o in outputs)
        onnx.checker.check_model(model, full_check=True)
        return model


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


# ---- attention (issue #4) --------------------------------------------------------------
HEAD_FORMS = ("const", "zero", "minus1", "runtime", "runtime_minus1")
"""How exporters write the [B, S, H, D] target of a head split: constant numbers, ``0`` to
copy batch and sequence, ``-1`` for the head count, or a Concat of sizes read at run time
with the head count given (torch ``view(B, S, H, D)``) or inferred (``view(B, S, -1, D)``)."""


def size_of(b: Builder, x: str, axis: int) -> str:
    """``x.size(axis)`` as torch exports it: Shape -> Gather -> Unsqueeze (a 1-element tensor)."""
    n = b.op("Gather", [b.op("Shape", [x]), b.const(np.int64(axis))], axis=0)
    return b.op("Unsqueeze", [n, b.ints([0])])


def expand_sizes(b: Builder, sizes: Sequence[str]) -> str:
    """torch's ``expand`` sizes: Concat -> Reshape(-1) -> Where(Equal(s, -1), 1, s)."""
    s = b.op("Reshape", [b.op("Concat", list(sizes), axis=0), b.ints([-1])])
    ones = b.op(
        "ConstantOfShape",
        [b.op("Shape", [s])],
        value=helper.make_tensor("one", TensorProto.INT64, [1], [1]),
    )
    minus = b.op("Mul", [ones, b.const(np.int64(-1))])
    return b.op("Where", [b.op("Equal", [s, minus]), ones, s])


def _target(b: Builder, x: str, form: str, lead: Sequence[int], tail: Sequence[int]) -> str:
    """The Reshape target [*lead, *tail] in ``form``; the inferring forms write -1 for
    ``tail[0]`` (the head count, or the merged width)."""
    tail = list(tail)
    if form in ("minus1", "runtime_minus1"):
        tail[0] = -1
    if form == "const":
        return b.ints([*lead, *tail])
    if form in ("zero", "minus1"):
        return b.ints([0, 0, *tail])
    return b.op("Concat", [size_of(b, x, 0), size_of(b, x, 1), b.ints(tail)], axis=0)


def repeat_kv(b: Builder, t: str, rep: int) -> str:
    """Llama's ``repeat_kv`` as torch exports it: [B, Hkv, S, D] -> Unsqueeze(2) -> Expand to
    [B, Hkv, rep, S, D] (sizes read at run time) -> Reshape to [B, Hkv * rep, S, D], the head
    count computed as ``Shape(t)[1] * rep``."""
    u = b.op("Unsqueeze", [t, b.ints([2])])
    sizes = [size_of(b, t, 0), size_of(b, t, 1), b.ints([rep]), size_of(b, t, 2), size_of(b, t, 3)]
    e = b.op("Expand", [u, expand_sizes(b, sizes)])
    n = b.op("Gather", [b.op("Shape", [t]), b.const(np.int64(1))], axis=0)
    h = b.op("Unsqueeze", [b.op("Mul", [n, b.const(np.int64(rep))]), b.ints([0])])
    target = b.op("Concat", [size_of(b, t, 0), h, size_of(b, t, 2), size_of(b, t, 3)], axis=0)
    return b.op("Reshape", [e, target])


def attention(
    b: Builder,
    x: str,
    dim: int,
    heads: int,
    head_dim: int,
    form: str = "const",
    lead: Sequence[int] = (1, 5),
    kv_heads: int | None = None,
    mask: str | None = None,
    rope: tuple[str, str] | None = None,
    name: str = "attn",
) -> str:
    """Self-attention as torch exports Hugging Face code: Q/K/V MatMul + Add -> Reshape to
    [B, S, H, D] -> Transpose -> q @ k^T * scale (+ mask) -> Softmax -> @ v -> Transpose ->
    Reshape [B, S, H*D] -> output projection. ``kv_heads``: grouped-query attention with
    ``repeat_kv``; ``rope``: (cos, sin) [S, D] rotating q and k (rotate_half)."""
    kvh = kv_heads or heads
    q = b.matmul(x, dim, heads * head_dim, name=f"{name}.q")
    k = b.matmul(x, dim, kvh * head_dim, name=f"{name}.k")
    v = b.matmul(x, dim, kvh * head_dim, name=f"{name}.v")

    def split(t: str, h: int) -> str:
        r = b.op("Reshape", [t, _target(b, t, form, lead, [h, head_dim])])
        return b.op("Transpose", [r], perm=[0, 2, 1, 3])

    def rotate(t: str) -> str:
        half = head_dim // 2
        lo = b.op("Slice", [t, b.ints([0]), b.ints([half]), b.ints([3])])
        hi = b.op("Slice", [t, b.ints([half]), b.ints([head_dim]), b.ints([3])])
        rot = b.op("Concat", [b.op("Neg", [hi]), lo], axis=-1)
        return b.op("Add", [b.op("Mul", [t, rope[0]]), b.op("Mul", [rot, rope[1]])])

    qh, kh, vh = split(q, heads), split(k, kvh), split(v, kvh)
    if rope is not None:
        qh, kh = rotate(qh), rotate(kh)
    if kv_heads:
        kh, vh = repeat_kv(b, kh, heads // kvh), repeat_kv(b, vh, heads // kvh)
    s = b.op("MatMul", [qh, b.op("Transpose", [kh], perm=[0, 1, 3, 2])])
    s = b.op("Mul", [s, b.const(np.float32(head_dim**-0.5))])
    if mask is not None:
        s = b.op("Add", [s, mask])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-1), vh])
    o = b.op("Transpose", [o], perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, _target(b, o, form, lead, [heads * head_dim])], name=f"{name}.merge")
    return b.matmul(o, heads * head_dim, dim, name=f"{name}.o")


def mha_block(
    form: str = "const", heads: int = 4, head_dim: int = 4, tokens: int = 5, seed: int = 0,
    mask: bool = False,
) -> onnx.ModelProto:  # fmt: skip
    """Multi-head self-attention alone; symbolic batch and sequence unless ``form`` is
    ``const``. ``mask``: an additive [B, 1, 1, S] attention-mask input, broadcast over heads."""
    b = Builder(seed)
    dim = heads * head_dim
    lead = ["batch", "seq"] if form != "const" else [1, tokens]
    x = b.input([*lead, dim])
    m = b.input([lead[0], 1, 1, lead[1]], name="mask") if mask else None
    return b.build([attention(b, x, dim, heads, head_dim, form, (1, tokens), mask=m)])


def layer_norm(b: Builder, x: str, dim: int, name: str) -> str:
    scale, bias = b.rand([dim], f"{name}.scale", 1.0, positive=True), b.rand([dim], f"{name}.bias")
    return b.op("LayerNormalization", [x, scale, bias], axis=-1, name=name)


def rms_norm(b: Builder, x: str, dim: int, name: str) -> str:
    """Llama's RMSNorm decomposed: x / sqrt(mean(x^2) + eps) * weight."""
    ms = b.op("ReduceMean", [b.op("Pow", [x, b.const(np.float32(2.0))])], axes=[-1])
    rms = b.op("Sqrt", [b.op("Add", [ms, b.const(np.float32(1e-6))])])
    r = b.op("Div", [b.const(np.float32(1.0)), rms])
    return b.op("Mul", [b.rand([dim], f"{name}.weight", 1.0, positive=True), b.op("Mul", [x, r])], name=name)  # fmt: skip


def gelu_erf(b: Builder, h: str) -> str:
    inner = b.op("Erf", [b.op("Div", [h, b.const(np.float32(np.sqrt(2.0)))])])
    return b.op("Mul", [b.op("Mul", [h, b.op("Add", [inner, b.const(np.float32(1.0))])]), b.const(np.float32(0.5))])  # fmt: skip


def encoder_block(
    form: str = "runtime", dim: int = 16, heads: int = 4, ffn: int = 32, tokens: int = 5,
    seed: int = 0,
) -> onnx.ModelProto:  # fmt: skip
    """One BERT-style (post-LN) encoder layer: LN(x + MHA(x)) -> LN(h + FFN(h)), GELU (erf),
    LayerNormalization ops, an additive attention mask; symbolic batch and sequence unless
    ``form`` is ``const``."""
    b = Builder(seed)
    lead = ["batch", "seq"] if form != "const" else [1, tokens]
    x = b.input([*lead, dim])
    mask = b.input([lead[0], 1, 1, lead[1]], name="mask")
    a = attention(b, x, dim, heads, dim // heads, form, (1, tokens), mask=mask)
    h = layer_norm(b, b.op("Add", [a, x]), dim, "ln1")
    f = b.matmul(gelu_erf(b, b.matmul(h, dim, ffn, name="ffn.up")), ffn, dim, name="ffn.down")
    return b.build([layer_norm(b, b.op("Add", [f, h]), dim, "ln2")])


def decoder_block(
    dim: int = 32, heads: int = 4, kv_heads: int = 2, mlp: int = 48, tokens: int = 6,
    seed: int = 0,
) -> onnx.ModelProto:  # fmt: skip
    """One Llama-style decoder layer: x + GQA(RMSNorm(x)) with rotary embeddings, a causal
    mask and ``repeat_kv``; then h + down(silu(gate(n)) * up(n)) with n = RMSNorm(h)."""
    b = Builder(seed)
    head_dim = dim // heads
    x = b.input([1, tokens, dim])
    pos = np.arange(tokens)[:, None] / 10000 ** (np.arange(0, head_dim, 2) / head_dim)
    ang = np.concatenate([pos, pos], axis=1)
    rope = (b.const(np.cos(ang), "rope.cos"), b.const(np.sin(ang), "rope.sin"))
    causal = b.const(np.triu(np.full((tokens, tokens), -1e4), 1)[None, None], "causal")
    a = attention(
        b, rms_norm(b, x, dim, "norm1"), dim, heads, head_dim, "runtime_minus1", (1, tokens),
        kv_heads=kv_heads, mask=causal, rope=rope,
    )  # fmt: skip
    h = b.op("Add", [x, a])
    n = rms_norm(b, h, dim, "norm2")
    gate = b.matmul(n, dim, mlp, bias=False, name="mlp.gate")
    up = b.matmul(n, dim, mlp, bias=False, name="mlp.up")
    act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
    return b.build([b.op("Add", [h, b.matmul(act, mlp, dim, bias=False, name="mlp.down")])])


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
