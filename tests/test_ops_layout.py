"""Transpose, Squeeze/Unsqueeze, Flatten, Reshape (constant, -1, computed, channel shuffle), Shape."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.structured.dependency import analyze
from onnxprune.testing.graphs import Builder, chain, flatten_gemm
from onnxprune.testing.oracles import assert_planted_dead, prune_exact
from onnxprune.testing.oracles import blocked_reason as _blocked

C = 8


@pytest.mark.parametrize("reshape", [None, "const", "minus1", "computed"])
def test_flatten_or_reshape_to_gemm(reshape):
    model = flatten_gemm(hw=3, reshape=reshape)
    (g,) = [g for g in analyze(model) if g.id == "conv"]
    rows = next(m for m in g.members if m.target == "fc1.weight")
    # channel c owns the 9 features c*9 .. c*9+8
    assert rows.slot.tolist() == np.repeat(np.arange(8), 9).tolist()
    pruned, _plan = prune_exact(model, 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["fc1.weight"] == [3, 4 * 9]
    assert_planted_dead(model)


def test_reshape_constant_is_rewritten():
    pruned, _ = prune_exact(flatten_gemm(hw=3, reshape="const"), 0.5)
    consts = {
        t.name: np.frombuffer(t.raw_data, np.int64).tolist()
        for t in pruned.graph.initializer
        if t.data_type == 7
    }
    assert [1, 36] in consts.values()


def test_shared_reshape_constant_is_not_changed_for_others():
    b = Builder()
    x = b.input([1, 1, 3, 3])
    shape = b.ints([1, 72], "shape")
    a = b.op("Reshape", [b.conv(x, 1, 8, name="a"), shape])
    other = b.op("Reshape", [b.op("Concat", [x, x, x, x, x, x, x, x], axis=1), shape])
    model = b.build([b.gemm(a, 72, 2, name="fc"), other])
    pruned, _ = prune_exact(model, 0.5)
    init = {
        t.name: np.frombuffer(t.raw_data, np.int64).tolist()
        for t in pruned.graph.initializer
        if t.data_type == 7
    }
    assert init["shape"] == [1, 72]
    assert [1, 36] in init.values()


def test_transpose_to_channels_last_matmul_and_back():
    b = Builder()
    x = b.input([1, 3, 4, 4])
    y = b.conv(x, 3, C, name="producer")
    t = b.op("Transpose", [y], perm=[0, 2, 3, 1])
    h = b.op("Relu", [b.matmul(t, C, 16, name="pw1")])
    h = b.matmul(h, 16, C, name="pw2")
    back = b.op("Transpose", [h], perm=[0, 3, 1, 2])
    model = b.build([b.conv(back, C, 2, name="consumer")])
    groups = {g.id for g in analyze(model) if g.blocked_reason is None}
    assert groups == {"producer", "pw1", "pw2"}
    prune_exact(model, 0.5)


def test_squeeze_unsqueeze():
    b = Builder()
    x = b.input([1, 3, 4, 4])
    g = b.op("GlobalAveragePool", [b.relu(b.conv(x, 3, C, name="producer"))])
    s = b.op("Squeeze", [g, b.ints([2, 3])])
    h = b.relu(b.gemm(s, C, 6, name="fc"))
    u = b.op("Unsqueeze", [h, b.ints([2, 3])])
    model = b.build([b.conv(u, 6, 2, k=1, name="consumer")])
    prune_exact(model, 0.5)
    b = Builder(opset=11)
    x = b.input([1, 3, 4, 4])
    g = b.op("GlobalAveragePool", [b.conv(x, 3, C, name="producer")])
    s = b.op("Squeeze", [g], axes=[3])
    u = b.op("Unsqueeze", [s], axes=[3])
    prune_exact(b.build([b.conv(u, C, 2, k=1, name="consumer")]), 0.5)


def _shuffle(b: Builder, x: str, c: int, hw: int, groups: int = 2) -> str:
    r = b.op("Reshape", [x, b.ints([1, groups, c // groups, hw, hw])])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [t, b.ints([1, c, hw, hw])])


def test_channel_shuffle_is_exact():
    """ShuffleNet: concat two branches, shuffle, split; the shuffle is a permutation."""
    b = Builder()
    hw = 4
    x = b.input([1, 3, hw, hw])
    a = b.relu(b.conv(x, 3, 8, k=1, name="a"))
    c = b.relu(b.conv(x, 3, 8, k=1, name="c"))
    s = _shuffle(b, b.op("Concat", [a, c], axis=1), 16, hw)
    y0, y1 = b.op("Split", [s, b.ints([8, 8])], n_out=2, axis=1)
    z = b.relu(b.conv(y1, 8, 8, k=1, name="z"))
    s2 = _shuffle(b, b.op("Concat", [y0, z], axis=1), 16, hw)
    model = b.build([b.conv(s2, 16, 2, k=1, name="head")])
    groups = {g.id for g in analyze(model) if g.blocked_reason is None}
    assert groups == {"a", "c", "z"}  # followed as a permutation: the branches stay apart
    pruned, _ = prune_exact(model, 0.5)
    ops = [n.op_type for n in pruned.graph.node]
    assert ops.count("Gather") == 2 and "Transpose" not in ops
    assert_planted_dead(model, fraction=0.6, ratio=0.2)


def test_reshape_splitting_channels_ties_them_rectangularly():
    """[N, 2C', H, W] -> [N, 2, C', H, W] -> sum over the 2: position c and c + C' tie."""
    b = Builder()
    x = b.input([1, 3, 4, 4])
    y = b.relu(b.conv(x, 3, 16, k=1, name="p"))
    r = b.op("Reshape", [y, b.ints([1, 2, 8, 4, 4])])
    s = b.op("ReduceSum", [r, b.ints([1])], keepdims=0)
    model = b.build([b.conv(s, 8, 2, k=1, name="head")])
    (g,) = [g for g in analyze(model) if g.id == "p"]
    assert g.slots == 8 and g.width == 2
    prune_exact(model, 0.5)


def test_reshape_splitting_channels_for_groupnorm_blocks_cleanly():
    b = Builder()
    x = b.input([1, 3, 4, 4])
    y = b.conv(x, 3, C, name="producer")
    r = b.op("Reshape", [y, b.ints([1, 2, -1])])
    n = b.op(
        "InstanceNormalization",
        [r, b.const(np.ones(2, np.float32)), b.const(np.zeros(2, np.float32))],
    )
    back = b.op("Reshape", [n, b.ints([1, C, 4, 4])])
    model = b.build([b.conv(back, C, 2, name="consumer")])
    assert _blocked(model) is not None


def test_shape_used_in_arithmetic_blocks():
    b = Builder()
    x = b.input([1, 3, 4, 4])
    y = b.conv(x, 3, C, name="producer")
    c = b.op("Gather", [b.op("Shape", [y]), b.const(np.int64(1))], axis=0)
    half = b.op("Div", [c, b.const(np.int64(2))])
    model = b.build([b.conv(y, C, 2, name="consumer"), half])
    assert "read at run time" in _blocked(model)


def test_shape_of_other_axes_is_fine():
    b = Builder()
    x = b.input([1, 3, 4, 4])
    y = b.conv(x, 3, C, name="producer")
    n = b.op("Gather", [b.op("Shape", [y]), b.const(np.int64(0))], axis=0)
    model = b.build([b.conv(y, C, 2, name="consumer"), b.op("Mul", [n, b.const(np.int64(3))])])
    prune_exact(model, 0.5)


def _flatten_by_computed_target(shared: bool) -> onnx.ModelProto:
    """Conv -> Reshape to ``Concat(batch, [C*9])`` -> Gemm; ``shared``: the target is also
    read by another node."""
    b = Builder()
    y = b.conv(b.input([1, 3, 3, 3]), 3, C, name="producer")
    n = b.op(
        "Unsqueeze",
        [b.op("Gather", [b.op("Shape", [y]), b.const(np.int64(0))], axis=0), b.ints([0])],
    )
    target = b.op("Concat", [n, b.ints([C * 9])], axis=0)
    outputs = [b.gemm(b.op("Reshape", [y, target]), C * 9, 2, name="fc")]
    if shared:
        outputs.append(b.op("Cast", [target], to=onnx.TensorProto.FLOAT))
    return b.build(outputs)


def test_computed_reshape_with_a_private_constant_count_is_rewritten():
    """A target computed at run time whose channel element is a constant only it reads
    (``Concat(batch, [C*9])``, ViT's ``Concat(batch, [768], [196])``): the constant gets the
    kept count (it used to block)."""
    prune_exact(_flatten_by_computed_target(shared=False), 0.5)  # a cut, against the oracle


def test_computed_reshape_with_a_shared_target_blocks():
    """A target also read elsewhere cannot be rewritten for this Reshape alone (a shared
    constant initializer could: the rewrite gives the node its own copy)."""
    assert "fixes the channel count" in _blocked(_flatten_by_computed_target(shared=True))


def test_unsupported_op_blocks_with_its_name():
    model = chain([("DepthToSpace", {"blocksize": 2})], c=C)
    assert "DepthToSpace" in _blocked(model)


def test_expand_and_tile_on_other_axes():
    prune_exact(chain([("Tile", {"_inputs": [np.array([1, 1, 2, 1], np.int64)]})]), 0.5)
    prune_exact(chain([("Expand", {"_inputs": [np.array([2, 1, 1, 1], np.int64)]})]), 0.5)
    assert "Tile repeats" in _blocked(
        chain([("Tile", {"_inputs": [np.array([1, 2, 1, 1], np.int64)]})])
    )


def test_reshape_target_built_from_constants_is_rewritten():
    """Exports without constant folding build targets with Unsqueeze(Constant) + Concat."""
    b = Builder()
    x = b.input([1, 3, 3, 3])
    y = b.relu(b.conv(x, 3, C, name="producer"))
    parts = [b.op("Unsqueeze", [b.const(np.int64(v)), b.ints([0])]) for v in (1, C * 9)]
    flat = b.op("Reshape", [y, b.op("Concat", parts, axis=0)])
    model = b.build([b.gemm(flat, C * 9, 2, name="fc")])
    pruned, _ = prune_exact(model, 0.5)
    assert not any(n.op_type == "Unsqueeze" for n in pruned.graph.node)


def test_reshape_target_reading_another_tensors_count_blocks():
    """The target takes the channel count from a tensor whose channels are not cut."""
    b = Builder()
    x = b.input([1, 3, 3, 3])
    z = b.input([1, C, 9], name="z")
    y = b.relu(b.conv(x, 3, C, name="producer"))
    target = b.op(
        "Concat",
        [b.op("Slice", [b.op("Shape", [z]), b.ints([0]), b.ints([2])]), b.ints([9])],
        axis=0,
    )
    r = b.op("Reshape", [y, target])
    pooled = b.op("ReduceSum", [r, b.ints([2])], keepdims=0)
    model = b.build([b.gemm(pooled, C, 2, name="fc")])
    reason = next(g for g in analyze(model) if g.id == "producer").blocked_reason
    assert "fixes the channel count" in reason
