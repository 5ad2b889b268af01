"""If branches that keep their weights inside: moved to the main graph at load.

A branch body may read any outer name, so an initializer that an If branch holds can live in
the main graph instead without changing what the model computes, as long as no other scope
defines that name (no shadowing can change). Exporters differ on where they put them; the
dependency walk follows a branch only when its weights are outer names
(``structured.subgraphs``), so load-time normalization moves them.
"""

from __future__ import annotations

import onnx

from onnxprune.graph.proto import subgraphs


def hoist_branch_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy with its If branches' initializers moved to the main graph, and how many."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, hoist_in_place(out)


def hoist_in_place(model: onnx.ModelProto) -> int:
    """``hoist_branch_weights`` on ``model`` itself; returns how many initializers moved."""
    counts: dict[str, int] = {}
    for g in (model.graph, *subgraphs(model.graph)):
        for name in _defined_here(g):
            counts[name] = counts.get(name, 0) + 1
    moved = 0
    for node in model.graph.node:
        if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
            continue
        for a in node.attribute:
            if not a.HasField("g"):
                continue
            stay = [t for t in a.g.initializer if counts.get(t.name, 0) != 1]
            go = [t for t in a.g.initializer if counts.get(t.name, 0) == 1]
            model.graph.initializer.extend(go)
            del a.g.initializer[:]
            a.g.initializer.extend(stay)
            moved += len(go)
    return moved


def _defined_here(g: onnx.GraphProto) -> list[str]:
    names = [vi.name for vi in g.input] + [t.name for t in g.initializer]
    return names + [o for n in g.node for o in n.output if o]
