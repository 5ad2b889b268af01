"""The data of one prune run: calibration samples, labels, --val, and the held-out split.

Read once, before any pruning (a bad labels file fails first), and shared by scoring,
recovery and validation; ``RunData.source`` is what the report's ``validation.data`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxprune.options import PruneOptions


def read_calibration(opts: PruneOptions, model: onnx.ModelProto):
    """The calibration samples, read once and shared by scoring, recovery and validation."""
    if opts.calib is None:
        return None
    from onnxprune.calibration.data import make_inputs

    extra = {"preprocess": opts.calib_preprocess} if opts.calib_preprocess else {}
    return make_inputs(model, calib=opts.calib, max_samples=opts.calib_samples, **extra)


@dataclass
class RunData:
    """What scoring/recovery fit on, and what validation scores (None: random inputs)."""

    fit: object
    val: object
    val_labels: object
    source: str
    """``validation.data``: random, val, calib-held-out or calib."""


def read_run_data(opts: PruneOptions, model: onnx.ModelProto) -> RunData:
    """Read --calib, --labels, --val, --val-labels once, and split off the holdout.

    Long because each source of validation data has its own rule, kept side by side."""
    from onnxprune.calibration.data import make_inputs, split_holdout
    from onnxprune.errors import UsageError
    from onnxprune.options import HOLDOUT_FRACTION, HOLDOUT_MIN
    from onnxprune.runtime.compare_models import load_labels
    from onnxprune.runtime.feeds import shared_batch

    calib = read_calibration(opts, model)
    labels = None
    if opts.labels is not None:  # a bad labels file fails now, not after the pruning
        n = shared_batch(calib) if calib is not None else None
        labels = load_labels(opts.labels, n, max_samples=opts.calib_samples)
    if opts.val is not None:
        extra = {"preprocess": opts.calib_preprocess} if opts.calib_preprocess else {}
        val = make_inputs(model, calib=opts.val, **extra)
        val_labels = None
        if opts.val_labels is not None:
            val_labels = load_labels(opts.val_labels, shared_batch(val))
        return RunData(calib, val, val_labels, "val")
    if calib is None:
        return RunData(None, None, None, "random")
    held, k = None, 0
    if opts.holdout and opts.validate:  # nothing validates on a holdout under --no-validate
        fit, held, k = split_holdout(calib, HOLDOUT_FRACTION, HOLDOUT_MIN)
    if held is None:
        if opts.gates.any:
            n = shared_batch(calib)
            why = "--no-holdout" if not opts.holdout else f"only {n} calibration sample(s)"
            raise UsageError(
                f"a gate scored on the data recovery was fitted to is not a gate ({why}, "
                f"fewer than {HOLDOUT_MIN} to hold out from): pass held-out data with --val PATH"
            )
        return RunData(calib, calib, labels, "calib")
    held_labels = labels[len(labels) - k :] if labels is not None else None
    return RunData(fit, held, held_labels, "calib-held-out")
