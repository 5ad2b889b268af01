"""Parameters and nonzeros: every float initializer, nested graphs included, read once."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto

from onnxprune.graph.proto import is_external, subgraphs

# Zero counting: how to view each float type's bytes, and which bits make a value nonzero
# (None: let numpy compare floats, so -0.0 counts as zero).
_FLOAT_VIEWS: dict[int, tuple[np.dtype, int | None]] = {
    TensorProto.FLOAT: (np.dtype("<f4"), None),
    TensorProto.DOUBLE: (np.dtype("<f8"), None),
    TensorProto.FLOAT16: (np.dtype("<f2"), None),
    TensorProto.BFLOAT16: (np.dtype("<u2"), 0x7FFF),
}
for _name, _mask in (
    ("FLOAT8E4M3FN", 0x7F),
    ("FLOAT8E5M2", 0x7F),
    ("FLOAT8E4M3FNUZ", 0xFF),  # the "uz" types have no negative zero: 0x80 is NaN
    ("FLOAT8E5M2FNUZ", 0xFF),
):
    if hasattr(TensorProto, _name):
        _FLOAT_VIEWS[getattr(TensorProto, _name)] = (np.dtype("u1"), _mask)


def _count_nonzero(tensor: TensorProto, data: bytes | None) -> int:
    dtype, mask = _FLOAT_VIEWS[tensor.data_type]
    if data is not None:
        usable = len(data) - len(data) % dtype.itemsize
        values = np.frombuffer(data, dtype=dtype, count=usable // dtype.itemsize)
    elif tensor.data_type == TensorProto.FLOAT:
        values = np.asarray(tensor.float_data, dtype=np.float32)
    elif tensor.data_type == TensorProto.DOUBLE:
        values = np.asarray(tensor.double_data, dtype=np.float64)
    else:  # 16- and 8-bit floats keep their bit patterns in int32_data
        bits = np.asarray(tensor.int32_data, dtype=np.int64)
        if mask is None:
            values = bits.astype(np.uint16).view(np.float16)
        else:
            return int(np.count_nonzero(bits & mask))
    if mask is None:
        return int(np.count_nonzero(values))
    return int(np.count_nonzero(values & values.dtype.type(mask)))


def _elements(tensor: TensorProto) -> int:
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n


def float_initializers(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, TensorProto | None]]:
    """(values, sparse indices or None) for every float initializer, nested graphs included."""
    for graph in (model.graph, *subgraphs(model.graph)):
        for tensor in graph.initializer:
            if tensor.data_type in _FLOAT_VIEWS:
                yield tensor, None
        for sparse in graph.sparse_initializer:
            if sparse.values.data_type in _FLOAT_VIEWS:
                yield sparse.values, sparse


def scan_params(model: onnx.ModelProto) -> tuple[int, int, int]:
    """(params, nonzeros, tensors whose data is external and not loaded: counted as dense)."""
    params = nonzeros = unread = 0
    for tensor, sparse in float_initializers(model):
        if sparse is not None:
            params += _elements(sparse)  # dims of a SparseTensorProto: the dense shape
            data = tensor.raw_data if tensor.HasField("raw_data") else None
            nonzeros += _count_nonzero(tensor, data)
            continue
        n = _elements(tensor)
        params += n
        if is_external(tensor):
            unread += 1
            nonzeros += n
        else:
            data = tensor.raw_data if tensor.HasField("raw_data") else None
            nonzeros += _count_nonzero(tensor, data)
    return params, nonzeros, unread


def count_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(params, nonzeros) over all float initializers of the model, nested graphs included.

    Integer tensors (shape constants, indices) are not parameters. Weights held in external
    files that were not loaded count as dense (their values are unknown here).
    """
    params, nonzeros, _ = scan_params(model)
    return params, nonzeros
