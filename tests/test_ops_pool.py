"""Pooling, reductions, Resize/Upsample, Pad and Softmax."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.testing.graphs import Builder, chain
from onnxprune.testing.oracles import blocked_reason as _blocked
from onnxprune.testing.oracles import prune_exact

C = 8


POOLS = [
    ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ("LpPool", {"kernel_shape": [2, 2]}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
]


@pytest.mark.parametrize(("op", "attrs"), POOLS, ids=[p[0] for p in POOLS])
def test_pooling_passes(op, attrs):
    prune_exact(chain([(op, attrs)]), 0.5)


def test_maxpool_indices_block():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y, idx = b.op("MaxPool", [b.conv(x, 3, C, name="producer")], n_out=2, kernel_shape=[2, 2])
    model = b.build([b.conv(y, C, 2, name="consumer"), idx])
    assert "indices" in _blocked(model)


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
def test_spatial_reduce(op, keepdims, opset):
    b = Builder(opset=opset)
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, C, name="producer")
    if opset >= 18:
        r = b.op(op, [y, b.ints([2, 3])], keepdims=keepdims)
    else:
        r = b.op(op, [y], axes=[2, 3], keepdims=keepdims)
    if not keepdims:
        r = (
            b.op("Unsqueeze", [r, b.ints([2, 3])])
            if opset >= 13
            else b.op("Unsqueeze", [r], axes=[2, 3])
        )
    model = b.build([b.conv(r, C, 2, k=1, name="consumer")])
    prune_exact(model, 0.5)


def test_reduce_over_channels_blocks():
    assert "channel axis" in _blocked(
        chain([("ReduceMean", {"axes": [1], "keepdims": 1})], c=1 * C)
    )


def test_reduce_to_gemm_keepdims0():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    r = b.op("ReduceMean", [b.relu(b.conv(x, 3, C, name="producer"))], axes=[2, 3], keepdims=0)
    prune_exact(b.build([b.gemm(r, C, 3, name="fc")]), 0.5)


def test_pad_spatial_passes_channel_pad_blocks():
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)
    prune_exact(chain([("Pad", {"_inputs": [pads], "mode": "reflect"})]), 0.5)
    bad = np.array([0, 1, 0, 0, 0, 1, 0, 0], dtype=np.int64)
    assert "pads the channel axis" in _blocked(chain([("Pad", {"_inputs": [bad]})]))


def test_resize_scales_and_sizes():
    scales = np.array([1, 1, 2, 2], dtype=np.float32)
    prune_exact(chain([("Resize", {"_inputs": ["", scales], "mode": "nearest"})]), 0.5)
    sizes = np.array([1, C, 12, 12], dtype=np.int64)
    pruned, _plan = prune_exact(
        chain([("Resize", {"_inputs": ["", "", sizes], "mode": "linear"})]), 0.5
    )
    init = {t.name: t for t in pruned.graph.initializer}
    resize = next(n for n in pruned.graph.node if n.op_type == "Resize")
    assert list(np.frombuffer(init[resize.input[3]].raw_data, np.int64)) == [1, 4, 12, 12]


def test_resize_with_sizes_from_shape_follows_pruning():
    b = Builder()
    x = b.input([1, 3, 6, 6])
    y = b.conv(x, 3, C, name="producer")
    nc = b.op("Slice", [b.op("Shape", [y]), b.ints([0]), b.ints([2])])
    sizes = b.op("Concat", [nc, b.ints([12, 12])], axis=0)
    r = b.op("Resize", [y, "", "", sizes], mode="nearest")
    prune_exact(b.build([b.conv(r, C, 2, name="consumer")]), 0.5)


def test_resize_scaling_channels_blocks():
    scales = np.array([1, 2, 1, 1], dtype=np.float32)
    assert "scales the channel axis" in _blocked(chain([("Resize", {"_inputs": ["", scales]})]))


def test_upsample_opset9():
    scales = np.array([1, 1, 2, 2], dtype=np.float32)
    prune_exact(chain([("Upsample", {"_inputs": [scales]})], opset=9), 0.5)


def test_softmax():
    prune_exact(chain([("Softmax", {"axis": 3})]), 0.5)
    assert "across the channel axis" in _blocked(chain([("Softmax", {"axis": 1})]))
    assert "across the channel axis" in _blocked(chain([("Softmax", {"axis": 1})], opset=11))


def test_resize_scales_from_constant_subgraph():
    b = Builder()
    x = b.input([1, 3, 4, 4])
    y = b.conv(x, 3, C, name="producer")
    scales = b.op(
        "Concat", [b.const(np.ones(2, np.float32)), b.const(np.full(2, 2.0, np.float32))], axis=0
    )
    up = b.op("Resize", [y, "", scales], mode="nearest")
    prune_exact(b.build([b.conv(up, C, 2, name="consumer")]), 0.5)
