"""Gram matrices of one layer's inputs, (pruned, original), over sampled calibration rows.

``LayerStats`` reduces the rows it is given to ``G_pp = sum x_p x_p^T`` and
``G_op = sum x_o x_p^T`` (a constant 1 appended to every row: ``augment``), holding a few
hundred rows aside to measure the layer's output error before and after its refit
(``rel_err``).
"""

from __future__ import annotations

import numpy as np

from onnxprune.recovery.layers import Layer

__all__ = ["LayerStats", "augment", "rel_err"]

_CHECK_ROWS = 256  # rows kept per layer to measure the output error before and after
_FOLD_BYTES = 32 << 20  # buffered rows per layer before they are folded into the Gram matrices


class LayerStats:
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
        rp, ro = augment(rp), augment(ro)
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
