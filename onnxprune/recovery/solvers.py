"""The per-layer solvers of recovery, pure numpy on Gram matrices.

``least_squares`` (ridge toward the starting weight), ``mean_shift`` (bias compensation),
and SparseGPT's optimal-brain-surgeon sparsification (``obs_factor``, ``obs_sparsify``).
Every matrix is ``[g, out, d+1]`` (or ``[d+1, d+1]`` for one group) with the bias last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np
from scipy.linalg import blas, lapack
from threadpoolctl import threadpool_limits

__all__ = [
    "blas_limit",
    "inverse_factor",
    "inverse_product",
    "least_squares",
    "mean_shift",
    "obs_factor",
    "obs_sparsify",
]


def blas_limit(threads: int | None) -> AbstractContextManager:
    """At most ``threads`` BLAS/LAPACK threads inside the block, in every BLAS loaded
    (numpy's and scipy's OpenBLAS are two libraries); None: unchanged."""
    if threads is None:
        return nullcontext()
    return threadpool_limits(limits=int(threads), user_api="blas")


def _ridge(gpp: np.ndarray, damp: float, fit_bias: bool, prior_rows: bool = False) -> np.ndarray:
    """``G_pp`` plus ``lam`` on the weight diagonal (not the bias row/column).

    ``lam`` is ``damp`` times the mean diagonal; with ``prior_rows`` the prior is also worth
    ``d`` rows of data (``lam += d * mean(x^2)``), so a layer fitted from fewer rows than it
    has inputs (a 1536-wide layer from 800 tokens) stays near its starting weights instead
    of fitting the calibration set exactly and failing on new data.
    """
    a = np.array(gpp, dtype=np.float64)  # the Gram sums are float32; the solves are not
    d = a.shape[-1] - 1
    for k in range(a.shape[0]):
        diag = np.diagonal(a[k])[:d]
        rows = max(1.0, float(a[k, d, d]))  # the constant 1 appended to every row counts them
        scale = damp + (d / rows if prior_rows else 0.0)
        lam = scale * float(np.mean(diag)) if d and np.mean(diag) > 0 else damp
        a[k, np.arange(d), np.arange(d)] += max(lam, 1e-8)
        if not fit_bias:
            a[k, d, :] = 0.0
            a[k, :, d] = 0.0
            a[k, d, d] = 1.0
    return a


def least_squares(
    target: np.ndarray,
    w0: np.ndarray,
    gpp: np.ndarray,
    gop: np.ndarray | None,
    damp: float,
    fit_bias: bool,
    prior_rows: bool = False,
    *,
    tgop: np.ndarray | None = None,
    overwrite_tgop: bool = False,
) -> np.ndarray:
    """argmin_W sum ||W x_p - T x_o||^2 + lam ||W - W0||^2, all ``[g, out, d+1]`` with bias last.

    ``fit_bias`` False keeps ``W0``'s bias column; ``prior_rows``: see ``_ridge``. ``tgop``:
    ``target @ gop`` when the caller accumulated it directly (``gop`` is then not needed);
    ``overwrite_tgop``: a float64 ``tgop`` may be used as the right-hand side in place.
    """
    a = _ridge(gpp, damp, fit_bias, prior_rows)
    d = a.shape[-1] - 1
    if tgop is None:
        rhs = target @ gop  # [g, out, dp+1]
    else:
        rhs = (np.asarray if overwrite_tgop else np.array)(tgop, dtype=np.float64)
    lam = a[:, np.arange(d), np.arange(d)] - gpp[:, np.arange(d), np.arange(d)]  # [g, d]
    rhs[..., :d] += w0[..., :d] * lam[:, None, :]
    if not fit_bias:
        rhs[..., :d] -= w0[..., d:] * gpp[:, None, d, :d]  # the kept bias times sum(x_p)
        rhs[..., d] = w0[..., d]
    # a is symmetric: W a = rhs  <=>  a W^T = rhs^T
    return np.linalg.solve(a, rhs.transpose(0, 2, 1)).transpose(0, 2, 1)


def mean_shift(
    target: np.ndarray,
    w: np.ndarray,
    gpp: np.ndarray,
    gop: np.ndarray | None,
    *,
    tgop: np.ndarray | None = None,
) -> np.ndarray:
    """``w`` with its bias column moved so that mean outputs match: bias compensation.
    ``tgop``: ``target @ gop``, as in ``least_squares``."""
    n = gpp[:, -1, -1]  # rows seen
    mean_p = gpp[:, -1, :] / n[:, None]  # [g, dp+1], last entry 1
    if tgop is not None:  # the last input is the constant 1: its column sums T x_o
        mean_t = tgop[:, :, -1] / n[:, None]
    else:
        mean_t = np.einsum("god,gd->go", target, gop[:, :, -1] / n[:, None])
    out = w.copy()
    shift = mean_t - np.einsum("god,gd->go", w, mean_p)
    out[..., -1] += shift
    return out


def obs_factor(hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(U, H) for the damped ``hessian`` ``[d+1, d+1]``: U upper with H^-1 = U^T U.

    The upper Cholesky factor of the inverse comes from the lower Cholesky factor of H with
    its order reversed (U = P L^-1 P for P H P = L L^T), so no general inverse is formed.
    LAPACK's potrf and trtri through scipy: numpy's float32 ``cholesky`` plus a triangular
    inverse by halves took 2.6 CPU s for a 4609-wide H here, potrf + trtri 0.75 CPU s.
    float32, as SparseGPT uses: the damping keeps H well conditioned. A leading group axis
    (``[g, d+1, d+1]``, a grouped Conv) gives ``[g, d+1, d+1]`` factors.
    """
    if hessian.ndim == 3:
        pairs = [obs_factor(h, damp) for h in hessian]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    d = hessian.shape[-1] - 1
    h = _ridge(hessian[None], damp, True)[0]
    h[d, d] += damp * max(1.0, float(np.mean(np.diagonal(h)[:d])) if d else 1.0)
    return inverse_factor(h), h


def inverse_factor(h: np.ndarray) -> np.ndarray:
    """U (float32, upper, C order) with ``h^-1 = U^T U`` for a symmetric positive ``h``.

    ``h`` reversed is factored as L L^T (potrf) and L inverted in place (trtri); U is
    L^-1 reversed back. A factorization that fails (H singular in float32) is retried with
    1e-3 of the mean diagonal added, as before.
    """
    n = len(h)
    # Symmetric: the transpose of the C-order reversed copy is the same matrix in Fortran
    # order, so LAPACK works on it in place, without another copy.
    flipped = np.ascontiguousarray(h[::-1, ::-1], dtype=np.float32).T
    lower, info = lapack.spotrf(flipped, lower=1, clean=1, overwrite_a=0)
    if info != 0:
        jitter = 1e-3 * float(np.mean(np.diagonal(flipped)))
        jittered = flipped + jitter * np.eye(n, dtype=np.float32)
        lower, info = lapack.spotrf(jittered, lower=1, clean=1)
    if info != 0:
        raise np.linalg.LinAlgError("the damped Hessian is not positive definite")
    inv, info = lapack.strtri(lower, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError("the Cholesky factor of the Hessian is singular")
    return np.ascontiguousarray(inv[::-1, ::-1])


def inverse_product(rhs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``rhs @ H^-1`` = ``rhs U^T U`` (``rhs`` ``[out, d+1]``, U of ``inverse_factor``) as two
    triangular products (trmm: half the work of two general ones), float32."""
    lt = u.T  # lower, Fortran order: no copy
    b = np.ascontiguousarray(rhs, dtype=np.float32).T  # [d+1, out], Fortran order
    x = blas.strmm(1.0, lt, b, side=0, lower=1, trans_a=1)  # U rhs^T
    return blas.strmm(1.0, lt, x, side=0, lower=1, trans_a=0, overwrite_b=1).T  # U^T U rhs^T


def obs_sparsify(
    w: np.ndarray,
    hessian: np.ndarray,
    *,
    zeros: int | Sequence[int] | None = None,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damp: float = 0.01,
    factor: np.ndarray | None = None,
) -> np.ndarray:
    """SparseGPT on ``w`` ``[out, d+1]`` (bias last, never pruned) with ``H`` ``[d+1, d+1]``.

    Zeroes ``zeros`` weights (spread over column blocks in proportion to their size, chosen
    inside each block by ``w^2 / [H^-1]_jj^2``) or keeps ``nm`` = (N, M) of every M columns per
    row; the remaining weights of later columns (and the bias) absorb each removal's error.
    ``factor``: U of ``obs_factor`` when the caller has it already. With a leading group
    axis (``w`` ``[g, out, d+1]``, ``H`` and U ``[g, d+1, d+1]``, ``zeros`` one count per
    group) all groups are solved together.

    Lazy batches as in SparseGPT's Algorithm 1 (Frantar & Alistarh 2023): all rows at once;
    a column's update touches only its block's ``[block, out]`` working copy (transposed, so
    a column's rows are contiguous), and each block's errors reach the later columns in one
    product. The same arithmetic as one column at a time over the whole row (the masks are
    chosen from the same, fully updated, weights), in another order.
    """
    if w.ndim == 2:
        u = factor[None] if factor is not None else None
        z = None if zeros is None else [int(zeros)]  # type: ignore[arg-type]
        return _obs_groups(w[None], hessian[None], z, nm, block, damp, u)[0]
    z = None if zeros is None else [int(k) for k in zeros]  # type: ignore[union-attr]
    return _obs_groups(w, hessian, z, nm, block, damp, factor)


def _obs_groups(
    w: np.ndarray, hessian: np.ndarray, zeros: list[int] | None, nm: tuple[int, int] | None,
    block: int, damp: float, u: np.ndarray | None,
) -> np.ndarray:  # fmt: skip
    """``obs_sparsify`` on ``[g, out, d+1]``, one group at a time (numpy's stacked products
    were slower than a loop of plain ones here)."""
    w = w.astype(np.float32)
    u = u if u is not None else obs_factor(hessian, damp)[0]
    if nm is not None:
        block = max(nm[1], block - block % nm[1])  # N:M groups must not straddle two blocks
    for k in range(len(w)):
        dead = np.diagonal(hessian[k])[:-1] == 0
        _obs_one(w[k], u[k], dead, None if zeros is None else zeros[k], nm, block)
    return w


def _obs_one(w: np.ndarray, u: np.ndarray, dead: np.ndarray, zeros: int | None,
             nm: tuple[int, int] | None, block: int) -> None:  # fmt: skip
    """One group's ``w`` ``[out, d+1]`` in place; the block's working copy is ``[B, out]``
    (one column's rows contiguous)."""
    out, d = w.shape[0], w.shape[1] - 1
    quota = _block_quota(d, block, out, zeros) if zeros is not None else None
    for b, i1 in enumerate(range(0, d, block)):
        i2 = min(i1 + block, d)
        w1 = np.ascontiguousarray(w[:, i1:i2].T)  # [B, out]
        u1 = np.ascontiguousarray(u[i1:i2, i1:i2])
        diag = np.diagonal(u1).copy()
        mask = np.zeros(w1.shape, dtype=bool)  # True: zero this weight
        if quota is not None and quota[b]:
            sal = w1.T**2 / diag[None, :] ** 2  # [out, B], ranked row-major as before
            sal[:, dead[i1:i2]] = -1.0  # inputs that never fire go first, for free
            flat = np.argpartition(sal.ravel(), quota[b] - 1)[: quota[b]]
            picked = np.zeros(sal.size, dtype=bool)
            picked[flat] = True
            mask = np.ascontiguousarray(picked.reshape(sal.shape).T)
        err = _block_solve(w1, u1, diag, mask, nm)
        w[:, i1:i2] = w1.T
        w[:, i2:] -= err.T @ u[i1:i2, i2:]


def _block_solve(w1: np.ndarray, u1: np.ndarray, diag: np.ndarray, mask: np.ndarray,
                 nm: tuple[int, int] | None) -> np.ndarray:  # fmt: skip
    """Zero ``mask`` in the block ``w1`` ``[B, out]`` in place, column by column, each
    column's error compensated by the block's later columns; the errors ``[B, out]``.
    N:M: each group of M columns is chosen when its first column comes up.

    Elementwise, no matrix products: small products of numpy's BLAS were erratic here
    (2 ms to 40 ms for one 128-column block split in inner batches of 16 or 32, with
    the machine shared), a column's update of its block's rows is ~20 us."""
    err = np.zeros_like(w1)
    for j in range(len(w1)):
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            sal = w1[j : j + m].T ** 2 / diag[None, j : j + m] ** 2  # [out, m]
            drop = np.argpartition(sal, m - n - 1, axis=1)[:, : m - n]
            np.put_along_axis(mask[j : j + m].T, drop, True, axis=1)
        col = w1[j]
        q = np.where(mask[j], 0.0, col)
        e = (col - q) / diag[j]
        w1[j + 1 :] -= u1[j, j + 1 :, None] * e[None, :]
        w1[j] = q
        err[j] = e
    return err


def _block_quota(d: int, block: int, out: int, zeros: int) -> list[int]:
    """Zeros per column block, proportional to block size, summing exactly to ``zeros``."""
    sizes = [min(block, d - i) * out for i in range(0, d, block)]
    total = sum(sizes)
    raw = [zeros * s / total for s in sizes]
    quota = [math.floor(r) for r in raw]
    for k in sorted(range(len(raw)), key=lambda k: quota[k] - raw[k])[: zeros - sum(quota)]:
        quota[k] += 1
    return [min(q, s) for q, s in zip(quota, sizes, strict=True)]
