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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError

Dim = int | str | None
"""One dimension of an inferred shape: an int, a symbolic name, or unknown."""

ShapeElem = int | tuple[str, str, int] | None
"""An element of a shape computed in the graph; see ``GraphView.shape_expr``."""


def _equal(a: ShapeElem, b: ShapeElem) -> int | None:
    """``Equal`` of two shape elements when it is decided for every input: numbers compare;
    a dimension (never negative) differs from a negative number (torch's ``expand`` compares
    its sizes with -1); the same dimension equals itself."""
    if isinstance(a, int) and isinstance(b, int):
        return int(a == b)
    if isinstance(a, tuple) and isinstance(b, tuple) and a == b:
        return 1
    if (isinstance(a, tuple) and isinstance(b, int) and b < 0) or (
        isinstance(b, tuple) and isinstance(a, int) and a < 0
    ):
        return 0
    return None


def _div(a: int, b: int) -> int | None:
    """ONNX integer division truncates toward zero."""
    if b == 0:
        return None
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


_ARITH = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": _div,
}

_SMALL = 4096

PROBES = ((13, 17, 19, 23, 29, 31, 37, 41), (24, 30, 36, 42, 48, 54, 60, 66))
"""Sizes given to the symbolic input dimensions (in order of appearance) when probing which
inferred dimensions are really constant (``GraphView._refine``): two sets that differ in every
value and in parity, small enough for sequence limits such as position embeddings."""

_SHAPE_SLOTS: dict[str, tuple[int, ...]] = {
    "Slice": (1, 2, 3, 4), "Split": (1,), "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
    "Pad": (1, 2, 3), "Expand": (1,), "Tile": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2), "ReduceMean": (1,), "ReduceSum": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,),
}  # fmt: skip
"""Inputs that hold shapes, sizes, bounds or axes: where a known computed value may be folded."""  # elements: initializers at most this big stay in the inference skeleton


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


def skeleton(
    model: onnx.ModelProto, folds: dict[str, list[int] | int] | None = None
) -> onnx.ModelProto:
    """The model without its large weights: they become typed graph inputs.

    Shape inference and checks then cost what the graph costs, not what the weights cost.
    ``folds`` replaces computed shape values that are known (``GraphView.static_ints``) by
    constants, so that inference sees through shape arithmetic it cannot evaluate itself.
    """
    src = model.graph
    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g = sk.graph
    g.name = src.name
    g.node.extend(src.node)
    if folds:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in folds and i in _SHAPE_SLOTS.get(node.op_type, ()):
                    node.input[i] = f"{name}__folded"
        for name, value in folds.items():
            g.initializer.append(
                numpy_helper.from_array(np.asarray(value, dtype=np.int64), f"{name}__folded")
            )
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


def infer_shapes(
    model: onnx.ModelProto, folds: dict[str, list[int] | int] | None = None
) -> onnx.ModelProto:
    """Shape inference on the skeleton; returns the inferred skeleton (no big weights)."""
    try:
        return onnx.shape_inference.infer_shapes(
            skeleton(model, folds), strict_mode=False, data_prop=True
        )
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
        self._const_shapes: dict[str, tuple[Dim, ...]] = {}
        for name, t in self.initializers.items():
            self._const_shapes[name] = tuple(int(d) for d in t.dims)
        for name, node in self.constant_nodes.items():
            value = self._constant_node_value(node)
            if value is not None:
                self._values[name] = value
                self._const_shapes[name] = tuple(value.shape)
        self.shapes.update(self._const_shapes)
        # Exporters write some weights as views of others: torch deduplicates equal
        # initializers into Identity nodes (all-zero biases of several layers become
        # Identity(one_bias)), and without constant folding a Linear weight reaches MatMul
        # through Transpose(weight). Such an output is a constant of its own, ``aliases``
        # maps it to (root initializer, permutation); the rewrite gives it a private copy.
        self.aliases: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        self.alias_nodes: set[int] = set()
        for i, node in enumerate(self.nodes):
            if (
                node.domain
                or node.op_type not in ("Identity", "Transpose")
                or not self.is_constant(node.input[0])
            ):
                continue
            root, perm = self.aliases.get(node.input[0], (node.input[0], None))
            shape = self._const_shapes.get(root)
            if shape is None:
                continue
            if node.op_type == "Transpose":
                own = attr(node, "perm", None) or list(range(len(shape)))[::-1]
                base = perm or tuple(range(len(shape)))
                perm = tuple(base[j] for j in own)
            self.aliases[node.output[0]] = (root, perm)
            self.alias_nodes.add(i)
            self._const_shapes[node.output[0]] = tuple(shape[j] for j in perm) if perm else shape
        self.shapes.update(self._const_shapes)
        self.probe_shapes: list[dict[str, tuple[Dim, ...]]] = []
        """Shapes with the symbolic input sizes set to numbers (see ``_refine``); empty when
        the inputs have no symbolic size."""
        self.value_info: list[onnx.ValueInfoProto] = []
        """Inferred types of computed tensors (with the folds), for tools that count MACs."""
        if shapes:
            self._infer()

    def _infer(self) -> None:
        """Shapes from ONNX inference; where inference stops at shape arithmetic it cannot
        evaluate (torch's ``chunk`` computes Slice bounds with Div), fold the values this
        view can compute and infer again."""
        folds: dict[str, list[int] | int] = {}
        for _ in range(4):
            inferred = infer_shapes(self.model, folds).graph
            produced = set(self.producer)
            self.value_info = [vi for vi in inferred.value_info if vi.name in produced]
            self.shapes = {}
            for vi in [*inferred.input, *inferred.output, *inferred.value_info]:
                s = _shape_of(vi)
                if s is not None:
                    self.shapes[vi.name] = s
            self.shapes.update(self._const_shapes)
            self._exprs = {}
            more = {}
            for node in self.nodes:
                for i in _SHAPE_SLOTS.get(node.op_type, ()):
                    name = node.input[i] if i < len(node.input) else ""
                    if name and name not in folds and not self.is_constant(name):
                        value = self.static_ints(name)
                        if value is not None:
                            # a scalar stays a scalar (Range bounds must be 0-D)
                            more[name] = value[0] if self.rank(name) == 0 else value
            if not more:
                break
            folds.update(more)
        self._refine()

    def _refine(self) -> None:
        """Numbers for the dimensions that symbolic inference leaves as names although they
        do not depend on the inputs' symbolic sizes (a head count inferred from ``-1``, a mask
        broadcast over heads). The model is inferred again with the symbolic input sizes set
        to two different sets of numbers (``PROBES``); a dimension that comes out as the same
        number both times is that number. The probe shapes are kept in ``probe_shapes`` for
        rules that must align dimensions whose symbols inference lost (a Reshape that splits
        heads reads the batch and sequence sizes of another tensor)."""
        symbols: dict[str, int] = {}
        for vi in self.model.graph.input:
            if vi.name in self.initializers:
                continue
            dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else ()
            for k, d in enumerate(dims):
                if not d.HasField("dim_value"):
                    symbols.setdefault(d.dim_param or f"{vi.name}:{k}", len(symbols))
        if not symbols or len(symbols) > len(PROBES[0]):
            return
        probes = []
        for values in PROBES:
            shapes = self._probe({s: values[i] for s, i in symbols.items()})
            if shapes is None:
                return
            probes.append(shapes)
        self.probe_shapes = probes
        for name, s in self.shapes.items():
            if all(isinstance(d, int) for d in s):
                continue
            a, b = probes[0].get(name), probes[1].get(name)
            if a is None or b is None or len(a) != len(s) or len(b) != len(s):
                continue
            self.shapes[name] = tuple(
                d if isinstance(d, int) or not (isinstance(x, int) and x == y and x > 0) else x
                for d, x, y in zip(s, a, b, strict=True)
            )
        self._exprs = {}

    def _probe(self, values: dict[str, int]) -> dict[str, tuple[Dim, ...]] | None:
        """Shapes of every tensor with the symbolic input sizes set to ``values``."""
        probe = skeleton(self.model)
        for vi in probe.graph.input:
            if vi.name in self.initializers or not vi.type.HasField("tensor_type"):
                continue
            for k, d in enumerate(vi.type.tensor_type.shape.dim):
                if not d.HasField("dim_value"):
                    size = values[d.dim_param or f"{vi.name}:{k}"]
                    d.ClearField("dim_param")
                    d.dim_value = size
        try:
            return GraphView(probe).shapes
        except OnnxPruneError:
            return None

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
        """True for an initializer (not overridable), a Constant node's output, or an
        Identity of either."""
        return name in self.initializers or name in self._values or name in self.aliases

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (cached), or None if ``name`` is computed."""
        if not name:
            return None
        if name in self.aliases:
            root, perm = self.aliases[name]
            v = self.constant(root)
            return v if perm is None or v is None else np.transpose(v, perm)
        v = self._values.get(name)
        if v is None and name in self.initializers:
            v = numpy_helper.to_array(self.initializers[name])
            self._values[name] = v
        return v

    def known_value(self, name: str) -> np.ndarray | None:
        """A constant, or a small value computed from constants only (``Concat`` of
        ``Constant`` nodes, as exports without constant folding write Resize scales and
        Reshape targets). Unlike ``static_ints`` it never depends on this model's shapes,
        so a rule may rewrite it as a constant."""
        v = self.constant(name)
        if v is not None:
            return v
        expr = self.shape_expr(name)
        if expr is None or not all(isinstance(e, int | float) for e in expr):
            return None
        return np.asarray(
            expr, dtype=np.int64 if all(isinstance(e, int) for e in expr) else np.float32
        )

    def ints(self, node: onnx.NodeProto, attr: str, input_index: int) -> list[int] | None:
        """An int list given either as attribute ``attr`` (old opsets) or as a constant input.

        Returns None when absent; raises ``LookupError`` when given but not constant, so that
        a rule can block with a precise reason instead of guessing.
        """
        for a in node.attribute:
            if a.name == attr:
                return [int(x) for x in a.ints]
        return self.input_ints(node, input_index)

    def input_ints(self, node: onnx.NodeProto, index: int) -> list[int] | None:
        """Int input ``index`` as a list: constant, or computed from shapes and known here
        (``static_ints``); None if absent; ``LookupError`` if it cannot be known."""
        if len(node.input) <= index or not node.input[index]:
            return None
        v = self.constant(node.input[index])
        if v is None:
            static = self.static_ints(node.input[index])
            if static is None:
                raise LookupError(f"input {index} of {node.op_type} is computed at run time")
            return static
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
            if v.ndim > 1 or v.dtype.kind not in "iuf" or v.size > _SMALL:
                return None
            return [int(x) if v.dtype.kind in "iu" else float(x) for x in v.reshape(-1)]
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
            inner = self.shape_expr(node.input[0]) if r == 1 else None
            if inner is not None and None not in inner and attr(node, "start", 0) in (0, -1):
                return [len(inner)]  # a shape vector's length is structural, not a dimension
            start = normalize_axis(int(attr(node, "start", 0)), r)
            end = attr(node, "end", None)
            end = r if end is None else min(normalize_axis(int(end), r), r)
            return [("dim", node.input[0], i) for i in range(max(start, 0), end)]
        if op in ("Cast", "Identity", "Unsqueeze", "Squeeze") or (
            op == "Reshape" and self.rank(node.input[0]) in (0, 1)
        ):
            return self.shape_expr(node.input[0]) or unknown
        if op == "ConstantOfShape":
            n = self.shape_expr(node.input[0])
            value = attr(node, "value", None)
            fill = numpy_helper.to_array(value).reshape(-1) if value is not None else None
            if n is None or len(n) != 1 or not isinstance(n[0], int) or fill is None:
                return unknown
            if fill.dtype.kind not in "iu" or n[0] > _SMALL:
                return unknown
            return [int(fill[0])] * n[0]
        if op == "Equal" and len(node.input) == 2:
            a, b = (self.shape_expr(i) for i in node.input)
            if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
                return unknown
            n = max(len(a), len(b))
            a, b = a * n if len(a) == 1 else a, b * n if len(b) == 1 else b
            return [_equal(x, y) for x, y in zip(a, b, strict=True)]
        if op == "Where" and len(node.input) == 3:
            parts = [self.shape_expr(i) for i in node.input]
            if any(p is None for p in parts):
                return unknown
            n = max(len(p) for p in parts)
            if any(len(p) not in (1, n) for p in parts):
                return unknown
            c, a, b = (p * n if len(p) == 1 else p for p in parts)
            return [x if k == 1 else y if k == 0 else None for k, x, y in zip(c, a, b, strict=True)]
        if op == "Concat" and attr(node, "axis", 0) in (0, -1):
            parts = [self.shape_expr(i) for i in node.input]
            return unknown if any(p is None for p in parts) else [e for p in parts for e in p]
        if op == "Gather" and attr(node, "axis", 0) == 0:
            data, idx = self.shape_expr(node.input[0]), self.constant(node.input[1])
            if data is None or idx is None or idx.ndim > 1:
                return unknown
            return [data[int(i)] for i in idx.reshape(-1)]
        if op in _ARITH and len(node.input) == 2:
            a, b = (self._resolved(i) for i in node.input)
            if a is None or b is None or (len(a) != len(b) and 1 not in (len(a), len(b))):
                return unknown
            n = max(len(a), len(b))
            a, b = a * n if len(a) == 1 else a, b * n if len(b) == 1 else b
            return [
                None if x is None or y is None else _ARITH[op](x, y)
                for x, y in zip(a, b, strict=True)
            ]
        if op == "Slice" and len(node.input) >= 3:
            data = self.shape_expr(node.input[0])
            vals = [self.constant(i) if i else None for i in node.input[1:5]]
            if data is None or vals[0] is None or vals[1] is None:
                return unknown
            step = int(vals[3][0]) if len(vals) > 3 and vals[3] is not None else 1
            return data[int(vals[0][0]) : int(vals[1][0]) : step]
        return unknown

    def _resolved(self, name: str) -> list[int | None] | None:
        """``shape_expr`` with run-time dimensions replaced by their inferred numbers."""
        expr = self.shape_expr(name)
        if expr is None:
            return None
        return [self.dim(e[1], e[2]) if isinstance(e, tuple) else e for e in expr]

    def static_ints(self, name: str) -> list[int] | None:
        """The value a small shape computation has for the shapes of this model, or None.

        torch exports ``x.chunk(2, dim=1)`` as a Slice whose bounds are computed from
        ``Shape(x)``; knowing them lets the analysis follow the chunk, and the rewrite then
        writes the pruned bounds as constants.
        """
        values = self._resolved(name)
        if values is None or not all(isinstance(v, int) for v in values):
            return None
        return list(values)

    # ------------------------------------------------------------------ misc
    def label(self, index: int) -> str:
        return node_label(self.nodes[index], index)

    def uses(self, name: str) -> list[Use]:
        return self.consumers.get(name, [])


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
