"""A light, read-only view over an ONNX graph: producers, consumers, constants, shapes.

Why not onnx-graphsurgeon here: importing a graph into graphsurgeon and exporting it again
copies every weight, and structured pruning of a 100 MB model must cost about as much as
loading and saving it. The analysis only needs names, edges, constant *shapes* and the shapes
of activations, so this view indexes the ``ModelProto`` in place and converts an initializer
to numpy only when a rule or a criterion asks for its values (cached). It never mutates the
model it views.

Shapes come from ONNX shape inference run on a *skeleton* of the model: large initializers are
replaced by typed graph inputs, so inference does not serialize the weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError

Dim = int | str | None
"""One dimension of an inferred shape: an int, a symbolic name, or unknown."""

ShapeElem = int | tuple[str, str, int] | None
"""An element of a shape computed in the graph; see ``GraphView.shape_expr``."""

_SMALL = 4096  # elements: initializers at most this big stay in the inference skeleton


@dataclass(frozen=True)
class Use:
    """One input slot of one node: ``node.input[index]``."""

    node: int
    index: int


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A name a user can find in Netron: the node's name, else its op and output."""
    if node.name:
        return node.name
    out = node.output[0] if node.output else "?"
    return f"{node.op_type}#{index}({out})"


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise OnnxPruneError("the model imports no version of the default ONNX operator set")


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large weights: they become typed graph inputs.

    Shape inference and checks then cost what the graph costs, not what the weights cost.
    """
    src = model.graph
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g = sk.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    inputs = {vi.name for vi in src.input}
    for init in src.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        if n <= _SMALL or init.data_type == onnx.TensorProto.INT64:
            g.initializer.append(init)
        elif init.name not in inputs:
            g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return sk


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on the skeleton; returns the inferred skeleton (no big weights)."""
    try:
        return onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several types; all mean "the graph is inconsistent"
        raise OnnxPruneError(f"shape inference failed: {str(exc).splitlines()[0]}") from exc


class GraphView:
    """Index of one graph for the analysis; see the module docstring for why it is light."""

    def __init__(self, model: onnx.ModelProto, *, shapes: bool = True) -> None:
        self.model = model
        g = model.graph
        self.opset = default_opset(model)
        self.nodes: list[onnx.NodeProto] = _toposorted(g)
        self.graph_inputs: list[str] = [vi.name for vi in g.input]
        self.graph_outputs: list[str] = [vi.name for vi in g.output]
        overridable = set(self.graph_inputs)
        # An initializer that is also a graph input can be replaced at run time: not a constant.
        self.initializers: dict[str, onnx.TensorProto] = {
            t.name: t for t in g.initializer if t.name not in overridable
        }
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        self.producer: dict[str, tuple[int, int]] = {}
        self.consumers: dict[str, list[Use]] = {}
        for i, node in enumerate(self.nodes):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constant_nodes[node.output[0]] = node
            for k, name in enumerate(node.output):
                if name:
                    self.producer[name] = (i, k)
            for k, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append(Use(i, k))
        self._values: dict[str, np.ndarray] = {}
        self._exprs: dict[str, list[ShapeElem] | None] = {}
        self.shapes: dict[str, tuple[Dim, ...]] = {}
        if shapes:
            inferred = infer_shapes(model).graph
            for vi in [*inferred.input, *inferred.output, *inferred.value_info]:
                s = _shape_of(vi)
                if s is not None:
                    self.shapes[vi.name] = s
        for name, t in self.initializers.items():
            self.shapes[name] = tuple(int(d) for d in t.dims)
        for name, node in self.constant_nodes.items():
            value = self._constant_node_value(node)
            if value is not None:
                self._values[name] = value
                self.shapes[name] = tuple(value.shape)

    # ------------------------------------------------------------------ constants
    @staticmethod
    def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
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

    def is_constant(self, name: str) -> bool:
        """True for an initializer (not overridable) or the output of a Constant node."""
        return name in self.initializers or name in self._values

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (cached), or None if ``name`` is computed."""
        if not name:
            return None
        v = self._values.get(name)
        if v is None and name in self.initializers:
            v = numpy_helper.to_array(self.initializers[name])
            self._values[name] = v
        return v

    def ints(self, node: onnx.NodeProto, attr: str, input_index: int) -> list[int] | None:
        """An int list given either as attribute ``attr`` (old opsets) or as a constant input.

        Returns None when absent; raises ``LookupError`` when given but not constant, so that
        a rule can block with a precise reason instead of guessing.
        """
        for a in node.attribute:
            if a.name == attr:
                return [int(x) for x in a.ints]
        if len(node.input) > input_index and node.input[input_index]:
            v = self.constant(node.input[input_index])
            if v is None:
                raise LookupError(f"'{attr}' of {node.op_type} is computed at run time")
            return [int(x) for x in np.asarray(v).reshape(-1)]
        return None

    def input_ints(self, node: onnx.NodeProto, index: int) -> list[int] | None:
        """Constant int input ``index`` as a list; None if absent; ``LookupError`` if computed."""
        if len(node.input) <= index or not node.input[index]:
            return None
        v = self.constant(node.input[index])
        if v is None:
            raise LookupError(f"input {index} of {node.op_type} is computed at run time")
        return [int(x) for x in np.asarray(v).reshape(-1)]

    # ------------------------------------------------------------------ shapes
    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(name)

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def dim(self, name: str, axis: int) -> int | None:
        """A concrete dimension, or None when unknown or symbolic."""
        s = self.shapes.get(name)
        if s is None or not -len(s) <= axis < len(s):
            return None
        d = s[axis]
        return d if isinstance(d, int) else None

    # ------------------------------------------------------------------ shape values
    def shape_expr(self, name: str) -> list[ShapeElem] | None:
        """The value of a small shape tensor, element by element, without running the model.

        Each element is an int (a constant), ``("dim", tensor, axis)`` (a dimension read at
        run time with Shape), or None (computed some other way). Rules use it to prove that
        a Reshape target computed at run time follows the pruned channel count (``-1``, or the
        input's own channel dimension) instead of a fixed number. None when not a 0-D/1-D
        value of known length.
        """
        if name in self._exprs:
            return self._exprs[name]
        self._exprs[name] = None  # cycles cannot happen in a valid graph; be safe anyway
        value = self._shape_expr(name)
        self._exprs[name] = value
        return value

    def _shape_expr(self, name: str) -> list[ShapeElem] | None:
        v = self.constant(name)
        if v is not None:
            if v.ndim > 1 or v.dtype.kind not in "iu":
                return None
            return [int(x) for x in v.reshape(-1)]
        prod = self.producer.get(name)
        shape = self.shape(name)
        unknown = (
            [None] * shape[0] if shape and len(shape) == 1 and isinstance(shape[0], int) else None
        )
        if shape == ():
            unknown = [None]
        if prod is None:
            return unknown
        node = self.nodes[prod[0]]
        op = node.op_type
        if op == "Shape":
            r = self.rank(node.input[0])
            if r is None:
                return unknown
            start = normalize_axis(int(attr(node, "start", 0)), r)
            end = attr(node, "end", None)
            end = r if end is None else min(normalize_axis(int(end), r), r)
            return [("dim", node.input[0], i) for i in range(max(start, 0), end)]
        if op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):
            return self.shape_expr(node.input[0]) or unknown
        if op == "Concat" and attr(node, "axis", 0) in (0, -1):
            parts = [self.shape_expr(i) for i in node.input]
            return unknown if any(p is None for p in parts) else [e for p in parts for e in p]
        if op == "Gather" and attr(node, "axis", 0) == 0:
            data, idx = self.shape_expr(node.input[0]), self.constant(node.input[1])
            if data is None or idx is None or idx.ndim > 1:
                return unknown
            return [data[int(i)] for i in idx.reshape(-1)]
        if op == "Slice" and len(node.input) >= 3:
            data = self.shape_expr(node.input[0])
            vals = [self.constant(i) if i else None for i in node.input[1:5]]
            if data is None or vals[0] is None or vals[1] is None:
                return unknown
            step = int(vals[3][0]) if len(vals) > 3 and vals[3] is not None else 1
            return data[int(vals[0][0]) : int(vals[1][0]) : step]
        return unknown

    # ------------------------------------------------------------------ misc
    def label(self, index: int) -> str:
        return node_label(self.nodes[index], index)

    def uses(self, name: str) -> list[Use]:
        return self.consumers.get(name, [])

    def names_of(self, indices: Iterable[int]) -> list[str]:
        return [self.label(i) for i in indices]


def _toposorted(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order where producers come first (ONNX requires it; some tools do
    not comply). Cheap when already sorted: one pass."""
    nodes = list(graph.node)
    known = {t.name for t in graph.initializer} | {vi.name for vi in graph.input} | {""}
    for n in nodes:
        if not all(i in known for i in n.input):
            break
        known.update(n.output)
    else:
        return nodes
    produced = {o for n in nodes for o in n.output}
    known = {t.name for t in graph.initializer} | {vi.name for vi in graph.input} | {""}
    known |= {i for n in nodes for i in n.input if i not in produced}  # outer-scope names
    ordered: list[onnx.NodeProto] = []
    while nodes:
        rest = [n for n in nodes if not all(i in known for i in n.input)]
        ready = [n for n in nodes if all(i in known for i in n.input)]
        if not ready:
            raise OnnxPruneError("the graph has a cycle")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        nodes = rest
    return ordered


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """An attribute's Python value, or ``default`` when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def product(dims: Sequence[int]) -> int:
    return int(np.prod(dims)) if len(dims) else 1
