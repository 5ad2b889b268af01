"""Reading ONNX models: parse, pull external data in, make weights visible as initializers.

``load_model`` parses the file, refuses external-data paths that leave the model's folder
(``onnxprune.graph.external``, checked before any data is read), pulls the weights into
memory and turns ``Constant``-node weights into initializers so pruning passes only have to
look in one place. Around that, ``onnxprune.graph.check`` refuses an invalid model with its
own problem named (payload sizes, dims and data types before any data is read; the graph,
its ops and its float weights once it is in memory). The input file is only ever opened
for reading.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.branches import hoist_in_place
from onnxprune.graph.check import check_graph, check_payloads, refuse_nonfinite
from onnxprune.graph.external import PROTOBUF_LIMIT, load_external_data
from onnxprune.graph.fold import fold_weight_chains, has_weight_chains
from onnxprune.graph.fold_shapes import fold_load_shapes, may_fold_shapes
from onnxprune.graph.proto import (
    constant_node_tensor,
    is_external,
    is_lazy,
    tensor_array,
    tensor_nbytes,
)
from onnxprune.progress import bytes_bar

# Opsets the project's tests cover; others load with a note, not an error.
TESTED_OPSET_RANGE = (11, 22)

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class LoadedModel:
    """A model read from disk, its weights in memory or lazy (``load_model``).

    ``path`` is the absolute path the user named (normalized, symlinks not followed: external
    data and the default output live beside the path the user gave, as onnx and onnxruntime
    resolve them).
    """

    model: onnx.ModelProto
    path: Path
    used_external_data: bool
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def load_model(
    path: str | os.PathLike, *, lazy: bool | None = None, progress: bool = False
) -> LoadedModel:
    """Read an ONNX model, ready for pruning: small models with every weight in memory, a
    big one (``graph.external.LAZY_MODEL_MIN_BYTES`` of external data or more, or any with
    ``lazy=True``) with its big weights lazy: read from their checked files when asked
    (``graph.proto.tensor_array``), so that memory follows the work, not the copies.
    Lazy float weights are read once here to refuse NaN/Inf, one at a time, with a bar of
    bytes and time left when ``progress``.

    Raises OnnxPruneError with a one-line reason for anything that is not a usable model:
    a missing file, bytes that are not ONNX, missing or escaping external data files, and
    every invalid graph ``graph.check`` finds. An unsorted node list is sorted (noted).
    """
    shown = os.fspath(path)  # errors name the file as the user typed it
    model_path = Path(os.path.abspath(shown))
    if not model_path.exists():
        raise OnnxPruneError(f"{shown} does not exist")
    if not model_path.is_file():
        what = "a folder" if model_path.is_dir() else "not a regular file"
        raise OnnxPruneError(f"{shown} is {what}: give the path of an .onnx file")
    try:
        file_size = model_path.stat().st_size
        if file_size > PROTOBUF_LIMIT:
            raise OnnxPruneError(
                f"{shown} is not a valid ONNX model (it is over protobuf's 2 GB limit; "
                "large models keep their weights in external data files)"
            )
        content = model_path.read_bytes()
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {shown}: {exc.strerror or exc}") from exc

    model = parse_model(content, shown)
    del content

    notes: list[str] = []
    check_payloads(model)
    data_files = load_external_data(model, model_path.parent, lazy=lazy)
    if data_files:
        names = ", ".join(sorted(p.name for p in data_files))
        notes.append(
            f"weights loaded from {len(data_files)} external data "
            f"file{'s' if len(data_files) != 1 else ''} ({names})"
        )

    notes.extend(normalize_model(model))
    notes.extend(check_graph(model))
    check_lazy_finite(model, progress)

    opset_note = _opset_note(model)
    if opset_note:
        notes.append(opset_note)

    size = file_size + sum(p.stat().st_size for p in data_files)
    return LoadedModel(
        model=model,
        path=model_path,
        used_external_data=bool(data_files),
        size_bytes=size,
        notes=notes,
    )


def check_lazy_finite(model: onnx.ModelProto, progress: bool = False) -> None:
    """``graph.check.check_finite`` for the lazy weights: each read through its memory map
    and let go before the next (it reads every byte of a big model: the bar shows it)."""
    lazy = [t for t in model.graph.initializer if is_lazy(t) and t.data_type in _FLOATS]
    bad: list[str] = []
    with bytes_bar("check weights", sum(map(tensor_nbytes, lazy)), enabled=progress) as bar:
        for tensor in lazy:
            if not np.isfinite(tensor_array(tensor)).all():
                bad.append(tensor.name)
            bar.update(tensor_nbytes(tensor))
    refuse_nonfinite(bad)


_FLOATS = frozenset((onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                     onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16))  # fmt: skip


def parse_model(content: bytes, shown: str) -> onnx.ModelProto:
    """Parse protobuf bytes, turning every way they can be wrong into one readable error."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(content)
    except Exception as exc:  # protobuf raises DecodeError, and others on odd input
        reason = str(exc).strip() or type(exc).__name__
        raise OnnxPruneError(f"{shown} is not a valid ONNX model ({reason})") from exc
    if model.ir_version <= 0:
        raise OnnxPruneError(f"{shown} is not a valid ONNX model (no IR version)")
    if not model.HasField("graph"):
        raise OnnxPruneError(f"{shown} is not a valid ONNX model (it has no graph)")
    if len(model.graph.node) == 0:
        raise OnnxPruneError(f"{shown} is not a valid ONNX model (its graph has no nodes)")
    return model


def _nodes_to_initializers(
    graph: onnx.GraphProto,
    op_type: str,
    source: Callable[[onnx.NodeProto], onnx.TensorProto | None],
) -> int:
    """Replace the main graph's ``op_type`` nodes whose tensor ``source`` gives by
    initializers named as their output; returns how many nodes were replaced.

    An output that is already taken, or is a graph output (an initializer that is also a
    graph output is not accepted everywhere), keeps its node, as does an external tensor.
    """
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    replaced: list[int] = []
    for index, node in enumerate(graph.node):
        if node.op_type != op_type or node.domain not in _DEFAULT_DOMAINS:
            continue
        if len(node.output) != 1 or not node.output[0]:
            continue
        name = node.output[0]
        if name in taken or name in graph_outputs:
            continue
        tensor = source(node)
        if tensor is None or is_external(tensor):
            continue
        init = graph.initializer.add()
        init.CopyFrom(tensor)
        init.name = name
        taken.add(name)
        replaced.append(index)
    for index in reversed(replaced):
        del graph.node[index]
    return len(replaced)


def _constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Replace the main graph's Constant nodes by initializers of the same name.

    Pruning passes find weights among initializers; exporters that emit weights as Constant
    nodes would otherwise hide them. Subgraphs are left alone: their constants are local to
    the body and rarely weights. Returns how many nodes were converted.
    """
    return _nodes_to_initializers(graph, "Constant", constant_node_tensor)


#: Initializers up to this size that reach a node through an Identity are given their own copy.
#: Exporters deduplicate equal tensors (e.g. the all-zero biases of freshly folded BatchNorms)
#: behind Identity nodes; left alone, every consumer would look like a shared weight that
#: cannot be pruned on its own. Large tensors shared this way (tied embeddings) stay shared.
IDENTITY_FOLD_MAX_BYTES = 1 << 20


def _identities_to_initializers(graph: onnx.GraphProto) -> int:
    """Give each small initializer read through an Identity node its own initializer."""
    inits = {t.name: t for t in graph.initializer}  # as they were: no chains of copies

    def source(node: onnx.NodeProto) -> onnx.TensorProto | None:
        if len(node.input) != 1 or node.input[0] not in inits:
            return None
        tensor = inits[node.input[0]]
        return tensor if tensor_nbytes(tensor) <= IDENTITY_FOLD_MAX_BYTES else None

    return _nodes_to_initializers(graph, "Identity", source)


def _initializer_inputs_removed(model: onnx.ModelProto) -> int:
    """Drop from the graph inputs the names that are initializers; returns how many.

    ``keep_initializers_as_inputs=True`` exports (and IR 3, where it was required) list every
    initializer as an input too (only then are they removed: a model that lists a few has
    defaults meant to be overridable), which makes it overridable at run time: the analysis must treat
    such a tensor as computed, so nothing was prunable. After pruning a weight has a new
    shape and could not be fed at its declared one anyway. IR 3 is raised to 4, the first IR
    in which an initializer need not be an input (the ops are unchanged: they follow the
    opset, not the IR).
    """
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    listed = {vi.name for vi in graph.input} & inits
    if not inits or listed != inits:
        # Some initializers only: those are defaults the user may mean to override.
        return 0
    kept = [vi for vi in graph.input if vi.name not in inits]
    removed = len(graph.input) - len(kept)
    if removed:
        del graph.input[:]
        graph.input.extend(kept)
        model.ir_version = max(model.ir_version, 4)
    return removed


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def normalize_model(model: onnx.ModelProto) -> list[str]:
    """Make weights visible as initializers, in place; returns notes for the report.

    Initializers also listed as graph inputs stop being inputs, Constant-node weights (Paddle
    and older exports) become initializers, weights computed from constants by a chain of
    layout and scaling nodes (jax2tf, tf2onnx) are folded (``onnxprune.graph.fold``), and
    small initializers that exporters deduplicated behind Identity nodes get their own copy;
    then shape arithmetic on static dims is folded and shared constant fills are unshared
    (``onnxprune.graph.fold_shapes``).
    """
    notes: list[str] = []
    ir = model.ir_version
    as_inputs = _initializer_inputs_removed(model)
    if as_inputs:
        raised = f"; IR version {ir} raised to 4" if ir < 4 else ""
        notes.append(
            f"{_plural(as_inputs, 'initializer')} also listed as graph inputs "
            f"(keep_initializers_as_inputs) removed from the inputs, so that they are weights "
            f"that can be pruned{raised}"
        )
    if model.ir_version < 4:
        notes.append(
            f"IR version {model.ir_version} predates separate initializers; "
            "Constant nodes were left as they are"
        )
        return notes
    converted = _constants_to_initializers(model.graph)
    if converted:
        notes.append(f"{_plural(converted, 'Constant-node weight')} converted to initializers")
    chains, chain_nodes = fold_weight_chains(model)
    if chains:
        notes.append(
            f"{_plural(chains, 'weight')} computed from constants (a chain of "
            f"{_plural(chain_nodes, 'constant-only node')}: Transpose, Reshape, Mul, ...) "
            "folded into initializers"
        )
    hoisted = hoist_in_place(model)
    if hoisted:
        notes.append(
            f"{_plural(hoisted, 'initializer')} of If branches moved to the main graph "
            "(a branch reads outer names), so the branches can be followed"
        )
    folded = _identities_to_initializers(model.graph)
    if folded:
        notes.append(
            f"{_plural(folded, 'deduplicated initializer')} "
            "(read through Identity nodes) given their own copy"
        )
    notes.extend(fold_load_shapes(model))
    return notes


def needs_normalization(model: onnx.ModelProto) -> bool:
    """Whether ``normalize_model`` would change anything (cheap: no evaluation)."""
    g = model.graph
    if any(n.op_type in ("Constant", "Identity") and n.domain in _DEFAULT_DOMAINS for n in g.node):
        return True
    inits = {t.name for t in g.initializer}
    branch_weights = any(
        a.HasField("g") and len(a.g.initializer) for n in g.node if n.op_type == "If"
        for a in n.attribute
    )  # fmt: skip
    return (
        (bool(inits) and inits <= {i.name for i in g.input})
        or has_weight_chains(g)
        or branch_weights
        or may_fold_shapes(g)
    )


def _opset_note(model: onnx.ModelProto) -> str | None:
    low, high = TESTED_OPSET_RANGE
    for opset in model.opset_import:
        if opset.domain in _DEFAULT_DOMAINS:
            if low <= opset.version <= high:
                return None
            return f"opset {opset.version} is outside the tested range {low}-{high}"
    return "the model declares no ai.onnx opset"
