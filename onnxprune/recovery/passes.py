"""One wave's onnxruntime passes: the original model first, then the pruned one, never both.

Why: every refit layer needs, for the same calibration rows, its input in the original model
(``x_o``) and in the pruned model as recovered so far (``x_p``). Running the two tapped
sessions side by side holds both models' weights at once: on the 0.5B decoder with
``--calib`` that, with the Gram sums, peaked at 2.97x the weights. So the original runs
alone: for every batch and layer the rows sampled from it are kept (``LayerStats
.original_rows``: at most ``max_rows`` per layer, counted in ``waves.stats_size``), its session
is closed, and only then the pruned model's session opens; each of its batches is paired with
that batch's kept rows, folded into the Gram sums (``LayerStats.add_rows``) and the rows
dropped. Rows are picked in the same order as before (batch by batch, layer by layer, from
one generator), so the statistics, and the refits, are the same as with both sessions open.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx

from onnxprune.calibration.stats import batch_size_for, run_taps, session, tapped_model
from onnxprune.recovery.gram import LayerStats
from onnxprune.recovery.layers import Layer

if TYPE_CHECKING:
    from onnxprune.recovery.recover import RecoveryOptions, RecoveryResult

__all__ = ["WaveTarget", "live_rows", "wave_stats"]


class WaveTarget(Protocol):
    """What a pass needs of a refit target: its layer in the pruned and the original model."""

    lp: Layer
    lo: Layer

_Kept = list[dict[int, tuple[np.ndarray, np.ndarray]]]
"""Per batch: target id -> (picked row indices, the original's rows for them)."""


def wave_stats(
    original: onnx.ModelProto,
    current: onnx.ModelProto,
    wave: Sequence[WaveTarget],
    stats: Mapping[int, LayerStats],
    inputs: Mapping[str, np.ndarray],
    opts: RecoveryOptions,
    rng: np.random.Generator,
    result: RecoveryResult,
) -> None:
    """Feed ``stats`` (by target id) the rows of every layer of ``wave``: the original
    model's pass, its session closed, then the pruned model's (``current``) pass."""
    xs = list(dict.fromkeys(t.lo.x for t in wave))
    kept, batch = _original_pass(original, wave, stats, xs, inputs, opts, rng, result)
    _pruned_pass(current, wave, stats, xs, inputs, batch, kept, opts, result)


def _original_pass(
    original: onnx.ModelProto, wave: Sequence[WaveTarget], stats: Mapping[int, LayerStats],
    xs: list[str], inputs: Mapping[str, np.ndarray], opts: RecoveryOptions,
    rng: np.random.Generator, result: RecoveryResult,
) -> tuple[_Kept, int]:  # fmt: skip
    """The original's sampled rows of every batch and layer, and the batch size; the
    session is closed on return (nothing else refers to it)."""
    sess = session(tapped_model(original, xs, only=True), opts.providers)
    batch = batch_size_for(sess, result.samples)
    n_batches = max(1, result.samples // batch)
    kept: _Kept = []
    t0 = time.perf_counter()
    for feed, vo in run_taps(sess, inputs, xs, batch):
        t0 = result.timed("taps", t0)
        per: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for t in wave:
            xo = vo[t.lo.x]
            rows = live_rows(t.lo, xo.shape, feed)
            take = min(len(rows), math.ceil(opts.max_rows / n_batches))
            picks = np.sort(rng.choice(rows, size=take, replace=False)) if take < len(rows) else rows
            if len(picks):
                per[id(t)] = (picks, stats[id(t)].original_rows(xo, picks))
        kept.append(per)
        t0 = result.timed("gram", t0)
    result.timed("taps", t0)  # the generator's last, empty step
    return kept, batch


def _pruned_pass(
    current: onnx.ModelProto, wave: Sequence[WaveTarget], stats: Mapping[int, LayerStats],
    xs: list[str], inputs: Mapping[str, np.ndarray], batch: int, kept: _Kept,
    opts: RecoveryOptions, result: RecoveryResult,
) -> None:  # fmt: skip
    """The pruned model's rows, each batch paired with the original's kept rows, which are
    dropped once folded."""
    sess = session(tapped_model(current, xs, only=True), opts.providers)
    t0 = time.perf_counter()
    for k, (_, vp) in enumerate(run_taps(sess, inputs, xs, batch)):
        t0 = result.timed("taps", t0)
        per, kept[k] = kept[k], {}
        for t in wave:
            if id(t) in per:
                picks, ro = per.pop(id(t))
                stats[id(t)].add_rows(vp[t.lp.x], ro, picks)
        t0 = result.timed("gram", t0)
    result.timed("taps", t0)


def live_rows(layer: Layer, x_shape: tuple[int, ...], feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows of a [batch, tokens, features] MatMul input that an attention mask keeps.

    Padded tokens flow through every layer but nothing reads their results; in a batch of
    short sentences they are most of the rows and would dominate the fit. A 2-D integer or
    bool feed named like ``*mask*`` with the input's [batch, tokens] shape marks them.
    """
    n = layer.positions(x_shape)
    if not layer.token_rows or len(x_shape) != 3:
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
