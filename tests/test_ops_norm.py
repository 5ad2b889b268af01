"""Normalizations: per-channel ones slice, cross-channel ones block."""

from __future__ import annotations

import numpy as np

from onnxprune.testing.graphs import Builder, chain
from onnxprune.testing.oracles import assert_planted_dead, prune_exact
from onnxprune.testing.oracles import blocked_reason as _blocked

C = 8


def test_batchnorm_slices_all_four_parameters():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.bn(b.conv(x, 3, C, name="producer"), C, name="bn")
    model = b.build([b.conv(y, C, 2, name="consumer")])
    _pruned, plan = prune_exact(model, 0.5)
    cut = {c.name: c.role for c in plan.params}
    assert cut["bn.scale"] == "chan" and cut["bn.bias"] == "chan"
    assert cut["bn.mean"] == "stat" and cut["bn.var"] == "stat"
    assert_planted_dead(model)


def test_instance_norm_slices():
    scale = np.linspace(0.5, 1.5, C, dtype=np.float32)
    bias = np.linspace(-0.2, 0.2, C, dtype=np.float32)
    _, plan = prune_exact(chain([("InstanceNormalization", {"_inputs": [scale, bias]})]), 0.5)
    assert sum(c.role == "chan" for c in plan.params) == 3  # scale, B and the conv bias


def test_layernorm_over_channels_blocks():
    # NCHW -> NHWC -> LayerNorm(C) -> NCHW, as ConvNeXt does.
    ops = [
        ("Transpose", {"perm": [0, 2, 3, 1]}),
        (
            "LayerNormalization",
            {"axis": -1, "_inputs": [np.ones(C, np.float32), np.zeros(C, np.float32)]},
        ),
        ("Transpose", {"perm": [0, 3, 1, 2]}),
    ]
    reason = _blocked(chain(ops))
    assert "normalizes over the channel axis" in reason


def test_layernorm_over_spatial_axes_passes():
    ops = [("LayerNormalization", {"axis": 2, "_inputs": [np.ones((6, 6), np.float32)]})]
    prune_exact(chain(ops, hw=6), 0.5)


def test_lrn_blocks():
    assert "mixes neighbouring channels" in _blocked(chain([("LRN", {"size": 3})]))


def test_batchnorm_training_outputs_block():
    b = Builder(opset=15)
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, C, name="producer")
    params = [b.rand([C], positive=True), b.rand([C]), b.rand([C]), b.rand([C], positive=True)]
    out = b.op("BatchNormalization", [y, *params], n_out=3, training_mode=1)
    model = b.build([b.conv(out[0], C, 2, name="consumer"), out[1]])
    assert "training" in _blocked(model)
