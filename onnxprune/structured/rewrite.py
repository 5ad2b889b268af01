"""Apply a Plan: the code that changes a model's structure for structured pruning.

(Recovery also edits the graph after a prune: it appends bias initializers and inserts an
``Add`` after a MatMul, through ``onnxprune.graph.edit.insert_after``.)

It works on one copy of the ``ModelProto``: every initializer listed in the plan is sliced
(numpy ``take`` along each cut axis), then each node whose rule has a ``rewrite`` hook fixes
what counts channels (``group``, Reshape targets, Split sizes, Slice bounds, Resize sizes).
The model's own shape annotations are re-inferred (none are added), and the result is
checked with ``onnx.checker.check_model(full_check=True)``.

Why not onnx-graphsurgeon: importing and exporting a graph through it copies every weight a
second time and re-sorts the graph; slicing the protobuf in place costs one copy and keeps
everything we do not cut (names, order, metadata, doc strings) byte for byte. See README
(structured pruning, speed) for the measurement behind this choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.graph import quant
from onnxprune.graph.inference import infer_shapes, skeleton
from onnxprune.graph.proto import FreshNames, add_initializer, attr, set_tensor, write_tensor_data
from onnxprune.graph.view import GraphView
from onnxprune.ops import opsets_of, rule_for
from onnxprune.structured.plan import Plan
from onnxprune.structured.subgraphs import flatten, fold_back, subgraph_free


@dataclass
class TensorCut:
    """A cut as rules see it: keep ``kept`` (sorted positions) of ``size`` on ``axis``."""

    axis: int
    size: int
    kept: np.ndarray


class RewriteContext:
    """What a rule's ``rewrite`` sees: the cuts, the original view, and setters on the copy."""

    def __init__(self, model: onnx.ModelProto, view: GraphView, plan: Plan) -> None:
        self.model = model
        self.view = view
        self.opset = view.opset
        self._cuts = {
            c.name: TensorCut(c.axis, c.size, np.asarray(c.kept, dtype=np.int64))
            for c in plan.tensors
        }
        self._inits = {t.name: t for t in model.graph.initializer}
        self._const_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        self._names = FreshNames(model.graph)

    def touches(self, node: onnx.NodeProto) -> bool:
        return any(n in self._cuts for n in (*node.input, *node.output))

    def cut(self, tensor: str) -> TensorCut | None:
        return self._cuts.get(tensor)

    def constant(self, name: str) -> np.ndarray | None:
        """The *original* value of a constant (before this rewrite)."""
        return self.view.constant(name) if name else None

    def dtype_of(self, name: str) -> np.dtype:
        v = self.constant(name)
        return v.dtype if v is not None else np.dtype(np.int64)

    def set_attr(self, node: onnx.NodeProto, name: str, value: object) -> None:
        self.remove_attr(node, name)
        node.attribute.append(onnx.helper.make_attribute(name, value))

    @staticmethod
    def remove_attr(node: onnx.NodeProto, name: str) -> None:
        for i, a in enumerate(node.attribute):
            if a.name == name:
                del node.attribute[i]
                return

    def set_input(self, node: onnx.NodeProto, k: int, value: np.ndarray) -> None:
        """Give input ``k`` of ``node`` a new constant value, without changing other users
        of a shared constant (a new initializer is created then)."""
        name = node.input[k] if k < len(node.input) else ""
        if name and len(self.view.uses(name)) == 1:
            if name in self._inits:
                set_tensor(self._inits[name], value)
                return
            if name in self._const_nodes:
                _set_constant_node(self._const_nodes[name], value)
                return
        new = self._names.new(f"{name or node.name or node.op_type}_pruned")
        add_initializer(self.model.graph, value, new)
        while len(node.input) <= k:
            node.input.append("")
        node.input[k] = new


def _set_constant_node(node: onnx.NodeProto, value: np.ndarray) -> None:
    for i, a in enumerate(node.attribute):
        if a.name.startswith("value"):
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))


def _slice_params(model: onnx.ModelProto, view: GraphView, plan: Plan) -> None:
    """Slice every cut constant. A constant that other nodes read through an Identity alias
    (exporters deduplicate equal weights that way) is never changed under their feet: an
    alias that is cut gets a private sliced copy, one that is not keeps a private original."""
    by_name: dict[str, list] = {}
    for c in plan.params:
        by_name.setdefault(c.name, []).append(c)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.output[0]: n for n in model.graph.node if n.output}
    alias_users: dict[str, list[onnx.NodeProto]] = {}
    for i in view.alias_nodes:
        node = view.nodes[i]
        alias_users.setdefault(node.input[0], []).append(nodes[node.output[0]])
    names = FreshNames(model.graph)

    def retarget(node: onnx.NodeProto, value: np.ndarray, k: int = 0) -> None:
        """Feed alias ``node`` from a private initializer holding ``value`` (input ``k``)."""
        name = names.new(f"{node.input[k] or node.output[0]}_pruned")
        add_initializer(model.graph, value, name)
        node.input[k] = name

    def as_input(node: onnx.NodeProto, output: np.ndarray) -> np.ndarray:
        """The input an alias node needs to produce ``output`` (undo its Transpose, or its
        Cast: back to the source's dtype, exact on values the Cast produced)."""
        if node.op_type == "Cast":
            return output.astype(view.constant(node.input[0]).dtype)
        if node.op_type != "Transpose":
            return output
        perm = attr(node, "perm", None) or list(range(output.ndim))[::-1]
        return np.transpose(output, np.argsort(perm))

    for name, cuts in by_name.items():
        value = view.constant(name)
        if value is None:
            raise OnnxPruneError(f"the plan cuts '{name}', which is not a constant of this model")
        original = value
        for c in sorted(cuts, key=lambda c: c.axis):  # contiguous rows first: less to copy
            if value.ndim <= c.axis or value.shape[c.axis] != c.size:
                raise OnnxPruneError(
                    f"the plan does not fit this model: '{name}' axis {c.axis} is not {c.size} long"
                )
            value = np.take(value, np.asarray(c.kept, dtype=np.int64), axis=c.axis)
        for user in alias_users.get(name, []):
            if user.output[0] not in by_name:
                retarget(user, original)
        if name in view.quantized:  # integers and per-channel scales, never re-quantized
            cut_axes = [(c.axis, c.kept) for c in sorted(cuts, key=lambda c: c.axis)]
            q = view.quantized[name]
            for k, v in quant.sliced_inputs(q, view.constant, cut_axes).items():
                reader, index = q.slot(name, k)
                retarget(nodes[reader], v, index)
        elif name in view.aliases:
            retarget(nodes[name], as_input(nodes[name], value))
        elif name in inits:
            write_tensor_data(inits[name], value)
        else:
            _set_constant_node(nodes[name], value)


def apply_plan(
    model: onnx.ModelProto,
    plan: Plan,
    *,
    view: GraphView | None = None,
    check: bool = True,
) -> onnx.ModelProto:
    """A pruned copy of ``model``; ``model`` itself is never changed.

    ``view`` (of ``model``, with shapes) saves re-indexing when the caller has one.
    """
    view = view if view is not None else GraphView(model)
    new = onnx.ModelProto()
    new.CopyFrom(model)
    if plan.empty:
        return new
    flat = None if subgraph_free(model) else flatten(model)
    if flat is not None:  # understood If branches: rewrite them flattened, fold them back
        with flat.rules():
            folded = fold_back(apply_plan(flat.model, plan, check=False), flat)
        if check:
            check_model(folded, model)
        return folded
    _slice_params(new, view, plan)
    rw = RewriteContext(new, view, plan)
    opsets = opsets_of(model)
    for node in new.graph.node:
        if rw.touches(node):
            rule = rule_for(node, opsets)
            if rule is not None:
                rule.rewrite(node, rw)
    _drop_orphans(new, view)
    # Refresh the shape annotations the model had, add none: onnxruntime fuses transformer
    # ops (SkipLayerNormalization, ...) when every tensor is annotated, and on CPU that made a
    # pruned MiniLM 20% slower than without them (tools/bench_transformers.py).
    annotated = {vi.name for vi in model.graph.value_info}
    del new.graph.value_info[:]
    inferred = infer_shapes(new).graph
    outputs = {vi.name for vi in new.graph.output}
    inputs = {vi.name for vi in inferred.input}
    new.graph.value_info.extend(
        vi
        for vi in inferred.value_info
        if vi.name in annotated and vi.name not in outputs and vi.name not in inputs
    )
    if check:
        check_model(new, model)
    return new


def _drop_orphans(model: onnx.ModelProto, view: GraphView) -> None:
    """Remove nodes the rewrite left without readers (the Shape arithmetic of a chunk whose
    bounds became constants, an alias that got a private copy); nodes that were already
    unused in the original stay, as do graph outputs."""

    def live_in_original(node: onnx.NodeProto) -> bool:
        return any(o in view.consumers or o in view.graph_outputs for o in node.output if o)

    outputs = {vi.name for vi in model.graph.output}
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [
            i
            for i, n in enumerate(model.graph.node)
            if not any(o in used for o in n.output if o) and live_in_original(n)
        ]
        if not dead:
            break
        for i in reversed(dead):
            del model.graph.node[i]
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used or t.name not in view.consumers]
    if len(keep) != len(model.graph.initializer):
        kept = list(keep)
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)


def check_model(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """``check_model(full_check=True)`` on the weight-free skeleton: the same graph and
    shape checks, without serializing the weights (tensors we sliced are consistent by
    construction).

    A model whose own shape annotations are stale (a declared output of batch 1 while the
    input says 2: onnxruntime runs it, merging leniently) fails the strict check before any
    pruning; when ``original`` fails it too, the pruned model is checked without those
    annotations, so the message never blames pruning for what the export wrote.
    """
    try:
        _strict_check(model)
    except Exception as exc:  # checker and inference raise several types
        error = exc
        if original is not None and not _passes(original):
            try:
                _strict_check(_without_annotations(model))
                return
            except Exception as lenient:  # the same types
                error = lenient
        raise OnnxPruneError(
            f"the pruned model does not check: {str(error).splitlines()[0]}"
        ) from error


def _strict_check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(skeleton(model), full_check=True)


def _passes(model: onnx.ModelProto) -> bool:
    try:
        _strict_check(model)
    except Exception:  # any failure means: the original's annotations do not check either
        return False
    return True


def _without_annotations(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weight-free copy without value_info, its graph outputs' dims unknown (rank kept)."""
    light = skeleton(model)
    del light.graph.value_info[:]
    for vi in light.graph.output:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            for d in vi.type.tensor_type.shape.dim:
                d.Clear()
    return light
