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

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph import quant
from onnxprune.graph.inference import SHAPE_SLOTS, infer_shapes, skeleton, toposorted
from onnxprune.graph.proto import (
    Dim,
    attr,
    constant_node_value,
    is_lazy,
    normalize_axis,
    product,
    shape_of,
    tensor_array,
)
from onnxprune.graph.shape_values import ShapeElem, ShapeValues

__all__ = [
    "PROBES",
    "Dim",
    "GraphView",
    "ShapeElem",
    "Use",
    "attr",
    "default_opset",
    "infer_shapes",
    "node_label",
    "normalize_axis",
    "product",
    "skeleton",
]

_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)  # fmt: skip

PROBES = ((13, 17, 19, 23, 29, 31, 37, 41), (24, 30, 36, 42, 48, 54, 60, 66))
"""Sizes given to the symbolic input dimensions (in order of appearance) when probing which
inferred dimensions are really constant (``GraphView._refine``): two sets that differ in every
value and in parity, small enough for sequence limits such as position embeddings."""


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


class GraphView:
    """Index of one graph for the analysis; see the module docstring for why it is light."""

    def __init__(self, model: onnx.ModelProto, *, shapes: bool = True) -> None:
        self.model = model
        g = model.graph
        self.opset = default_opset(model)
        self.nodes: list[onnx.NodeProto] = toposorted(g)
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
        self.shape_values = ShapeValues(self)
        """The evaluator of this graph's shape values (``onnxprune.graph.shape_values``),
        made again whenever the inferred shapes change."""
        self.shapes: dict[str, tuple[Dim, ...]] = {}
        self._const_shapes: dict[str, tuple[Dim, ...]] = {}
        for name, t in self.initializers.items():
            self._const_shapes[name] = tuple(int(d) for d in t.dims)
        for name, node in self.constant_nodes.items():
            value = constant_node_value(node)
            if value is not None:
                self._values[name] = value
                self._const_shapes[name] = tuple(value.shape)
        self._index_views()
        self.shapes.update(self._const_shapes)
        self.probe_shapes: list[dict[str, tuple[Dim, ...]]] = []
        """Shapes with the symbolic input sizes set to numbers (see ``_refine``); empty when
        the inputs have no symbolic size."""
        self.value_info: list[onnx.ValueInfoProto] = []
        """Inferred types of computed tensors (with the folds), for tools that count MACs."""
        if shapes:
            self._infer()

    def _index_views(self) -> None:
        """Index the constants that are views of initializers (see the comments)."""
        # Exporters write some weights as views of others: torch deduplicates equal
        # initializers into Identity nodes (all-zero biases of several layers become
        # Identity(one_bias)), and without constant folding a Linear weight reaches MatMul
        # through Transpose(weight). Such an output is a constant of its own, ``aliases``
        # maps it to (root initializer, permutation); the rewrite gives it a private copy.
        # An fp16/bf16 weight read through Cast(to=float) is a view too (``alias_dtype``):
        # sliced in its own dtype, the Cast kept, the model keeps its size.
        self.aliases: dict[str, tuple[str, tuple[int, ...] | None]] = {}
        self.alias_dtype: dict[str, int] = {}
        self.alias_nodes: set[int] = set()
        # A quantized weight, DequantizeLinear of integer initializers, is a constant too:
        # its value is the dequantized float one, the rewrite slices its integers and
        # per-channel scales (``onnxprune.graph.quant``).
        self.quantized: dict[str, quant.QuantWeight] = {}
        # An integer weight a QOperator op reads with its own scale and zero point
        # (QLinearConv's input 3): its rules register it so criteria score the floats.
        self.dequantized_reads: dict[str, quant.QuantWeight] = {}
        casts: dict[str, str] = {}  # Cast(int initializer) outputs: weight-only int8
        for i, node in enumerate(self.nodes):
            if (
                node.op_type == "Cast" and not node.domain and node.input[0] in self.initializers
                and quant.is_integer(self.initializers[node.input[0]])
                and int(attr(node, "to", 0)) in _FLOAT_TYPES
            ):  # fmt: skip
                casts[node.output[0]] = node.input[0]
            qw = quant.weight_of(node, self.initializers) or quant.cast_mul_weight(
                node, self.initializers, casts
            )
            if qw is not None:
                self.quantized[node.output[0]] = qw
                self.alias_nodes.add(i)
                self._const_shapes[node.output[0]] = self._const_shapes[qw.root]
                continue
            if (
                node.domain
                or node.op_type not in ("Identity", "Transpose", "Cast")
                or not self.is_constant(node.input[0])
                or (node.op_type == "Cast" and not self._float_cast(node))
            ):
                continue
            root, perm = self.aliases.get(node.input[0], (node.input[0], None))
            shape = self._const_shapes.get(root)
            if shape is None:
                continue
            if node.op_type == "Cast":
                self.alias_dtype[node.output[0]] = int(attr(node, "to", 0))
            elif node.input[0] in self.alias_dtype:
                self.alias_dtype[node.output[0]] = self.alias_dtype[node.input[0]]
            if node.op_type == "Transpose":
                own = attr(node, "perm", None) or list(range(len(shape)))[::-1]
                base = perm or tuple(range(len(shape)))
                perm = tuple(base[j] for j in own)
            self.aliases[node.output[0]] = (root, perm)
            self.alias_nodes.add(i)
            self._const_shapes[node.output[0]] = tuple(shape[j] for j in perm) if perm else shape

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
                s = shape_of(vi)
                if s is not None:
                    self.shapes[vi.name] = s
            self.shapes.update(self._const_shapes)
            self.shape_values = ShapeValues(self)
            more = {}
            for node in self.nodes:
                for i in SHAPE_SLOTS.get(node.op_type, ()):
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
        self.shape_values = ShapeValues(self)

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
    def _float_cast(self, node: onnx.NodeProto) -> bool:
        """A Cast between float types of a float initializer (or of a view of one): exact
        to undo on the values it produced, so the rewrite can slice the source instead."""
        name = node.input[0]
        root = self.aliases.get(name, (name, None))[0]
        source = self.alias_dtype.get(name)
        if source is None:
            t = self.initializers.get(root)
            source = t.data_type if t is not None else None
        return source in _FLOAT_TYPES and int(attr(node, "to", 0)) in _FLOAT_TYPES

    def is_constant(self, name: str) -> bool:
        """True for an initializer (not overridable), a Constant node's output, or an
        Identity of either."""
        return (
            name in self.initializers
            or name in self._values
            or name in self.aliases
            or name in self.quantized
        )

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (cached), or None if ``name`` is computed."""
        if not name:
            return None
        if name in self.aliases:
            root, perm = self.aliases[name]
            v = self.constant(root)
            if v is not None and perm is not None:
                v = np.transpose(v, perm)
            to = self.alias_dtype.get(name)
            if v is not None and to is not None:
                v = v.astype(onnx.helper.tensor_dtype_to_np_dtype(to))
            return v
        v = self._values.get(name)
        if v is None and name in self.quantized:
            v = quant.value(self.quantized[name], self.constant)
            self._values[name] = v
        if v is None and name in self.initializers:
            tensor = self.initializers[name]
            v = tensor_array(tensor)
            if not is_lazy(tensor):  # a lazy weight is read again, not held: memory stays flat
                self._values[name] = v
        return v

    def derive(self, name: str, value: np.ndarray) -> None:
        """Hold a constant a rule computed from the model's own (a MatMulNBits scale laid out
        per block) under a name no tensor has; it is never written to the model."""
        self._values[name] = value

    def value(self, name: str) -> np.ndarray | None:
        """The float a constant stands for (what criteria score): ``constant``, dequantized
        for an integer weight that a quantized op reads with its scale and zero point."""
        q = self.dequantized_reads.get(name)
        return quant.value(q, self.constant) if q is not None else self.constant(name)

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
        return self.shape_values.seen(name)

    def static_ints(self, name: str) -> list[int] | None:
        """The value a small shape computation has for the shapes of this model, or None.

        torch exports ``x.chunk(2, dim=1)`` as a Slice whose bounds are computed from
        ``Shape(x)``; knowing them lets the analysis follow the chunk, and the rewrite then
        writes the pruned bounds as constants.
        """
        expr = self.shape_expr(name)
        if expr is None:
            return None
        values = [self.dim(e[1], e[2]) if isinstance(e, tuple) else e for e in expr]
        if not all(isinstance(v, int) for v in values):
            return None
        return list(values)

    # ------------------------------------------------------------------ misc
    def label(self, index: int) -> str:
        return node_label(self.nodes[index], index)

    def uses(self, name: str) -> list[Use]:
        return self.consumers.get(name, [])
