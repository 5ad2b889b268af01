"""MLP neurons (issue #4): hidden units of dense chains behind the usual activations.

Each graph is built with ``onnx.helper``; the exactness oracle checks that removing neurons
equals zeroing their outgoing weights in the original model.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.structured.dependency import analyze
from onnxprune.structured.importance import CRITERIA, score_groups
from onnxprune.testing.graphs import Builder
from onnxprune.testing.oracles import assert_planted_dead, prune_exact

D, H = 8, 16


def _prunable(model):
    return [g for g in analyze(model) if g.blocked_reason is None]


def _dims(model):
    return {t.name: list(t.dims) for t in model.graph.initializer}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bias_relu_gemm(trans_b):
    b = Builder()
    x = b.input([3, D])
    h = b.relu(b.gemm(x, D, H, trans_b=bool(trans_b), name="fc1"))
    model = b.build([b.gemm(h, H, 4, trans_b=bool(trans_b), name="fc2")])
    (g,) = _prunable(model)
    assert g.slots == H
    pruned, _ = prune_exact(model, 0.5)
    dims = _dims(pruned)
    assert dims["fc1.bias"] == [H // 2]
    assert dims["fc1.weight"] == ([H // 2, D] if trans_b else [D, H // 2])
    assert dims["fc2.weight"] == ([4, H // 2] if trans_b else [H // 2, 4])
    assert_planted_dead(model)


def _gelu_erf(b, h):
    inner = b.op("Erf", [b.op("Div", [h, b.const(np.float32(np.sqrt(2.0)))])])
    half = b.op("Mul", [h, b.const(np.float32(0.5))])
    return b.op("Mul", [half, b.op("Add", [b.const(np.float32(1.0)), inner])])


def _gelu_tanh(b, h):
    cube = b.op("Mul", [b.op("Mul", [h, h]), h])
    inner = b.op("Add", [h, b.op("Mul", [cube, b.const(np.float32(0.044715))])])
    t = b.op("Tanh", [b.op("Mul", [inner, b.const(np.float32(np.sqrt(2.0 / np.pi)))])])
    return b.op(
        "Mul",
        [b.op("Mul", [h, b.const(np.float32(0.5))]), b.op("Add", [t, b.const(np.float32(1.0))])],
    )


def _silu(b, h):
    return b.op("Mul", [h, b.op("Sigmoid", [h])])


@pytest.mark.parametrize(
    "act", [_gelu_erf, _gelu_tanh, _silu], ids=["gelu-erf", "gelu-tanh", "silu"]
)
def test_batched_matmul_activation_matmul(act):
    b = Builder()
    x = b.input([2, 5, D])
    h = act(b, b.matmul(x, D, H, name="fc1"))
    model = b.build([b.matmul(h, H, D, name="fc2")])
    (g,) = _prunable(model)
    assert {m.label for m in g.params} == {"fc1.weight[out]", "fc1.bias", "fc2.weight[in]"}
    pruned, _ = prune_exact(model, 0.25)
    dims = _dims(pruned)
    assert dims["fc1.weight"] == [D, 12] and dims["fc2.weight"] == [12, D]
    assert_planted_dead(model)


def ffn_block(seed: int = 0):
    """x -> LayerNorm -> MatMul+Add -> GELU(erf) -> MatMul+Add -> + x (residual)."""
    b = Builder(seed)
    x = b.input([2, 5, D])
    ln = b.op(
        "LayerNormalization",
        [x, b.rand([D], "ln.scale", 1.0, positive=True), b.rand([D], "ln.bias", 0.1)],
        axis=-1,
        name="ln",
    )
    h = _gelu_erf(b, b.matmul(ln, D, H, name="fc1"))
    y = b.op("Add", [b.matmul(h, H, D, name="fc2"), x], name="residual")
    return b.build([b.matmul(y, D, 3, name="head")])


def test_ffn_block_prunes_hidden_keeps_residual_stream():
    model = ffn_block()
    groups = analyze(model)
    (g,) = [g for g in groups if g.blocked_reason is None]
    assert g.slots == H and "fc1.weight" in g.names and "fc2.weight" in g.names
    stream = [g for g in groups if g.blocked_reason is not None and "fc2.weight" in g.names]
    assert stream, [(g.id, g.blocked_reason) for g in groups]
    assert all("graph input" in s.blocked_reason for s in stream)
    pruned, plan = prune_exact(model, 0.5)
    dims = _dims(pruned)
    assert dims["fc1.weight"] == [D, H // 2] and dims["fc2.weight"] == [H // 2, D]
    assert dims["fc2.bias"] == [D] and dims["ln.scale"] == [D] and dims["head.weight"] == [D, 3]
    assert [gp.id for gp in plan.groups if gp.channels_after < gp.channels_before] == [g.id]
    assert_planted_dead(model)


def test_neuron_l2_ranks_by_outgoing_weights():
    """Incoming weights say one order, outgoing weights the opposite: neuron-l2 follows
    the outgoing ones (the consumer's input rows), l1 over all members does not."""
    assert "neuron-l2" in CRITERIA
    b = Builder()
    x = b.input([1, 4])
    n = 6
    w_in = np.stack([np.full(4, 10.0 * (i + 1)) for i in range(n)]).astype(np.float32)  # [n, 4]
    w_out = np.stack([np.full(3, float(n - i)) for i in range(n)]).astype(np.float32)  # [n, 3]
    w_out[2] = [-5.5, 0.0, 0.0]  # L2 5.5 beats neuron 3's 3*sqrt3 = 5.2; its L1 does not (9)
    h = b.relu(
        b.op("Gemm", [x, b.const(w_in, "fc1.weight"), b.const(np.zeros(n), "fc1.bias")], transB=1)
    )
    model = b.build([b.op("Gemm", [h, b.const(w_out, "fc2.weight")], name="fc2")])
    groups = analyze(model)
    (g,) = [g for g in groups if g.blocked_reason is None]
    scores = score_groups(groups, model, "neuron-l2")[g.id]
    np.testing.assert_allclose(scores, np.linalg.norm(w_out, axis=1), rtol=1e-6)
    l1 = score_groups(groups, model, "l1")[g.id]
    assert np.argmax(l1) == n - 1 and np.argmax(scores) == 0
    pruned, plan = prune_exact(model, 0.5, criterion="neuron-l2")
    (gp,) = plan.groups
    # outgoing L2 norms: 6*sqrt3, 5*sqrt3, 5.5, 3*sqrt3, 2*sqrt3, 1*sqrt3
    assert list(gp.kept) == [0, 1, 2]
    assert _dims(pruned)["fc2.weight"] == [3, 3]


@pytest.mark.parametrize("act", ["Tanh", "Sigmoid", "Gelu"])
def test_single_op_activations(act):
    """Tanh, Sigmoid and the Gelu op (opset 20) pass the neurons through."""
    b = Builder(opset=20 if act == "Gelu" else 17)
    x = b.input([2, 5, D])
    h = b.op(act, [b.matmul(x, D, H, name="fc1")])
    model = b.build([b.matmul(h, H, D, name="fc2")])
    (g,) = _prunable(model)
    assert g.slots == H
    pruned, _ = prune_exact(model, 0.5)
    assert _dims(pruned)["fc2.weight"] == [H // 2, D]


def test_gemm_trans_a():
    """Gemm with transA reads its input transposed ([K, M]); a producer of [M, K] feeding
    it through a Transpose still prunes the next layer's hidden units."""
    b = Builder()
    x = b.input([3, D])
    h = b.relu(b.gemm(x, D, H, name="fc1"))
    ht = b.op("Transpose", [h], perm=[1, 0])  # [H, 3]
    w2 = b.rand([H, 4], "fc2.weight", H**-0.5)
    y = b.op("Gemm", [ht, w2, b.rand([4], "fc2.bias", 0.1)], transA=1, name="fc2")
    model = b.build([y])
    (g,) = _prunable(model)
    assert {m.label for m in g.params} == {"fc1.weight[out]", "fc1.bias", "fc2.weight[in]"}
    pruned, _ = prune_exact(model, 0.5)
    assert _dims(pruned)["fc2.weight"] == [H // 2, 4]


def _layer_norm_decomposed(b, x, dim, name):
    """LayerNorm as older exporters write it: ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div."""
    mean = b.op("ReduceMean", [x], axes=[-1])
    c = b.op("Sub", [x, mean])
    var = b.op("ReduceMean", [b.op("Pow", [c, b.const(np.float32(2.0))])], axes=[-1])
    n = b.op("Div", [c, b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(1e-5))])])])
    scale = b.rand([dim], f"{name}.scale", 1.0, positive=True)
    return b.op("Add", [b.op("Mul", [n, scale]), b.rand([dim], f"{name}.bias", 0.1)], name=name)


def test_ffn_between_decomposed_layer_norms():
    """x -> LN (decomposed) -> FFN -> + -> LN (decomposed): the hidden units prune; the
    residual stream is blocked by the normalization's reduction over it."""
    b = Builder()
    x = b.input([2, 5, D])
    h = _layer_norm_decomposed(b, x, D, "ln1")
    f = b.matmul(_gelu_erf(b, b.matmul(h, D, H, name="fc1")), H, D, name="fc2")
    y = _layer_norm_decomposed(b, b.op("Add", [f, h]), D, "ln2")
    model = b.build([b.matmul(y, D, 3, name="head")])
    groups = analyze(model)
    (g,) = [g for g in groups if g.blocked_reason is None]
    assert g.id == "fc1" and g.slots == H
    stream = next(g for g in groups if g.id == "fc2")
    assert any("ReduceMean reduces over the channel axis" in r for _, r in stream.reasons)
    pruned, _ = prune_exact(model, 0.5)
    assert _dims(pruned)["fc2.weight"] == [H // 2, D] and _dims(pruned)["ln2.scale"] == [D]


def test_incoming_and_group_criteria():
    """incoming-l1/l2 read only the producer's rows of each neuron; group-l1/l2 sum every
    weight the neuron removes (its row of fc1, its bias, its row of fc2)."""
    b = Builder()
    x = b.input([1, 4])
    rng = np.random.default_rng(3)
    w_in = rng.standard_normal((6, 4)).astype(np.float32)  # Gemm transB: [neurons, inputs]
    bias = rng.standard_normal(6).astype(np.float32)
    w_out = rng.standard_normal((6, 3)).astype(np.float32)
    h = b.relu(b.op("Gemm", [x, b.const(w_in, "fc1.weight"), b.const(bias, "fc1.bias")], transB=1))
    model = b.build([b.op("Gemm", [h, b.const(w_out, "fc2.weight")], name="fc2")])
    groups = analyze(model)
    (g,) = [g for g in groups if g.blocked_reason is None]
    got = {c: score_groups(groups, model, c)[g.id] for c in CRITERIA if c != "random"}
    np.testing.assert_allclose(got["incoming-l1"], np.abs(w_in).sum(1), rtol=1e-6)
    np.testing.assert_allclose(got["incoming-l2"], np.linalg.norm(w_in, axis=1), rtol=1e-6)
    everything = np.concatenate([w_in, bias[:, None], w_out], axis=1)
    np.testing.assert_allclose(got["group-l1"], np.abs(everything).sum(1), rtol=1e-6)
    np.testing.assert_allclose(got["group-l2"], np.linalg.norm(everything, axis=1), rtol=1e-6)
    assert not np.allclose(got["incoming-l2"], got["neuron-l2"])
    prune_exact(model, 0.5, criterion="incoming-l2")
