"""Embedding lookups as producers of a hidden stream (``--hidden``).

``Gather(table, ids)`` with a constant ``[vocab, dim]`` table and computed indices along axis 0
is an embedding: each of its ``dim`` columns is a channel it creates, as a Linear's filters
are. Only with ``--hidden`` does the analysis treat it so (the stream it starts is
LayerNorm-normalized, as BERT's and Llama's are); otherwise, and for every other Gather, the
routing rule applies unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

from onnxprune.graph.view import attr
from onnxprune.ops.routing import GatherRule

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context


class EmbeddingGather(GatherRule):
    """An embedding table's columns are the stream's channels (module doc)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        table = ctx.in_shape(0)
        if not (
            ctx.hidden and ctx.is_const(0) and not ctx.is_const(1)
            and table is not None and len(table) == 2 and int(attr(node, "axis", 0)) == 0
        ):  # fmt: skip
            super().propagate(node, ctx)
            return
        idx = ctx.inp(1)
        if idx is not None:
            ctx.block(idx.ids, "Gather indices carry channels")
        ids = ctx.source(0, 1)
        ctx.set_out(0, -1, ids)
