"""Small structural edits of a graph outside a pruning plan (recovery's bias ``Add``)."""

from __future__ import annotations

import onnx


def insert_after(
    graph: onnx.GraphProto, producer: onnx.NodeProto, node: onnx.NodeProto, *, renamed: str
) -> None:
    """Put ``node`` right after ``producer`` in ``graph`` and let it take over the tensor
    ``producer`` wrote: ``producer.output[0]`` becomes ``renamed`` (a fresh name, see
    ``proto.FreshNames``), which ``node`` is expected to read; ``node`` writes the old name,
    so every reader and graph output is unchanged.

    ``producer`` must be a node of ``graph`` (the same message, or one with the same outputs).
    """
    outputs = list(producer.output)
    at = next(k for k, n in enumerate(graph.node) if n is producer or list(n.output) == outputs)
    graph.node[at].output[0] = renamed
    if producer is not graph.node[at]:
        producer.output[0] = renamed
    graph.node.insert(at + 1, node)
