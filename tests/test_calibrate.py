"""calibrate.py: per-channel statistics and Wanda scores equal numpy on the same tensors.

The oracle reads the tensors by building the same graph again with them as real outputs and
running it once in onnxruntime; the statistics are then plain numpy reductions. Memory-bounded
passes, a model with a fixed batch of 1 and graph inputs as targets must not change the answer.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.calibration.stats import (
    ChannelStats,
    channel_stats,
    plan_passes,
    tapped_model,
    wanda_scorer,
)
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.view import GraphView
from onnxprune.testing.graphs import Builder, conv_bn_relu
from onnxprune.testing.oracles import run
from onnxprune.unstructured.magnitude import find_prunable_weights, prune_unstructured


def _net(outputs: str, batch: int | str = "N", seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """conv -> relu -> conv -> relu -> GAP -> Flatten -> Gemm; ``outputs="taps"`` also
    outputs the intermediate tensors. Returns the model and tensor -> channel axis."""
    b = Builder(seed)
    x = b.input([batch, 3, 6, 6])
    r1 = b.relu(b.conv(x, 3, 8, name="c1"))
    c2 = b.conv(r1, 8, 6, k=1, name="c2")
    r2 = b.relu(c2)
    flat = b.op("Flatten", [b.op("GlobalAveragePool", [r2])], axis=1)
    y = b.gemm(flat, 6, 4, name="fc")
    taps = {r1: 1, c2: 1, r2: 1, flat: -1}
    return b.build([y, *taps] if outputs == "taps" else [y]), taps


def _numpy_stats(values: list[np.ndarray], axis: int) -> tuple[np.ndarray, ...]:
    x = np.concatenate(values).astype(np.float64)
    moved = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
    return (
        np.abs(moved).mean(0),
        np.sqrt(np.square(moved).sum(0)),
        (moved == 0).mean(0),
        moved.shape[0],
    )


def _assert_stats(got: ChannelStats, values: list[np.ndarray], axis: int) -> None:
    mean_abs, norm, apoz, count = _numpy_stats(values, axis)
    assert got.count == count
    np.testing.assert_allclose(got.mean_abs, mean_abs, rtol=1e-5)
    np.testing.assert_allclose(got.norm, norm, rtol=1e-5)
    np.testing.assert_array_equal(got.apoz, apoz)


def _feeds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)}


def test_channel_stats_equal_numpy_on_the_tapped_tensors():
    model, taps = _net("plain")
    oracle, _ = _net("taps")
    feeds = _feeds(70)  # 32 + 32 + a short last batch of 6
    stats = channel_stats(model, feeds, taps)
    values = run(oracle, feeds)[1:]
    for (name, axis), v in zip(taps.items(), values, strict=True):
        _assert_stats(stats[name], [v], axis)
    relu = next(iter(taps))
    assert 0 < stats[relu].apoz.mean() < 1  # the check of apoz is not vacuous


def test_a_tiny_budget_reads_one_tensor_per_pass_with_the_same_result():
    model, taps = _net("plain")
    feeds = _feeds(40)
    view = GraphView(model)
    assert plan_passes(view, list(taps), 32, budget_bytes=1) == [[n] for n in taps]
    assert plan_passes(view, list(taps), 32) == [list(taps)]
    calls: list[int] = []
    once = channel_stats(model, feeds, taps)
    split = channel_stats(model, feeds, taps, budget_bytes=1, progress=calls.append)
    assert calls == [1] * len(taps)  # one pass per tensor
    for name in taps:
        assert split[name].count == once[name].count
        np.testing.assert_allclose(split[name].sum_abs, once[name].sum_abs, rtol=1e-6)
        np.testing.assert_allclose(split[name].sum_sq, once[name].sum_sq, rtol=1e-6)
        np.testing.assert_array_equal(split[name].zeros, once[name].zeros)


def test_plan_passes_packs_tensors_up_to_the_budget():
    model, taps = _net("plain")
    view = GraphView(model)
    names = list(taps)
    sizes = [4 * int(np.prod(view.shape(n)[1:])) for n in names]
    batch = 4
    budget = (sizes[0] + sizes[1]) * batch  # the first two fit together, not a third
    passes = plan_passes(view, names, batch, budget)
    assert passes[0] == names[:2]
    assert [n for p in passes for n in p] == names
    for p in passes:
        assert len(p) == 1 or sum(sizes[names.index(n)] for n in p) * batch <= budget


def test_fixed_batch_model_runs_sample_by_sample():
    model = conv_bn_relu(hw=6)  # input [1, 3, 6, 6]
    relu = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    out = model.graph.output[0].name
    feeds = _feeds(7, seed=3)
    stats = channel_stats(model, feeds, {relu: 1, out: 1})
    tapped = tapped_model(model, [relu])
    per_sample = [run(tapped, {"x": feeds["x"][i : i + 1]}) for i in range(7)]
    _assert_stats(stats[relu], [v[1] for v in per_sample], 1)
    _assert_stats(stats[out], [v[0] for v in per_sample], 1)
    assert stats[relu].count == 7 * 36


def test_fixed_batch_larger_than_one_drops_the_short_remainder_and_needs_one_batch():
    model, taps = _net("plain", batch=2)
    oracle, _ = _net("taps", batch=2)
    feeds = _feeds(5)
    relu = next(iter(taps))
    stats = channel_stats(model, feeds, {relu: 1})
    first4 = [run(oracle, {"x": feeds["x"][i : i + 2]})[1] for i in (0, 2)]
    _assert_stats(stats[relu], first4, 1)
    with pytest.raises(OnnxPruneError, match="exactly 2"):
        channel_stats(model, _feeds(1), {relu: 1})


def test_graph_inputs_are_targets_read_from_the_feed():
    model, taps = _net("plain")
    feeds = _feeds(45, seed=1)
    relu, conv = list(taps)[:2]
    calls: list[int] = []
    both = channel_stats(
        model, feeds, {"x": 1, relu: 1, conv: 1}, budget_bytes=1, progress=calls.append
    )
    assert len(calls) == 2
    _assert_stats(both["x"], [feeds["x"]], 1)  # counted once, not once per pass
    alone = channel_stats(model, feeds, {"x": 1})
    _assert_stats(alone["x"], [feeds["x"]], 1)


def test_calibration_inputs_must_share_their_sample_count():
    b = Builder(0)
    x, z = b.input(["N", 4]), b.input(["N", 4], name="z")
    two = b.build([b.op("Add", [x, z])])
    with pytest.raises(OnnxPruneError, match="first"):
        channel_stats(two, {"x": np.zeros((3, 4), np.float32), "z": np.zeros((2, 4), np.float32)},
                      {"x": -1})  # fmt: skip


# --------------------------------------------------------------------------------------------
# Wanda
# --------------------------------------------------------------------------------------------


def _wanda_model() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """Gemm (transB 1) -> relu -> Gemm (transB 0) -> relu -> MatMul on tokens; and Conv ->
    relu -> grouped Conv. Each returned with and without the layer inputs as outputs."""

    def mlp(taps: bool) -> onnx.ModelProto:
        b = Builder(5)
        x = b.input(["N", 8])
        h1 = b.relu(b.gemm(x, 8, 16, trans_b=True, name="fa"))
        h2 = b.relu(b.gemm(h1, 16, 12, trans_b=False, name="fb"))
        t = b.op("Reshape", [h2, b.ints([-1, 3, 4])])
        y = b.matmul(t, 4, 16, bias=False, name="mm")
        return b.build([y, h1, t] if taps else [y])

    def cnn(taps: bool) -> onnx.ModelProto:
        b = Builder(6)
        x = b.input(["N", 4, 5, 5])
        r = b.relu(b.conv(x, 4, 8, name="ca"))
        y = b.conv(r, 8, 6, group=2, name="cb")
        return b.build([y, r] if taps else [y])

    return (mlp(False), mlp(True)), (cnn(False), cnn(True))


def test_wanda_scores_are_weight_magnitude_times_input_column_norms():
    rng = np.random.default_rng(0)
    (mlp, mlp_taps), (cnn, cnn_taps) = _wanda_model()

    feeds = {"x": rng.standard_normal((50, 8)).astype(np.float32)}
    _, h1, t = run(mlp_taps, feeds)
    norms = {
        "fa.weight": np.linalg.norm(feeds["x"].astype(np.float64), axis=0),
        "fb.weight": np.linalg.norm(h1.astype(np.float64), axis=0),
        "mm.weight": np.linalg.norm(t.reshape(-1, 4).astype(np.float64), axis=0),
    }
    score = wanda_scorer(mlp, feeds)
    refs = {r.name: r for r in find_prunable_weights(mlp, min_elements=1).weights}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in mlp.graph.initializer}
    for name, norm in norms.items():
        w = inits[name]
        want = np.abs(w) * (
            norm[None, :] if name == "fa.weight" else norm[:, None]
        )  # [out,in] / [in,out]
        np.testing.assert_allclose(score(w, refs[name]), want, rtol=1e-5)

    feeds = {"x": rng.standard_normal((20, 4, 5, 5)).astype(np.float32)}
    _, r = run(cnn_taps, feeds)
    score = wanda_scorer(cnn, feeds)
    refs = {r_.name: r_ for r_ in find_prunable_weights(cnn, min_elements=1).weights}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in cnn.graph.initializer}
    for name, x, groups in [("ca.weight", feeds["x"], 1), ("cb.weight", r, 2)]:
        w = inits[name]
        norm = np.sqrt(np.square(x.astype(np.float64)).sum(axis=(0, 2, 3)))  # per input channel
        cpg, opg = w.shape[1], w.shape[0] // groups
        want = np.empty_like(w, dtype=np.float64)
        for o in range(w.shape[0]):
            g = o // opg
            want[o] = np.abs(w[o]) * norm[g * cpg : (g + 1) * cpg, None, None]
        np.testing.assert_allclose(score(w, refs[name]), want, rtol=1e-5)


def test_wanda_keeps_magnitude_for_weights_it_cannot_see_and_drives_pruning():
    (mlp, _), _ = _wanda_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 8)).astype(np.float32)
    x[:, :4] *= 100.0  # the first four inputs dominate every column norm
    score = wanda_scorer(mlp, {"x": x})
    w = rng.standard_normal((3, 3)).astype(np.float32)
    np.testing.assert_array_equal(score(w, None), np.abs(w))  # not a layer's weight
    pruned, _ = prune_unstructured(mlp, ratio=0.5, scorer=score)
    kept = onnx.numpy_helper.to_array(
        next(i for i in pruned.graph.initializer if i.name == "fa.weight")
    )
    # Wanda keeps the weights on loud inputs; magnitude alone would keep half of each
    assert np.count_nonzero(kept[:, :4]) > 0.9 * kept[:, :4].size
    assert np.count_nonzero(kept[:, 4:]) < 0.1 * kept[:, 4:].size
