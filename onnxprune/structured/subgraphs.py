"""Following channels into If branches: analyze and rewrite a flattened copy, then fold back.

An If whose two branches are *understood* is analyzed as if both branches ran in the main
graph, one after the other, their results merged by an ``Add`` per If output: the Add's
broadcast rule ties channel c of the then-result to channel c of the else-result, which is
exactly what the If output needs (it is one or the other). Every rule, group, score and plan
then works unchanged, and the channels of the tensor the branches read (a front-end's
output) and of the If's result (read by the classifier) are pruned through both branches.
The rewrite slices the flattened copy the same way and folds each branch's rewritten nodes
back into its If.

Understood means, for both branches: no initializers of their own (weights are main-graph
initializers read from outside, as exporters lift them), no nested subgraphs, only ops the
registry has a rule for, names that clash with nothing else in the model, and outputs of
the same declared shapes. Anything else stays an If, which ``onnxprune.ops.control`` guards
(every channel it reads from outside is kept, with the reason). Branches with weights of
their own become understood once ``hoist_branch_weights`` has moved them out.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import onnx
from onnx import helper

from onnxprune.graph.branches import hoist_branch_weights  # noqa: F401  (its old home)
from onnxprune.graph.inference import infer_shapes
from onnxprune.graph.proto import node_graphs
from onnxprune.ops import opsets_of, registered, rule_for
from onnxprune.ops.control import CONTROL, has_subgraphs
from onnxprune.structured.loops import (
    PROXY_SPECS,
    body_of,
    flatten_loop,
    loop_understood,
    proxy_names,
    rebuild_loop,
)


@dataclass
class Flattened:
    """The flattened copy and, per flattened If (by its first output), the original node and
    the outputs of each branch's nodes (to find them again after the rewrite)."""

    model: onnx.ModelProto
    ifs: dict[str, tuple[onnx.NodeProto, set[str], set[str]]]
    merges: set[str]
    loops: dict[str, onnx.NodeProto] = field(default_factory=dict)
    """Flattened Loops by their first output (``onnxprune.structured.loops``)."""

    def rules(self) -> AbstractContextManager:
        """The registry to analyze and rewrite the flattened copy with: the default one, plus
        the carried-state proxy of ``onnxprune.structured.loops`` when a Loop was flattened."""
        return registered(*PROXY_SPECS, override=True) if self.loops else nullcontext()


_FLOATS = (
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)  # fmt: skip


def _names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    out = [vi.name for vi in g.input] + [t.name for t in g.initializer]
    return out + [o for n in g.node for o in n.output if o]


def _shape(vi: onnx.ValueInfoProto) -> tuple | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)


def understood(node: onnx.NodeProto, model: onnx.ModelProto, taken: set[str]) -> bool:
    """Whether an If's branches can be flattened (see the module docstring)."""
    if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
        return False
    branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
    if len(branches) != 2:
        return False
    opsets, seen = opsets_of(model), set(taken)
    shapes = []
    for g in branches.values():
        if g.initializer or g.sparse_initializer or len(g.output) != len(node.output):
            return False
        for n in g.node:
            if has_subgraphs(n) or n.op_type in CONTROL or rule_for(n, opsets) is None:
                return False
            for o in n.output:
                if o in seen or o in node.output:
                    return False
                seen.add(o)
        produced = {o for n in g.node for o in n.output}
        if any(vi.name not in produced for vi in g.output):
            return False
        if any(vi.type.tensor_type.elem_type not in _FLOATS for vi in g.output):
            return False  # the Add that merges the branches while flattened needs numbers
        shapes.append([_shape(vi) for vi in g.output])
    return shapes[0] == shapes[1] and None not in shapes[0]


def flatten(model: onnx.ModelProto) -> Flattened | None:
    """The flattened copy, or None when the model has no understood If."""
    taken = set(_names(model))
    ifs: dict[str, tuple[onnx.NodeProto, set[str], set[str]]] = {}
    merges: set[str] = set()
    loops: dict[str, onnx.NodeProto] = {}
    extra: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if loop_understood(node, model, taken):
            proxies, inits = flatten_loop(node)
            nodes.extend(proxies)
            extra.extend(inits)
            taken |= {o for n in proxies for o in n.output if o}
            loops[node.output[0]] = node
            continue
        if not understood(node, model, taken):
            nodes.append(node)
            continue
        branches = {a.name: a.g for a in node.attribute}
        then, other = branches["then_branch"], branches["else_branch"]
        sides = []
        for g in (then, other):
            nodes.extend(g.node)
            sides.append({o for n in g.node for o in n.output if o})
            taken |= sides[-1]
        for k, out in enumerate(node.output):
            merge = helper.make_node(
                "Add", [then.output[k].name, other.output[k].name], [out], name=f"{out}__if_merge"
            )
            nodes.append(merge)
            merges.add(out)
        ifs[node.output[0]] = (node, sides[0], sides[1])
    if not ifs and not loops:
        return None
    flat = onnx.ModelProto()
    flat.CopyFrom(model)
    del flat.graph.node[:]
    flat.graph.node.extend(nodes)
    flat.graph.initializer.extend(extra)
    return Flattened(flat, ifs, merges, loops)


def fold_back(pruned: onnx.ModelProto, flat: Flattened) -> onnx.ModelProto:
    """The rewritten flattened copy with each If rebuilt from its rewritten branch nodes,
    the branches' output types as inference gives them from the sliced weights."""
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    inferred = infer_shapes(pruned).graph
    types = {vi.name: vi.type for vi in [*inferred.value_info, *inferred.output]}
    in_branch = set().union(*(t | e for _, t, e in flat.ifs.values()))
    loop_of = {}
    for loop in flat.loops.values():
        for name in proxy_names(loop) | {o for n in body_of(loop).node for o in n.output}:
            loop_of[name] = loop
    nodes: list[onnx.NodeProto] = []
    rebuilt: set[str] = set()
    for n in out.graph.node:
        first = n.output[0] if n.output else ""
        if first in in_branch:
            continue
        if first in loop_of:
            loop = loop_of[first]
            if first in loop.output and loop.output[0] not in rebuilt:
                nodes.append(rebuild_loop(loop, list(out.graph.node), types))
                rebuilt.add(loop.output[0])
            continue
        if first in flat.merges:
            if first not in flat.ifs:
                continue  # a later output of an If already rebuilt
            nodes.append(_rebuild(flat.ifs[first], list(out.graph.node), types))
            continue
        nodes.append(n)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    scans = {o for loop in flat.loops.values() for o in loop.output[len(loop.input) - 2 :]}
    for vi in out.graph.value_info:  # a scan output's steps are not the proxy's one
        if vi.name in scans and vi.type.tensor_type.shape.dim:
            vi.type.tensor_type.shape.dim[0].Clear()
    axes = {f"{first}__loop_axes" for first in flat.loops}
    kept = [t for t in out.graph.initializer if t.name not in axes]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def _rebuild(
    entry: tuple[onnx.NodeProto, set[str], set[str]], rewritten: list, types: dict
) -> onnx.NodeProto:
    node, then_outs, else_outs = entry
    new = onnx.NodeProto()
    new.CopyFrom(node)
    for a in new.attribute:
        if a.name not in ("then_branch", "else_branch"):
            continue
        outs = then_outs if a.name == "then_branch" else else_outs
        del a.g.node[:]
        a.g.node.extend(n for n in rewritten if n.output and n.output[0] in outs)
        del a.g.value_info[:]
        for vi in a.g.output:
            if vi.name in types:
                vi.type.CopyFrom(types[vi.name])
            else:
                vi.type.tensor_type.ClearField("shape")
    return new


def subgraph_free(model: onnx.ModelProto) -> bool:
    """No node holds a graph: nothing to flatten (the common case, checked cheaply)."""
    return not any(True for n in model.graph.node for _ in node_graphs(n))
