"""Output shapes of onnxruntime's fused ops (com.microsoft), which ONNX inference cannot see.

onnxruntime's transformer optimizer writes ``Attention``, ``SkipLayerNormalization``,
``BiasGelu``... without value_info, so ONNX shape inference stops at the first one and every
tensor after it has no shape. ``annotate`` runs inference, writes the output shape of each
fused node whose inputs are known (the rules of onnxruntime's contrib-op docs), and runs it
again until nothing more is learned; the annotations then carry inference through.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

Dims = list  # each element an int or a str (a symbolic dimension)

MS = "com.microsoft"


def _dims(vi: onnx.ValueInfoProto) -> Dims | None:
    t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape"):
        return None
    out: Dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.dim_param:
            out.append(d.dim_param)
        else:
            return None
    return out


def _outputs(node: onnx.NodeProto, s: Callable[[int], Dims | None]) -> list[Dims | None]:
    """The shapes of ``node``'s outputs from its inputs' (``s(k)``), or None each."""
    op = node.op_type
    x = s(0)
    if x is None:
        return []
    if op in ("Gelu", "FastGelu", "BiasGelu", "QuickGelu", "BiasAdd"):
        return [x]
    if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
        stat = [*x[:-1], 1]
        return [x, stat, stat, x]
    if op == "Attention":
        w = s(1)
        if w is None or len(x) != 3 or len(w) != 2 or not isinstance(w[1], int):
            return []
        sizes = [a.ints for a in node.attribute if a.name == "qkv_hidden_sizes"]
        v = sizes[0][2] if sizes and sizes[0] else w[1] // 3
        return [[x[0], x[1], v]]
    if op == "MultiHeadAttention":
        v = s(2)
        if len(x) != 3 or v is None or len(v) != 3:
            return []
        return [[x[0], x[1], v[2]]]
    if op == "EmbedLayerNormalization":
        emb = s(2)  # word embedding [vocab, hidden]
        if emb is None or len(x) != 2:
            return []
        return [[x[0], x[1], emb[1]], [x[0]], [x[0], x[1], emb[1]]]
    return []


def _reader(node: onnx.NodeProto, shapes: dict[str, Dims]) -> Callable[[int], Dims | None]:
    def s(k: int) -> Dims | None:
        name = node.input[k] if k < len(node.input) else ""
        return shapes.get(name) if name else None

    return s


def annotate(model: onnx.ModelProto, infer: Callable[[onnx.ModelProto], onnx.ModelProto]) -> None:
    """Add value_info for the outputs of com.microsoft nodes to ``model`` (a skeleton), in
    place, inferring with ``infer`` between rounds; nothing when it has no such node."""
    fused = [n for n in model.graph.node if n.domain == MS]
    if not fused:
        return
    elem: dict[str, int] = {}
    for _ in range(len(fused) + 1):
        inferred = infer(model).graph
        shapes: dict[str, Dims] = {}
        for vi in [*inferred.input, *inferred.output, *inferred.value_info]:
            d = _dims(vi)
            if d is not None:
                shapes[vi.name] = d
                elem[vi.name] = vi.type.tensor_type.elem_type
        for t in model.graph.initializer:
            shapes.setdefault(t.name, list(t.dims))
            elem.setdefault(t.name, t.data_type)
        added = 0
        for n in fused:
            if all(o in shapes for o in n.output if o):
                continue

            for k, dims in enumerate(_outputs(n, _reader(n, shapes))):
                out = n.output[k] if k < len(n.output) else ""
                if not out or out in shapes or dims is None:
                    continue
                dtype = elem.get(n.input[0], onnx.TensorProto.FLOAT)
                if n.op_type == "EmbedLayerNormalization":  # ids in, embeddings out
                    dtype = onnx.TensorProto.INT32 if k == 1 else elem.get(n.input[2], dtype)
                model.graph.value_info.append(onnx.helper.make_tensor_value_info(out, dtype, dims))
                shapes[out] = dims
                added += 1
        if not added:
            return
