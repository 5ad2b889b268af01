"""Shapes through onnxruntime's quantized contrib ops, for ONNX shape inference.

ONNX shape inference knows no ``com.microsoft`` op, so in a QOperator model (onnxruntime's
``quantize_static`` writes ``QLinearAdd``, ``QLinearGlobalAveragePool``, ``QGemm``,
``QLinearConcat``...) every tensor after the first such op had no shape, and the analysis
refused them all ("the rank of ... is unknown"). ``with_twins`` replaces each of them, in
the weight-free skeleton that inference runs on only, by ONNX ops that produce an output of
the same type and shape (``QLinearAdd(A, .., B, ..)`` by ``Add(A, B)``, ``QGemm`` by
``MatMulInteger`` then ``Cast``...). The model itself is never changed.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxprune.graph.proto import attr

MS = "com.microsoft"


def _reduce_spatial(node: onnx.NodeProto, opset: int, rank_hint: int = 4) -> list[onnx.NodeProto]:
    """[N, C, H, W] -> [N, C, 1, 1] (or NHWC with channels_last) for int8/uint8 tensors."""
    axes = [1, 2] if attr(node, "channels_last", 0) else [2, 3]
    x, y = node.input[0], node.output[0]
    if opset >= 18:
        name = f"{y}__twin_axes"
        const = helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name, onnx.TensorProto.INT64,
                                                            [len(axes)], axes),
        )  # fmt: skip
        return [const, helper.make_node("ReduceMax", [x, name], [y], keepdims=1)]
    return [helper.make_node("ReduceMax", [x], [y], axes=axes, keepdims=1)]


def _qgemm(node: onnx.NodeProto, elem: int) -> list[onnx.NodeProto]:
    """MatMulInteger then Cast to QGemm's output type (its y_zero_point's; float without)."""
    y = node.output[0]
    a, b = node.input[0], node.input[3]
    out: list[onnx.NodeProto] = []
    if attr(node, "transA", 0):
        out.append(helper.make_node("Transpose", [a], [f"{y}__twin_a"]))
        a = f"{y}__twin_a"
    if attr(node, "transB", 0):
        out.append(helper.make_node("Transpose", [b], [f"{y}__twin_b"]))
        b = f"{y}__twin_b"
    out.append(helper.make_node("MatMulInteger", [a, b], [f"{y}__twin_mm"]))
    return [*out, helper.make_node("Cast", [f"{y}__twin_mm"], [y], to=elem)]


def _twins(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto] | None:
    op, x, y = node.op_type, node.input, node.output
    if op in ("QLinearAdd", "QLinearMul"):
        return [helper.make_node(op[7:], [x[0], x[3]], [y[0]])]
    if op == "QLinearGlobalAveragePool":
        return _reduce_spatial(node, opset)
    if op == "QLinearAveragePool":
        keep = ("kernel_shape", "strides", "pads", "auto_pad", "ceil_mode")
        kw = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in keep}
        return [helper.make_node("MaxPool", [x[0]], [y[0]], **kw)]
    if op in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"):
        return [helper.make_node("Identity", [x[0]], [y[0]])]
    if op == "QLinearConcat":
        return [helper.make_node("Concat", list(x[2::3]), [y[0]], axis=int(attr(node, "axis", 1)))]
    return None


def with_twins(model: onnx.ModelProto) -> bool:
    """Replace, in place, the contrib quantized ops of ``model`` (a skeleton) by their shape
    twins; True when something was replaced."""
    graph = model.graph
    if not any(n.domain == MS for n in graph.node):
        return False
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in graph.input})
    nodes, changed = [], False
    for node in graph.node:
        twin = _twins(node, opset) if node.domain == MS else None
        if node.domain == MS and node.op_type == "QGemm":
            zp = node.input[8] if len(node.input) > 8 else ""
            twin = _qgemm(node, types.get(zp, onnx.TensorProto.FLOAT))
        if node.domain == MS and node.op_type == "MatMulNBits":
            w = f"{node.output[0]}__twin_w"  # A @ a float [K, N] stand-in for B
            k, n = int(attr(node, "K", 0)), int(attr(node, "N", 0))
            elem = types.get(node.input[2], onnx.TensorProto.FLOAT)
            graph.input.append(helper.make_tensor_value_info(w, elem, [k, n]))
            twin = [helper.make_node("MatMul", [node.input[0], w], [node.output[0]])]
        if twin is None:
            nodes.append(node)
        else:
            nodes.extend(twin)
            changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
    return changed

