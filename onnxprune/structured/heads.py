"""Which groups are attention heads, and how many heads they hold.

The analysis does not distinguish a head from a neuron: a head is a slot whose positions are
tied by a head split (``onnxprune.ops.attention``). The CLI does: ``--structured R`` prunes
neurons and channels, ``--heads R`` removes heads, and the report counts heads. A group is a
head group when one of its activations is the output of a Reshape that splits the channel
axis of another of its activations into heads; its head count is the largest such axis (the
query heads of grouped-query attention, whose slots are the key/value groups). Packed
projections split into ``[.., 3, H, d]`` and heads folded into the batch
(``onnxprune.ops.attention_packed``) count as head splits too, and the output of a fused
attention node (``onnxprune.ops.fused``) has the heads of its attribute.
"""

from __future__ import annotations

from onnxprune.graph.view import GraphView
from onnxprune.ops.attention import head_segment
from onnxprune.ops.attention_packed import packed_heads
from onnxprune.ops.fused import fused_heads
from onnxprune.structured.groups import Group


def mark_heads(view: GraphView, groups: list[Group]) -> None:
    """Set ``Group.heads`` on every head group of ``groups`` (0 stays for the others)."""
    for g in groups:
        acts = {m.target: m for m in g.members if m.role == "act"}
        for m in acts.values():
            prod = view.producer.get(m.target)
            node = view.nodes[prod[0]] if prod else None
            if node is not None and prod[1] == 0 and fused_heads(node):
                g.heads = max(g.heads, fused_heads(node))  # fused attention: its attribute
                continue
            if node is None or node.op_type != "Reshape" or node.domain:
                continue
            src = acts.get(node.input[0])
            if src is None:
                continue
            seg = head_segment(view, node, src.axis)
            if seg is not None and seg[0] == "split" and seg[1] == m.axis:
                g.heads = max(g.heads, m.size)
            else:  # packed Q/K/V ([.., 3, H, d]) or heads folded into the batch
                g.heads = max(g.heads, packed_heads(view, node, src.axis, m.axis))
