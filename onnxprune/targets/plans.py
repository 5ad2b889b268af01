"""Plans as artifacts: ``--save-plan plan.json`` writes the decision, ``--plan`` re-applies it.

A plan file holds the structured ``Plan`` (kept slots per group and every cut, as
``Plan.to_dict``), the settings that chose it, and the hash of the model it was chosen for.
Re-applying skips analysis, scoring and any target search: ``rewrite.apply_plan`` cuts the
same positions, so the same model gives the same weights, byte for byte. A plan applied to
another model would cut positions that mean nothing there (or fail deep in the rewrite), so
the hash is checked first and a mismatch is one clear error.

The hash (``model_hash``): sha256 of the graph serialized without its payloads (names,
nodes, attributes, shapes and dtypes of every tensor, opsets), then of every payload in
order. ``graph_sha256`` (the first part alone) tells "same graph, other weights" (a
fine-tuned copy: its scores would choose other channels) from "another graph".
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.proto import (
    is_lazy,
    tensor_chunks,
)
from onnxprune.metrics.payloads import without_payloads
from onnxprune.structured.plan import Plan

PLAN_FORMAT = "onnxprune-plan"
PLAN_VERSION = 1


def model_hash(model: onnx.ModelProto) -> dict[str, str]:
    """``{"sha256": ..., "graph_sha256": ...}`` of ``model`` (see the module doc). Weights are
    read in place, never copied: a big model's memory-mapped weights (``graph.proto.is_lazy``)
    are hashed by their bytes, a chunk at a time, so the hash follows the weights and not the
    path of their data file (a copied model keeps its hash, a model overwritten in place with
    other weights does not), and to the same hash as when read in whole; other external
    data not loaded is hashed by its reference."""
    light, payloads = without_payloads(model, 0, lazy=True)
    graph = hashlib.sha256()
    graph.update(light.graph.SerializeToString(deterministic=True))
    for op in sorted((o.domain, o.version) for o in model.opset_import):
        graph.update(f"{op[0]}:{op[1]};".encode())
    full = hashlib.sha256(graph.digest())
    for tensor in payloads:
        full.update(tensor.name.encode() + b"\0")
        if is_lazy(tensor):
            for chunk in tensor_chunks(tensor):
                full.update(chunk)
        elif tensor.HasField("raw_data"):
            full.update(tensor.raw_data)
        else:
            full.update(tensor.SerializeToString(deterministic=True))
    return {"sha256": full.hexdigest(), "graph_sha256": graph.hexdigest()}


def plan_document(
    plan: Plan, model: onnx.ModelProto, options: Mapping[str, object], source: str | None = None
) -> dict:
    """The JSON document of a plan file: format, version, model hash, options, plan."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        made_by = version("onnxprune")
    except PackageNotFoundError:  # run from a source tree
        made_by = "unknown"
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "onnxprune": made_by,
        "model": {**model_hash(model), **({"path": source} if source else {})},
        "options": dict(options),
        "plan": plan.to_dict(),
    }


def write_plan(path: str | os.PathLike, document: Mapping) -> Path:
    """Write ``document`` to ``path`` atomically (a temporary file, then a rename): a run
    that fails or is interrupted leaves no half-written plan."""
    path = Path(path)
    text = json.dumps(document, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_plan(path: str | os.PathLike) -> dict:
    """A plan file's document, checked for its format (``OnnxPruneError`` naming the file)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise OnnxPruneError(f"cannot read --plan {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OnnxPruneError(f"--plan {path} is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
        raise OnnxPruneError(f"--plan {path} is not an onnxprune plan (no \"format\": "
                             f"\"{PLAN_FORMAT}\")")  # fmt: skip
    if doc.get("version") != PLAN_VERSION:
        raise OnnxPruneError(
            f"--plan {path} has plan version {doc.get('version')!r}; this onnxprune reads "
            f"version {PLAN_VERSION}"
        )
    try:
        Plan.from_dict(doc["plan"])
        str(doc["model"]["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise OnnxPruneError(f"--plan {path} is malformed ({type(exc).__name__}: {exc})") from exc
    return doc


def check_same_model(document: Mapping, model: onnx.ModelProto, path: object = "") -> None:
    """Refuse to apply a plan to a model other than the one it was made for."""
    want = document["model"]
    have = model_hash(model)
    if have["sha256"] == want.get("sha256"):
        return
    made_for = f" (made for {want['path']})" if want.get("path") else ""
    if have["graph_sha256"] == want.get("graph_sha256"):
        why = "the same graph with other weights, whose scores would choose other channels"
    else:
        why = "another graph"
    raise OnnxPruneError(
        f"--plan {path} was made for another model{made_for}: this one is {why} "
        f"(sha256 {have['sha256'][:12]}, plan {str(want.get('sha256'))[:12]}); "
        "prune it with --structured or a target instead"
    )


def saved_plan(document: Mapping) -> Plan:
    """The ``Plan`` of a checked plan document."""
    return Plan.from_dict(document["plan"])
