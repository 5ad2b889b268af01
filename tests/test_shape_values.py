"""The one shape-value evaluator: the rules' symbolic reading and the view's numbers."""

from fractions import Fraction

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.shape_values import Opaque, Term, exprs
from onnxprune.graph.view import GraphView


def _model(nodes, inits, x_shape=("B", 8)):
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _shape_dim(axis, out):
    return [
        helper.make_node("Shape", ["x"], [f"s{out}"]),
        helper.make_node("Gather", [f"s{out}", f"i{axis}"], [out]),
    ]


def test_symbolic_reshape_target_chain_keeps_dims_and_origin():
    nodes = [
        *_shape_dim(0, "b"),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        helper.make_node("Concat", ["b1", "four", "two"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    inits = {"i0": np.int64(0), "ax": np.array([0]), "four": np.array([4]), "two": np.array([2])}
    view = GraphView(_model(nodes, inits))
    reshape = next(i for i, n in enumerate(view.nodes) if n.op_type == "Reshape")
    target = exprs(view).input_of(reshape, 1)
    assert target[0] == Term(Fraction(1), (("x", 0),))
    assert target[1].const == 4 and target[1].origin.path == ("t",)
    assert view.shape_expr("t") == [("dim", "x", 0), 4, 2]


def test_arithmetic_on_an_inferred_dim_is_a_number_for_the_view_only():
    nodes = [
        *_shape_dim(1, "c"),
        helper.make_node("Add", ["c", "one"], ["c1"]),
        helper.make_node("Unsqueeze", ["c1", "ax"], ["t"]),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    view = GraphView(_model(nodes, {"i1": np.int64(1), "one": np.int64(1), "ax": np.array([0])}))
    value = exprs(view).of("c1")
    assert isinstance(value[0], Opaque) and value[0].refs == {("x", 1)}
    assert value[0].known == 9  # resolved, but the rules cannot trace it
    assert view.static_ints("t") == [9]


def test_a_partial_concat_is_opaque_to_the_rules_but_element_wise_to_the_view():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Abs", ["s"], ["unknown"]),
        helper.make_node("Concat", ["unknown", "k"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    view = GraphView(_model(nodes, {"k": np.array([5])}))
    assert isinstance(exprs(view).of("t"), Opaque)
    assert view.shape_expr("t") == [None, None, 5]


def test_a_float_resize_scale_is_kept_for_the_view():
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["scales"], axis=0),
        helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest"),
    ]
    inits = {"a": np.array([1.0, 1.0], np.float32), "b": np.array([2.0, 2.0], np.float32)}
    view = GraphView(_model(nodes, inits, x_shape=(1, 3, 4, 4)))
    assert view.shape_expr("scales") == [1.0, 1.0, 2.0, 2.0]
    assert view.known_value("scales").dtype == np.float32
    assert isinstance(exprs(view).of("scales"), Opaque)


def test_a_range_bounded_by_a_shape_has_its_length_when_the_sizes_are_numbers():
    """Range(0, Shape(x)[1], 1) with its bounds in Constant nodes, as newer transformers
    build the attention mask: ONNX's inference refuses the limit it propagates ("should be
    scalars"), so the view folds it, and a folded scalar must stay 0-D. It once became 1-D,
    inference stopped at the Range, and with it every shape the mask reaches (MiniLM's
    heads, resolved only with the input sizes set to numbers, all blocked)."""
    scalar = lambda name, v: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(np.int64(v)))
    nodes = [
        scalar("start", 0), scalar("step", 1), scalar("i1", 1),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i1"], ["n"], axis=0),
        helper.make_node("Range", ["start", "n", "step"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
    ]  # fmt: skip
    view = GraphView(_model(nodes, {}, x_shape=(2, 5)))
    assert view.shape("r") == (5,)
    symbolic = GraphView(_model(nodes, {}, x_shape=("B", "S")))
    assert symbolic.rank("r") == 1
