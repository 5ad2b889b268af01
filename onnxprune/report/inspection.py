"""`onnxprune inspect`: what a deployment engineer checks before and after pruning.

Per weight tensor: shape, sparsity, and whether it already satisfies an N:M pattern (the
question sparse tensor cores ask), plus model totals. Read-only: never writes anything.
"""

from __future__ import annotations

import os

from onnx import numpy_helper

from onnxprune.graph.modelfile import load_model
from onnxprune.metrics.counts import compute_metrics
from onnxprune.options import parse_nm
from onnxprune.report.results import human_bytes, human_count, table
from onnxprune.unstructured.magnitude import find_prunable_weights, satisfies_nm


def inspect_rows(model, nm: tuple[int, int]) -> list[dict]:
    n, m = nm
    inits = {t.name: t for t in model.graph.initializer}
    sel = find_prunable_weights(model, min_elements=1)
    rows = []
    for ref in sel.weights:
        w = numpy_helper.to_array(inits[ref.name])
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


def inspect_model(path: str | os.PathLike, nm: str = "2:4") -> str:
    n, m = parse_nm(nm)
    loaded = load_model(path)
    metrics = compute_metrics(loaded.model)
    rows = inspect_rows(loaded.model, (n, m))
    label = f"{n}:{m}"
    body = [
        [
            r["tensor"],
            r["op"],
            "x".join(map(str, r["shape"])),
            f"{r['sparsity']:.1%}",
            "n/a" if r["nm_ok"] is None else ("yes" if r["nm_ok"] else "no"),
        ]
        for r in rows
    ]
    ok = sum(1 for r in rows if r["nm_ok"])
    lines = [
        table(body, ["weight", "op", "shape", "sparsity", label])
        if body
        else "no Conv/Gemm/MatMul weights",
        "",
        f"{len(rows)} weight tensors, {ok} satisfy {label}; params {human_count(metrics.params)}, "
        f"nonzero {human_count(metrics.nonzeros)} ({1 - metrics.nonzeros / max(metrics.params, 1):.1%} sparse), "
        f"MACs {human_count(metrics.macs)}, file {human_bytes(loaded.size_bytes)}, gzip {human_bytes(metrics.gzip_bytes)}",
    ]
    lines += [f"note: {x}" for x in loaded.notes + metrics.notes]
    return "\n".join(lines)
