"""How recovery's passes are cut into waves: by time (``wave_count``) and by memory
(``split_waves`` with ``stats_size``).

Each wave runs both models once over the calibration data up to its last layer and holds
the Gram sums of all its layers at once, so the number of waves trades onnxruntime time
against memory (and against how much each layer sees of the earlier layers' refits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import onnx

from onnxprune.calibration.stats import batch_size_for, session
from onnxprune.graph.proto import is_lazy, tensor_nbytes
from onnxprune.recovery.gram import FOLD_BYTES, stats_bytes
from onnxprune.recovery.layers import Layer
from onnxprune.recovery.params import ModelParams, augmented
from onnxprune.runtime.feeds import batches
from onnxprune.runtime.session import fixed_batch

if TYPE_CHECKING:
    from onnxprune.recovery.recover import RecoveryOptions

__all__ = [
    "GRAM_BUDGET_BYTES",
    "LAZY_GRAM_SHARE",
    "gram_budget",
    "split_waves",
    "stats_size",
    "wave_count",
]

T = TypeVar("T")


def wave_count(
    original: onnx.ModelProto, inputs: Mapping[str, np.ndarray], targets: int,
    opts: RecoveryOptions, samples: int,
) -> tuple[int, int]:  # fmt: skip
    """(``opts.waves``, or fewer so the passes fit ``opts.pass_budget_s``; samples per run).

    Wave k of w runs both models up to its last layer only, about k/w of a full pass each,
    so w waves cost about (w + 1) / 2 full passes of the original and the pruned model.
    """
    wanted = max(1, min(opts.waves, targets))
    sess = session(original, opts.providers)
    batch = batch_size_for(sess, samples)
    if opts.pass_budget_s is None or wanted == 1:
        return wanted, batch
    feed = next(batches(inputs, batch, [i.name for i in sess.get_inputs()],
                        fixed=fixed_batch(sess) is not None))  # fmt: skip
    sess.run(None, feed)  # warm-up: the first run allocates
    t0 = time.perf_counter()
    sess.run(None, feed)
    full = (time.perf_counter() - t0) * samples / batch * 2  # original and pruned
    for w in range(wanted, 1, -1):
        if full * (w + 1) / 2 <= opts.pass_budget_s:
            return w, batch
    return 1, batch


def split_waves(
    targets: Sequence[T], count: int, sizes: Sequence[int] | None = None, budget: int = 0
) -> list[list[T]]:
    """``count`` runs of consecutive targets, each split again where the ``sizes`` (bytes
    of each target's statistics) of a run would pass ``budget``."""
    if not targets:
        return []
    count = max(1, min(count, len(targets)))
    size = math.ceil(len(targets) / count)
    nbytes = dict(zip(map(id, targets), sizes or [0] * len(targets), strict=True))
    out: list[list[T]] = []
    for i in range(0, len(targets), size):
        run, used = [], 0
        for t in targets[i : i + size]:
            if run and used + nbytes[id(t)] > budget > 0:
                out.append(run)
                run, used = [], 0
            run.append(t)
            used += nbytes[id(t)]
        out.append(run)
    return out


def stats_size(
    lp: Layer, lo: Layer, params_o: ModelParams, params_p: ModelParams, rows: int, batch_rows: int
) -> int:
    """Bytes of the ``LayerStats`` of pruned layer ``lp`` (original ``lo``) at most
    (``gram.stats_bytes``) fed ``rows`` rows in all, at most ``batch_rows`` a batch, with the
    original's rows kept for it between the two passes (``recovery.passes``)."""
    g, out, dp1 = augmented(lp, params_p).shape
    do1 = augmented(lo, params_o).shape[-1]
    kept = 4 * g * do1 * rows
    return stats_bytes(out, dp1, do1, g, rows, batch_rows, FOLD_BYTES) + kept


GRAM_BUDGET_BYTES = 3 << 29
"""A wave's budget for a model read whole (1.5 GiB)."""
LAZY_GRAM_SHARE = 1 / 3
"""A wave's budget for a model whose weights are read lazily, as a share of its weight bytes.

Why a third: during a wave the process holds the pruned model's mapped weights (under the
original's) and the wave's sums, or, in the original's pass, its weights and the kept rows;
with a third for the sums, both stay near 1.3x the weights, under the 1.5x bound. A fixed
1.5 GiB gave the 0.5B decoder (2.18 GB of weights) 0.7x of its weights in sums."""
_MIN_LAZY_BUDGET = 64 << 20


def gram_budget(original: onnx.ModelProto, budget: int | None) -> int:
    """``budget``, or when None: a share of the weight bytes for a model with lazy weights
    (``LAZY_GRAM_SHARE``), else ``GRAM_BUDGET_BYTES``."""
    if budget is not None:
        return budget
    inits = original.graph.initializer
    if not any(map(is_lazy, inits)):
        return GRAM_BUDGET_BYTES
    weights = sum(tensor_nbytes(t) for t in inits)
    return max(_MIN_LAZY_BUDGET, int(weights * LAZY_GRAM_SHARE))
