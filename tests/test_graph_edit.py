"""Tests for onnxprune.graph.edit."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.edit import insert_after
from onnxprune.graph.proto import FreshNames


def test_insert_after_takes_over_the_producers_output() -> None:
    w = np.arange(6, dtype=np.float32).reshape(3, 2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(2, np.float32), "b")],
    )
    names = FreshNames(graph)
    pre = names.new("y_before_bias")
    add = helper.make_node("Add", [pre, "b"], ["y"], name=names.new("y_bias"))
    insert_after(graph, graph.node[0], add, renamed=pre)
    assert [n.op_type for n in graph.node] == ["MatMul", "Add", "Relu"]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    x = np.ones((1, 3), np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], np.maximum(x @ w + 1, 0))
