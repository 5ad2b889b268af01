"""Following channels into a Loop body with carried state (a recurrent cell written as a
scripted loop): the Loop part of ``onnxprune.structured.subgraphs``.

Flattened, the body runs once in the main graph: its iteration count and condition inputs
become constants, each carried state ``s_in`` is produced from its initial value by a proxy
node whose rule gives the state fresh channels on axis 1 (tied to the initial
value's, or slicing it when it is a constant), and ``Add(s_in, s_out)`` stands for the Loop's
final state: the broadcast rule ties the channels a step reads to the channels it writes,
which is what carrying them around the loop needs. Scan outputs become ``Unsqueeze`` on a new
axis 0 (each step's result stacked). The proxies are never run; the rewrite folds the body's
rewritten nodes back into the Loop and drops them.

Understood means: no initializers of its own, no nested subgraphs, only ops with a rule,
names that clash with nothing, float carried states of known rank with an initial value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.ops import OpSpec, opsets_of, rule_for
from onnxprune.ops.base import Rule
from onnxprune.ops.control import has_subgraphs
from onnxprune.ops.elementwise import Unary

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context

STATE = " (carried)"
"""Marks the proxy node that produces a carried state (its name ends with it)."""

_FLOAT = onnx.TensorProto.FLOAT


def body_of(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "body")


def loop_understood(node: onnx.NodeProto, model: onnx.ModelProto, taken: set[str]) -> bool:
    """Whether a Loop's body can be flattened (see the module docstring)."""
    if node.op_type != "Loop" or node.domain not in ("", "ai.onnx"):
        return False
    body = body_of(node)
    carried = len(node.input) - 2
    if body.initializer or body.sparse_initializer or carried < 1:
        return False
    if len(body.input) != carried + 2 or len(body.output) < carried + 1:
        return False
    if any(not node.input[2 + k] for k in range(carried)):
        return False
    for vi in body.input[2:]:
        t = vi.type.tensor_type
        if t.elem_type != _FLOAT or not t.HasField("shape") or not t.shape.dim:
            return False
    opsets, seen = opsets_of(model), set(taken)
    for n in body.node:
        if has_subgraphs(n) or rule_for(n, opsets) is None:
            return False
        for o in n.output:
            if o in seen:
                return False
            seen.add(o)
    return not any(vi.name in seen - {o for n in body.node for o in n.output} for vi in body.input)


def flatten_loop(node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The proxy nodes and initializers that stand for ``node`` in the flattened graph."""
    body = body_of(node)
    carried = len(node.input) - 2
    label = node.name or f"Loop({node.output[0]})"
    nodes: list[onnx.NodeProto] = []
    for vi, value in zip(body.input[:2], (np.array(0, np.int64), np.array(True)), strict=True):
        if vi.name:
            nodes.append(
                helper.make_node("Constant", [], [vi.name], value=numpy_helper.from_array(value))
            )
    for k in range(carried):
        s_in = body.input[2 + k].name
        nodes.append(
            helper.make_node("Neg", [node.input[2 + k]], [s_in], name=f"{label}: {s_in}{STATE}")
        )
    nodes.extend(body.node)
    axes = f"{node.output[0]}__loop_axes"
    inits = [numpy_helper.from_array(np.array([0], np.int64), axes)]
    for k, out in enumerate(node.output):
        if not out:
            continue
        if k < carried:
            step = [body.input[2 + k].name, body.output[1 + k].name]
            nodes.append(helper.make_node("Add", step, [out], name=f"{out}__loop_back"))
        else:
            scan = body.output[1 + k].name
            nodes.append(
                helper.make_node("Unsqueeze", [scan, axes], [out], name=f"{out}__loop_scan")
            )
    return nodes, inits


def state_axis(shape: tuple | None) -> int:
    """Where a carried state's channels are: axis 1 (``[batch, hidden]`` of a cell, ``[N, C,
    ...]`` of a convolutional state). A step that writes them elsewhere blocks at the
    ``Add`` that closes the loop, so a wrong guess keeps the state whole, never cuts it."""
    return 1 if shape is not None and len(shape) >= 2 else -1


class CarriedStateRule(Rule):
    """The proxy of a carried state (``Neg`` named ``... (carried)``); any other Neg is a
    plain unary op."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        if not node.name.endswith(STATE):
            Unary().propagate(node, ctx)
            return
        x, shape = ctx.inp(0), ctx.out_shape(0)
        axis = state_axis(shape)
        if shape is None or not isinstance(shape[axis], int):
            if x is not None:
                ctx.block(x.ids, f"the carried state of {node.name} has an unknown width")
            return
        rank = len(shape)
        ids = ctx.fresh(int(shape[axis]))
        if x is not None and x.axis == axis:
            ctx.unify(ids, x.ids)
        elif x is not None:
            ctx.block(x.ids, f"the initial value of {node.name} carries channels on another axis")
            ctx.block(ids, f"the initial value of {node.name} carries channels on another axis")
        elif ctx.is_const(0):
            ctx.bind(0, axis, ids, "stat")
        else:
            other = ctx.inp_or_pseudo(0, axis)
            if other is None:
                ctx.block(ids, f"the initial value of {node.name} has an unknown layout")
            else:
                ctx.unify(ids, other)
        ctx.set_out(0, axis, ids, rank)


PROXY_SPECS = (OpSpec("Neg", rule=CarriedStateRule()),)
"""Registered (``override=True``) only while a flattened Loop is analyzed or rewritten."""


def rebuild_loop(node: onnx.NodeProto, rewritten: list, types: dict) -> onnx.NodeProto:
    """``node`` with its body made of the rewritten body nodes, and the body's state and
    output types as inference gives them after the cut."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    body = body_of(new)
    produced = {o for n in body.node for o in n.output if o}
    del body.node[:]
    body.node.extend(n for n in rewritten if n.output and n.output[0] in produced)
    del body.value_info[:]
    for vi in [*body.input[2:], *body.output[1:]]:
        if vi.name in types:
            vi.type.CopyFrom(types[vi.name])
    return new


def proxy_names(node: onnx.NodeProto) -> set[str]:
    """First outputs of the proxy nodes ``flatten_loop`` adds for ``node``."""
    body = body_of(node)
    return {vi.name for vi in body.input if vi.name} | {o for o in node.output if o}
