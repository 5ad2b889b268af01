"""Gram matrices of one layer's inputs, (pruned, original), over sampled calibration rows.

``LayerStats`` reduces the rows it is given to ``G_pp = sum x_p x_p^T`` and
``G_op = sum x_o x_p^T`` (a constant 1 appended to every row: ``augment``), holding a few
hundred rows aside to measure the layer's output error before and after its refit
(``rel_err``).
"""

from __future__ import annotations

import numpy as np

from onnxprune.recovery.layers import Layer

__all__ = ["FOLD_BYTES", "LayerStats", "augment", "rel_err", "stats_bytes"]

_CHECK_ROWS = 256  # rows kept per layer to measure the output error before and after
FOLD_BYTES = 32 << 20
"""Most buffered rows per layer (both models, bytes) before they are folded into the Gram
matrices; a layer folds after ``FOLD_ROWS`` rows already when those take less."""
FOLD_ROWS = 512
"""Rows per fold that keep it compute-bound: a fold costs rows x d^2 multiply-adds and one
rewrite of the d^2 sums, so 512 rows spend 512 times more on arithmetic than on memory."""


class LayerStats:
    """Gram matrices of one layer's (pruned, original) inputs over sampled rows.

    Rows are buffered and folded in chunks of about ``fold_bytes``: folding a few rows per
    batch would rewrite a 4609^2 matrix for every image. Memory: ``nbytes`` (the sums,
    which do not grow with the samples) plus at most ``fold_bytes`` of rows plus the
    held-out check rows (``_CHECK_ROWS``); ``stats_bytes`` bounds it before any row is
    seen, so the driver can size its waves. The sums are float32, as the products that
    make them (float32 BLAS on float32 activations; at most ``max_rows`` rows, a few folds):
    float64 doubled ResNet-50's 0.95 GB of Gram matrices and changed no figure.
    """

    def __init__(
        self,
        layer_p: Layer,
        layer_o: Layer,
        group_map: np.ndarray | None,
        holdout: bool,
        *,
        target: np.ndarray | None = None,
        fold_bytes: int = FOLD_BYTES,
    ) -> None:
        self.lp, self.lo = layer_p, layer_o
        self.target = None if target is None else np.asarray(target, dtype=np.float32)
        self.fold_bytes = max(1, int(fold_bytes))
        self.tgop: np.ndarray | None = None
        """``target @ G_op`` accumulated directly (``sum (T x_o) x_p^T``), when ``target``
        is given and that is cheaper than ``G_op``: a 4609-wide 3x3 Conv with 512 outputs
        costs 2 x 512 instead of 4609 multiply-adds per row and input."""
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
        """Fold rows ``picks`` of the pruned layer's input ``xp`` and the original's ``xo``."""
        self.add_rows(xp, self.original_rows(xo, picks), picks)

    def original_rows(self, xo: np.ndarray, picks: np.ndarray) -> np.ndarray:
        """Rows ``picks`` of the original layer's input as ``add_rows`` takes them
        (``[rows, g, do+1]``: kept groups, bias input appended), a copy of ``xo``'s values.

        Why apart from ``add``: the original model can run first, its rows kept and its
        session closed, before the pruned model opens (``recovery.passes``)."""
        ro = self.lo.rows(xo, picks)
        if self.group_map is not None:
            ro = ro[:, self.group_map]
        return augment(ro)

    def add_rows(self, xp: np.ndarray, ro: np.ndarray, picks: np.ndarray) -> None:
        """``add`` with the original's rows already taken (``original_rows``)."""
        rp = augment(self.lp.rows(xp, picks))
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
        if self._buffered >= min(self.fold_bytes, FOLD_ROWS * (rp.nbytes + ro.nbytes) // max(1, len(rp))):
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
            p = rp[:, 0]
            gpp = (p.T @ p)[None]
        else:
            gpp = rp.transpose(1, 2, 0) @ rp.transpose(1, 0, 2)  # [g, d+1, d+1]
        if self.gpp is None:
            self.gpp = gpp.astype(np.float32, copy=False)
        else:
            self.gpp += gpp
        if self._use_target(rp.shape[2], ro.shape[2]):
            part = _target_cross(self.target, ro, rp)
            if self.tgop is None:
                self.tgop = part.astype(np.float32, copy=False)
            else:
                self.tgop += part
        else:
            gop = ro.transpose(1, 2, 0) @ rp.transpose(1, 0, 2)  # [g, do+1, dp+1]
            if self.gop is None:
                self.gop = gop.astype(np.float32, copy=False)
            else:
                self.gop += gop

    def _use_target(self, dp: int, do: int) -> bool:
        if self.target is None or self.gop is not None:
            return False
        return self.tgop is not None or self.target.shape[1] * (dp + do) < dp * do

    def target_gop(self, target: np.ndarray) -> np.ndarray:
        """``target @ G_op`` ``[g, out, dp+1]``: the right-hand side of every solver."""
        if self.tgop is not None:
            return self.tgop
        return np.asarray(target, dtype=np.float64) @ self.gop

    def merge(self, other: LayerStats) -> LayerStats:
        """Add ``other``'s sums (the same layer, another shard of the calibration set) to
        these: the sums are over rows, so shards reduce to the statistics of the whole set.
        Check rows are kept from this shard first, up to ``_CHECK_ROWS``."""
        self.fold()
        other.fold()
        for name in ("gpp", "gop", "tgop"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs.copy() if mine is None else mine + theirs)
        room = _CHECK_ROWS - sum(len(c) for c in self.check_p)
        for cp, co in zip(other.check_p, other.check_o, strict=True):
            if room > 0:
                self.check_p.append(cp[:room])
                self.check_o.append(co[:room])
                room -= len(cp[:room])
        self.rows += other.rows
        self._counted += other._counted
        return self

    @property
    def nbytes(self) -> int:
        """Bytes held: the sums, the buffered rows and the check rows."""
        held = [self.gpp, self.gop, self.tgop, *self.check_p, *self.check_o]
        return self._buffered + sum(a.nbytes for a in held if a is not None)


def stats_bytes(
    out: int, dp1: int, do1: int, groups: int, rows: int, batch_rows: int, fold_bytes: int
) -> int:
    """Most bytes a ``LayerStats`` (given its target) holds for a layer ``[groups, out, dp1]``
    reading ``do1`` original inputs (bias input included), fed ``rows`` rows in all and at
    most ``batch_rows`` at a time: its target and float32 sums, the buffered rows (under
    ``fold_bytes`` before a batch is added, and never more than all rows) and the check
    rows."""
    cross = out * dp1 if out * (dp1 + do1) < dp1 * do1 else do1 * dp1
    row = 4 * groups * (dp1 + do1)
    buffered = min(rows * row, min(fold_bytes, FOLD_ROWS * row) + batch_rows * row)
    return 4 * groups * (dp1 * dp1 + cross + out * do1) + row * _CHECK_ROWS + buffered


def _target_cross(target: np.ndarray, ro: np.ndarray, rp: np.ndarray) -> np.ndarray:
    """``sum_rows (T x_o) x_p^T`` per group, ``[g, out, dp+1]``, float32 products."""
    if rp.shape[1] == 1:
        y = ro[:, 0] @ target[0].T  # [rows, out]: the original layer's outputs
        return (y.T @ rp[:, 0])[None]
    y = ro.transpose(1, 0, 2) @ target.transpose(0, 2, 1)  # [g, rows, out]
    return y.transpose(0, 2, 1) @ rp.transpose(1, 0, 2)


def augment(rows: np.ndarray) -> np.ndarray:
    """``[rows, g, d]`` with a constant 1 appended to each row (the bias input)."""
    ones = np.ones((*rows.shape[:2], 1), dtype=rows.dtype)
    return np.concatenate([rows, ones], axis=2)


def rel_err(w: np.ndarray, target: np.ndarray, st: LayerStats) -> float:
    """``||w x_p - target x_o|| / ||target x_o||`` on the held-out check rows (NaN: none)."""
    if not st.check_p:
        return float("nan")
    xp = np.concatenate(st.check_p).transpose(1, 0, 2)  # [g, rows, dp+1]
    xo = np.concatenate(st.check_o).transpose(1, 0, 2)
    got = xp @ w.transpose(0, 2, 1).astype(np.float32)  # [g, rows, out]
    want = xo @ target.transpose(0, 2, 1).astype(np.float32)
    den = float(np.linalg.norm(want))
    return float(np.linalg.norm(got - want)) / den if den > 0 else float(np.linalg.norm(got))
