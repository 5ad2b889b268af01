"""Attention graphs as exporters write them: head split and merge in every target form
(``HEAD_FORMS``), grouped key/value heads, rotary embeddings, encoder and decoder blocks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.testing.graphs.builder import Builder

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
    """LayerNormalization over the last axis, with scale and bias."""
    scale, bias = b.rand([dim], f"{name}.scale", 1.0, positive=True), b.rand([dim], f"{name}.bias")
    return b.op("LayerNormalization", [x, scale, bias], axis=-1, name=name)


def rms_norm(b: Builder, x: str, dim: int, name: str) -> str:
    """Llama's RMSNorm decomposed: x / sqrt(mean(x^2) + eps) * weight."""
    ms = b.op("ReduceMean", [b.op("Pow", [x, b.const(np.float32(2.0))])], axes=[-1])
    rms = b.op("Sqrt", [b.op("Add", [ms, b.const(np.float32(1e-6))])])
    r = b.op("Div", [b.const(np.float32(1.0)), rms])
    return b.op("Mul", [b.rand([dim], f"{name}.weight", 1.0, positive=True), b.op("Mul", [x, r])], name=name)  # fmt: skip


def gelu_erf(b: Builder, h: str) -> str:
    """GELU as exporters decompose it: x * (erf(x / sqrt 2) + 1) * 0.5."""
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
