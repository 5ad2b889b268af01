"""Tests for onnxprune.graph.proto: byte sizes for every data type, fresh names, writers."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph import proto

DATA_TYPES = [(n, v) for n, v in TensorProto.DataType.items() if n not in ("UNDEFINED", "STRING")]


@pytest.mark.parametrize("dims", [(3, 5), (4,), (), (2, 0)])
@pytest.mark.parametrize(("name", "data_type"), DATA_TYPES, ids=[n for n, _ in DATA_TYPES])
def test_tensor_nbytes_matches_the_packed_raw_data(
    name: str, data_type: int, dims: tuple[int, ...]
) -> None:
    """numpy_helper writes the spec's raw form: sub-byte types packed, rounded up."""
    array = np.zeros(dims, dtype=helper.tensor_dtype_to_np_dtype(data_type))
    tensor = numpy_helper.from_array(array, "t")
    assert tensor.data_type == data_type
    assert proto.tensor_nbytes(tensor) == len(tensor.raw_data)
    assert proto.payload_nbytes(dims, data_type) == len(tensor.raw_data)


@pytest.mark.parametrize("name", ["INT4", "UINT4", "FLOAT4E2M1"])
def test_four_bit_types_pack_two_per_byte(name: str) -> None:
    data_type = TensorProto.DataType.Value(name)
    assert proto.element_bits(data_type) == 4
    for n in range(6):
        tensor = helper.make_tensor("t", data_type, [n], [0] * n)
        assert proto.tensor_nbytes(tensor) == math.ceil(n / 2)


def test_tensor_nbytes_of_strings_and_external_tensors() -> None:
    strings = helper.make_tensor("s", TensorProto.STRING, [2], [b"ab", b"cde"])
    assert proto.tensor_nbytes(strings) == 5
    ext = TensorProto(name="e", data_type=TensorProto.FLOAT, dims=[1000])
    ext.data_location = TensorProto.EXTERNAL
    ext.external_data.add(key="location", value="x.data")
    ext.external_data.add(key="length", value="64")
    assert proto.is_external(ext)
    assert proto.tensor_nbytes(ext) == 64
    assert proto.external_info(ext) == ("x.data", 0, 64)


def test_fresh_names_avoid_every_name_of_the_graph() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="y_1")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "w")],
    )
    names = proto.FreshNames(graph)
    assert names.new("x") == "x_1"
    assert names.new("y") == "y_2"  # the node is called y_1
    assert names.new("w") == "w_1"
    assert names.new("w") == "w_2"
    assert names.new("z") == "z"


def test_initializer_writers() -> None:
    graph = onnx.GraphProto()
    t = proto.add_initializer(graph, np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    assert graph.initializer[0].name == "w" and list(t.dims) == [2, 3]
    proto.set_tensor(t, np.ones(4, np.float64), keep_dtype=True)
    assert t.data_type == TensorProto.FLOAT and list(t.dims) == [4]
    proto.write_tensor_data(t, np.zeros((1, 2), np.float32))
    np.testing.assert_array_equal(numpy_helper.to_array(t), np.zeros((1, 2), np.float32))
    assert t.name == "w"


def test_copy_fields_skips_the_data() -> None:
    src = numpy_helper.from_array(np.ones(3, np.float32), "w")
    dst = TensorProto()
    proto.copy_fields(src, dst, proto.TENSOR_DATA_FIELDS)
    assert dst.name == "w" and list(dst.dims) == [3] and not dst.raw_data
