"""Protobuf helpers: the one place that knows how ONNX messages are walked, copied and sized.

* fields: ``copy_fields`` copies a message without the fields that hold weight bytes;
* tensors: ``walk_tensors`` finds every tensor of a model (nested graphs and functions
  included), ``is_external``/``external_info`` read and check external-data references,
  ``element_bits``/``tensor_nbytes`` give byte sizes right for every data type (6-, 4- and
  2-bit types are packed, rounded up to whole bytes, as the ONNX spec stores them);
* lazy tensors: ``make_lazy``/``is_lazy``/``tensor_array``/``tensor_chunks``: a weight whose
  bytes stay in its data file, read through a memory map when a rule or a criterion asks;
* shapes: ``shape_of`` reads a value info's dims;
* writing: ``FreshNames`` makes names no tensor, node or graph input of a graph uses,
  ``add_initializer``/``set_tensor``/``write_tensor_data`` are the initializer writers;
* attributes: ``attr`` reads one attribute, ``constant_node_tensor`` the value of a
  ``Constant`` node.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError

Dim = int | str | None
"""One dimension of a declared or inferred shape: an int, a symbolic name, or unknown."""

TYPED_DATA_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)
"""The ``TensorProto`` fields that hold values other than ``raw_data``."""

TENSOR_DATA_FIELDS = frozenset((*TYPED_DATA_FIELDS, "raw_data", "external_data", "data_location"))
"""Every ``TensorProto`` field that holds (or points to) a tensor's data."""


# ------------------------------------------------------------------------------------ fields
def is_repeated(fd: object) -> bool:
    """Whether a protobuf field descriptor is a repeated field (protobuf 4 and 5 alike)."""
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return fd.label == fd.LABEL_REPEATED  # type: ignore[attr-defined]  # protobuf < 5


def copy_fields(src: object, dst: object, skip: frozenset[str] = frozenset()) -> None:
    """Copy every set field of one message into another, except those in ``skip``.

    This is how weights are not copied: the skipped fields are the ones holding tensor data.
    Walks the descriptor rather than ``ListFields``, which would copy skipped bytes out.
    """
    for fd in src.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if fd.name in skip:
            continue
        if is_repeated(fd):
            values = getattr(src, fd.name)
            if len(values):
                getattr(dst, fd.name).extend(values)
        elif src.HasField(fd.name):  # type: ignore[attr-defined]
            if fd.message_type is not None:
                getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))
            else:
                setattr(dst, fd.name, getattr(src, fd.name))


# ------------------------------------------------------------------------------------ walking
def node_graphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held directly in a node's attributes (If branches, Loop/Scan bodies)."""
    for a in node.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graphs nested anywhere below ``graph``'s nodes."""
    for node in graph.node:
        for sub in node_graphs(node):
            yield sub
            yield from subgraphs(sub)


def attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    """Every tensor held in a node's attributes, sparse ones as values and indices."""
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        for sparse in a.sparse_tensors:
            yield sparse.values
            yield sparse.indices


def graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored directly in ``graph``: initializers, sparse ones, node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from attribute_tensors(node)


def walk_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor in the model: main graph, nested graphs and model-local functions."""
    for graph in (model.graph, *subgraphs(model.graph)):
        yield from graph_tensors(graph)
    for function in model.functions:
        for node in function.node:
            yield from attribute_tensors(node)
            for sub in node_graphs(node):
                for graph in (sub, *subgraphs(sub)):
                    yield from graph_tensors(graph)


# ------------------------------------------------------------------------------ external data
def is_external(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor's data lives in an external file."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length) of an external tensor, validated as numbers."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError as exc:
        raise OnnxPruneError(
            f"tensor {tensor.name!r} has a malformed external data offset or length"
        ) from exc
    if offset < 0 or (length is not None and length < 0):
        raise OnnxPruneError(
            f"tensor {tensor.name!r} has a negative external data offset or length"
        )
    return location, offset, length


def external_length(tensor: onnx.TensorProto) -> int | None:
    """The ``length`` an external tensor declares, or None when it declares none."""
    for entry in tensor.external_data:
        if entry.key == "length" and entry.value.isdigit():
            return int(entry.value)
    return None


# ------------------------------------------------------------------------------ lazy tensors
LAZY_ROOT = os.path.abspath(os.sep)
"""Lazy tensors name their data file relative to this folder (the file system root), so a
lazy tensor copied into any model still finds its bytes, and onnxruntime opens a model
holding them from memory with ``LAZY_ROOT`` as its external-data folder (it refuses absolute
locations)."""

LAZY_MARK = "onnxprune-lazy"
"""The ``checksum`` entry of a lazy tensor's external data (a key onnxruntime and onnx
accept and ignore): what tells a weight onnxprune left in its checked data file apart from
one a caller forgot to load."""

LAZY_MIN_BYTES = 64 * 1024
"""Smaller tensors are read into memory on load: shape constants, axes and biases are read
by many rules and cost nothing; only weights stay in their files."""


def make_lazy(tensor: onnx.TensorProto, data_file: str | os.PathLike, offset: int, length: int) -> None:
    """Point ``tensor`` at ``length`` bytes of ``data_file`` from ``offset`` instead of
    holding them (the file must have been checked: ``graph.external``)."""
    for f in TENSOR_DATA_FIELDS:
        tensor.ClearField(f)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    where = os.path.relpath(os.path.abspath(data_file), LAZY_ROOT)
    for key, value in (("location", where), ("offset", offset), ("length", length),
                       ("checksum", LAZY_MARK)):  # fmt: skip
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def is_lazy(tensor: onnx.TensorProto) -> bool:
    """Whether the tensor is a weight onnxprune reads from its data file on demand."""
    return is_external(tensor) and any(
        e.key == "checksum" and e.value == LAZY_MARK for e in tensor.external_data
    )


def lazy_source(tensor: onnx.TensorProto) -> tuple[str, int, int]:
    """(absolute data file, offset, length) of a lazy tensor."""
    location, offset, length = external_info(tensor)
    return os.path.join(LAZY_ROOT, location), offset, length or 0


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's value as numpy; a lazy one as a copy-on-write memory map of its file.

    The map costs no memory until read, and its pages leave the process when the array
    does: a criterion that reads one weight at a time holds one weight at a time.
    """
    if not is_lazy(tensor):
        return numpy_helper.to_array(tensor)
    path, offset, length = lazy_source(tensor)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        dtype = None
    shape = tuple(int(d) for d in tensor.dims)
    if dtype is None or element_bits(tensor.data_type) % 8 or dtype.itemsize * product(shape) != length:
        return numpy_helper.to_array(materialized(tensor))  # packed/exotic types: via onnx
    if length == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape)


def tensor_chunks(tensor: onnx.TensorProto, chunk: int = 64 << 20) -> Iterator[bytes]:
    """The bytes of a lazy tensor, ``chunk`` at a time (a save never holds a whole weight)."""
    path, offset, length = lazy_source(tensor)
    with open(path, "rb") as fh:
        fh.seek(offset)
        left = length
        while left > 0:
            data = fh.read(min(chunk, left))
            if not data:
                raise OnnxPruneError(f"the data file of tensor {tensor.name!r} ({path}) was cut short")
            left -= len(data)
            yield data


def materialized(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of a lazy tensor with its bytes in memory (any other tensor: itself)."""
    if not is_lazy(tensor):
        return tensor
    out = onnx.TensorProto()
    copy_fields(tensor, out, TENSOR_DATA_FIELDS)
    out.raw_data = b"".join(tensor_chunks(tensor))
    return out


# ------------------------------------------------------------------------------------ sizes
_SUBBYTE_BITS = {
    "INT4": 4,
    "UINT4": 4,
    "FLOAT4E2M1": 4,
    "INT2": 2,
    "UINT2": 2,
    "FLOAT6E2M3": 6,
    "FLOAT6E3M2": 6,
}
"""Packed types narrower than a byte (by their ``TensorProto.DataType`` name, so that onnx
releases without some of them still work); numpy reports them as one byte per element."""


@functools.cache
def element_bits(data_type: int) -> int:
    """Bits one element of ``data_type`` takes in the serialized tensor (32 when unknown)."""
    try:
        name = onnx.TensorProto.DataType.Name(data_type)
        if name in _SUBBYTE_BITS:
            return _SUBBYTE_BITS[name]
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, ValueError, TypeError):
        return 32


def payload_nbytes(dims: Sequence[int], data_type: int) -> int:
    """Bytes of ``prod(dims)`` elements of ``data_type``, sub-byte types packed and rounded up."""
    return math.ceil(math.prod(int(d) for d in dims) * element_bits(data_type) / 8)


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Size of a tensor's data, from its shape and type (an external one: its declared length).

    Reading ``raw_data`` (even for ``len``) copies the bytes out of protobuf, about a second
    per GB, so the size comes from the dims instead. Strings count their bytes.
    """
    if is_external(tensor):
        return external_length(tensor) or 0
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return payload_nbytes(tensor.dims, tensor.data_type)


# ------------------------------------------------------------------------------------ shapes
def shape_of(
    vi: onnx.ValueInfoProto, *, drop_params: re.Pattern[str] | None = None
) -> tuple[Dim, ...] | None:
    """The dims of a value info (None when it has no tensor shape); a symbolic dim whose name
    matches ``drop_params`` (names shape inference made up) reads as unknown."""
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and not (drop_params and drop_params.match(d.dim_param)):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def normalize_axis(axis: int, rank: int) -> int:
    """A negative axis counted from the end, as a non-negative one."""
    return axis + rank if axis < 0 else axis


def product(dims: Sequence[int]) -> int:
    """The product of ``dims`` (1 for none)."""
    return int(np.prod(dims)) if len(dims) else 1


# ------------------------------------------------------------------------------ attributes
def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """An attribute's Python value, or ``default`` when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node with one value attribute produces, or None for kinds
    left alone (strings, sparse)."""
    if len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value" and a.HasField("t"):
        return a.t
    value = constant_node_value(node) if a.name.startswith("value_") else None
    return None if value is None else numpy_helper.from_array(value)


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node as numpy (the first value attribute it has)."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


# ------------------------------------------------------------------------------------ writing
def graph_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph uses: tensors (initializers, inputs, outputs, node inputs and
    outputs, value infos) and nodes."""
    names = {t.name for t in graph.initializer}
    names.update(vi.name for vi in (*graph.input, *graph.output, *graph.value_info))
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    names.discard("")
    return names


class FreshNames:
    """Names no tensor or node of a graph uses, nor any name this generator gave before:
    ``new(base)`` is ``base`` when free, else ``base_1``, ``base_2``, ..."""

    def __init__(self, taken: Iterable[str] | onnx.GraphProto) -> None:
        self.taken = graph_names(taken) if isinstance(taken, onnx.GraphProto) else set(taken)

    def new(self, base: str) -> str:
        """A free name starting with ``base``, reserved from now on."""
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def add_initializer(graph: onnx.GraphProto, value: np.ndarray, name: str) -> onnx.TensorProto:
    """Append ``value`` to ``graph`` as initializer ``name``; returns the new tensor. A 0-D
    value stays 0-D (``np.ascontiguousarray`` would make it 1-D: Range bounds, scalars)."""
    tensor = numpy_helper.from_array(np.asarray(value, order="C"), name)
    graph.initializer.append(tensor)
    return graph.initializer[-1]


def set_tensor(tensor: onnx.TensorProto, value: np.ndarray, *, keep_dtype: bool = False) -> None:
    """Replace a tensor's value (and dims) with ``value``, keeping its name; with
    ``keep_dtype`` the value is cast to the tensor's present data type first."""
    if keep_dtype:
        value = value.astype(tensor_array(tensor).dtype, copy=False)
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))


def write_tensor_data(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Replace a tensor's dims and data in place, keeping its data type: one copy of the
    bytes instead of building a new ``TensorProto`` and copying it in."""
    for f in TENSOR_DATA_FIELDS:
        tensor.ClearField(f)
    del tensor.dims[:]
    tensor.dims.extend(value.shape)
    tensor.raw_data = np.ascontiguousarray(value).tobytes()
