"""Property test: random CNN graphs, random ratios and criteria; the rewrite is valid and the
exactness oracle holds.

Graphs are drawn block by block from the ops the registry covers (residuals, concat, split,
slice, torch chunk, depthwise and grouped convs, squeeze-and-excitation, channel shuffle,
channel-splitting Reshape, channels-last MatMul, pooling, activations, per-channel constants) and end in a conv head, a
GAP/Flatten/Gemm head or a Reshape/Gemm head. 500 derandomized examples by default (about
5 s on two cores); ``ONNXPRUNE_PROPERTY_EXAMPLES`` asks for more, and
``ONNXPRUNE_PROPERTY_RANDOM=1`` draws fresh examples instead of the fixed ones.
"""

from __future__ import annotations

import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.graphs import Builder
from onnxprune.testing.oracles import assert_exact

EXAMPLES = int(os.environ.get("ONNXPRUNE_PROPERTY_EXAMPLES", "500"))
RANDOM = os.environ.get("ONNXPRUNE_PROPERTY_RANDOM") == "1"

ACTS = [
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSwish",
    "Tanh",
    "silu",
    "clip",
    "prelu",
    "scale",
    "shift",
    None,
]
BLOCKS = [
    "conv",
    "residual",
    "concat",
    "split",
    "slice",
    "depthwise",
    "grouped",
    "se",
    "shuffle",
    "pool",
    "channels_last",
    "upsample",
    "chunk",
    "fold",
]
HEADS = ["conv", "gap_gemm", "flatten_gemm", "reshape_gemm"]


class Net:
    """The tensor being built and what it looks like."""

    def __init__(self, b: Builder, y: str, c: int, hw: int) -> None:
        self.b, self.y, self.c, self.hw = b, y, c, hw


def _act(draw, n: Net) -> None:
    b, kind = n.b, draw(st.sampled_from(ACTS))
    if kind == "silu":
        n.y = b.op("Mul", [n.y, b.op("Sigmoid", [n.y])])
    elif kind == "clip":
        n.y = b.op("Clip", [n.y, b.const(np.float32(-1)), b.const(np.float32(1))])
    elif kind == "prelu":
        n.y = b.op("PRelu", [n.y, b.rand([n.c, 1, 1], scale=0.2)])
    elif kind == "scale":
        n.y = b.op("Mul", [n.y, b.rand([n.c, 1, 1], positive=True)])
    elif kind == "shift":
        n.y = b.op("Add", [n.y, b.rand([1, n.c, 1, 1])])
    elif kind is not None:
        n.y = b.op(kind, [n.y])


def _conv(
    draw, n: Net, cout: int | None = None, k: int | None = None, bn: bool | None = None
) -> None:
    cout = cout or draw(st.integers(3, 12))
    k = k or draw(st.sampled_from([1, 3]))
    n.y = n.b.conv(n.y, n.c, cout, k=k, bias=draw(st.booleans()))
    n.c = cout
    if bn if bn is not None else draw(st.booleans()):
        n.y = n.b.bn(n.y, n.c)
    _act(draw, n)


def _block(draw, n: Net, kind: str) -> None:
    b = n.b
    if kind == "conv":
        _conv(draw, n)
    elif kind == "residual":
        x, c = n.y, n.c
        _conv(draw, n, k=3)
        _conv(draw, n, cout=c, k=draw(st.sampled_from([1, 3])))
        n.y = b.op(draw(st.sampled_from(["Add", "Add", "Mul", "Max"])), [n.y, x])
        _act(draw, n)
    elif kind == "concat":
        x, c, parts, chans = n.y, n.c, [], 0
        for _ in range(draw(st.integers(2, 3))):
            n.y, n.c = x, c
            _conv(draw, n, k=draw(st.sampled_from([1, 3])))
            parts.append(n.y)
            chans += n.c
        if draw(st.booleans()):
            parts.append(x)  # dense-style: the input itself joins
            chans += c
        n.y = b.op("Concat", draws_order(draw, parts), axis=1)
        n.c = chans
    elif kind in ("split", "slice") and n.c >= 4:
        s = draw(st.integers(1, n.c - 1))
        if kind == "split":
            y0, y1 = b.op("Split", [n.y, b.ints([s, n.c - s])], n_out=2, axis=1)
        else:
            y0 = b.op("Slice", [n.y, b.ints([0]), b.ints([s]), b.ints([1])])
            y1 = b.op("Slice", [n.y, b.ints([s]), b.ints([1000]), b.ints([1])])
        c1 = n.c - s
        n.y, n.c = y1, c1
        _conv(draw, n, cout=c1, k=3)
        n.y = b.op("Add", [n.y, y1])
        if draw(st.booleans()):  # C2f: keep both halves and the bottleneck
            n.y, n.c = b.op("Concat", [y0, y1, n.y], axis=1), s + 2 * c1
        else:
            n.y, n.c = b.op("Concat", [n.y, y0], axis=1), c1 + s
    elif kind == "depthwise":
        m = draw(st.sampled_from([1, 1, 2]))
        n.y = b.conv(n.y, n.c, n.c * m, group=n.c)
        n.c *= m
        if draw(st.booleans()):
            n.y = b.bn(n.y, n.c)
        _act(draw, n)
    elif kind == "grouped" and n.c % 2 == 0:
        g = 2 if n.c % 4 else draw(st.sampled_from([2, 4]))
        cout = g * draw(st.integers(1, 3))
        n.y = b.conv(n.y, n.c, cout, group=g)
        n.c = cout
        _act(draw, n)
    elif kind == "se":
        s = b.op("GlobalAveragePool", [n.y])
        r = draw(st.integers(2, 6))
        s = b.relu(b.conv(s, n.c, r, k=1))
        s = b.op(draw(st.sampled_from(["Sigmoid", "HardSigmoid"])), [b.conv(s, r, n.c, k=1)])
        n.y = b.op("Mul", [n.y, s])
    elif kind == "shuffle" and n.c % 2 == 0:
        h = n.hw
        r = b.op("Reshape", [n.y, b.ints([1, 2, n.c // 2, h, h])])
        t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
        n.y = b.op("Reshape", [t, b.ints([1, n.c, h, h])])
    elif kind == "pool":
        op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
        n.y = b.op(op, [n.y], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    elif kind == "channels_last":
        t = b.op("Transpose", [n.y], perm=[0, 2, 3, 1])
        hidden = draw(st.integers(3, 12))
        h = b.op("Relu", [b.matmul(t, n.c, hidden)])
        h = b.matmul(h, hidden, n.c)
        n.y = b.op("Add", [b.op("Transpose", [h], perm=[0, 3, 1, 2]), n.y])
    elif kind == "chunk" and n.c >= 2:  # torch's x.chunk(2, 1): bounds computed from Shape(x)
        c = b.op("Gather", [b.op("Shape", [n.y]), b.ints([1])], axis=0)
        half = b.op("Div", [b.op("Add", [c, b.ints([1])]), b.ints([2])])
        y0 = b.op("Slice", [n.y, b.ints([0]), half, b.ints([1])])
        y1 = b.op("Slice", [n.y, half, b.op("Mul", [half, b.ints([2])]), b.ints([1])])
        h0 = (n.c + 1) // 2
        n.y, n.c = y1, n.c - h0
        _conv(draw, n, k=1)
        n.y, n.c = b.op("Concat", [y0, n.y], axis=1), h0 + n.c
    elif kind == "fold" and n.c % 2 == 0:  # [N, 2C', H, W] -> [N, 2, C', H, W] -> max: ties c, c+C'
        r = b.op("Reshape", [n.y, b.ints([1, 2, n.c // 2, n.hw, n.hw])])
        n.y, n.c = b.op("ReduceMax", [r], axes=[1], keepdims=0), n.c // 2
    elif kind == "upsample":
        up = b.op("Resize", [n.y, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
        n.y = b.op("MaxPool", [up], kernel_shape=[2, 2], strides=[2, 2])
    else:
        _conv(draw, n)


def draws_order(draw, parts: list[str]) -> list[str]:
    return draw(st.permutations(parts))


def _head(draw, n: Net) -> list[str]:
    b, kind = n.b, draw(st.sampled_from(HEADS))
    if kind == "conv":
        return [b.conv(n.y, n.c, 3, k=1)]
    if kind == "gap_gemm":
        flat = b.op("Flatten", [b.op("GlobalAveragePool", [n.y])], axis=1)
        return [b.gemm(flat, n.c, 3)]
    if kind == "flatten_gemm":
        return [b.gemm(b.op("Flatten", [n.y], axis=1), n.c * n.hw * n.hw, 3)]
    flat = b.op(
        "Reshape", [n.y, b.ints([1, -1] if draw(st.booleans()) else [1, n.c * n.hw * n.hw])]
    )
    return [b.gemm(flat, n.c * n.hw * n.hw, 3, trans_b=draw(st.booleans()))]


@st.composite
def cnn(draw):
    b = Builder(seed=draw(st.integers(0, 2**16)))
    hw = draw(st.sampled_from([3, 4]))
    n = Net(b, b.input([1, 3, hw, hw]), 3, hw)
    _conv(draw, n, k=3)
    for kind in draw(st.lists(st.sampled_from(BLOCKS), min_size=2, max_size=4)):
        _block(draw, n, kind)
    return b.build(_head(draw, n))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
@given(
    model=cnn(),
    ratio=st.floats(0.2, 0.85),
    criterion=st.sampled_from(["l1", "l2", "bn-scale", "fpgm", "random"]),
    scope=st.sampled_from(["local", "global"]),
    round_to=st.sampled_from([1, 1, 2, 4]),
)
def test_random_cnn_prunes_exactly(model, ratio, criterion, scope, round_to):
    options = StructuredOptions(ratio=ratio, scope=scope, criterion=criterion, round_to=round_to)
    pruned, result = prune_structured(model, options)
    assert result.groups or result.blocked
    for g in result.to_dict()["groups"]:
        assert 1 <= g["channels_after"] <= g["channels_before"]
    assert_exact(model, pruned, result.plan, seeds=(0,))
