"""If, Loop and Scan: nodes whose subgraphs read the outer graph by name.

A body reads outer-scope tensors without listing them as node inputs (an If branch's Conv
on the activation ``x`` computed before the If, or on a weight initializer of the main
graph). A rule that only looks at ``node.input`` would let those channels be pruned outside
while the body still expects them whole: the pruned model is then rewritten and rejected
("the pruned model does not check", or onnxruntime refuses the body's Conv).

So every node with a subgraph is guarded before any rewrite: its explicit inputs, every
outer-scope tensor its bodies read (at any depth) and every weight they read keep all their
channels, with a reason that names the node and the tensor. The dependency walk records the
reads (``Context.read_outside``) and blocks them once the whole graph is known, so the order
in which nodes are visited does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import onnx

from onnxprune.graph.proto import node_graphs
from onnxprune.ops.base import Rule

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context

CONTROL = ("If", "Loop", "Scan")


def has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(True for _ in node_graphs(node))


def _defined(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def _free(graph: onnx.GraphProto, bound: frozenset[str]) -> Iterator[str]:
    """Names ``graph`` (and the graphs nested in it) read that neither it nor ``bound``
    defines: what it reads from the scopes around it."""
    inner = bound | _defined(graph)
    for n in graph.node:
        for name in n.input:
            if name and name not in inner:
                yield name
        for sub in node_graphs(n):
            yield from _free(sub, inner)
    for vi in graph.output:
        if vi.name not in inner:
            yield vi.name


def outer_reads(node: onnx.NodeProto) -> list[str]:
    """The outer-scope tensors ``node``'s subgraphs read, in first-read order."""
    seen: dict[str, None] = {}
    for sub in node_graphs(node):
        for name in _free(sub, frozenset()):
            seen.setdefault(name, None)
    return list(seen)


def why_not_followed(node: onnx.NodeProto) -> str:
    """Why the node's bodies are not followed, in words a user can act on."""
    if node.op_type not in ("If", "Loop"):
        return f"{node.op_type} bodies are not followed"
    bodies = list(node_graphs(node))
    if any(g.initializer or g.sparse_initializer for g in bodies):
        hint = " (hoist_branch_weights moves them out)" if node.op_type == "If" else ""
        return f"its bodies hold initializers of their own{hint}"
    if any(has_subgraphs(n) for g in bodies for n in g.node):
        return "its bodies hold subgraphs of their own"
    if node.op_type == "Loop":
        return "an op without a rule, a name used elsewhere, or a state that is not float"
    return "a branch has an op without a rule, a name used elsewhere, or outputs of other shapes"


def guard(node: onnx.NodeProto, ctx: Context) -> None:
    """Keep whole every channel the node's bodies read from outside (see the module
    docstring); explicit inputs are the rule's business."""
    op, why = node.op_type, why_not_followed(node)
    for name in outer_reads(node):
        ctx.read_outside(
            name,
            f"{op} '{ctx.where}' reads '{name}' inside its body, which onnxprune does not "
            f"follow: {why}",
        )


class ControlRule(Rule):
    """If/Loop/Scan: every channel that enters the node, explicitly or by name, stays."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        ctx.block_inputs(f"{node.op_type} '{ctx.where}' is not followed into its body")
        for k in range(ctx.n_inputs()):
            if ctx.is_const(k):
                ctx.claim(k)
        guard(node, ctx)
