"""Load-time validity: the model's own problem named as it is, before any pruning starts.

A broken model used to reach the pruning passes and come back as "no prunable weights found"
or as a numpy reshape error. ``check_model`` looks at what the model claims and refuses, with
the tensor or node named, anything that is not a model onnxruntime could run: unknown data
types, negative or absurd dims, payloads whose size disagrees with their dims, non-finite float
weights, node inputs nothing produces, Conv attributes that disagree with the weight, opsets
outside what onnxprune supports, and whatever the onnx checker finds. The checker runs on a
copy without the big payloads, so a 2 GB model is never held twice. A node list that is only
out of order is sorted in place (onnxruntime runs such models) and noted.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.inference import skeleton, toposorted
from onnxprune.graph.proto import (
    TENSOR_DATA_FIELDS,
    attr,
    copy_fields,
    element_bits,
    is_external,
    is_lazy,
    is_repeated,
    payload_nbytes,
    subgraphs,
    tensor_array,
    walk_tensors,
)

SUPPORTED_OPSET_RANGE = (7, onnx.defs.onnx_opset_version())
"""ai.onnx opsets onnxprune accepts (onnxruntime runs none older than 7; the installed onnx
knows none newer)."""

MAX_ELEMENTS = 1 << 36
"""More elements than this in one tensor (64 G) is not a weight anyone has: a corrupt dim."""

_DEFAULT_DOMAINS = ("", "ai.onnx")
_FLOATS = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
     onnx.TensorProto.BFLOAT16}
)  # fmt: skip
_KNOWN_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}

# Which typed field holds a data type's values, and how many entries one element takes.
_T = onnx.TensorProto
_TYPED_FIELD = {
    _T.FLOAT: ("float_data", 1), _T.COMPLEX64: ("float_data", 2),
    _T.DOUBLE: ("double_data", 1), _T.COMPLEX128: ("double_data", 2),
    _T.INT64: ("int64_data", 1), _T.UINT32: ("uint64_data", 1), _T.UINT64: ("uint64_data", 1),
    _T.STRING: ("string_data", 1),
}  # fmt: skip


def check_payloads(model: onnx.ModelProto) -> None:
    """What must hold before any tensor is read: text fields, opset, data types, dims,
    inline payload sizes (external ones are checked against their dims by ``external.py``
    before reading)."""
    check_text(model)
    check_opset(model)
    for tensor in walk_tensors(model):
        check_tensor(tensor)


def check_graph(model: onnx.ModelProto) -> list[str]:
    """Refuse an invalid graph with a message naming the problem; returns notes.

    Runs once every weight is in memory and Constant weights are initializers. Sorts an
    out-of-order node list in place (the one fix made: it changes no meaning).
    """
    check_dangling(model.graph)
    notes = sort_nodes(model.graph)
    check_ops(model)
    run_checker(model)
    check_inference(model)
    check_convs(model.graph)
    check_finite(model)
    return notes


def check_text(message: object, where: str = "model") -> None:
    """Every string field must be valid UTF-8 (protobuf hands back bytes or raises on access
    otherwise, deep inside whatever reads it). Bytes fields (payloads) are not touched."""
    for fd in message.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if fd.type == fd.TYPE_STRING:
            try:
                values = getattr(message, fd.name)
                values = list(values) if is_repeated(fd) else [values]
            except UnicodeDecodeError:
                values = [b""]
            if any(not isinstance(v, str) for v in values):
                raise OnnxPruneError(
                    f"the model is corrupt: {where}.{fd.name} is not valid UTF-8 text"
                )
        elif fd.type == fd.TYPE_MESSAGE:
            if is_repeated(fd):
                for i, sub in enumerate(getattr(message, fd.name)):
                    check_text(sub, f"{where}.{fd.name}[{i}]")
            elif message.HasField(fd.name):  # type: ignore[attr-defined]
                check_text(getattr(message, fd.name), f"{where}.{fd.name}")


def require_loaded(model: onnx.ModelProto) -> None:
    """An in-memory model must hold its weights: one whose tensors still point at external
    data files (``onnx.load(..., load_external_data=False)``) has no folder to read them from
    and would be pruned, validated and saved without them."""
    missing = [t.name for t in walk_tensors(model) if is_external(t) and not is_lazy(t)]
    if missing:
        raise OnnxPruneError(
            f"the model's tensor {missing[0]!r} ({len(missing)} in all) keeps its data in an "
            "external file that was not loaded: load it with onnx.load(path, "
            "load_external_data=True) or pass the model's path instead"
        )


def check_in_memory(model: onnx.ModelProto, *, owned: bool) -> tuple[onnx.ModelProto, list[str]]:
    """``check_payloads`` and ``check_graph`` for a model handed over in memory (the API).

    A model the caller still owns (``owned`` False) is never changed: when its node list
    needs sorting, a copy is sorted and returned. Returns the model to use and notes.
    """
    require_loaded(model)
    check_payloads(model)
    if not owned and [id(n) for n in toposorted(model.graph)] != [id(n) for n in model.graph.node]:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    return model, check_graph(model)


def check_opset(model: onnx.ModelProto) -> None:
    """The ai.onnx opset must be one onnxprune (and onnxruntime) understands."""
    low, high = SUPPORTED_OPSET_RANGE
    for opset in model.opset_import:
        if opset.domain in _DEFAULT_DOMAINS and not low <= opset.version <= high:
            raise OnnxPruneError(
                f"the model uses ai.onnx opset {opset.version}, which onnxprune does not "
                f"support (supported: opsets {low}-{high}); convert it with "
                "onnx.version_converter first"
            )


def check_tensor(tensor: onnx.TensorProto) -> None:
    """Data type known, dims sane, payload as long as the dims say."""
    name = tensor.name or "<unnamed>"
    if tensor.data_type not in _KNOWN_TYPES:
        raise OnnxPruneError(f"tensor {name!r} has an unknown data type ({tensor.data_type})")
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise OnnxPruneError(f"tensor {name!r} has a negative dimension {dims}")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise OnnxPruneError(
            f"tensor {name!r} has dims {dims} ({count:.3g} elements): not a real tensor"
        )
    if is_external(tensor):
        return  # its length is checked against the dims before it is read (external.py)
    expected = payload_nbytes(dims, tensor.data_type)
    if tensor.HasField("raw_data"):
        got = raw_data_length(tensor)
        if got != expected and tensor.data_type != _T.STRING:
            raise OnnxPruneError(
                f"tensor {name!r} holds {got} bytes of data but its dims {dims} and type "
                f"{_T.DataType.Name(tensor.data_type)} need {expected}"
            )
        return
    field, per = _TYPED_FIELD.get(tensor.data_type, ("int32_data", 1))
    entries = len(getattr(tensor, field))
    wanted = count * per
    if tensor.data_type not in _TYPED_FIELD and element_bits(tensor.data_type) < 8:
        wanted = math.ceil(count * element_bits(tensor.data_type) / 8)
    if entries != wanted:
        raise OnnxPruneError(
            f"tensor {name!r} holds {entries} values in {field} but its dims {dims} need {wanted}"
        )


def raw_data_length(tensor: onnx.TensorProto) -> int:
    """``len(tensor.raw_data)`` without copying the bytes out of protobuf.

    The serialized size of the tensor minus that of its data-less copy is the raw_data
    field: a 1-byte tag, a varint length and the bytes.
    """
    stub = onnx.TensorProto()
    copy_fields(tensor, stub, TENSOR_DATA_FIELDS)
    for f in TENSOR_DATA_FIELDS - {"raw_data"}:
        if f != "data_location" and len(getattr(tensor, f)):
            getattr(stub, f).extend(getattr(tensor, f))
    if tensor.HasField("data_location"):  # set to DEFAULT by onnx.load of external data
        stub.data_location = tensor.data_location
    field_size = tensor.ByteSize() - stub.ByteSize()
    for varint_bytes in range(1, 11):
        length = field_size - 1 - varint_bytes
        if length >= 0 and _varint_size(length) == varint_bytes:
            return length
    return len(tensor.raw_data)  # not reached for a well-formed message


def _varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def check_finite(model: onnx.ModelProto) -> None:
    """Float weights (initializers and Constant nodes of the main graph) must be finite."""
    bad: list[str] = []
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            tensors.extend(a.t for a in node.attribute if a.HasField("t"))
    for tensor in tensors:
        if tensor.data_type not in _FLOATS or is_external(tensor):
            continue  # lazy weights are checked as they are read in (graph.load)
        if not np.isfinite(tensor_array(tensor)).all():
            bad.append(tensor.name or "<unnamed>")
    refuse_nonfinite(bad)


def sort_nodes(graph: onnx.GraphProto) -> list[str]:
    """Put an out-of-order node list in producer-first order, in place; returns a note."""
    try:
        ordered = toposorted(graph)
    except OnnxPruneError:
        raise OnnxPruneError(f"the graph has a cycle: {_stuck(graph)}") from None
    if [id(n) for n in ordered] == [id(n) for n in graph.node]:
        return []
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return ["the model's node list was not in topological order; it was sorted"]


def _stuck(graph: onnx.GraphProto) -> str:
    """A node of a cycle and the input it waits for (every input is produced somewhere)."""
    known = {t.name for t in graph.initializer} | {vi.name for vi in graph.input} | {""}
    rest = list(graph.node)
    while True:
        ready = [n for n in rest if all(i in known for i in n.input)]
        if not ready:
            break
        for n in ready:
            known.update(n.output)
        rest = [n for n in rest if n not in ready]
    node = rest[0]
    waits = next(i for i in node.input if i not in known)
    return f"node {_node_name(node)} needs {waits!r}, which cannot be computed before it"


def check_dangling(graph: onnx.GraphProto) -> None:
    """Every node input of the main graph must be produced by something."""
    known = {t.name for t in graph.initializer} | {vi.name for vi in graph.input} | {""}
    known |= {s.values.name for s in graph.sparse_initializer}
    known |= {o for n in graph.node for o in n.output}
    for node in graph.node:
        for name in node.input:
            if name not in known:
                raise OnnxPruneError(
                    f"node {_node_name(node)} reads {name!r}, which no node, initializer "
                    "or graph input produces"
                )
    for out in graph.output:
        if out.name not in known:
            raise OnnxPruneError(f"graph output {out.name!r} is produced by no node")


def check_ops(model: onnx.ModelProto) -> None:
    """Every ai.onnx op of the main graph must exist at the model's opset."""
    version = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if version is None:
        return
    for node in model.graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            continue
        try:
            onnx.defs.get_schema(node.op_type, version, "")
        except onnx.defs.SchemaError:
            raise OnnxPruneError(
                f"onnxruntime cannot run this model: node {_node_name(node)} uses "
                f"{node.op_type!r}, which ai.onnx opset {version} does not define"
            ) from None


def run_checker(model: onnx.ModelProto) -> None:
    """The onnx checker, on a copy without big payloads (cheap at any model size)."""
    copy = _without_hints(skeleton(model))
    for vi in (*copy.graph.input, *copy.graph.output):
        if vi.type.HasField("tensor_type") and not vi.type.tensor_type.HasField("shape"):
            vi.type.tensor_type.shape.SetInParent()  # shapes are optional for onnxruntime
    try:
        onnx.checker.check_model(copy)
    except Exception as exc:  # ValidationError, and others on odd input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxPruneError(f"the model is not a valid ONNX graph: {first}") from exc


def _without_hints(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without value infos: hints only, which onnxruntime merges leniently."""
    model.graph.ClearField("value_info")
    for sub in subgraphs(model.graph):
        sub.ClearField("value_info")
    return model


def check_inference(model: onnx.ModelProto) -> None:
    """Types and shapes that contradict each other (a rank-1 tensor as a Gemm weight, an
    int32 Conv weight): onnx's strict shape inference on the payload-less copy."""
    copy = _without_hints(skeleton(model))
    for vi in copy.graph.output:  # onnxruntime merges a stale declared shape leniently
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    try:
        onnx.shape_inference.infer_shapes(copy, check_type=True, strict_mode=True)
    except Exception as exc:  # InferenceError, and others on odd input
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxPruneError(f"the model's types or shapes are inconsistent: {first}") from exc


def check_convs(graph: onnx.GraphProto) -> None:
    """Conv attributes that the weight contradicts (onnx's checker does not look)."""
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in _DEFAULT_DOMAINS:
            continue
        group = attr(node, "group", 1)
        if not isinstance(group, int) or group < 1:
            raise OnnxPruneError(f"node {_node_name(node)} has group={group!r}: must be >= 1")
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            continue
        dims = list(weight.dims)
        if len(dims) < 3:
            raise OnnxPruneError(
                f"node {_node_name(node)} has a weight {weight.name!r} of rank {len(dims)}: "
                "a Conv weight has at least 3 dims"
            )
        kernel = attr(node, "kernel_shape")
        if kernel is not None and list(kernel) != dims[2:]:
            raise OnnxPruneError(
                f"node {_node_name(node)} has kernel_shape {list(kernel)} but its weight "
                f"{weight.name!r} has spatial dims {dims[2:]}"
            )
        if node.op_type == "Conv" and dims[0] % group:
            raise OnnxPruneError(
                f"node {_node_name(node)} has group={group} but its weight {weight.name!r} "
                f"has {dims[0]} output channels (not a multiple of it)"
            )


def _node_name(node: onnx.NodeProto) -> str:
    """How messages name a node: its name, else what it computes."""
    if node.name:
        return f"{node.name!r} ({node.op_type})"
    if node.output:
        return f"{node.op_type} -> {node.output[0]!r}"
    return node.op_type


def refuse_nonfinite(bad: list[str]) -> None:
    """One message for weights holding NaN or Inf, whichever check found them (this one, or
    ``graph.load`` reading lazy weights in)."""
    if bad:
        shown = ", ".join(repr(n) for n in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise OnnxPruneError(
            f"{len(bad)} weight tensor{'s hold' if len(bad) != 1 else ' holds'} NaN or Inf "
            f"values ({shown}{more}); pruning cannot produce a usable model from them"
        )
