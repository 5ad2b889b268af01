"""Light copies for the metrics: a model without its large payloads, so shape inference and
the compressed-size estimate never copy the weights. The protobuf helpers themselves live in
``onnxprune.graph.proto``.
"""

from __future__ import annotations

import re

import onnx
from onnx import TensorProto, numpy_helper

from onnxprune.graph.proto import (
    TENSOR_DATA_FIELDS,
    copy_fields,
    is_external,
    is_lazy,
    tensor_nbytes,
)

GENERATED_DIM = re.compile(r"^unk__\d+$")
"""Names ONNX shape inference makes up for unknown dims: read as unknown, not as symbols."""

_DATA_FIELDS = TENSOR_DATA_FIELDS - {"external_data", "data_location"}


def payload_nbytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data from its dims (strings count 0: they are never weights)."""
    return 0 if tensor.data_type == TensorProto.STRING else tensor_nbytes(tensor)


def header(tensor: TensorProto) -> TensorProto:
    """A tensor with the same name, type, dims and metadata but no data."""
    out = TensorProto()
    copy_fields(tensor, out, _DATA_FIELDS)
    return out


def without_payloads(
    model: onnx.ModelProto, keep_bytes: int, *, lazy: bool = False
) -> tuple[onnx.ModelProto, list[TensorProto]]:
    """A copy of ``model`` whose main-graph tensors above ``keep_bytes`` lost their data.

    Returns the copy and the original tensors whose data was left out (initializers and
    Constant-node values). Weights are never copied: only headers and small tensors are.
    External tensors keep their references (the copy reads nothing from disk); with
    ``lazy``, onnxprune's memory-mapped ones (``graph.proto.is_lazy``) are dropped too, their
    headers without the reference, as if they had been read in whole.
    """
    light = onnx.ModelProto()
    copy_fields(model, light, frozenset({"graph"}))
    src, g = model.graph, light.graph
    copy_fields(src, g, frozenset({"initializer", "node"}))
    dropped: list[TensorProto] = []
    for tensor in src.initializer:
        if lazy and is_lazy(tensor):
            bare = g.initializer.add()
            copy_fields(tensor, bare, TENSOR_DATA_FIELDS)
            dropped.append(tensor)
        elif payload_nbytes(tensor) > keep_bytes and not is_external(tensor):
            g.initializer.append(header(tensor))
            dropped.append(tensor)
        else:
            g.initializer.append(tensor)
    for node in src.node:
        big = [
            a
            for a in node.attribute
            if a.HasField("t") and payload_nbytes(a.t) > keep_bytes and not is_external(a.t)
        ]
        if not big:
            g.node.append(node)
            continue
        copy = g.node.add()
        copy_fields(node, copy, frozenset({"attribute"}))
        for a in node.attribute:
            if any(a is b for b in big):
                new = copy.attribute.add()
                copy_fields(a, new, frozenset({"t"}))
                new.t.CopyFrom(header(a.t))
                dropped.append(a.t)
            else:
                copy.attribute.append(a)
    return light, dropped


def payload(tensor: TensorProto) -> bytes:
    """The little-endian bytes of a tensor's data (one copy out of protobuf)."""
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()
