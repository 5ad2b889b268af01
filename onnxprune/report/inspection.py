"""`onnxprune inspect`: what a model holds and what could be pruned, before any pruning.

Per layer (node name, op, weight shape, params, MACs at the input shapes), the prunable
groups (their producers, members and channel counts, from the same dependency analysis
``--structured`` uses, so this is its dry run), the groups that cannot be pruned grouped by
reason, and per weight tensor its sparsity and whether it satisfies an N:M pattern (the
question sparse tensor cores ask). Read-only; fast (no session, no data: about a second on
ResNet-50, most of it reading the file and the sampled gzip size).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from onnxprune.graph.modelfile import load_model
from onnxprune.graph.proto import tensor_array
from onnxprune.graph.view import GraphView, node_label
from onnxprune.metrics.macs import macs_per_node
from onnxprune.metrics.params import scan_params
from onnxprune.metrics.size import compressed_size, compression_note, is_compression_sampled
from onnxprune.options import parse_nm
from onnxprune.report.render import blocked_lines, group_label
from onnxprune.report.text import human_bytes, human_count, table
from onnxprune.unstructured.magnitude import find_prunable_weights, satisfies_nm

__all__ = ["inspect_data", "inspect_model", "inspect_rows", "layer_rows", "render_inspection"]


def inspect_rows(model, nm: tuple[int, int]) -> list[dict]:
    """Per prunable weight tensor: tensor, op, shape, sparsity, nm_ok (None: n/a)."""
    n, m = nm
    inits = {t.name: t for t in model.graph.initializer}
    sel = find_prunable_weights(model, min_elements=1)
    rows = []
    for ref in sel.weights:
        w = tensor_array(inits[ref.name])
        rows.append(
            {
                "tensor": ref.name,
                "op": ref.op_type,
                "shape": list(w.shape),
                "sparsity": float((w == 0).mean()) if w.size else 0.0,
                "nm_ok": satisfies_nm(w, ref.reduction_axis, n, m),
            }
        )
    return rows


def layer_rows(model, macs: Mapping[int, int]) -> list[dict]:
    """Per node doing MACs or holding more than a scalar of constants: node, op, weight (its
    largest constant input), weight_shape, params (each shared initializer counted at its
    first user), macs."""
    dims = {t.name: [int(d) for d in t.dims] for t in model.graph.initializer}
    seen: set[str] = set()
    rows = []
    for i, node in enumerate(model.graph.node):
        consts = [t for t in node.input if t in dims]
        params = 0
        for t in consts:
            if t not in seen:
                seen.add(t)
                size = 1
                for d in dims[t]:
                    size *= d
                params += size
        if params < 2 and i not in macs:  # a scalar constant (x / 2) is no layer
            continue
        weight = max(consts, key=lambda t: (len(dims[t]), _size(dims[t])), default="")
        rows.append({"node": node_label(node, i), "op": node.op_type, "weight": weight,
                     "weight_shape": dims.get(weight, []), "params": params,
                     "macs": int(macs.get(i, 0))})  # fmt: skip
    return rows


def _size(dims: list[int]) -> int:
    out = 1
    for d in dims:
        out *= d
    return out


def _groups(model, view: GraphView) -> tuple[list[dict], list[dict]]:
    from onnxprune.structured.dependency import analyze
    from onnxprune.structured.plan import prunable_groups

    groups = analyze(model, view=view)
    prunable, blocked = prunable_groups(groups, ())
    out = []
    for g in prunable:
        nodes = []
        for m in g.members:
            if m.role == "out" and m.node and m.node not in nodes:
                nodes.append(m.node)
        out.append({"id": g.id, "nodes": nodes, "channels": g.slots * g.width, "slots": g.slots,
                    "heads": g.heads, "members": [m.label for m in g.params]})  # fmt: skip
    return out, blocked


def inspect_data(
    path: str | os.PathLike, nm: str = "2:4", input_shapes: object = None
) -> dict:
    """Everything ``inspect`` shows, as the ``--json`` document."""
    from onnxprune.runtime.shapes import parse_input_shapes, resolve_shapes

    n, m = parse_nm(nm)
    loaded = load_model(path)
    model = loaded.model
    shapes = resolve_shapes(model, parse_input_shapes(input_shapes))
    macs, notes = macs_per_node(model, shapes.shapes)
    params, nonzeros, _ = scan_params(model)
    groups, blocked = _groups(model, GraphView(model))
    return {
        "model": str(loaded.path),
        "input_shapes": {k: list(v) for k, v in shapes.shapes.items()},
        "shape_source": dict(shapes.sources),
        "layers": layer_rows(model, macs),
        "groups": groups,
        "blocked": blocked,
        "weights": inspect_rows(model, (n, m)),
        "nm": f"{n}:{m}",
        "totals": {"params": params, "nonzeros": nonzeros, "macs": int(sum(macs.values())),
                   "size_bytes": loaded.size_bytes, "gzip_bytes": compressed_size(model)},
        "notes": list(loaded.notes) + notes
        + ([compression_note()] if is_compression_sampled(model) else []),
    }


def render_inspection(d: Mapping) -> str:
    """Layers, prunable groups, groups left alone by reason, weights, totals."""
    t = d["totals"]
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in d["input_shapes"].items())
    layers = [[r["node"], r["op"], "x".join(map(str, r["weight_shape"])) or "-",
               human_count(r["params"]), human_count(r["macs"]),
               f"{r['macs'] / t['macs']:.1%}" if t["macs"] else "-"] for r in d["layers"]]  # fmt: skip
    out = [f"model {d['model']}; MACs at {shapes or '-'}", ""]
    out.append(table(layers, ["layer", "op", "weight", "params", "MACs", "MACs %"])
               if layers else "no layers with weights")  # fmt: skip
    groups = [[group_label(g) + (f" ({g['heads']} heads)" if g["heads"] else ""),
               str(g["channels"]), str(len(g["members"])),
               ", ".join(g["members"][:3]) + (f", +{len(g['members']) - 3}" if len(g["members"]) > 3 else "")]
              for g in d["groups"]]  # fmt: skip
    out += ["", f"prunable groups (what --structured cuts): {len(groups)}"]
    if groups:
        out.append(table(groups, ["group (first producer)", "channels", "members", "first members"]))
        out.append("  members: name[out] the filters a layer makes, name[in] the input slices a "
                   "layer reads, plain names per-channel parameters (bias, BatchNorm)")  # fmt: skip
    out += blocked_lines(d["blocked"], "groups that cannot be pruned")
    label = d["nm"]
    weights = [[r["tensor"], r["op"], "x".join(map(str, r["shape"])), f"{r['sparsity']:.1%}",
                "n/a" if r["nm_ok"] is None else ("yes" if r["nm_ok"] else "no")]
               for r in d["weights"]]  # fmt: skip
    out += [""]
    out.append(table(weights, ["weight", "op", "shape", "sparsity", label]) if weights
               else "no Conv/Gemm/MatMul weights")  # fmt: skip
    ok = sum(1 for r in d["weights"] if r["nm_ok"])
    sparse = 1 - t["nonzeros"] / max(t["params"], 1)
    out += ["", f"{len(weights)} weight tensors, {ok} satisfy {label}; params "
            f"{human_count(t['params'])}, nonzero {human_count(t['nonzeros'])} ({sparse:.1%} "
            f"sparse), MACs {human_count(t['macs'])}, file {human_bytes(t['size_bytes'])}, gzip "
            f"{human_bytes(t['gzip_bytes'])}"]  # fmt: skip
    out += [f"note: {x}" for x in d["notes"]]
    return "\n".join(out)


def inspect_model(path: str | os.PathLike, nm: str = "2:4", input_shapes: object = None) -> str:
    """The ``inspect`` text of the model at ``path``."""
    return render_inspection(inspect_data(path, nm, input_shapes))
