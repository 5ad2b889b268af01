"""Recover accuracy after pruning from a few hundred unlabeled samples, without retraining.

Every refit layer ``y = W x + b`` (``onnxprune.recovery.layers``) is fitted so that, on calibration data,
the *pruned* model's input to it, ``x_p``, gives the *original* layer's output ``V x_o + c``:

    min_W  sum ||W x_p - (V x_o + c)||^2 + lam ||W - W_0||^2

Both sides come from onnxruntime runs of the two models on the same samples, reduced to the
Gram matrices ``G_pp = sum x_p x_p^T`` and ``G_op = sum x_o x_p^T`` (with a constant 1 appended
to ``x`` so the bias is fitted too), so memory is ``O(d^2)`` per layer, not ``O(samples)``.
Layers are processed in topological order in a few *waves*; each wave reads the model as
recovered so far, so a layer is fitted to the inputs it will really see and errors do not
accumulate (He et al. 2017, ThiNet; SparseGPT does the same block by block).

Three steps, each optional:

- ``bias``: only the mean: ``b += V mean(x_o) - W mean(x_p)`` (the expected contribution of
  removed channels and weights folded into the bias);
- ``lstsq`` (structured): the ridge least-squares solution above for every layer whose input
  changed; ``lam`` is ``damp`` times the mean diagonal of ``G_pp`` and pulls toward ``W_0``;
- ``obs`` (unstructured, N:M): the least-squares target is then sparsified column by column
  with the optimal-brain-surgeon update of SparseGPT (Frantar & Alistarh 2023): the weights
  with the lowest ``w^2 / [H^-1]_jj`` go and the others absorb their error through the
  Cholesky factor of the damped inverse Hessian ``H = G_pp``.

Rows (tokens, patch positions) are sampled up to ``max_rows`` per layer: a Gram matrix is
well estimated from a few times ``d`` rows, and a 56x56 feature map over 128 images would give
400k of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.calibration import stats as calibrate
from onnxprune.graph.view import GraphView
from onnxprune.recovery.layers import Layer, find_layers
from onnxprune.structured.plan import Plan

_CHECK_ROWS = 256  # rows kept per layer to measure the output error before and after
_FOLD_BYTES = 32 << 20  # buffered rows per layer before they are folded into the Gram matrices


@dataclass(frozen=True)
class RecoveryOptions:
    bias: bool = True
    lstsq: bool = True
    obs: bool = True
    damp: float = 0.01
    """Ridge / Hessian damping, relative to the mean diagonal of the input Gram matrix."""
    max_rows: int = 3072
    """Input rows sampled per layer (tokens, patch positions) over all calibration samples."""
    waves: int = 16
    """Most passes over the data; each refits a consecutive run of layers."""
    pass_budget_s: float | None = 25.0
    """Fewer waves when ``waves`` passes of onnxruntime over the calibration data would take
    longer than this (measured on one batch); None: always ``waves``."""
    block: int = 128
    """Columns per OBS block (SparseGPT's lazy batch update)."""
    downstream: bool = False
    """Structured: refit every layer whose input changed, not only the consumers that lost
    input channels. More layers fitted to few samples generalize worse: on MiniLM (65
    sentences) held-out cosine 0.948 against 0.951 for consumers only."""
    seed: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    budget_bytes: int = calibrate.DEFAULT_BUDGET_BYTES

    @property
    def any(self) -> bool:
        return self.bias or self.lstsq or self.obs


@dataclass
class RecoveryResult:
    steps: list[str]
    layers: list[dict] = field(default_factory=list)
    """Per refit layer: name, op, method, rows, err_before, err_after (relative output
    error ``||W x_p - V x_o|| / ||V x_o||`` on calibration rows; for bias and lstsq, rows
    held out of the first fit, which decides whether the refit is kept)."""
    skipped: list[dict] = field(default_factory=list)
    samples: int = 0
    waves: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        known = [x for x in self.layers if np.isfinite(x["err_before"])]
        errs_b = [x["err_before"] for x in known]
        errs_a = [x["err_after"] for x in known]
        return {
            "steps": list(self.steps),
            "samples": self.samples,
            "waves": self.waves,
            "seconds": self.seconds,
            "layers_refit": len(self.layers),
            "mean_err_before": float(np.mean(errs_b)) if errs_b else None,
            "mean_err_after": float(np.mean(errs_a)) if errs_a else None,
            "layers": [{k: _finite_or_none(v) for k, v in x.items()} for x in self.layers],
            "skipped": [dict(x) for x in self.skipped],
        }


def _finite_or_none(v: object) -> object:
    """JSON has no NaN: an error that could not be measured is null."""
    return None if isinstance(v, float) and not np.isfinite(v) else v


# --------------------------------------------------------------------------------------------
# Statistics of one layer over the calibration data
# --------------------------------------------------------------------------------------------


class _LayerStats:
    """Gram matrices of one layer's (pruned, original) inputs over sampled rows.

    Rows are buffered and folded in chunks of about ``_FOLD_BYTES``: folding a few rows per
    batch would rewrite a 4609^2 float64 matrix for every image.
    """

    def __init__(
        self, layer_p: Layer, layer_o: Layer, group_map: np.ndarray | None, holdout: bool
    ) -> None:
        self.lp, self.lo = layer_p, layer_o
        self.holdout = holdout
        self.group_map = group_map
        self.gpp: np.ndarray | None = None
        self.gop: np.ndarray | None = None
        self.check_p: list[np.ndarray] = []
        self.check_o: list[np.ndarray] = []
        self._buf_p: list[np.ndarray] = []
        self._buf_o: list[np.ndarray] = []
        self._buffered = 0
        self._counted = 0
        self.rows = 0

    def add(self, xp: np.ndarray, xo: np.ndarray, picks: np.ndarray) -> None:
        rp = self.lp.rows(xp, picks)
        ro = self.lo.rows(xo, picks)
        if self.group_map is not None:
            ro = ro[:, self.group_map]
        rp, ro = _augment(rp), _augment(ro)
        kept = sum(len(c) for c in self.check_p)
        self._counted += len(rp)
        if kept < _CHECK_ROWS and not self.holdout:
            self.check_p.append(rp[: _CHECK_ROWS - kept])
            self.check_o.append(ro[: _CHECK_ROWS - kept])
        elif kept < _CHECK_ROWS:
            # Every 5th row (counted across batches: a classifier after pooling sees one row
            # per image) is held out of the fit: the layer's error before and after is
            # measured on rows it was not fitted to, and a refit that does worse there is
            # dropped (a wide layer fitted to a few hundred tokens can memorize them).
            held = (self._counted + np.arange(len(rp))) % 5 == 4
            held[np.flatnonzero(held)[_CHECK_ROWS - kept :]] = False
            self.check_p.append(rp[held])
            self.check_o.append(ro[held])
            rp, ro = rp[~held], ro[~held]
        self.rows += len(rp)
        self._buf_p.append(rp)
        self._buf_o.append(ro)
        self._buffered += rp.nbytes + ro.nbytes
        if self._buffered >= _FOLD_BYTES:
            self.fold()

    def fold_held_out(self) -> bool:
        """Add the held-out rows to the fit, once they have served their purpose; False when
        they are too few to change it (under a tenth of the rows): no second fit needed."""
        held = sum(len(c) for c in self.check_p)
        if not (self.holdout and held * 10 > self.rows):
            return False
        self._buf_p.extend(self.check_p)
        self._buf_o.extend(self.check_o)
        self.rows += held
        self.holdout = False
        self.fold()
        return True

    def fold(self) -> None:
        """Add the buffered rows to the Gram matrices."""
        if not self._buf_p:
            return
        rp = np.concatenate(self._buf_p)
        ro = np.concatenate(self._buf_o)
        self._buf_p, self._buf_o, self._buffered = [], [], 0
        if rp.shape[1] == 1:  # one group: 2-D products (A^T A runs as a symmetric rank-k update)
            p, o = rp[:, 0], ro[:, 0]
            gpp, gop = (p.T @ p)[None], (o.T @ p)[None]
        else:
            a = rp.transpose(1, 2, 0)  # [g, d+1, rows]
            gpp = a @ rp.transpose(1, 0, 2)
            gop = ro.transpose(1, 2, 0) @ rp.transpose(1, 0, 2)
        if self.gpp is None:
            self.gpp, self.gop = gpp.astype(np.float64), gop.astype(np.float64)
        else:
            self.gpp += gpp
            self.gop += gop


def _augment(rows: np.ndarray) -> np.ndarray:
    ones = np.ones((*rows.shape[:2], 1), dtype=rows.dtype)
    return np.concatenate([rows, ones], axis=2)


# --------------------------------------------------------------------------------------------
# Solvers (pure numpy on one layer)
# --------------------------------------------------------------------------------------------


def _ridge(gpp: np.ndarray, damp: float, fit_bias: bool, prior_rows: bool = False) -> np.ndarray:
    """``G_pp`` plus ``lam`` on the weight diagonal (not the bias row/column).

    ``lam`` is ``damp`` times the mean diagonal; with ``prior_rows`` the prior is also worth
    ``d`` rows of data (``lam += d * mean(x^2)``), so a layer fitted from fewer rows than it
    has inputs (a 1536-wide layer from 800 tokens) stays near its starting weights instead
    of fitting the calibration set exactly and failing on new data.
    """
    a = gpp.copy()
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
    gop: np.ndarray,
    damp: float,
    fit_bias: bool,
    prior_rows: bool = False,
) -> np.ndarray:
    """argmin_W sum ||W x_p - T x_o||^2 + lam ||W - W0||^2, all ``[g, out, d+1]`` with bias last.

    ``fit_bias`` False keeps ``W0``'s bias column; ``prior_rows``: see ``_ridge``.
    """
    a = _ridge(gpp, damp, fit_bias, prior_rows)
    d = a.shape[-1] - 1
    rhs = target @ gop  # [g, out, dp+1]
    lam = a[:, np.arange(d), np.arange(d)] - gpp[:, np.arange(d), np.arange(d)]  # [g, d]
    rhs[..., :d] += w0[..., :d] * lam[:, None, :]
    if not fit_bias:
        rhs[..., :d] -= w0[..., d:] * gpp[:, None, d, :d]  # the kept bias times sum(x_p)
        rhs[..., d] = w0[..., d]
    # a is symmetric: W a = rhs  <=>  a W^T = rhs^T
    return np.linalg.solve(a, rhs.transpose(0, 2, 1)).transpose(0, 2, 1)


def mean_shift(
    target: np.ndarray, w: np.ndarray, gpp: np.ndarray, gop: np.ndarray
) -> np.ndarray:
    """``w`` with its bias column moved so that mean outputs match: bias compensation."""
    n = gpp[:, -1, -1]  # rows seen
    mean_p = gpp[:, -1, :] / n[:, None]  # [g, dp+1], last entry 1
    mean_o = gop[:, :, -1] / n[:, None]  # [g, do+1]
    out = w.copy()
    shift = np.einsum("god,gd->go", target, mean_o) - np.einsum("god,gd->go", w, mean_p)
    out[..., -1] += shift
    return out


def obs_factor(hessian: np.ndarray, damp: float) -> tuple[np.ndarray, np.ndarray]:
    """(U, H) for the damped ``hessian`` ``[d+1, d+1]``: U upper with H^-1 = U^T U.

    The upper Cholesky factor of the inverse comes from the lower Cholesky factor of H with
    its order reversed (U = P L^-1 P for P H P = L L^T), so no general inverse is formed:
    inverting a 4609-wide H took 9 s here, the factor and a triangular inverse about 2.5 s.
    float32, as SparseGPT uses: the damping keeps H well conditioned.
    """
    d = hessian.shape[-1] - 1
    h = _ridge(hessian[None], damp, True)[0]
    h[d, d] += damp * max(1.0, float(np.mean(np.diagonal(h)[:d])) if d else 1.0)
    flipped = np.ascontiguousarray(h[::-1, ::-1], dtype=np.float32)
    try:
        lower = np.linalg.cholesky(flipped)
    except np.linalg.LinAlgError:
        lower = np.linalg.cholesky(flipped + 1e-3 * np.mean(np.diagonal(flipped)) * np.eye(d + 1, dtype=np.float32))
    return np.ascontiguousarray(_inv_lower(lower)[::-1, ::-1]), h


def _inv_lower(m: np.ndarray) -> np.ndarray:
    """Inverse of a lower-triangular matrix by halves, so the work runs as matrix products
    (numpy has no triangular inverse; its general one is several times slower)."""
    n = len(m)
    if n <= 256:
        return np.tril(np.linalg.inv(m))
    k = n // 2
    a, d = _inv_lower(m[:k, :k]), _inv_lower(m[k:, k:])
    out = np.zeros_like(m)
    out[:k, :k] = a
    out[k:, k:] = d
    out[k:, :k] = -(d @ (m[k:, :k] @ a))
    return out


def obs_sparsify(
    w: np.ndarray,
    hessian: np.ndarray,
    *,
    zeros: int | None = None,
    nm: tuple[int, int] | None = None,
    block: int = 128,
    damp: float = 0.01,
    factor: np.ndarray | None = None,
) -> np.ndarray:
    """SparseGPT on ``w`` ``[out, d+1]`` (bias last, never pruned) with ``H`` ``[d+1, d+1]``.

    Zeroes ``zeros`` weights (spread over column blocks in proportion to their size, chosen
    inside each block by ``w^2 / [H^-1]_jj^2``) or keeps ``nm`` = (N, M) of every M columns per
    row; the remaining weights of later columns (and the bias) absorb each removal's error.
    ``factor``: U of ``obs_factor`` when the caller has it already.
    """
    w = w.astype(np.float32)
    out, cols = w.shape
    d = cols - 1
    dead = np.diagonal(hessian)[:d] == 0
    u = factor if factor is not None else obs_factor(hessian, damp)[0]
    if nm is not None:
        block = max(nm[1], block - block % nm[1])  # N:M groups must not straddle two blocks
    quota = _block_quota(d, block, out, zeros) if zeros is not None else None
    for b, i1 in enumerate(range(0, d, block)):
        i2 = min(i1 + block, d)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        diag = np.diagonal(u1)
        mask = np.zeros(w1.shape, dtype=bool)  # True: zero this weight
        if quota is not None and quota[b]:
            sal = w1**2 / diag[None, :] ** 2
            sal[:, dead[i1:i2]] = -1.0  # inputs that never fire go first, for free
            flat = np.argpartition(sal.ravel(), quota[b] - 1)[: quota[b]]
            mask.ravel()[flat] = True
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                n, m = nm
                sal = w1[:, j : j + m] ** 2 / diag[None, j : j + m] ** 2
                drop = np.argpartition(sal, m - n - 1, axis=1)[:, : m - n]
                np.put_along_axis(mask[:, j : j + m], drop, True, axis=1)
            col = w1[:, j]
            q = np.where(mask[:, j], 0.0, col)
            e = (col - q) / diag[j]
            w1[:, j:] -= np.outer(e, u1[j, j:])
            w1[:, j] = q
            err[:, j] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w


def _block_quota(d: int, block: int, out: int, zeros: int) -> list[int]:
    """Zeros per column block, proportional to block size, summing exactly to ``zeros``."""
    sizes = [min(block, d - i) * out for i in range(0, d, block)]
    total = sum(sizes)
    raw = [zeros * s / total for s in sizes]
    quota = [math.floor(r) for r in raw]
    for k in sorted(range(len(raw)), key=lambda k: quota[k] - raw[k])[: zeros - sum(quota)]:
        quota[k] += 1
    return [min(q, s) for q, s in zip(quota, sizes, strict=True)]


def _rel_err(w: np.ndarray, target: np.ndarray, st: _LayerStats) -> float:
    if not st.check_p:
        return float("nan")
    xp = np.concatenate(st.check_p).transpose(1, 0, 2)  # [g, rows, dp+1]
    xo = np.concatenate(st.check_o).transpose(1, 0, 2)
    got = xp @ w.transpose(0, 2, 1).astype(np.float32)  # [g, rows, out]
    want = xo @ target.transpose(0, 2, 1).astype(np.float32)
    den = float(np.linalg.norm(want))
    return float(np.linalg.norm(got - want)) / den if den > 0 else float(np.linalg.norm(got))


# --------------------------------------------------------------------------------------------
# Reading and writing one layer's parameters in a model
# --------------------------------------------------------------------------------------------


class _Params:
    """Initializer access by name, and a bias created where a layer has none."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.names = set(self.inits) | {o for n in model.graph.node for o in n.output}

    def get(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def set(self, name: str, value: np.ndarray) -> None:
        t = self.inits[name]
        t.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(t).dtype), name))

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def add_bias(self, layer: Layer, value: np.ndarray, dtype: np.dtype) -> None:
        """Give ``layer`` a bias input (Conv B, Gemm C) or an Add after a MatMul."""
        name = self.fresh(f"{layer.weight}_recovered_bias")
        self.model.graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name))
        node = next(n for n in self.model.graph.node if n.output and n.output[0] == layer.y)
        if layer.op in ("Conv", "Gemm"):
            while len(node.input) < 2:
                node.input.append("")
            node.input.append(name)
            for k in reversed(range(len(node.attribute))):
                if node.attribute[k].name == "beta":  # it scaled an absent C: now it would not
                    del node.attribute[k]
            return
        pre = self.fresh(f"{layer.y}_before_bias")
        node.output[0] = pre
        add = onnx.helper.make_node("Add", [pre, name], [layer.y], name=self.fresh(f"{layer.y}_bias"))
        nodes = list(self.model.graph.node)
        at = next(k for k, n in enumerate(nodes) if n is node or n.output[0] == pre)
        self.model.graph.node.insert(at + 1, add)


def _augmented(layer: Layer, params: _Params) -> np.ndarray:
    """``[g, out, d+1]``: the layer's weight matrix with its bias (0 if none) as last column."""
    m = layer.matrix(params.get(layer.weight))
    b = params.get(layer.bias).astype(np.float64) if layer.bias else np.zeros(m.shape[:2])
    return np.concatenate([m, b.reshape(*m.shape[:2], 1)], axis=2)


def _write(layer: Layer, params: _Params, wb: np.ndarray, write_bias: bool) -> None:
    like = params.get(layer.weight)
    params.set(layer.weight, layer.unmatrix(wb[..., :-1], like))
    if not write_bias:
        return
    bias = wb[..., -1].reshape(-1)
    if layer.bias:
        params.set(layer.bias, bias)
    elif np.any(bias != 0):
        params.add_bias(layer, bias, like.dtype)


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


@dataclass
class _Target:
    lp: Layer
    lo: Layer
    rows: np.ndarray | None
    """Kept output rows of the original weight (flat over groups); None: all."""
    group_map: np.ndarray | None
    """Kept groups of a grouped Conv that lost whole groups; None: the same groups."""
    method: str
    zeros: int | None = None
    nm: tuple[int, int] | None = None


def _reference(lo: Layer, params_o: _Params, t: _Target) -> np.ndarray:
    """``[g_p, out_p, do+1]``: the original weight and bias rows the pruned layer must match."""
    full = _augmented(lo, params_o)  # [g_o, opg_o, do+1]
    g_o, opg_o, _ = full.shape
    if t.rows is None:
        return full
    rows = np.asarray(t.rows)
    groups = t.group_map if t.group_map is not None else np.arange(g_o)
    out = []
    for kg in groups:
        local = rows[(rows >= kg * opg_o) & (rows < (kg + 1) * opg_o)] - kg * opg_o
        out.append(full[kg, local])
    return np.stack(out)


def _live_rows(layer: Layer, x_shape: tuple[int, ...], feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows of a [batch, tokens, features] MatMul input that an attention mask keeps.

    Padded tokens flow through every layer but nothing reads their results; in a batch of
    short sentences they are most of the rows and would dominate the fit. A 2-D integer or
    bool feed named like ``*mask*`` with the input's [batch, tokens] shape marks them.
    """
    n = layer.positions(x_shape)
    if layer.op != "MatMul" or len(x_shape) != 3:
        return np.arange(n)
    for name, value in feed.items():
        if (
            "mask" in name.lower()
            and value.ndim == 2
            and value.shape == tuple(x_shape[:2])
            and value.dtype.kind in "iub"
        ):
            return np.flatnonzero(value.reshape(-1) != 0)
    return np.arange(n)


def _wave_count(
    original: onnx.ModelProto, inputs: Mapping[str, np.ndarray], targets: list[_Target],
    opts: RecoveryOptions, samples: int,
) -> int:  # fmt: skip
    """``opts.waves``, or fewer so the passes fit ``opts.pass_budget_s``.

    Wave k of w runs both models up to its last layer only, about k/w of a full pass each,
    so w waves cost about (w + 1) / 2 full passes of the original and the pruned model.
    """
    wanted = max(1, min(opts.waves, len(targets)))
    if opts.pass_budget_s is None or wanted == 1:
        return wanted
    sess = calibrate.session(original, opts.providers)
    batch = calibrate.batch_size_for(sess, samples)
    feed = next(calibrate.batches(inputs, batch, [i.name for i in sess.get_inputs()],
                                  fixed=calibrate.fixed_batch(sess) is not None))  # fmt: skip
    sess.run(None, feed)  # warm-up: the first run allocates
    t0 = time.perf_counter()
    sess.run(None, feed)
    full = (time.perf_counter() - t0) * samples / batch * 2  # original and pruned
    for w in range(wanted, 1, -1):
        if full * (w + 1) / 2 <= opts.pass_budget_s:
            return w
    return 1


def _waves(targets: list[_Target], count: int) -> list[list[_Target]]:
    if not targets:
        return []
    count = max(1, min(count, len(targets)))
    size = math.ceil(len(targets) / count)
    return [targets[i : i + size] for i in range(0, len(targets), size)]


def _run(
    original: onnx.ModelProto,
    current: onnx.ModelProto,
    targets: list[_Target],
    inputs: Mapping[str, np.ndarray],
    opts: RecoveryOptions,
    result: RecoveryResult,
    progress: Callable[[int], None] | None,
) -> onnx.ModelProto:
    params_o = _Params(original)
    params_p = _Params(current)
    rng = np.random.default_rng(opts.seed)
    result.samples = calibrate.sample_count(inputs)
    waves = _waves(targets, _wave_count(original, inputs, targets, opts, result.samples))
    result.waves = len(waves)
    for wave in waves:
        xs = list(dict.fromkeys(t.lo.x for t in wave))
        sess_o = calibrate.session(calibrate.tapped_model(original, xs, only=True), opts.providers)
        sess_p = calibrate.session(calibrate.tapped_model(current, xs, only=True), opts.providers)
        batch = calibrate.batch_size_for(sess_o, result.samples)
        n_batches = max(1, result.samples // batch)
        stats = {id(t): _LayerStats(t.lp, t.lo, t.group_map, t.method != "obs") for t in wave}
        feeds_o = calibrate.run_taps(sess_o, inputs, xs, batch)
        feeds_p = calibrate.run_taps(sess_p, inputs, xs, batch)
        for (feed, vo), (_, vp) in zip(feeds_o, feeds_p, strict=True):
            for t in wave:
                xo, xp = vo[t.lo.x], vp[t.lp.x]
                rows = _live_rows(t.lo, xo.shape, feed)
                take = min(len(rows), math.ceil(opts.max_rows / n_batches))
                picks = np.sort(rng.choice(rows, size=take, replace=False)) if take < len(rows) else rows
                if len(picks):
                    stats[id(t)].add(xp, xo, picks)
        for t in wave:
            stats[id(t)].fold()
            _refit(t, stats[id(t)], params_o, params_p, opts, result)
        if progress is not None:
            progress(len(wave))
    return current


def _refit(
    t: _Target, st: _LayerStats, params_o: _Params, params_p: _Params,
    opts: RecoveryOptions, result: RecoveryResult,
) -> None:  # fmt: skip
    if st.gpp is None:
        result.skipped.append({"layer": t.lp.label, "reason": "no calibration rows reached it"})
        return
    target = _reference(t.lo, params_o, t)
    w0 = _augmented(t.lp, params_p)
    before = _rel_err(w0, target, st)
    if t.method == "obs":
        shares = _shares(t.zeros, target.shape[0])
        rows = []
        for k in range(target.shape[0]):
            u, h = obs_factor(st.gpp[k], opts.damp)
            # The dense least-squares target, with the same damped H, toward the original.
            rhs = target[k] @ st.gop[k] + target[k] * (np.diagonal(h) - np.diagonal(st.gpp[k]))
            dense = (rhs.astype(np.float32) @ u.T) @ u  # rhs H^-1, H^-1 = U^T U
            rows.append(obs_sparsify(dense, st.gpp[k], zeros=shares[k], nm=t.nm,
                                     block=opts.block, factor=u))  # fmt: skip
        new = np.stack(rows)
        if not opts.bias:
            new[..., -1] = w0[..., -1]
    else:
        new = _fit(t, st, target, w0, opts)
    after = _rel_err(new, target, st)
    if t.method != "obs":
        if np.isnan(before):  # no held-out row (a layer seen once): keep the fit, say nothing
            pass
        elif not after <= before:
            new, after = w0, before  # never make a layer worse on rows it was not fitted to
        elif st.fold_held_out():  # the refit generalizes: fit once more with every row
            new = _fit(t, st, target, w0, opts)
    _write(t.lp, params_p, new, opts.bias or t.method == "lstsq")
    result.layers.append(
        {"layer": t.lp.label, "op": t.lp.op, "method": t.method, "rows": st.rows,
         "err_before": before, "err_after": after}
    )  # fmt: skip


def _fit(
    t: _Target, st: _LayerStats, target: np.ndarray, w0: np.ndarray, opts: RecoveryOptions
) -> np.ndarray:
    if t.method == "lstsq":
        return least_squares(target, w0, st.gpp, st.gop, opts.damp, opts.bias, prior_rows=True)
    return mean_shift(target, w0, st.gpp, st.gop)


def _shares(zeros: int | None, groups: int) -> list[int | None]:
    """``zeros`` split over the groups of a grouped Conv, summing exactly."""
    if zeros is None:
        return [None] * groups
    return [zeros // groups + (1 if k < zeros % groups else 0) for k in range(groups)]


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _start(
    pruned: onnx.ModelProto, options: RecoveryOptions, steps: tuple[str, ...]
) -> tuple[onnx.ModelProto, RecoveryResult]:
    """A copy of ``pruned`` to refit, and a result naming the steps ``options`` turn on."""
    current = onnx.ModelProto()
    current.CopyFrom(pruned)
    return current, RecoveryResult([s for s in steps if getattr(options, s)])


def recover_structured(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: Plan,
    inputs: Mapping[str, np.ndarray],
    options: RecoveryOptions = RecoveryOptions(),
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[onnx.ModelProto, RecoveryResult]:
    """Refit, in a copy of ``pruned``, the consumers that lost input channels (every layer
    whose input differs from the original's with ``options.downstream``).

    ``pruned`` must come from ``apply_plan(original, plan)``: tensor names match and the plan
    says which output rows each weight kept.
    """
    t0 = time.perf_counter()
    current, result = _start(pruned, options, ("bias", "lstsq"))
    if not result.steps:
        return current, result
    cuts = {(c.name, c.axis): c for c in plan.params}
    lo_by_y = {lay.y: lay for lay in find_layers(original)}
    changed = _changed_tensors(original, plan)
    method = "lstsq" if options.lstsq else "bias"
    targets = []
    for lp in find_layers(current):
        lo = lo_by_y.get(lp.y)
        consumer = (lo.weight, lo.in_axis) in cuts if lo is not None else False
        if lo is None or lp.x not in changed or not (consumer or options.downstream):
            continue
        if lo.op != lp.op:
            result.skipped.append({"layer": lp.label, "reason": "does not match the original"})
            continue
        out_cut = cuts.get((lo.weight, lo.out_axis))
        rows = np.asarray(out_cut.kept) if out_cut is not None else None
        group_map = None
        if lo.groups != lp.groups:
            opg = _out_channels(original, lo.weight) // lo.groups
            group_map = np.unique(rows // opg) if rows is not None else None
            if group_map is None or len(group_map) != lp.groups:
                result.skipped.append({"layer": lp.label, "reason": "groups changed unevenly"})
                continue
        targets.append(_Target(lp, lo, rows, group_map, method))
    current = _run(original, current, targets, inputs, options, result, progress)
    result.seconds = time.perf_counter() - t0
    return current, result


def _out_channels(model: onnx.ModelProto, conv_weight: str) -> int:
    return int(next(t for t in model.graph.initializer if t.name == conv_weight).dims[0])


def _changed_tensors(original: onnx.ModelProto, plan: Plan) -> set[str]:
    """Tensors whose values differ after the rewrite: downstream of any cut parameter."""
    view = GraphView(original, shapes=False)
    cut_names = {c.name for c in plan.params}
    changed: set[str] = set()
    for node in view.nodes:
        if any(i in cut_names or i in changed for i in node.input if i):
            changed.update(o for o in node.output if o)
    return changed


def recover_unstructured(
    reference: onnx.ModelProto,
    pruned: onnx.ModelProto,
    weights: Sequence[str],
    inputs: Mapping[str, np.ndarray],
    options: RecoveryOptions = RecoveryOptions(),
    *,
    nm: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[onnx.ModelProto, RecoveryResult]:
    """Reconstruct the layers of the zeroed ``weights`` of ``pruned`` (same graph as
    ``reference``, weights partly zeroed).

    With ``obs`` each layer is re-pruned to the same number of zeros (or the same N:M
    pattern) by SparseGPT on the pruned model's own inputs; otherwise its mask stays and only
    the bias moves (``bias``).
    """
    t0 = time.perf_counter()
    current, result = _start(pruned, options, ("bias", "obs"))
    if not result.steps:
        return current, result
    wanted = set(weights)
    lo_by_y = {lay.y: lay for lay in find_layers(reference)}
    params_p = _Params(current)
    params_o = _Params(reference)
    targets = []
    seen: set[str] = set()
    for lp in find_layers(current):
        lo = lo_by_y.get(lp.y)
        if lp.weight not in wanted or lo is None:
            continue
        if lp.weight in seen:
            result.skipped.append({"layer": lp.label, "reason": "weight shared with another node"})
            continue
        seen.add(lp.weight)
        w = params_p.get(lp.weight)
        zeros = int(w.size - np.count_nonzero(w))
        original_w = params_o.get(lo.weight)
        already = int(original_w.size - np.count_nonzero(original_w))
        if options.obs:
            if nm is not None and (lp.matrix(w).shape[-1] // (lp.kernel[0] * lp.kernel[1])) % nm[1]:
                result.skipped.append({"layer": lp.label, "reason": f"channels not a multiple of {nm[1]}"})
                continue
            targets.append(_Target(lp, lo, None, None, "obs", None if nm else max(zeros, already), nm))
        else:
            targets.append(_Target(lp, lo, None, None, "bias"))
    current = _run(reference, current, targets, inputs, options, result, progress)
    result.seconds = time.perf_counter() - t0
    return current, result
