"""Tiny graphs with If and Loop nodes whose bodies read the outer graph by name, as
exporters write them (torch.cond, scripted loops, streaming/offline switches in speech
models): the cases the subgraph guard of ``onnxprune.ops.control`` must keep whole."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.testing.graphs import OPSET


def _w(rng: np.random.Generator, shape: list[int], name: str) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def _finish(nodes: list, inits: list, outputs: list[str], name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, 4, 8, 8]) for o in outputs],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def if_conv_model(
    *, outer_weights: bool = False, shared: bool = False, front: bool = False, seed: int = 0
) -> onnx.ModelProto:
    """``x -> [c0 ->] c1 -> Relu -> x1``; ``If(cond)`` whose branches each run a Conv on
    the outer ``x1``; then ``c2`` on the If's output. ``outer_weights``: the branch weights
    are main-graph initializers (else body initializers); ``shared``: the then-branch reads
    ``c1.w`` as well (a weight also used outside); ``front``: a Conv ``c0`` before ``c1``,
    which nothing inside the If reads (it stays prunable)."""
    rng = np.random.default_rng(seed)
    inits = [_w(rng, [8, 8 if front else 3, 3, 3], "c1.w"), _w(rng, [8], "c1.b")]
    inits += [_w(rng, [4, 8, 1, 1], "c2.w"), numpy_helper.from_array(np.array(True), "cond")]
    nodes = []
    x = "x"
    if front:
        inits.append(_w(rng, [8, 3, 3, 3], "c0.w"))
        nodes.append(helper.make_node("Conv", ["x", "c0.w"], ["c0"], pads=[1] * 4, name="c0"))
        nodes.append(helper.make_node("Relu", ["c0"], ["x0"]))
        x = "x0"

    def branch(tag: str) -> onnx.GraphProto:
        wt = _w(rng, [8, 8, 3, 3], f"{tag}.w")
        body = [
            helper.make_node(
                "Conv", ["x1", wt.name], [f"{tag}_y"], pads=[1] * 4, name=f"{tag}_conv"
            ),
            helper.make_node("Relu", [f"{tag}_y"], [f"{tag}_out"]),
        ]
        if shared and tag == "then":
            body.append(helper.make_node("Add", [f"{tag}_out", "c1.b"], [f"{tag}_sum"]))
        out = f"{tag}_sum" if shared and tag == "then" else f"{tag}_out"
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 8, 8, 8])]
        if outer_weights:
            inits.append(wt)
        return helper.make_graph(body, tag, [], outputs, [] if outer_weights else [wt])

    then, other = branch("then"), branch("else")
    nodes += [
        helper.make_node("Conv", [x, "c1.w", "c1.b"], ["c1"], pads=[1] * 4, name="c1"),
        helper.make_node("Relu", ["c1"], ["x1"]),
        helper.make_node("If", ["cond"], ["b"], then_branch=then, else_branch=other, name="gate"),
        helper.make_node("Conv", ["b", "c2.w"], ["y"], name="c2"),
    ]
    return _finish(nodes, inits, ["y"], "if_conv")


def loop_model(*, nested_if: bool = False, seed: int = 0) -> onnx.ModelProto:
    """``x -> c1 -> Relu -> x1``; a ``Loop`` of 2 trips whose body adds ``Conv(x1, w)`` to
    its carried state (``nested_if``: the Conv sits in an If inside the body, two scopes
    below ``x1``); then ``c2`` on the final state."""
    rng = np.random.default_rng(seed)
    inits = [
        _w(rng, [8, 3, 3, 3], "c1.w"),
        _w(rng, [8, 8, 3, 3], "body.w"),
        _w(rng, [4, 8, 1, 1], "c2.w"),
    ]
    inits += [numpy_helper.from_array(np.array(2, np.int64), "trips")]
    inits += [numpy_helper.from_array(np.array(True), "go")]
    inits += [numpy_helper.from_array(np.zeros([1, 8, 8, 8], np.float32), "state0")]
    conv = helper.make_node("Conv", ["x1", "body.w"], ["step"], pads=[1] * 4, name="body_conv")
    if nested_if:
        inner = helper.make_graph(
            [conv], "inner", [], [helper.make_tensor_value_info("step", TensorProto.FLOAT, None)]
        )
        step_nodes = [
            helper.make_node("If", ["c_in"], ["step_if"], then_branch=inner, else_branch=inner)
        ]
        step = "step_if"
    else:
        step_nodes, step = [conv], "step"
    body = helper.make_graph(
        [*step_nodes, helper.make_node("Add", ["s_in", step], ["s_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 8, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 8, 8, 8]),
        ],
    )  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], pads=[1] * 4, name="c1"),
        helper.make_node("Relu", ["c1"], ["x1"]),
        helper.make_node("Loop", ["trips", "go", "state0"], ["s"], body=body, name="loop"),
        helper.make_node("Conv", ["s", "c2.w"], ["y"], name="c2"),
    ]
    return _finish(nodes, inits, ["y"], "loop")


def tanh_cell_nodes(seq: str) -> list[onnx.NodeProto]:
    """A Loop body's tanh RNN step over frame ``t`` of ``seq``: ``h_out = tanh(x_t @ cell.wx +
    h_in @ cell.wh + cell.b)``, the condition passed through (``c_in`` -> ``c_out``)."""
    return [
        helper.make_node("Gather", [seq, "t"], ["x_t"], axis=0),
        helper.make_node("MatMul", ["x_t", "cell.wx"], ["a"], name="cell_x"),
        helper.make_node("MatMul", ["h_in", "cell.wh"], ["r"], name="cell_h"),
        helper.make_node("Add", ["a", "r"], ["ar"]),
        helper.make_node("Add", ["ar", "cell.b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["h_out"]),
        helper.make_node("Identity", ["c_in"], ["c_out"]),
    ]


def loop_rnn_model(*, scan: bool = True, seed: int = 0) -> onnx.ModelProto:
    """A recurrent cell written as a Loop (a scripted ``for t in range(T)``): ``x [T, B, 4]
    -> proj (MatMul 4->6)``; the body reads step ``t`` of the outer projection and its
    carried ``h [B, 8]``: ``h = tanh(x_t Wx + h Wh + b)``; ``h0`` is a zero initializer.
    The final ``h`` feeds a Gemm classifier; ``scan``: the stacked ``h`` of every step
    ``[T, B, 8]`` feeds a MatMul too (a second output)."""
    rng = np.random.default_rng(seed)
    steps, batch, hidden = 5, 2, 8
    inits = [
        _w(rng, [4, 6], "proj.w"),
        _w(rng, [6, hidden], "cell.wx"),
        _w(rng, [hidden, hidden], "cell.wh"),
    ]
    inits += [
        _w(rng, [hidden], "cell.b"),
        _w(rng, [3, hidden], "cls.w"),
        _w(rng, [hidden, 3], "frame.w"),
    ]
    inits += [numpy_helper.from_array(np.array(steps, np.int64), "steps")]
    inits += [numpy_helper.from_array(np.array(True), "go")]
    inits += [numpy_helper.from_array(np.zeros([batch, hidden], np.float32), "h0")]
    body_nodes = tanh_cell_nodes("p")
    outputs = [
        helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
        helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [batch, hidden]),
    ]
    if scan:
        body_nodes.append(helper.make_node("Identity", ["h_out"], ["h_step"]))
        outputs.append(helper.make_tensor_value_info("h_step", TensorProto.FLOAT, [batch, hidden]))
    body = helper.make_graph(
        body_nodes,
        "cell",
        [
            helper.make_tensor_value_info("t", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [batch, hidden]),
        ],
        outputs,
    )
    loop_out = ["h_last", "h_all"] if scan else ["h_last"]
    nodes = [
        helper.make_node("MatMul", ["x", "proj.w"], ["p"], name="proj"),
        helper.make_node("Loop", ["steps", "go", "h0"], loop_out, body=body, name="cell_loop"),
        helper.make_node("Gemm", ["h_last", "cls.w"], ["y"], transB=1, name="cls"),
    ]
    out_vis = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])]
    if scan:
        nodes.append(helper.make_node("MatMul", ["h_all", "frame.w"], ["frames"], name="frame"))
        out_vis.append(
            helper.make_tensor_value_info("frames", TensorProto.FLOAT, [steps, batch, 3])
        )
    graph = helper.make_graph(
        nodes, "loop_rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, batch, 4])],
        out_vis, inits,
    )  # fmt: skip
    graph.value_info.extend(
        [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [batch, hidden])]
        + (
            [helper.make_tensor_value_info("h_all", TensorProto.FLOAT, [steps, batch, hidden])]
            if scan
            else []
        )
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
