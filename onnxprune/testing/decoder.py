"""Llama-style decoders (and big MLPs) with random weights, written straight to external data.

Why: the models people most want smaller are multi-gigabyte decoders exported with external
data, and onnxprune's memory bound (peak resident memory about the weight bytes) can only be
checked on one. torch cannot make a 2B-parameter model on a 23 GB machine and keep it in
memory while exporting; this writer never holds more than one tensor: each weight is drawn,
appended to the data file (64 KiB aligned, so onnxruntime can memory-map it) and dropped.

The graph is written the way torch's exporter writes Hugging Face Llama: token embedding
(``Gather``), RMSNorm as primitive ops, rotary embeddings (cos/sin tables gathered at the
positions, ``rotate_half`` as Slice/Neg/Concat on the head dim), grouped-query attention with
``repeat_kv`` (Unsqueeze/Expand/Reshape, sizes read at run time), a causal mask built from the
positions, a SiLU-gated MLP (gate/up/down MatMuls), a final norm and an untied LM head. Inputs:
``input_ids`` int64 ``[batch, seq]``; output: ``logits`` ``[batch, seq, vocab]``.

``write_decoder(path, DecoderConfig(...))`` writes ``path`` and ``path + '.data'``;
``PRESETS`` holds the sizes the benchmarks use (tiny, 0.5B, 1B, 2B);
``write_mlp(path, width, layers)`` writes the plain MLP of the memory benchmark.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.testing.graphs.builder import Builder
from onnxprune.testing.graphs.transformer import repeat_kv, rms_norm, size_of

__all__ = ["PRESETS", "DecoderConfig", "ExternalBuilder", "write_decoder", "write_mlp"]

_ALIGN = 64 * 1024
_INLINE_MAX = 1024  # bytes: smaller tensors stay in the .onnx file, as onnx.save does


class ExternalBuilder(Builder):
    """A ``Builder`` whose tensors of 1 KiB or more go straight to one data file.

    The data file is opened on creation and every big constant is appended as soon as it is
    made, so memory holds one tensor at a time. Call ``save`` to write the ``.onnx`` file.
    """

    def __init__(self, path: str | os.PathLike, seed: int = 0, opset: int = 17) -> None:
        super().__init__(seed, opset)
        self.path = Path(path)
        self.location = self.path.name + ".data"
        self._fh = open(self.path.with_name(self.location), "wb")  # noqa: SIM115 - save() closes
        self._offset = 0
        self.weight_bytes = 0
        self.params = 0

    def const(self, value, name: str | None = None, dtype=None) -> str:
        """An initializer; big ones are written to the data file at once."""
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = name or self.name("c")
        if arr.nbytes < _INLINE_MAX:
            self.inits.append(numpy_helper.from_array(arr, name))
            return name
        pad = -self._offset % _ALIGN
        if pad:
            self._fh.write(b"\0" * pad)
            self._offset += pad
        data = np.ascontiguousarray(arr).tobytes()
        self._fh.write(data)
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype))
        tensor.dims.extend(arr.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, v in (
            ("location", self.location),
            ("offset", self._offset),
            ("length", len(data)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(v)
        self._offset += len(data)
        self.weight_bytes += len(data)
        self.params += arr.size
        self.inits.append(tensor)
        return name

    def rand(self, shape, name=None, scale=0.5, positive=False, floor=0.1) -> str:
        """Seeded normal values drawn in float32 directly (half the memory of float64)."""
        v = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        v *= scale
        if positive:
            np.abs(v, out=v)
            v += floor
        return self.const(v, name)

    def save(self, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto],
             name: str = "decoder") -> Path:  # fmt: skip
        """Close the data file and write the graph (no weight bytes) to ``self.path``."""
        self._fh.close()
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        self.path.write_bytes(model.SerializeToString())
        return self.path


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of a Llama-style decoder; ``hidden`` must be ``heads * head_dim``."""

    layers: int = 2
    hidden: int = 64
    heads: int = 8
    kv_heads: int = 4
    ffn: int = 96
    vocab: int = 128
    max_positions: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            self.hidden % self.heads
            or self.heads % self.kv_heads
            or (self.hidden // self.heads) % 2
        ):
            raise ValueError("hidden must split into heads of even size, heads into kv groups")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        """Parameters (weights of every layer, norms, embedding and LM head)."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        layer = 2 * h * h + 2 * h * kv + 3 * h * self.ffn + 2 * h
        return self.layers * layer + 2 * self.vocab * h + h


PRESETS: dict[str, DecoderConfig] = {
    "tiny": DecoderConfig(),
    "0.5B": DecoderConfig(layers=24, hidden=1024, heads=16, kv_heads=4, ffn=5632, vocab=32000),
    "1B": DecoderConfig(layers=20, hidden=2048, heads=32, kv_heads=8, ffn=5632, vocab=32000),
    "2B": DecoderConfig(layers=42, hidden=2048, heads=32, kv_heads=8, ffn=5632, vocab=32000),
}
"""Benchmark sizes (0.5B: 0.54e9 parameters, 1B: 1.03e9, 2B: 2.03e9 = 8.1 GB in fp32)."""


def _attention(b: ExternalBuilder, x: str, cfg: DecoderConfig, rope: tuple[str, str],
               mask: str, name: str) -> str:  # fmt: skip
    """GQA self-attention as torch exports Llama (no biases, ``view(B, S, -1, D)``)."""
    h, d, kvh = cfg.hidden, cfg.head_dim, cfg.kv_heads
    q = b.matmul(x, h, cfg.heads * d, bias=False, name=f"{name}.q_proj")
    k = b.matmul(x, h, kvh * d, bias=False, name=f"{name}.k_proj")
    v = b.matmul(x, h, kvh * d, bias=False, name=f"{name}.v_proj")

    def split(t: str) -> str:
        target = b.op("Concat", [size_of(b, t, 0), size_of(b, t, 1), b.ints([-1, d])], axis=0)
        return b.op("Transpose", [b.op("Reshape", [t, target])], perm=[0, 2, 1, 3])

    def rotate(t: str) -> str:
        lo = b.op("Slice", [t, b.ints([0]), b.ints([d // 2]), b.ints([3])])
        hi = b.op("Slice", [t, b.ints([d // 2]), b.ints([d]), b.ints([3])])
        rot = b.op("Concat", [b.op("Neg", [hi]), lo], axis=-1)
        return b.op("Add", [b.op("Mul", [t, rope[0]]), b.op("Mul", [rot, rope[1]])])

    qh, kh, vh = rotate(split(q)), rotate(split(k)), split(v)
    rep = cfg.heads // kvh
    if rep > 1:
        kh, vh = repeat_kv(b, kh, rep), repeat_kv(b, vh, rep)
    s = b.op("MatMul", [qh, b.op("Transpose", [kh], perm=[0, 1, 3, 2])])
    s = b.op("Add", [b.op("Mul", [s, b.const(np.float32(d**-0.5))]), mask])
    o = b.op("MatMul", [b.op("Softmax", [s], axis=-1), vh])
    o = b.op("Transpose", [o], perm=[0, 2, 1, 3])
    merged = b.op("Concat", [size_of(b, o, 0), size_of(b, o, 1), b.ints([-1])], axis=0)
    o = b.op("Reshape", [o, merged], name=f"{name}.merge")
    return b.matmul(o, cfg.heads * d, h, bias=False, name=f"{name}.o_proj")


def _positions(b: ExternalBuilder, cfg: DecoderConfig) -> tuple[tuple[str, str], str]:
    """(cos, sin) gathered at the ``position_ids`` input and the additive causal mask
    [B, 1, S, S] compared from them (as Hugging Face builds it from cache positions)."""
    d = cfg.head_dim
    pos = np.arange(cfg.max_positions)[:, None] / 10000 ** (np.arange(0, d, 2) / d)
    ang = np.concatenate([pos, pos], axis=1)
    pos = "position_ids"
    cos = b.op("Gather", [b.const(np.cos(ang), "rope.cos_cached"), pos], axis=0)
    sin = b.op("Gather", [b.const(np.sin(ang), "rope.sin_cached"), pos], axis=0)
    cos, sin = (b.op("Unsqueeze", [t, b.ints([1])]) for t in (cos, sin))  # [B, 1, S, D]
    # key j is hidden from query i when it comes later: [B, 1, S] > [B, S, 1] -> [B, S, S]
    later = b.op(
        "Greater", [b.op("Unsqueeze", [pos, b.ints([1])]), b.op("Unsqueeze", [pos, b.ints([2])])]
    )
    mask = b.op("Where", [later, b.const(np.float32(-1e4)), b.const(np.float32(0.0))])
    mask = b.op("Unsqueeze", [mask, b.ints([1])])  # [B, 1, S, S]
    return (cos, sin), mask


def write_decoder(path: str | os.PathLike, cfg: DecoderConfig = PRESETS["tiny"]) -> Path:
    """Write a random-weight Llama-style decoder to ``path`` (+ ``.data``); one tensor in
    memory at a time. Returns ``path``."""
    b = ExternalBuilder(path, cfg.seed)
    h = cfg.hidden
    ids = "input_ids"
    embed = b.rand([cfg.vocab, h], "model.embed_tokens.weight", 1.0)
    x = b.op("Gather", [embed, ids], axis=0, name="embed")
    rope, mask = _positions(b, cfg)
    for i in range(cfg.layers):
        pre = f"model.layers.{i}"
        a = _attention(b, rms_norm(b, x, h, f"{pre}.input_layernorm"), cfg, rope, mask,
                       f"{pre}.self_attn")  # fmt: skip
        x = b.op("Add", [x, a])
        n = rms_norm(b, x, h, f"{pre}.post_attention_layernorm")
        gate = b.matmul(n, h, cfg.ffn, bias=False, name=f"{pre}.mlp.gate_proj")
        up = b.matmul(n, h, cfg.ffn, bias=False, name=f"{pre}.mlp.up_proj")
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
        x = b.op("Add", [x, b.matmul(act, cfg.ffn, h, bias=False, name=f"{pre}.mlp.down_proj")])
    x = rms_norm(b, x, h, "model.norm")
    b.matmul(x, h, cfg.vocab, bias=False, name="lm_head")
    b.nodes[-1].output[0] = "logits"
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in (ids, "position_ids")
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab])
    ]
    return b.save(inputs, outputs, "llama")


def write_mlp(path: str | os.PathLike, width: int = 10000, layers: int = 6, seed: int = 0) -> Path:
    """An MLP of ``layers`` Gemm + Relu of ``width`` x ``width`` (6 x 10000: 2.4 GB), written
    to external data one weight at a time; input ``x`` ``[batch, width]``."""
    b = ExternalBuilder(path, seed)
    x = "x"
    for i in range(layers):
        x = b.gemm(x, width, width, name=f"fc{i}")
        if i < layers - 1:
            x = b.relu(x)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])]
    b.nodes[-1].output[0] = "y"
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])]
    return b.save(inputs, outputs, "mlp")
