"""Recovery that scales (issue 14, item 3): LAPACK factors, cheaper Gram sums, a memory budget.

- ``inverse_factor`` gives U upper with U^T U = H^-1 and ``inverse_product`` = rhs H^-1;
- ``LayerStats`` given its target sums ``(T x_o) x_p^T`` directly: the same right-hand
  side as ``target @ G_op``, and the solvers give the same weights from either;
- ``stats_bytes`` bounds what a ``LayerStats`` holds however many rows it is fed, and a
  recovery whose ``gram_budget_bytes`` fits one layer runs one layer per wave;
- ``blas_limit`` caps the BLAS threads inside its block only.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from onnxprune.recovery.gram import FOLD_ROWS, LayerStats, stats_bytes
from onnxprune.recovery.layers import find_layers
from onnxprune.recovery.recover import RecoveryOptions, recover_unstructured
from onnxprune.recovery.solvers import (
    blas_limit,
    inverse_factor,
    inverse_product,
    least_squares,
    mean_shift,
    obs_factor,
)
from onnxprune.testing.graphs import Builder
from onnxprune.testing.oracles import session
from onnxprune.unstructured.magnitude import prune_unstructured


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    x = rng.standard_normal((3 * d, d)) @ rng.uniform(0.2, 2, (d, d)) / d
    return x.T @ x + 0.1 * np.eye(d)


@pytest.mark.parametrize("d", [1, 7, 130, 300])
def test_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse(d):
    h = _spd(np.random.default_rng(d), d)
    u = inverse_factor(h)
    assert u.dtype == np.float32 and u.flags.c_contiguous
    np.testing.assert_array_equal(u, np.triu(u))
    inv = np.linalg.inv(h)
    np.testing.assert_allclose(u.astype(np.float64).T @ u, inv, atol=2e-5 * np.abs(inv).max())
    assert np.all(np.diagonal(u) > 0)
    rhs = np.random.default_rng(1).standard_normal((5, d))
    got = inverse_product(rhs, u)
    np.testing.assert_allclose(got, rhs @ inv, atol=1e-4 * np.abs(rhs @ inv).max())


def test_a_singular_hessian_is_factored_with_a_little_jitter():
    x = np.random.default_rng(2).standard_normal((4, 10))
    u, _ = obs_factor(np.pad(x.T @ x, ((0, 1), (0, 1))), damp=0.0)  # rank 4 of 11
    assert np.all(np.isfinite(u)) and np.all(np.diagonal(u) > 0)


def _conv_net(seed: int = 0):
    b = Builder(seed)
    x = b.input(["N", 6, 7, 7])
    r = b.relu(b.conv(x, 6, 20, k=3, name="c1"))  # d = 6*9+1 = 55, 20 outputs: the target path
    y = b.conv(r, 20, 3, k=1, name="c2")  # d = 21, 3 outputs
    return b.build([y])


def _stats_pair(model, targeted: bool, fold_bytes: int = 1 << 25):
    rng = np.random.default_rng(3)
    lay = find_layers(model)[0]
    target = rng.standard_normal((1, 20, 55)).astype(np.float32)
    st = LayerStats(lay, lay, None, False, target=target if targeted else None,
                    fold_bytes=fold_bytes)  # fmt: skip
    for _ in range(6):
        xo = rng.standard_normal((8, 6, 7, 7)).astype(np.float32)
        xp = xo + 0.1 * rng.standard_normal(xo.shape).astype(np.float32)
        st.add(xp, xo, np.sort(rng.choice(8 * 25, size=90, replace=False)))
    st.fold()
    return st, target


def test_summing_the_target_outputs_gives_the_same_right_hand_side():
    model = _conv_net()
    plain, target = _stats_pair(model, False)
    direct, _ = _stats_pair(model, True)
    assert plain.gop is not None and plain.tgop is None
    assert direct.tgop is not None and direct.gop is None  # 20 * (55 + 55) < 55 * 55
    want = target.astype(np.float64) @ plain.gop
    np.testing.assert_allclose(direct.target_gop(target), want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(direct.gpp, plain.gpp, rtol=1e-6)
    w0 = np.random.default_rng(4).standard_normal((1, 20, 55))
    a = least_squares(target, w0, plain.gpp, plain.gop, 0.01, True)
    b = least_squares(target, w0, direct.gpp, None, 0.01, True, tgop=direct.target_gop(target))
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    a = mean_shift(target, w0, plain.gpp, plain.gop)
    b = mean_shift(target, w0, direct.gpp, None, tgop=direct.tgop)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fold_bytes", [1, 20_000, 1 << 25])
def test_stats_bytes_bounds_what_the_sums_and_buffers_hold(fold_bytes):
    model = _conv_net()
    lay = find_layers(model)[0]
    rng = np.random.default_rng(5)
    target = rng.standard_normal((1, 20, 55)).astype(np.float32)
    bound = stats_bytes(20, 55, 55, 1, rows=6 * 90, batch_rows=90, fold_bytes=fold_bytes)
    st = LayerStats(lay, lay, None, True, target=target, fold_bytes=fold_bytes)
    peak = 0
    for _ in range(6):
        x = rng.standard_normal((8, 6, 7, 7)).astype(np.float32)
        st.add(x, x, np.sort(rng.choice(200, size=90, replace=False)))
        peak = max(peak, st.nbytes + st.target.nbytes)
    assert 0 < peak <= bound
    assert st._buffered <= min(fold_bytes, FOLD_ROWS * 4 * 110) + 90 * 4 * 110


def test_a_budget_of_one_layer_gives_one_layer_per_wave():
    b = Builder(1)
    x = b.input(["N", 24])
    h = x
    for k in range(4):
        h = b.relu(b.gemm(h, 24, 24, name=f"fc{k}"))
    model = b.build([h])
    pruned, res = prune_unstructured(model, ratio=0.5)
    names = [t["tensor"] for t in res.tensors]
    data = {"x": np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)}
    opts = RecoveryOptions(waves=1, pass_budget_s=None, max_rows=256)
    _, one = recover_unstructured(model, pruned, names, data, opts)
    small = RecoveryOptions(waves=1, pass_budget_s=None, max_rows=256, gram_budget_bytes=1)
    out, many = recover_unstructured(model, pruned, names, data, small)
    assert one.waves == 1 and many.waves == len(names) == 4
    assert len(many.layers) == 4 and many.to_dict()["mean_err_after"] < 0.5
    session(out).run(None, data)  # still a valid model


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_blas_limit_caps_threads_inside_its_block_only():
    before = _blas_threads()
    with blas_limit(1):
        assert set(_blas_threads()) == {1}
    assert _blas_threads() == before
    with blas_limit(None):
        assert _blas_threads() == before
