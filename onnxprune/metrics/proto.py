"""Protobuf helpers of the metrics: walking nested graphs, tensor sizes, light copies.

MARKED COPY: ``is_repeated``/``copy_fields`` are verbatim copies of the ones in
``onnxprune/graph/modelfile.py`` and ``shape_of`` has twins elsewhere; they move to
``onnxprune/graph/proto.py`` (the protobuf helper module) at the merge of issue 9. Nothing
else in ``onnxprune.metrics`` defines protobuf helpers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import onnx
from onnx import TensorProto, numpy_helper

from onnxprune.ops.macs import Dim, Shape

_GENERATED_DIM = re.compile(r"^unk__\d+$")  # names ONNX shape inference makes up


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every graph nested in its nodes (If branches, Loop and Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from graphs(attr.g)
            for sub in attr.graphs:
                yield from graphs(sub)


def is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def itemsize(data_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return 4


def payload_nbytes(tensor: TensorProto) -> int:
    """Size of a tensor's data from its dims: reading ``raw_data`` even for ``len`` copies it."""
    if tensor.data_type == TensorProto.STRING:
        return 0  # strings stay with the graph; they are never weights
    n = 1
    for d in tensor.dims:
        n *= int(d)
    return n * itemsize(tensor.data_type)


_DATA_FIELDS = frozenset(
    {
        "raw_data",
        "float_data",
        "int32_data",
        "string_data",
        "int64_data",
        "double_data",
        "uint64_data",
    }
)


def is_repeated(fd) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == fd.LABEL_REPEATED  # protobuf < 5


def copy_fields(src, dst, skip: frozenset[str] = frozenset()) -> None:
    """Copy the set fields of one protobuf message into another, except ``skip``.

    Walks the descriptor rather than ``ListFields``, which would copy the skipped (weight)
    bytes out of protobuf just to list them.
    """
    for fd in src.DESCRIPTOR.fields:
        if fd.name in skip:
            continue
        if is_repeated(fd):
            values = getattr(src, fd.name)
            if len(values):
                getattr(dst, fd.name).extend(values)
        elif src.HasField(fd.name):
            if fd.message_type is not None:
                getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))
            else:
                setattr(dst, fd.name, getattr(src, fd.name))


def header(tensor: TensorProto) -> TensorProto:
    """A tensor with the same name, type, dims and metadata but no data."""
    out = TensorProto()
    copy_fields(tensor, out, _DATA_FIELDS)
    return out


def without_payloads(
    model: onnx.ModelProto, keep_bytes: int
) -> tuple[onnx.ModelProto, list[TensorProto]]:
    """A copy of ``model`` whose main-graph tensors above ``keep_bytes`` lost their data.

    Returns the copy and the original tensors whose data was left out (initializers and
    Constant-node values). Weights are never copied: only headers and small tensors are.
    External tensors keep their references (the copy reads nothing from disk).
    """
    light = onnx.ModelProto()
    copy_fields(model, light, frozenset({"graph"}))
    src, g = model.graph, light.graph
    copy_fields(src, g, frozenset({"initializer", "node"}))
    dropped: list[TensorProto] = []
    for tensor in src.initializer:
        if payload_nbytes(tensor) > keep_bytes and not is_external(tensor):
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


def shape_of(vi: onnx.ValueInfoProto) -> Shape | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and not _GENERATED_DIM.match(d.dim_param):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)
