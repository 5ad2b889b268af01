"""Fold shape arithmetic on static dimensions into constants, at load.

torch exports ``C = x.shape[-1]`` and everything computed from it (Swin's
``head_dim = C // num_heads``, the q scale ``head_dim ** -0.5``, the qkv Reshape target, the
pads of the window padding) as nodes that read ``Shape(x)`` at run time. Such a value does not
depend on the inputs when every dimension it reads is a static integer (the channel dim is
static even when the batch is dynamic), but the analysis sees the stream width "read at run
time by attn/Pow" and blocks the stream, and a Pad whose pads are computed hides every shape
after it from shape inference (so Reshape targets cannot be aligned and MACs are miscounted).

Here each such value becomes a constant initializer. Which values are static is decided by
the one evaluator of shape values (``GraphView.static_ints``, ``onnxprune.graph.shape_values``):
a *seed* is an integer value, 0-D or 1-D, that reads the graph's tensors only through their
static dimensions. What is computed from seeds and constants only by the ops in ``FOLDABLE``
(float ones included: ``Cast``, ``Pow``, ``Sqrt``) is then evaluated by onnx's reference
evaluator (``onnxprune.graph.fold.run_constant_nodes``, the one weight chains use), and every
such value read by a node that is not folded becomes an initializer. A value that reads a
dynamic dimension (``Shape(x)[0]`` with a symbolic batch) is never folded; a Concat of it
with static parts keeps its node and reads the static parts as constants.

This freezes the original model's numbers (the head dim, the q scale): for the original
shapes they are what the model computed, and after a stream cut they stay the original's,
which is the pruned model's meaning. The fold runs again after a round has made more shapes
known (the Pad's output once its pads are constants), at most ``ROUNDS`` times.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.fold import remove_folded, run_constant_nodes, unshare_uniform
from onnxprune.graph.proto import node_graphs, subgraphs
from onnxprune.graph.shape_values import SMALL
from onnxprune.graph.view import GraphView

FOLDABLE = frozenset(
    (
        "Identity", "Cast", "Shape", "Size", "Gather", "Slice", "Squeeze", "Unsqueeze",
        "Concat", "Reshape", "Flatten", "Transpose", "ConstantOfShape", "Range", "Expand",
        "Add", "Sub", "Mul", "Div", "Mod", "Pow", "Sqrt", "Reciprocal", "Neg", "Abs", "Floor",
        "Ceil", "Max", "Min", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
        "Not", "And", "Or", "Where", "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin",
    )
)  # fmt: skip
"""Ops a folded value may be computed by (from seeds and constants only)."""

ROUNDS = 12
"""Fold rounds at most: each one may make shapes known that the next folds (Swin-T as
torch exports it takes 5, about one per stage: its shifted-window masks are built from
slices whose bounds become known one stage after another)."""

_INT_TYPES = frozenset((onnx.TensorProto.INT64, onnx.TensorProto.INT32))
_SHAPE_READS = frozenset(("Shape", "Size"))


def has_shape_reads(graph: onnx.GraphProto) -> bool:
    """Whether the main graph reads a shape at run time (cheap: no inference)."""
    return any(n.op_type in _SHAPE_READS and n.domain in ("", "ai.onnx") for n in graph.node)


def may_fold_shapes(graph: onnx.GraphProto) -> bool:
    """Whether ``fold_load_shapes`` may change the graph (cheap: no inference, no values):
    it reads a shape, or an initializer has several readers."""
    if has_shape_reads(graph):
        return True
    inits = {t.name for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in set(node.input) & inits:
            readers[name] = readers.get(name, 0) + 1
            if readers[name] > 1:
                return True
    return False


def fold_load_shapes(model: onnx.ModelProto) -> list[str]:
    """The load's fold (``normalize_model``): static shape values into constants, then
    shared uniform initializers unshared (``onnxprune.graph.fold.unshare_uniform``), in
    place; returns the notes for the report."""
    notes = []
    folded, removed = fold_static_shapes(model)
    if folded:
        notes.append(
            f"{folded} shape computation{'s' if folded != 1 else ''} on static dims folded "
            f"into constants ({removed} node{'s' if removed != 1 else ''} removed; "
            "dynamic dims such as the batch are still computed)"
        )
    copies = unshare_uniform(model.graph)
    if copies:
        notes.append(
            f"{copies} cop{'ies' if copies != 1 else 'y'} of shared constant-filled "
            "initializers (all zeros, all ones) given to their readers: a fill ties no "
            "channels together"
        )
    return notes


def fold_static_shapes(model: onnx.ModelProto) -> tuple[int, int]:
    """Fold the main graph's static shape values in place (see the module docstring).

    Returns (values folded into initializers, nodes removed). A model whose shapes cannot be
    inferred is left as it is: the checks after the load name its problem.
    """
    if not has_shape_reads(model.graph):
        return 0, 0
    folded = removed = 0
    for _ in range(ROUNDS):
        try:
            view = GraphView(model)
            values = _static_values(view, model)
        except (OnnxPruneError, LookupError, ValueError, TypeError):
            # a model the view cannot read is left as it is: check_graph, after the load's
            # normalization, names its problem in one line
            break
        if not values:
            break
        for name, value in values.items():
            # not np.ascontiguousarray: it makes a 0-D value 1-D (Range needs scalars)
            model.graph.initializer.append(numpy_helper.from_array(np.array(value), name))
        folded += len(values)
        removed += _drop_dead(model.graph, set(values))
    return folded, removed


def _elem_types(view: GraphView, model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {}
    for vi in [*g.input, *view.value_info]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    return types


def _small(view: GraphView, name: str) -> bool:
    shape = view.shape(name)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return False
    return int(np.prod(shape, dtype=np.int64)) <= SMALL


def _seed(view: GraphView, name: str, types: dict[str, int]) -> np.ndarray | None:
    """The value of ``name`` when it is a static integer shape value (0-D or 1-D)."""
    shape = view.shape(name)
    if types.get(name) not in _INT_TYPES or shape is None or len(shape) > 1:
        return None
    value = view.static_ints(name)
    if value is None or (shape and shape[0] != len(value)) or (not shape and len(value) != 1):
        return None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(types[name])
    return np.asarray(value if shape else value[0], dtype=dtype)


def _foldable(node: onnx.NodeProto) -> bool:
    return (
        node.op_type in FOLDABLE
        and node.domain in ("", "ai.onnx")
        and not any(True for _ in node_graphs(node))
    )


def _static_values(view: GraphView, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Long because it is one walk: seeds and the nodes computed from them, the frontier
    where they meet nodes that stay, and its values (module docstring).

    Returns the values to write as initializers, by tensor name.
    """
    types = _elem_types(view, model)
    seeds: dict[str, np.ndarray] = {}
    region: list[onnx.NodeProto] = []
    known: set[str] = {""}

    def is_known(name: str) -> bool:
        return name in known or view.is_constant(name)

    for node in view.nodes:
        outs = [o for o in node.output if o]
        if not outs or any(view.is_constant(o) for o in outs):
            continue
        if _foldable(node) and all(is_known(x) for x in node.input):
            if all(_small(view, o) for o in outs):
                region.append(node)
                known.update(outs)
            continue
        if len(outs) == 1 and node.domain in ("", "ai.onnx"):
            seed = _seed(view, outs[0], types)
            if seed is not None:
                seeds[outs[0]] = seed
                known.add(outs[0])
    if not known - {""}:
        return {}
    in_region = {id(n) for n in region}
    stays = {x for n in view.nodes if id(n) not in in_region for x in n.input if x}
    stays |= {x for sub in subgraphs(model.graph) for n in sub.node for x in n.input if x}
    outputs = set(view.graph_outputs)
    frontier = [t for t in sorted(known - {""}) if t in stays and t not in outputs]
    values = {t: seeds[t] for t in frontier if t in seeds}
    wanted = [t for t in frontier if t not in seeds]
    if wanted:
        computed = _evaluate(view, model, region, seeds, wanted)
        values.update(
            (t, v) for t, v in computed.items() if v is not None and v.size <= SMALL
        )
    return values


def _evaluate(
    view: GraphView,
    model: onnx.ModelProto,
    region: list[onnx.NodeProto],
    seeds: dict[str, np.ndarray],
    wanted: list[str],
) -> dict[str, np.ndarray | None]:
    """The values of ``wanted`` (None for those onnx's evaluator cannot compute)."""
    needed = _ancestry(region, wanted)
    nodes = [n for n in region if id(n) in needed]
    read = {x for n in nodes for x in n.input if x}
    inputs = {x: seeds[x] for x in read if x in seeds}
    for x in read - set(inputs):
        value = view.constant(x)
        if value is not None and not any(x in n.output for n in nodes):
            inputs[x] = value
    results = run_constant_nodes(model, nodes, inputs, wanted)
    if results is not None:
        return dict(zip(wanted, results, strict=True))
    out: dict[str, np.ndarray | None] = {}
    for name in wanted:  # one failing op leaves only the values that need it
        mine = [n for n in nodes if id(n) in _ancestry(nodes, [name])]
        one = run_constant_nodes(model, mine, inputs, [name])
        out[name] = None if one is None else one[0]
    return out


def _ancestry(nodes: list[onnx.NodeProto], names: list[str]) -> set[int]:
    """ids of the nodes among ``nodes`` that ``names`` are computed by."""
    producer = {o: n for n in nodes for o in n.output if o}
    found: set[int] = set()
    stack = list(names)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in found:
            found.add(id(node))
            stack.extend(x for x in node.input if x)
    return found


def _drop_dead(graph: onnx.GraphProto, folded: set[str]) -> int:
    """Remove the producers of ``folded`` and then every shape-arithmetic node (``FOLDABLE``
    ops and Shape/Size) whose outputs nobody reads, and the initializers only they read;
    returns how many nodes went."""
    keep_read = {o.name for o in graph.output} | {
        x for sub in subgraphs(graph) for n in sub.node for x in n.input if x
    }
    nodes = list(graph.node)
    dead = {i for i, n in enumerate(nodes) if any(o in folded for o in n.output)}
    while True:
        read = {x for i, n in enumerate(nodes) if i not in dead for x in n.input if x} | keep_read
        more = {
            i for i, n in enumerate(nodes)
            if i not in dead and _foldable(n) and not any(o in read for o in n.output if o)
        }  # fmt: skip
        if not more:
            break
        dead |= more
    return remove_folded(graph, dead, {x for i in dead for x in nodes[i].input if x} - read)
