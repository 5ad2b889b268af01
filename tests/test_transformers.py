"""Whole transformer layers (issue #4): FFN neurons and attention heads pruned together.

An encoder layer (BERT-style: LayerNormalization, GELU FFN, multi-head attention with a mask,
head reshapes computed at run time from symbolic batch and sequence) and a decoder layer
(Llama-style: decomposed RMSNorm, rotary embeddings, causal mask, grouped-query attention with
``repeat_kv``, SiLU-gated MLP). Each is pruned at 0.3 neurons and 0.5 heads; the result must
check, keep its inputs and outputs, run in onnxruntime, and equal the original with the removed
neurons' and heads' outgoing weights zeroed (the exactness oracle).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.metrics.counts import count_macs
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.graphs import HEAD_FORMS, decoder_block, encoder_block
from onnxprune.testing.oracles import assert_exact, run


def _prune(model, ratio=0.3, heads=0.5):
    pruned, result = prune_structured(
        model, StructuredOptions(ratio=ratio, heads=heads, round_to=1)
    )
    assert_exact(model, pruned, result.plan, symbolic=4)
    return pruned, result


def _sizes(model):
    return {t.name: list(t.dims) for t in model.graph.initializer}


@pytest.mark.parametrize("form", HEAD_FORMS)
def test_encoder_layer(form):
    model = encoder_block(form, dim=16, heads=4, ffn=32)
    pruned, result = _prune(model)
    by_kind = {bool(g.heads): g for g in result.groups}
    assert (by_kind[True].heads, by_kind[True].heads_after) == (4, 2)
    assert (by_kind[False].channels_before, by_kind[False].channels_after) == (32, 23)
    w = _sizes(pruned)
    assert w["ffn.up.weight"] == [16, 23] and w["ffn.down.weight"] == [23, 16]
    assert w["attn.q.weight"] == [16, 8] and w["attn.o.weight"] == [8, 16]
    # the residual stream and its LayerNorms are untouched, each with a reason
    assert w["ln1.scale"] == w["ln2.scale"] == [16] and w["attn.o.bias"] == [16]
    stream = [b["reason"] for b in result.blocked]
    assert any("graph input" in r for r in stream)
    assert any("LayerNormalization" in r for r in stream)
    assert count_macs(pruned)[0] < count_macs(model)[0]


def test_decoder_layer_gqa():
    model = decoder_block(dim=32, heads=4, kv_heads=2, mlp=48, tokens=6)
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    assert sorted((g.slots, g.heads) for g in groups) == [(2, 4), (48, 0)]
    pruned, result = _prune(model)
    w = _sizes(pruned)
    assert w["attn.q.weight"] == [32, 16] and w["attn.k.weight"] == w["attn.v.weight"] == [32, 8]
    assert w["mlp.gate.weight"] == w["mlp.up.weight"] == [32, 34]
    assert w["mlp.down.weight"] == [34, 32]
    assert w["norm1.weight"] == w["norm2.weight"] == [32]  # RMSNorm reduces over the stream
    reasons = " ".join(b["reason"] for b in result.blocked)
    assert "ReduceMean reduces over the channel axis" in reasons and "graph input" in reasons


def test_decoder_heads_only_and_neurons_only():
    model = decoder_block(dim=32, heads=4, kv_heads=2, mlp=48, tokens=6)
    heads_only, _ = _prune(model, ratio=0.0, heads=0.5)
    assert _sizes(heads_only)["mlp.gate.weight"] == [32, 48]
    neurons_only, r2 = _prune(model, ratio=0.3, heads=None)
    assert _sizes(neurons_only)["attn.q.weight"] == [32, 32]
    assert [g.heads_after for g in r2.groups if g.heads] == [4]


def test_pruned_layers_run_at_other_sizes():
    """The head reshapes of a pruned encoder still follow batch and sequence."""
    model = encoder_block("runtime_minus1", dim=16, heads=4, ffn=32)
    pruned, _ = _prune(model)
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 1), (3, 7)):
        feeds = {
            "x": rng.standard_normal((batch, seq, 16)).astype(np.float32),
            "mask": rng.standard_normal((batch, 1, 1, seq)).astype(np.float32),
        }
        (out,) = run(pruned, feeds)
        assert out.shape == (batch, seq, 16)
    onnx.checker.check_model(pruned, full_check=True)


def test_pruning_adds_no_shape_annotations():
    """onnxruntime fuses transformer ops when every tensor is annotated, which made a pruned
    MiniLM slower on CPU: the rewrite refreshes the annotations a model has and adds none."""
    model = encoder_block("runtime_minus1", dim=16, heads=4, ffn=32)
    del model.graph.value_info[:]
    pruned, _ = _prune(model)
    assert len(pruned.graph.value_info) == 0
    annotated = onnx.shape_inference.infer_shapes(model)
    pruned, _ = _prune(annotated)
    names = {vi.name for vi in pruned.graph.value_info}
    assert names and names <= {vi.name for vi in annotated.graph.value_info}
    up = next(vi for vi in pruned.graph.value_info if vi.name.startswith("ffn.up"))
    assert up.type.tensor_type.shape.dim[-1].dim_value == 23  # refreshed to the cut width


def test_gqa_heads_stay_prunable_after_load_folds_the_static_shapes():
    """Loading folds repeat_kv's static shape arithmetic into one constant that only its
    Expand reads ([1, kv, rep, T, d]); the KV groups must stay prunable there (the constant
    is rewritten) rather than block as "Expand sets the channel count"."""
    from onnxprune import prune

    model = decoder_block(dim=32, heads=4, kv_heads=2, mlp=48, tokens=6)
    result = prune(model, heads=0.5, validate=False)
    assert any("folded" in n for n in result.report.notes)
    (g,) = [g for g in result.report.structured.plan.groups if g.heads]
    assert (g.slots, len(g.kept), g.heads_after) == (2, 1, 2)
    assert_exact(model, result.model, result.report.structured.plan, symbolic=4)
