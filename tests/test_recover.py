"""recover.py: the solvers against numpy, and recovery end to end against onnxruntime.

Solvers: ``least_squares`` equals ``numpy.linalg.lstsq`` (and recovers a planted weight),
``mean_shift`` equalizes mean outputs, ``obs_sparsify`` (SparseGPT) zeroes exactly what it is
asked, keeps N:M patterns and beats magnitude pruning on correlated inputs.

End to end: recovery never breaks an exact prune (planted-dead channels), lowers the output
error on held-out inputs after structured and unstructured pruning, keeps every zero count or
mask, gives biases to layers that had none, and lifts the shipped digits MLP at 90% global
sparsity from chance back to its accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from onnxprune.recovery.recover import RecoveryOptions, recover_structured, recover_unstructured
from onnxprune.recovery.solvers import least_squares, mean_shift, obs_factor, obs_sparsify
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.graphs import (
    Builder,
    conv_bn_relu,
    depthwise_block,
    dynamic_batch,
    gemm_mlp,
    grouped_block,
    mlp_block,
    residual_block,
)
from onnxprune.testing.oracles import assert_close, plant_dead, session
from onnxprune.unstructured.magnitude import prune_unstructured

MODELS = Path(__file__).resolve().parent.parent / "models"

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------
# Helpers: data, model outputs, weights
# --------------------------------------------------------------------------------------------


def correlated(rng: np.random.Generator, rows: int, d: int) -> np.ndarray:
    """Rows of correlated features with a nonzero mean, like real activations; scales of the
    principal directions from 0.2 to 2, so conditioning stays bounded."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    mix = q * rng.uniform(0.2, 2.0, d) @ q.T
    return rng.standard_normal((rows, d)) @ mix + rng.standard_normal(d)


def augment(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def feeds(model: onnx.ModelProto, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` standard-normal samples for every input (sample axis first)."""
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim][1:]
        out[vi.name] = rng.standard_normal((n, *dims)).astype(np.float32)
    return out


def outputs(model: onnx.ModelProto, data: dict[str, np.ndarray]) -> np.ndarray:
    """The first output on every sample; a model with a fixed batch of 1 runs one by one."""
    sess = session(model)
    first = sess.get_inputs()[0]
    if isinstance(first.shape[0], int):
        n = len(data[first.name])
        runs = [sess.run(None, {k: v[i : i + 1] for k, v in data.items()})[0] for i in range(n)]
        return np.concatenate(runs)
    return sess.run(None, data)[0]


def mse(model: onnx.ModelProto, reference: np.ndarray, data: dict[str, np.ndarray]) -> float:
    return float(np.mean((outputs(model, data).astype(np.float64) - reference) ** 2))


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def magnitude_prune(w: np.ndarray, zeros: int) -> np.ndarray:
    """``w`` ``[out, d+1]`` with its ``zeros`` smallest weights (not the bias) set to 0."""
    out = w.copy()
    d = w.shape[1] - 1
    flat = out[:, :d].reshape(-1)
    flat[np.argsort(np.abs(flat), kind="stable")[:zeros]] = 0
    out[:, :d] = flat.reshape(w.shape[0], d)
    return out


def magnitude_nm(w: np.ndarray, n: int, m: int) -> np.ndarray:
    out = w.copy()
    d = w.shape[1] - 1
    g = out[:, :d].reshape(w.shape[0], d // m, m)
    np.put_along_axis(g, np.argsort(np.abs(g), axis=2)[:, :, : m - n], 0.0, axis=2)
    out[:, :d] = g.reshape(w.shape[0], d)
    return out


def nm_counts(w: np.ndarray, axis: int, m: int) -> np.ndarray:
    """Nonzeros in every group of M consecutive elements along ``axis``."""
    moved = np.moveaxis(w, axis, -1)
    return (moved.reshape(*moved.shape[:-1], -1, m) != 0).sum(-1)


# --------------------------------------------------------------------------------------------
# least_squares and mean_shift
# --------------------------------------------------------------------------------------------


@PROPERTY
@given(
    groups=st.integers(1, 2),
    out=st.integers(1, 4),
    d=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_least_squares_recovers_a_planted_weight(groups, out, d, seed):
    rng = np.random.default_rng(seed)
    x = [augment(correlated(rng, 5 * d + 10, d)) for _ in range(groups)]
    gram = np.stack([a.T @ a for a in x])  # x_p = x_o: G_pp = G_op
    planted = rng.standard_normal((groups, out, d + 1))
    w0 = rng.standard_normal((groups, out, d + 1))
    got = least_squares(planted, w0, gram, gram, damp=1e-10, fit_bias=True)
    np.testing.assert_allclose(got, planted, atol=1e-6)


def _two_views(rng, rows=200, do=7, groups=2):
    """Original inputs, pruned inputs (some columns kept, perturbed, one new), a target."""
    xo = [correlated(rng, rows, do) for _ in range(groups)]
    keep = np.array([0, 2, 3, 5])
    xp = [a[:, keep] + 0.3 * rng.standard_normal((rows, len(keep))) for a in xo]
    target = rng.standard_normal((groups, 3, do + 1))
    gpp = np.stack([augment(p).T @ augment(p) for p in xp])
    gop = np.stack([augment(o).T @ augment(p) for o, p in zip(xo, xp, strict=True)])
    return xo, xp, target, gpp, gop


def test_least_squares_equals_numpy_lstsq_on_an_overdetermined_fit():
    rng = np.random.default_rng(1)
    xo, xp, target, gpp, gop = _two_views(rng)
    w0 = rng.standard_normal((2, 3, 5))
    got = least_squares(target, w0, gpp, gop, damp=1e-12, fit_bias=True)
    for g in range(2):
        y = augment(xo[g]) @ target[g].T
        want = np.linalg.lstsq(augment(xp[g]), y, rcond=None)[0].T
        np.testing.assert_allclose(got[g], want, rtol=1e-6, atol=1e-8)


def test_least_squares_with_a_kept_bias_fits_the_weights_around_it():
    rng = np.random.default_rng(2)
    xo, xp, target, gpp, gop = _two_views(rng)
    w0 = rng.standard_normal((2, 3, 5))
    got = least_squares(target, w0, gpp, gop, damp=1e-12, fit_bias=False)
    np.testing.assert_array_equal(got[..., -1], w0[..., -1])
    for g in range(2):
        y = augment(xo[g]) @ target[g].T - w0[g, :, -1]  # what the weights must still explain
        want = np.linalg.lstsq(xp[g], y, rcond=None)[0].T
        np.testing.assert_allclose(got[g, :, :-1], want, rtol=1e-6, atol=1e-8)


def test_least_squares_ridge_pulls_toward_the_prior():
    """With damping lam = damp * mean(diag G_pp) the solution is the ridge regression toward
    W0 (bias unpenalized): numpy's lstsq on the stacked system gives the same."""
    rng = np.random.default_rng(3)
    xo, xp, target, gpp, gop = _two_views(rng, groups=1)
    w0 = rng.standard_normal((1, 3, 5))
    damp = 0.5
    got = least_squares(target, w0, gpp, gop, damp=damp, fit_bias=True)
    a, d = augment(xp[0]), xp[0].shape[1]
    lam = damp * np.mean(np.sum(xp[0] ** 2, axis=0))
    penalty = np.sqrt(lam) * np.eye(d + 1)[:d]  # [d, d+1]: weights only
    stacked = np.concatenate([a, penalty])
    rhs = np.concatenate([augment(xo[0]) @ target[0].T, np.sqrt(lam) * w0[0, :, :d].T])
    want = np.linalg.lstsq(stacked, rhs, rcond=None)[0].T
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-8)
    far = least_squares(target, w0, gpp, gop, damp=1e9, fit_bias=True)
    np.testing.assert_allclose(far[0, :, :d], w0[0, :, :d], atol=1e-6)


def test_mean_shift_equalizes_mean_outputs_and_moves_only_the_bias():
    rng = np.random.default_rng(4)
    xo, xp, target, gpp, gop = _two_views(rng)
    w = rng.standard_normal((2, 3, 5))
    got = mean_shift(target, w, gpp, gop)
    np.testing.assert_array_equal(got[..., :-1], w[..., :-1])
    for g in range(2):
        want = (augment(xo[g]) @ target[g].T).mean(0)
        np.testing.assert_allclose((augment(xp[g]) @ got[g].T).mean(0), want, atol=1e-9)
        assert not np.allclose((augment(xp[g]) @ w[g].T).mean(0), want)


# --------------------------------------------------------------------------------------------
# obs_sparsify (SparseGPT)
# --------------------------------------------------------------------------------------------


def _obs_case(seed: int, out: int, d: int):
    rng = np.random.default_rng(seed)
    x = augment(correlated(rng, 4 * d + 10, d))
    w = rng.standard_normal((out, d + 1))
    return x, w


def _err(x: np.ndarray, w: np.ndarray, w2: np.ndarray) -> float:
    return float(np.linalg.norm((w - w2) @ x.T))


@PROPERTY
@given(
    out=st.integers(8, 16),
    groups=st.integers(2, 12),
    sparsity=st.floats(0.3, 0.7),
    block=st.sampled_from([4, 8, 16, 128]),
    seed=st.integers(0, 2**16),
)
def test_obs_zeroes_exactly_what_it_is_asked_and_beats_magnitude(
    out, groups, sparsity, block, seed
):
    d = 4 * groups
    x, w = _obs_case(seed, out, d)
    zeros = int(sparsity * out * d)
    got = obs_sparsify(w, x.T @ x, zeros=zeros, block=block)
    assert got.shape == w.shape
    assert int((got[:, :d] == 0).sum()) == zeros
    assert np.all(got[:, d] != 0), "the bias column is never pruned"
    assert _err(x, w, got) <= _err(x, w, magnitude_prune(w, zeros))


@PROPERTY
@given(
    out=st.integers(8, 16),
    groups=st.integers(2, 6),
    nm=st.sampled_from([(2, 4), (1, 4), (1, 2), (4, 8)]),
    block=st.sampled_from([6, 10, 16, 128]),  # blocks that cut N:M groups must not matter
    seed=st.integers(0, 2**16),
)
def test_obs_keeps_n_of_every_m_columns_and_beats_magnitude(out, groups, nm, block, seed):
    n, m = nm
    d = 8 * groups
    x, w = _obs_case(seed, out, d)
    got = obs_sparsify(w, x.T @ x, nm=nm, block=block)
    counts = nm_counts(got[:, :d], 1, m)
    assert counts.max() <= n
    assert int((got[:, :d] == 0).sum()) == out * d * (m - n) // m  # never more than asked
    assert np.all(got[:, d] != 0)
    assert _err(x, w, got) <= _err(x, w, magnitude_nm(w, n, m))


def test_obs_is_much_better_than_magnitude_on_average():
    ratios, ratios_nm = [], []
    for seed in range(12):
        x, w = _obs_case(seed, 12, 32)
        h = x.T @ x
        zeros = 12 * 16
        ratios.append(
            _err(x, w, obs_sparsify(w, h, zeros=zeros)) / _err(x, w, magnitude_prune(w, zeros))
        )
        ratios_nm.append(
            _err(x, w, obs_sparsify(w, h, nm=(2, 4))) / _err(x, w, magnitude_nm(w, 2, 4))
        )
    assert np.mean(ratios) < 0.8 and max(ratios) < 1
    assert np.mean(ratios_nm) < 0.8 and max(ratios_nm) < 1


def test_obs_zeroes_inputs_that_never_fire_first_and_for_free():
    x, w = _obs_case(5, 6, 12)
    dead = np.array([1, 4, 9])
    x[:, dead] = 0
    got = obs_sparsify(w, x.T @ x, zeros=6 * len(dead), block=8)
    assert np.all(got[:, dead] == 0)
    live = np.setdiff1d(np.arange(12), dead)
    # nothing else had to move (OBS works in float32, as SparseGPT does)
    np.testing.assert_allclose(got[:, live], w[:, live], rtol=1e-6, atol=1e-6)
    assert _err(x, w, got) == pytest.approx(0, abs=1e-5)


def _obs_unblocked(w: np.ndarray, u: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The textbook OBS sweep, one column at a time over the whole row, for a fixed mask:
    the reference the lazy block updates must reproduce."""
    w = w.astype(np.float32).copy()
    for j in range(w.shape[1] - 1):
        e = np.where(mask[:, j], w[:, j], 0.0) / u[j, j]
        w[:, j:] -= np.outer(e, u[j, j:])
        w[:, j] = np.where(mask[:, j], 0.0, w[:, j])
    return w


@pytest.mark.parametrize("block", [4, 8, 24, 128])
def test_obs_blocked_updates_equal_the_unblocked_sweep_for_the_same_mask(block):
    """One block over every column chooses the mask from the starting weights; the lazy
    batches (any block size) then give the weights of the plain column-by-column sweep."""
    x, w = _obs_case(3, 16, 48)
    h = x.T @ x
    u = obs_factor(h, 0.01)[0]
    zeros = 16 * 20
    one_block = obs_sparsify(w, h, zeros=zeros, block=48, factor=u)
    mask = one_block[:, :48] == 0
    ref = _obs_unblocked(w, u, np.pad(mask, ((0, 0), (0, 1))))
    np.testing.assert_allclose(one_block, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # N:M groups are chosen from fully updated weights, whatever the block: same weights
    nm = obs_sparsify(w, h, nm=(2, 4), block=block, factor=u)
    ref_nm = _obs_unblocked(w, u, np.pad(nm[:, :48] == 0, ((0, 0), (0, 1))))
    np.testing.assert_allclose(nm, ref_nm, rtol=1e-4, atol=1e-4 * np.abs(ref_nm).max())
    assert np.array_equal(obs_sparsify(w, h, nm=(2, 4), block=128, factor=u) == 0, nm == 0)


def test_obs_with_a_group_axis_equals_one_group_at_a_time():
    cases = [_obs_case(seed, 8, 16) for seed in range(3)]
    w = np.stack([c[1] for c in cases])
    h = np.stack([c[0].T @ c[0] for c in cases])
    zeros = [40, 41, 39]
    got = obs_sparsify(w, h, zeros=zeros, block=8)
    for k in range(3):
        np.testing.assert_array_equal(got[k], obs_sparsify(w[k], h[k], zeros=zeros[k], block=8))
    assert [int((got[k, :, :16] == 0).sum()) for k in range(3)] == zeros


# --------------------------------------------------------------------------------------------
# recover_structured
# --------------------------------------------------------------------------------------------

FAST = RecoveryOptions(max_rows=2048)


def _same_interface(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    onnx.checker.check_model(b, full_check=True)
    assert [(i.name, i.type) for i in a.graph.input] == [(i.name, i.type) for i in b.graph.input]
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output]


@pytest.mark.parametrize(
    "build",
    [conv_bn_relu, residual_block, mlp_block, depthwise_block, grouped_block, gemm_mlp],
    ids=lambda f: f.__name__,
)
def test_recovery_does_not_break_an_exact_prune(build):
    """Channels planted dead are pruned exactly; refitting on top must keep the outputs."""
    model = build()
    planted, marks, _ = plant_dead(model, 0.5, seed=1)
    assert marks
    pruned, result = prune_structured(
        planted, StructuredOptions(ratio=0.3, scope="global", round_to=1)
    )
    calib, held = feeds(model, 48, 0), feeds(model, 16, 1)
    reference = outputs(planted, held)
    assert_close([reference], [outputs(pruned, held)])  # the prune itself is exact
    recovered, rec = recover_structured(planted, pruned, result.plan, calib, FAST)
    assert rec.layers, "no layer was refit: the test would prove nothing"
    _same_interface(pruned, recovered)
    assert_close([reference], [outputs(recovered, held)], rtol=1e-4)
    assert all(x["err_after"] <= max(x["err_before"], 1e-6) for x in rec.layers)


@pytest.mark.parametrize(
    "build",
    [
        lambda: dynamic_batch(conv_bn_relu()),
        lambda: dynamic_batch(residual_block(hw=6)),
        mlp_block,  # a fixed batch of 1: calibration feeds one sample at a time
        gemm_mlp,
    ],
    ids=["conv_bn_relu", "residual_block", "mlp_block_batch1", "gemm_mlp"],
)
def test_structured_recovery_lowers_held_out_error(build):
    model = build()
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    calib, held = feeds(model, 200, 0), feeds(model, 200, 1)
    reference = outputs(model, held).astype(np.float64)
    before = mse(pruned, reference, held)
    bias_only, rb = recover_structured(
        model, pruned, result.plan, calib, RecoveryOptions(lstsq=False, max_rows=2048)
    )
    refit, rl = recover_structured(model, pruned, result.plan, calib, FAST)
    for m in (bias_only, refit):
        _same_interface(pruned, m)
        assert {k: v.shape for k, v in weights(m).items() if k in weights(pruned)} == {
            k: v.shape for k, v in weights(pruned).items()
        }
    assert rb.steps == ["bias"] and rl.steps == ["bias", "lstsq"]
    assert rl.samples == 200 and rl.layers and not rl.skipped
    assert all(x["err_after"] <= x["err_before"] for x in rb.layers + rl.layers)
    after_bias, after_lstsq = mse(bias_only, reference, held), mse(refit, reference, held)
    assert after_lstsq < after_bias < before, (before, after_bias, after_lstsq)


def test_recovery_with_nothing_to_do_returns_a_copy():
    model = gemm_mlp()
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    calib = feeds(model, 8, 0)
    same, res = recover_structured(
        model, pruned, result.plan, calib, RecoveryOptions(bias=False, lstsq=False)
    )
    assert same is not pruned and same == pruned and res.layers == [] and res.steps == []
    same, res = recover_unstructured(model, model, [], calib)  # no weight named
    assert same == model and res.layers == [] and res.waves == 0


# --------------------------------------------------------------------------------------------
# Layers without a bias get one, in the form their op takes
# --------------------------------------------------------------------------------------------


def _no_bias_tail(kind: str) -> onnx.ModelProto:
    """A prunable hidden layer, then a last layer without bias whose output is the graph's."""
    b = Builder(7)
    if kind == "Conv":
        x = b.input(["N", 3, 6, 6])
        h = b.relu(b.conv(x, 3, 8, name="first"))
        return b.build([b.conv(h, 8, 4, bias=False, name="last")])
    x = b.input(["N", 8])
    if kind == "MatMul":
        h = b.relu(b.matmul(x, 8, 16, name="first"))
        return b.build([b.matmul(h, 16, 6, bias=False, name="last")])
    h = b.relu(b.gemm(x, 8, 16, name="first"))
    w = b.rand([6, 16], "last.weight", 0.25)
    return b.build([b.op("Gemm", [h, w], name="last", transB=1, beta=0.5)])  # beta, no C


@pytest.mark.parametrize("kind", ["MatMul", "Conv", "Gemm"])
def test_a_layer_without_bias_gets_one_and_mean_outputs_match(kind):
    """Bias correction on the last layer makes its mean output on the calibration data equal
    the original's (every row used), through an Add (MatMul), B (Conv) or C (Gemm)."""
    model = _no_bias_tail(kind)
    out = model.graph.output[0].name
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    calib = feeds(model, 64, 0)
    recovered, rec = recover_structured(
        model, pruned, result.plan, calib, RecoveryOptions(lstsq=False, max_rows=10**6)
    )
    _same_interface(pruned, recovered)
    producer = next(n for n in recovered.graph.node if out in n.output)
    added = set(weights(recovered)) - set(weights(pruned))
    assert len(added) == 1
    (bias,) = added
    if kind == "MatMul":
        assert producer.op_type == "Add"
        mm = next(n for n in recovered.graph.node if n.output[0] == producer.input[0])
        assert mm.op_type == "MatMul" and producer.input[1] == bias
    else:
        assert producer.op_type == kind and list(producer.input)[2:] == [bias]
        assert all(a.name != "beta" for a in producer.attribute)
    axes = (0, 2, 3) if kind == "Conv" else 0
    want = outputs(model, calib).mean(axis=axes)
    assert not np.allclose(outputs(pruned, calib).mean(axis=axes), want, atol=1e-3)
    np.testing.assert_allclose(outputs(recovered, calib).mean(axis=axes), want, atol=1e-4)
    assert rec.layers[-1]["layer"].endswith(out)


# --------------------------------------------------------------------------------------------
# recover_unstructured
# --------------------------------------------------------------------------------------------


def _reduction_axis(model: onnx.ModelProto, name: str) -> int:
    node = next(n for n in model.graph.node if len(n.input) > 1 and n.input[1] == name)
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if any(a.name == "transB" and a.i for a in node.attribute) else 0
    return 0


@pytest.mark.parametrize(
    "build",
    [gemm_mlp, lambda: dynamic_batch(conv_bn_relu()), mlp_block],
    ids=["gemm_mlp", "conv_bn_relu", "mlp_block_batch1"],
)
@pytest.mark.parametrize("mode", ["ratio", "nm"])
def test_unstructured_recovery_keeps_the_sparsity_and_lowers_held_out_error(build, mode):
    model = build()
    kw = {"ratio": 0.7} if mode == "ratio" else {"nm": "2:4"}
    nm = (2, 4) if mode == "nm" else None
    pruned, res = prune_unstructured(model, **kw)
    names = [t["tensor"] for t in res.tensors]
    assert names
    calib, held = feeds(model, 200, 0), feeds(model, 200, 1)
    reference = outputs(model, held).astype(np.float64)
    bias_only, rb = recover_unstructured(
        model, pruned, names, calib, RecoveryOptions(obs=False, max_rows=2048), nm=nm
    )
    obs, ro = recover_unstructured(model, pruned, names, calib, FAST, nm=nm)
    assert rb.steps == ["bias"] and ro.steps == ["bias", "obs"]
    assert {x["method"] for x in ro.layers} == {"obs"} and not ro.skipped
    w_p, w_b, w_o = weights(pruned), weights(bias_only), weights(obs)
    for name in names:
        np.testing.assert_array_equal(w_b[name], w_p[name])  # bias only: the same weights
        assert w_o[name].shape == w_p[name].shape
        assert np.count_nonzero(w_o[name] == 0) == np.count_nonzero(w_p[name] == 0), name
        assert not np.array_equal(w_o[name], w_p[name])
        if nm:
            assert nm_counts(w_o[name], _reduction_axis(model, name), 4).max() <= 2
    for m in (bias_only, obs):
        _same_interface(pruned, m)
    before = mse(pruned, reference, held)
    after_bias, after_obs = mse(bias_only, reference, held), mse(obs, reference, held)
    assert after_obs < after_bias < before, (before, after_bias, after_obs)


def test_recovery_says_where_its_seconds_went():
    model = mlp_block()
    pruned, res = prune_unstructured(model, ratio=0.5)
    names = [t["tensor"] for t in res.tensors]
    _, rec = recover_unstructured(model, pruned, names, feeds(model, 64, 0), FAST)
    stages = rec.to_dict()["stage_seconds"]
    assert set(stages) == {"taps", "gram", "factor", "solve"}
    assert all(v >= 0 for v in stages.values()) and rec.stage_seconds["factor"] > 0
    assert sum(rec.stage_seconds.values()) <= rec.seconds


def test_digits_mlp_at_90_percent_global_sparsity_recovers_its_accuracy():
    model = onnx.load(MODELS / "digits_mlp.onnx")
    calib = dict(np.load(MODELS / "digits_mlp_calib.npz"))
    test = dict(np.load(MODELS / "digits_mlp_test.npz"))
    labels = np.load(MODELS / "digits_test_labels.npy")

    def accuracy(m: onnx.ModelProto) -> float:
        return float((outputs(m, test).argmax(1) == labels).mean())

    pruned, res = prune_unstructured(model, ratio=0.9, scope="global")
    names = [t["tensor"] for t in res.tensors]
    recovered, rec = recover_unstructured(model, pruned, names, calib, RecoveryOptions())
    assert accuracy(pruned) < 0.5  # magnitude alone collapses
    assert accuracy(recovered) >= 0.95
    w_p, w_r = weights(pruned), weights(recovered)
    for name in names:
        assert np.count_nonzero(w_r[name] == 0) == np.count_nonzero(w_p[name] == 0), name
    total = sum(w_r[n].size for n in names)
    assert sum(np.count_nonzero(w_r[n] == 0) for n in names) >= 0.9 * total - len(names)
    assert rec.to_dict()["mean_err_after"] < rec.to_dict()["mean_err_before"]


def test_least_squares_prior_rows_adds_d_rows_worth_of_ridge():
    """prior_rows: lam = (damp + d / rows) * mean(diag G_pp), so a fit from fewer rows than
    inputs stays near W0; the same ridge written out through numpy's lstsq."""
    rng = np.random.default_rng(5)
    xo, xp, target, gpp, gop = _two_views(rng, groups=1)
    w0 = rng.standard_normal((1, 3, 5))
    damp = 0.01
    got = least_squares(target, w0, gpp, gop, damp=damp, fit_bias=True, prior_rows=True)
    a, d = augment(xp[0]), xp[0].shape[1]
    lam = (damp + d / len(xp[0])) * np.mean(np.sum(xp[0] ** 2, axis=0))
    stacked = np.concatenate([a, np.sqrt(lam) * np.eye(d + 1)[:d]])
    rhs = np.concatenate([augment(xo[0]) @ target[0].T, np.sqrt(lam) * w0[0, :, :d].T])
    want = np.linalg.lstsq(stacked, rhs, rcond=None)[0].T
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-8)
    plain = least_squares(target, w0, gpp, gop, damp=damp, fit_bias=True)
    assert np.linalg.norm(got[0, :, :d] - w0[0, :, :d]) < np.linalg.norm(plain[0, :, :d] - w0[0, :, :d])


def test_padded_tokens_are_left_out_of_the_fit():
    """A [batch, tokens] integer feed named like *mask* drops the padded rows of a
    [batch, tokens, features] MatMul input; other layers and feeds keep every row."""
    from onnxprune.recovery.layers import Layer
    from onnxprune.recovery.passes import live_rows as _live_rows

    mm = Layer(0, "MatMul", "x", "y", "w", None)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], dtype=np.int64)
    rows = _live_rows(mm, (2, 4, 8), {"input_ids": mask * 7, "attention_mask": mask})
    np.testing.assert_array_equal(rows, [0, 1, 4, 5, 6])
    assert len(_live_rows(mm, (2, 4, 8), {"input_ids": mask})) == 8
    assert len(_live_rows(mm, (8, 8), {"attention_mask": mask})) == 8
    gemm = Layer(0, "Gemm", "x", "y", "w", None)
    assert len(_live_rows(gemm, (2, 4), {"attention_mask": mask})) == 2
