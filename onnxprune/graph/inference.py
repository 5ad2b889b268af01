"""Shape inference without the weights, and node order.

``skeleton`` is the model with its large initializers replaced by typed graph inputs, so that
ONNX shape inference and checks cost what the graph costs, not what the weights cost;
``infer_shapes`` runs inference on it. ``toposorted`` orders nodes producers first.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph import contrib_shapes
from onnxprune.graph.proto import add_initializer
from onnxprune.graph.quant_shapes import with_twins

SHAPE_SLOTS: dict[str, tuple[int, ...]] = {
    "Slice": (1, 2, 3, 4), "Split": (1,), "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
    "Pad": (1, 2, 3), "Expand": (1,), "Tile": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "ReduceMean": (1,), "ReduceSum": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,),
}  # fmt: skip
"""Inputs that hold shapes, sizes, bounds or axes: where a known computed value may be folded."""

SKELETON_MAX_ELEMENTS = 4096
"""Initializers with at most this many elements (and every int64 one) stay in the skeleton."""


def skeleton(
    model: onnx.ModelProto, folds: dict[str, list[int] | int] | None = None
) -> onnx.ModelProto:
    """The model without its large weights: they become typed graph inputs.

    Shape inference and checks then cost what the graph costs, not what the weights cost.
    ``folds`` replaces computed shape values that are known (``GraphView.static_ints``) by
    constants, so that inference sees through shape arithmetic it cannot evaluate itself.
    """
    src = model.graph
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g = sk.graph
    g.name = src.name
    g.node.extend(src.node)
    if folds:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in folds and i in SHAPE_SLOTS.get(node.op_type, ()):
                    node.input[i] = f"{name}__folded"
        for name, value in folds.items():
            add_initializer(g, np.asarray(value, dtype=np.int64), f"{name}__folded")
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    inputs = {vi.name for vi in src.input}
    for init in src.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        if n <= SKELETON_MAX_ELEMENTS or init.data_type == onnx.TensorProto.INT64:
            g.initializer.append(init)
        elif init.name not in inputs:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return sk


def infer_shapes(
    model: onnx.ModelProto, folds: dict[str, list[int] | int] | None = None
) -> onnx.ModelProto:
    """Shape inference on the skeleton; returns the inferred skeleton (no big weights).

    The model's own value_info are left out first: a stale one (an exporter's annotation
    that disagrees with the graph, which onnxruntime merges leniently) would otherwise win
    over what the graph computes. Only when inference then leaves an annotated tensor
    without a shape (an op it cannot see through) is it run again with them.
    """
    light = skeleton(model, folds)
    with_twins(light)  # quantized contrib ops: ONNX ops of the same output shapes
    contrib_shapes.annotate(light, _infer)  # fused com.microsoft ops: ONNX cannot see them
    annotated = {vi.name for vi in light.graph.value_info}
    if annotated:
        bare = onnx.ModelProto()
        bare.CopyFrom(light)
        del bare.graph.value_info[:]
        inferred = _infer(bare)
        if annotated <= {vi.name for vi in inferred.graph.value_info if _has_shape(vi)}:
            return inferred
    return _infer(light)


def _infer(light: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several types; all mean "the graph is inconsistent"
        raise OnnxPruneError(f"shape inference failed: {str(exc).splitlines()[0]}") from exc


def _has_shape(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")


def toposorted(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order where producers come first (ONNX requires it; some tools do
    not comply). Cheap when already sorted: one pass."""
    nodes = list(graph.node)
    known = {t.name for t in graph.initializer} | {vi.name for vi in graph.input} | {""}
    for n in nodes:
        if not all(i in known for i in n.input):
            break
        known.update(n.output)
    else:
        return nodes
    produced = {o for n in nodes for o in n.output}
    known = {t.name for t in graph.initializer} | {vi.name for vi in graph.input} | {""}
    known |= {i for n in nodes for i in n.input if i not in produced}  # outer-scope names
    ordered: list[onnx.NodeProto] = []
    while nodes:
        rest = [n for n in nodes if not all(i in known for i in n.input)]
        ready = [n for n in nodes if all(i in known for i in n.input)]
        if not ready:
            raise OnnxPruneError("the graph has a cycle")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        nodes = rest
    return ordered
