"""Fused transformer ops (onnxprune.ops.fused): com.microsoft Attention, MultiHeadAttention,
SkipLayerNormalization, Gelu, FastGelu, BiasGelu, and ONNX's Attention (opset 23).

Each graph is what onnxruntime's transformer optimizer writes (no value_info after the fused
nodes: ``onnxprune.graph.contrib_shapes`` supplies their shapes); each is pruned and checked
by the exactness oracle in onnxruntime (CPU) at batch 1 and 2, or must block with its reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.oracles import assert_exact

MS = "com.microsoft"
D, H, S = 8, 4, 5


class G:
    """A tiny graph: nodes, seeded initializers, input ``x`` [batch, S, D], output ``y``."""

    def __init__(self, opset: int = 17) -> None:
        self.rng = np.random.default_rng(0)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset

    def w(self, name: str, shape: list[int], scale: float = 0.4) -> str:
        v = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(v, name))
        return name

    def op(self, op: str, ins: list[str], out: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, ins, [out], name=out, domain=domain, **attrs))
        return out

    def build(self, y: str, width: int = 3) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", S, D])
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", S, width])
        graph = helper.make_graph(self.nodes, "fused", [x], [out], self.inits)
        opsets = [helper.make_opsetid("", self.opset), helper.make_opsetid(MS, 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 10 if self.opset >= 23 else 8
        return model


def bert_layer(gelu: str = "FastGelu", **attn) -> onnx.ModelProto:
    """Attention (packed weight) -> MatMul -> SkipLayerNormalization -> MatMul -> a GELU ->
    MatMul: one optimized BERT layer."""
    g = G()
    a = g.op("Attention", ["x", g.w("qkv", [D, 3 * D]), g.w("qkv_b", [3 * D])], "a", MS,
             num_heads=H, **attn)  # fmt: skip
    o = g.op("MatMul", [a, g.w("wo", [D, D])], "o")
    ln = g.op("SkipLayerNormalization", [o, "x", g.w("gamma", [D]), g.w("beta", [D]),
              g.w("bo", [D])], "ln", MS, epsilon=1e-5)  # fmt: skip
    h = g.op("MatMul", [ln, g.w("w1", [D, 16])], "h")
    if gelu == "FastGelu":
        h = g.op("FastGelu", [h, g.w("b1", [16])], "hg", MS)
    elif gelu == "BiasGelu":
        h = g.op("BiasGelu", [h, g.w("b1", [16])], "hg", MS)
    else:
        h = g.op("Gelu", [h], "hg", MS)
    return g.build(g.op("MatMul", [h, g.w("w2", [16, 3])], "y"))


def separate_qkv(op: str = "MultiHeadAttention", **attrs) -> onnx.ModelProto:
    """Q, K, V projected by three MatMuls into MultiHeadAttention (with a packed bias) or
    ONNX's Attention (opset 23, 3-D inputs)."""
    g = G(opset=23 if op == "Attention" else 17)
    q, k, v = (g.op("MatMul", ["x", g.w(f"w{c}", [D, D])], c) for c in "qkv")
    if op == "Attention":
        attrs = {"q_num_heads": H, "kv_num_heads": H, **attrs}
        a = g.op("Attention", [q, k, v], "a", **attrs)
    else:
        a = g.op("MultiHeadAttention", [q, k, v, g.w("bias", [3 * D])], "a", MS, num_heads=H)
    return g.build(g.op("MatMul", [a, g.w("wo", [D, 3])], "y"))


def _prune(model: onnx.ModelProto, ratio: float = 0.0, heads: float = 0.5):
    pruned, result = prune_structured(model, StructuredOptions(ratio=ratio, heads=heads, round_to=1))
    assert not result.plan.empty, result.blocked
    for batch in (1, 2):
        assert_exact(model, pruned, result.plan, symbolic=batch)
    return pruned, result


def _dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def _attr(model: onnx.ModelProto, op: str, name: str) -> int:
    node = next(n for n in model.graph.node if n.op_type == op)
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


@pytest.mark.parametrize("gelu", ["FastGelu", "BiasGelu", "Gelu"])
def test_fused_attention_loses_heads_and_the_gelu_passes_neurons(gelu: str) -> None:
    model = bert_layer(gelu)
    (g,) = [g for g in analyze(model) if g.heads]
    assert (g.heads, g.slots, g.blocked_reason) == (H, H, None)
    pruned, _ = _prune(model, ratio=0.5)
    w = _dims(pruned)
    assert w["qkv"] == [D, 12] and w["qkv_b"] == [12] and w["wo"] == [4, D]
    assert w["w1"] == [D, 8] and w["w2"] == [8, 3]
    if gelu != "Gelu":
        assert w["b1"] == [8]
    assert _attr(pruned, "Attention", "num_heads") == 2


def test_packed_columns_are_whole_heads_in_each_third() -> None:
    _, result = _prune(bert_layer())
    (cut,) = [c for c in result.plan.params if c.name == "qkv"]
    thirds = np.asarray(cut.kept).reshape(3, -1)
    assert (thirds[1] - thirds[0] == D).all() and (thirds[2] - thirds[0] == 2 * D).all()
    assert (thirds[0].reshape(-1, 2)[:, 0] % 2 == 0).all()


def test_skip_layer_norm_blocks_the_stream() -> None:
    """SkipLayerNormalization normalizes the residual stream: its channels stay."""
    (g,) = [g for g in analyze(bert_layer()) if g.id == "o"]
    assert "SkipLayerNormalization normalizes over the channel axis" in g.blocked_reason


def test_multi_head_attention_slices_its_packed_bias() -> None:
    model = separate_qkv()
    (g,) = [g for g in analyze(model) if g.heads]
    assert (g.heads, g.blocked_reason) == (H, None)
    pruned, _ = _prune(model)
    w = _dims(pruned)
    assert w["wq"] == w["wk"] == w["wv"] == [D, 4] and w["bias"] == [12] and w["wo"] == [4, 3]
    assert _attr(pruned, "MultiHeadAttention", "num_heads") == 2


def test_onnx_attention_rewrites_both_head_counts() -> None:
    model = separate_qkv("Attention")
    pruned, _ = _prune(model)
    assert _attr(pruned, "Attention", "q_num_heads") == 2
    assert _attr(pruned, "Attention", "kv_num_heads") == 2


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (lambda: bert_layer(qkv_hidden_sizes=[8, 8, 8], do_rotary=1), "do_rotary is not followed"),
        (lambda: bert_layer(qkv_hidden_sizes=[4, 4, 16]), "unequal Q/K/V widths"),
        (lambda: separate_qkv("Attention", kv_num_heads=2), "grouped query heads"),
    ],
)
def test_unsupported_fused_attention_blocks_with_its_reason(model, reason: str) -> None:
    groups = analyze(model())
    blocked = [g.blocked_reason or "" for g in groups]
    assert any(reason in r for r in blocked), blocked
    assert not [g for g in groups if g.heads and g.blocked_reason is None]
