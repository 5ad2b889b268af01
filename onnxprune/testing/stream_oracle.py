"""The oracle for hidden-stream pruning (``--hidden``), which is approximate by design.

Removing channels of a LayerNorm/RMSNorm-normalized stream cannot be exact: each norm's
statistics then span the kept channels only. The claim to check is precisely that, so the
reference is the *original* model with

* the removed channels' contributions zeroed at every consumer (``oracles.zeroed``, the
  exactness oracle's reference), and
* every LayerNormalization / RMSNormalization whose input lost channels replaced by the same
  formula computed over the kept channels only, spelled out in plain ONNX ops (a mask,
  ReduceSum, a count, Sqrt), without reading any rewrite code (and every ReduceMean over
  the channels, a norm spelled out in elementary ops, by the mean over the kept ones):

      mean = sum(m x) / k,  var = sum(m (x - mean)^2) / k,  y = (x - mean) / sqrt(var + eps) * s + b
      RMSNorm: y = x / sqrt(sum(m x^2) / k + eps) * s

  with ``m`` the kept-channel mask and ``k`` the number of kept positions normalized over.

Removed channels still flow through that reference (residual Adds, depthwise convolutions,
per-channel scales keep them apart), but they reach nothing kept: consumers' input slices are
zeroed and the norms ignore them. So the pruned model must equal the reference, in
onnxruntime, on random inputs; ``assert_stream`` checks it and ``prune_stream`` prunes and
checks in one call, as ``prune_exact`` does for exact rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.graph.view import GraphView, attr, normalize_axis
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.plan import Plan
from onnxprune.testing.oracles import (
    assert_close,
    assert_same_interface,
    onnx_sort,
    random_feeds,
    run,
    zeroed,
)

NORMS = ("LayerNormalization", "RMSNormalization")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


class _Emit:
    """Appends plain ONNX nodes (and constants) for one replaced norm."""

    def __init__(self, model: onnx.ModelProto, prefix: str) -> None:
        self.model, self.prefix, self.n = model, prefix, 0
        self.opset = _opset(model)

    def name(self) -> str:
        self.n += 1
        return f"{self.prefix}__stream{self.n}"

    def const(self, value: np.ndarray) -> str:
        name = self.name()
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.name()
        self.model.graph.node.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def reduce_sum(self, x: str, axes: list[int]) -> str:
        if self.opset >= 13:
            return self.op("ReduceSum", [x, self.const(np.array(axes, np.int64))], keepdims=1)
        return self.op("ReduceSum", [x], axes=axes, keepdims=1)


def masked_norm(
    model: onnx.ModelProto, node: onnx.NodeProto, rank: int, axis: int, kept: Sequence[int],
    size: int,
) -> None:  # fmt: skip
    """Replace ``node`` (a LayerNormalization or RMSNormalization of a rank-``rank`` input
    whose channels lie on ``axis``) in ``model`` by its formula over the ``kept`` channels."""
    e = _Emit(model, node.output[0])
    start = normalize_axis(int(attr(node, "axis", -1)), rank)
    axes = list(range(start, rank))
    _check(axis in axes, f"{node.name}: the channel axis {axis} is not normalized")
    eps = float(attr(node, "epsilon", 1e-5))
    x = node.input[0]
    m, count = _kept_mask(e, x, rank, axis, kept, size, axes)
    if node.op_type == "LayerNormalization":
        mean = e.op("Div", [e.reduce_sum(e.op("Mul", [x, m]), axes), count])
        x = e.op("Sub", [x, mean])
    sq = e.op("Mul", [e.op("Mul", [x, x]), m])
    var = e.op("Div", [e.reduce_sum(sq, axes), count])
    std = e.op("Sqrt", [e.op("Add", [var, e.const(np.float32(eps))])])
    y = e.op("Div", [x, std])
    if len(node.input) > 1 and node.input[1]:
        y = e.op("Mul", [y, node.input[1]])
    if len(node.input) > 2 and node.input[2]:
        y = e.op("Add", [y, node.input[2]])
    model.graph.node.append(helper.make_node("Identity", [y], [node.output[0]]))
    model.graph.node.remove(node)


def _kept_mask(e, x: str, rank: int, axis: int, kept: Sequence[int], size: int, axes: list[int]):
    """(the 0/1 mask of the kept channels on ``axis``, broadcastable to ``x``; how many
    kept entries each reduction over ``axes`` sums: the count a norm over them divides by)."""
    shape = [1] * rank
    shape[axis] = size
    mask = np.zeros(size, np.float32)
    mask[list(kept)] = 1.0
    m = e.const(mask.reshape(shape))
    ones = e.op("Add", [e.op("Mul", [x, e.const(np.float32(0.0))]), m])
    return m, e.reduce_sum(ones, axes)


def masked_mean(
    model: onnx.ModelProto, node: onnx.NodeProto, rank: int, axis: int, kept: Sequence[int],
    size: int,
) -> bool:  # fmt: skip
    """Replace a ReduceMean over the channel ``axis`` (a LayerNorm or RMSNorm spelled out in
    elementary ops) by the mean over the ``kept`` channels; False when it does not reduce
    that axis (then it is left alone)."""
    if len(node.input) > 1 and node.input[1]:
        value = GraphView(model, shapes=False).constant(node.input[1])
        _check(value is not None, f"{node.name}: ReduceMean axes computed at run time")
        axes = [int(a) for a in np.asarray(value).reshape(-1)]
    else:
        axes = [int(a) for a in attr(node, "axes", list(range(rank)))]
    axes = sorted(normalize_axis(a, rank) for a in axes)
    if axis not in axes:
        return False
    e = _Emit(model, node.output[0])
    x = node.input[0]
    m, count = _kept_mask(e, x, rank, axis, kept, size, axes)
    mean = e.op("Div", [e.reduce_sum(e.op("Mul", [x, m]), axes), count])
    model.graph.node.append(helper.make_node("Identity", [mean], [node.output[0]]))
    model.graph.node.remove(node)
    return True


def stream_reference(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """The reference model (module doc): ``zeroed`` plus every norm that lost channels
    computed over its kept ones. Raises ``AssertionError`` when no norm lost channels."""
    ref = zeroed(model, plan)
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    cuts = {c.name: c for c in plan.tensors}
    replaced = 0
    for node in [n for n in ref.graph.node if n.op_type in (*NORMS, "ReduceMean")]:
        cut = cuts.get(node.input[0])
        if cut is None:
            continue
        rank = ranks[node.input[0]]
        if node.op_type == "ReduceMean":
            replaced += masked_mean(ref, node, rank, cut.axis, cut.kept, cut.size)
            continue
        masked_norm(ref, node, rank, cut.axis, cut.kept, cut.size)
        replaced += 1
    _check(replaced > 0, "no normalization lost channels: this is not a hidden-stream cut")
    onnx_sort(ref)
    return ref


def assert_stream(
    model: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: Plan,
    *,
    seeds: Sequence[int] = (0, 1),
    rtol: float = 1e-4,
    symbolic: int = 1,
) -> None:
    """The pruned model equals ``stream_reference`` on random inputs, checks, and keeps the
    original's inputs and outputs."""
    assert_same_interface(model, pruned, output_types=False)
    ref = stream_reference(model, plan)
    for seed in seeds:
        feeds = random_feeds(model, seed, symbolic)
        assert_close(run(ref, feeds), run(pruned, feeds), rtol)


def prune_stream(
    model: onnx.ModelProto, hidden: float = 0.5, ratio: float = 0.0, **kw: Any
) -> tuple[onnx.ModelProto, Plan]:
    """Prune the hidden stream (and ``ratio`` of the exact groups) with exact counts, check
    ``assert_stream``; returns (pruned, plan). ``kw`` go to ``StructuredOptions``."""
    kw.setdefault("round_to", 1)
    pruned, result = prune_structured(model, StructuredOptions(ratio=ratio, hidden=hidden, **kw))
    plan = result.plan
    _check(
        result.hidden is not None and any(
            r["channels_after"] < r["channels_before"] for r in result.hidden["groups"]
        ),
        f"no hidden stream was cut; blocked: {result.blocked}",
    )
    assert_stream(model, pruned, plan)
    return pruned, plan
