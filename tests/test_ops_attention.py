"""Attention heads (issue #4): multi-head and grouped-query attention as exporters write it.

Each graph is built with ``onnx.helper`` the way torch exports Hugging Face attention: Q/K/V
projections, a Reshape to [B, S, H, D] (head count constant, inferred with -1, or copied with
0; shapes constant or computed at run time from Shape/Gather/Concat), a Transpose, two
MatMuls around a Softmax, and the way back to [B, S, H*D]. The exactness oracle checks that
removing heads equals zeroing their rows of the output projection in the original model.
"""

from __future__ import annotations

import numpy as np
from graphs import Builder
from onnx import TensorProto, helper

from onnxprune.graph import GraphView


def _dims(b: Builder, x: str, axes: list[int]) -> list[str]:
    """``x.size(a)`` for each axis as torch exports it: Shape -> Gather -> Unsqueeze."""
    shape = b.op("Shape", [x])
    return [
        b.op("Unsqueeze", [b.op("Gather", [shape, b.const(np.int64(a))], axis=0), b.ints([0])])
        for a in axes
    ]


def _expand_shape(b: Builder, sizes: list[str]) -> str:
    """torch's ``expand`` sizes: Concat -> Reshape(-1) -> Where(Equal(s, -1), 1, s)."""
    s = b.op("Reshape", [b.op("Concat", sizes, axis=0), b.ints([-1])])
    ones = b.op(
        "ConstantOfShape",
        [b.op("Shape", [s])],
        value=helper.make_tensor("v", TensorProto.INT64, [1], [1]),
    )
    minus = b.op("Mul", [ones, b.const(np.int64(-1))])
    return b.op("Where", [b.op("Equal", [s, minus]), ones, s])


def test_view_refines_head_count_inferred_from_minus_one():
    """ONNX inference cannot divide a symbolic batch out of ``view(B, S, -1, D)``; the view
    probes two sets of sizes and keeps what does not change (the head count)."""
    b = Builder()
    x = b.input(["batch", "seq", 8])
    q = b.matmul(x, 8, 8, name="q")
    target = b.op("Concat", [*_dims(b, x, [0, 1]), b.ints([-1]), b.ints([4])], axis=0)
    y = b.op("Reshape", [q, target], name="split")
    model = b.build([y])
    view = GraphView(model)
    shape = view.shape("split_out")
    assert shape[2:] == (2, 4) and not isinstance(shape[0], int)
    assert [p["split_out"] for p in view.probe_shapes] == [(13, 17, 2, 4), (24, 30, 2, 4)]


def test_shape_expr_sees_through_torch_expand_sizes():
    b = Builder()
    x = b.input(["batch", 2, 1, 4])
    sizes = [*_dims(b, x, [0, 1]), b.ints([3]), *_dims(b, x, [3])]
    e = b.op("Expand", [x, _expand_shape(b, sizes)], name="rep")
    model = b.build([e])
    view = GraphView(model)
    where = next(n for n in model.graph.node if n.op_type == "Where").output[0]
    assert view.shape_expr(where) == [("dim", "x", 0), ("dim", "x", 1), 3, ("dim", "x", 3)]
    assert view.shape("rep_out")[1:] == (2, 3, 4)
