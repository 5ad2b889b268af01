"""Apply a Plan: the only code that changes a model's structure.

It works on one copy of the ``ModelProto``: every initializer listed in the plan is sliced
(numpy ``take`` along each cut axis), then each node whose rule has a ``rewrite`` hook fixes
what counts channels (``group``, Reshape targets, Split sizes, Slice bounds, Resize sizes).
Stale shape annotations are dropped and re-inferred, and the result is checked with
``onnx.checker.check_model(full_check=True)``.

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
from onnxprune.graph import GraphView, infer_shapes, skeleton
from onnxprune.ops import rule_for
from onnxprune.plan import Plan


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
        self._names = {t.name for t in model.graph.initializer}
        self._names.update(o for n in model.graph.node for o in n.output)
        self._names.update(vi.name for vi in model.graph.input)

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
                self._inits[name].CopyFrom(numpy_helper.from_array(value, name))
                return
            if name in self._const_nodes:
                _set_constant_node(self._const_nodes[name], value)
                return
        base = f"{name or node.name or node.op_type}_pruned"
        new, i = base, 1
        while new in self._names:
            new, i = f"{base}_{i}", i + 1
        self._names.add(new)
        self.model.graph.initializer.append(numpy_helper.from_array(value, new))
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
    by_name: dict[str, list] = {}
    for c in plan.params:
        by_name.setdefault(c.name, []).append(c)
    inits = {t.name: t for t in model.graph.initializer}
    const_nodes = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for name, cuts in by_name.items():
        value = view.constant(name)
        if value is None:
            raise OnnxPruneError(f"the plan cuts '{name}', which is not a constant of this model")
        for c in cuts:
            if value.ndim <= c.axis or value.shape[c.axis] != c.size:
                raise OnnxPruneError(
                    f"the plan does not fit this model: '{name}' axis {c.axis} is not {c.size} long"
                )
            value = np.take(value, np.asarray(c.kept, dtype=np.int64), axis=c.axis)
        if name in inits:
            t = inits[name]
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
        else:
            _set_constant_node(const_nodes[name], value)


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
    _slice_params(new, view, plan)
    rw = RewriteContext(new, view, plan)
    for node in new.graph.node:
        if rw.touches(node):
            rule = rule_for(node)
            if rule is not None:
                rule.rewrite(node, rw)
    del new.graph.value_info[:]
    inferred = infer_shapes(new).graph
    outputs = {vi.name for vi in new.graph.output}
    inputs = {vi.name for vi in inferred.input}
    new.graph.value_info.extend(
        vi for vi in inferred.value_info if vi.name not in outputs and vi.name not in inputs
    )
    if check:
        check_model(new)
    return new


def check_model(model: onnx.ModelProto) -> None:
    """``check_model(full_check=True)`` on the weight-free skeleton: the same graph and
    shape checks, without serializing the weights (tensors we sliced are consistent by
    construction)."""
    try:
        onnx.checker.check_model(skeleton(model), full_check=True)
    except Exception as exc:  # checker and inference raise several types
        raise OnnxPruneError(
            f"the pruned model does not check: {str(exc).splitlines()[0]}"
        ) from exc
