"""MACs of one inference, from the op registry's formulas (``OpSpec.macs``) on inferred shapes.

Shape inference runs on a *light copy* of the model in which big initializers keep their
dims and type but not their data (inference only needs the dims of big tensors; small ones
such as Reshape targets keep their values), so a 100 MB model infers in milliseconds and a
model over 2 GB can still be inferred.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.proto import shape_of, subgraphs
from onnxprune.graph.view import GraphView
from onnxprune.metrics.payloads import GENERATED_DIM, without_payloads
from onnxprune.ops import opsets_of, spec_for
from onnxprune.ops.macs import Dims, Shape, UnknownShape

_INFERENCE_KEEP_BYTES = 64 * 1024  # initializers up to this size keep their data for inference


def node_macs(
    node: onnx.NodeProto,
    shapes: Mapping[str, Shape],
    d: Dims,
    opsets: Mapping[str, int] | None = None,
) -> int:
    """MACs of one node by its spec's formula; ``UnknownShape`` if the shapes do not tell."""
    spec = spec_for(node, opsets)
    if spec is None or spec.macs is None:
        raise UnknownShape
    return spec.macs(node, shapes, d)


def _counted(node: onnx.NodeProto, opsets: Mapping[str, int]) -> bool:
    spec = spec_for(node, opsets)
    return spec is not None and spec.macs is not None


def _inferred_shapes(model: onnx.ModelProto, notes: list[str]) -> dict[str, Shape]:
    """Shapes of every tensor of the main graph.

    The structured engine's ``GraphView`` infers on a weight-less skeleton and folds the
    shape arithmetic ONNX inference stops at (torch's ``chunk``), so MACs and pruning see
    the same shapes; plain inference on the light copy is the fallback when the view refuses
    the graph (``OnnxPruneError``: no default opset, a cycle, inconsistent shapes), which a
    note says. Any other error of the view is a bug and propagates.
    """
    try:
        shapes: dict[str, Shape] = dict(GraphView(model).shapes)
    except OnnxPruneError as exc:
        notes.append(f"the graph view refused the model ({exc}); MACs use plain shape inference")
        shapes = {}
    if shapes:
        for t in model.graph.initializer:
            shapes.setdefault(t.name, tuple(int(x) for x in t.dims))
        return shapes
    light, _ = without_payloads(model, _INFERENCE_KEEP_BYTES)
    inferred = None
    error = ""
    for data_prop in (True, False):  # data propagation helps Reshape chains, rarely fails
        try:
            inferred = onnx.shape_inference.infer_shapes(
                light, strict_mode=False, data_prop=data_prop
            )
            break
        except Exception as exc:  # onnx raises several types; all mean "inference failed"
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if inferred is None:
        notes.append(f"shape inference failed ({error}); MACs use the shapes stored in the model")
        inferred = light
    g = inferred.graph
    for vi in [*g.input, *g.output, *g.value_info]:
        s = shape_of(vi, drop_params=GENERATED_DIM)
        if s is not None:
            shapes[vi.name] = s
    overridable = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.name not in overridable or t.name not in shapes:
            shapes[t.name] = tuple(int(x) for x in t.dims)
    return shapes


def _describe(node: onnx.NodeProto, index: int) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else f"{node.op_type} #{index}"


def at_input_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
) -> onnx.ModelProto:
    """A light copy of ``model`` (no big payloads) whose graph inputs have these fixed sizes.

    Inputs not named keep their declared shape. The caller's model is not touched, and no
    weight is copied, so MACs at chosen sizes cost what the graph costs.
    """
    light, _ = without_payloads(model, _INFERENCE_KEEP_BYTES)
    for vi in light.graph.input:
        dims = input_shapes.get(vi.name)
        if dims is None or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        shape.ClearField("dim")
        for d in dims:
            shape.dim.add().dim_value = int(d)
    return light


def count_macs(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[int, list[str]]:
    """The total of ``macs_per_node`` and its notes (see there)."""
    per_node, notes = macs_per_node(model, input_shapes)
    return sum(per_node.values()), notes


def macs_per_node(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[dict[int, int], list[str]]:
    """Multiply-accumulates of one inference per node index of the main graph (nodes with a
    MAC formula only), and notes on what was assumed or left out.

    Counted: every node of the main graph whose op spec has a MAC formula (built in: Conv,
    ConvTranspose, Gemm, MatMul and their integer/QLinear forms). ``input_shapes`` (one run's
    shape per input, ``runtime.shapes.resolve_shapes``) fixes the inputs' sizes; without it,
    symbolic or unknown dims (batch, sequence) are taken as 1, said once per name.
    A node whose shapes cannot be found counts 0 and is named in a note; so are MAC ops in
    subgraphs (If/Loop/Scan bodies), which are not counted.
    """
    notes: list[str] = []
    if input_shapes:
        model = at_input_shapes(model, input_shapes)
    shapes = _inferred_shapes(model, notes)
    dims = Dims()
    per_node: dict[int, int] = {}
    failed: list[str] = []
    opsets = opsets_of(model)
    for i, node in enumerate(model.graph.node):
        if not _counted(node, opsets):
            continue
        probe = Dims()
        try:
            macs = node_macs(node, shapes, probe, opsets)
        except (UnknownShape, IndexError, TypeError, ValueError, ZeroDivisionError):
            failed.append(_describe(node, i))
            continue
        dims.symbols.update(probe.symbols)
        dims.unknown.update(probe.unknown)
        per_node[i] = max(0, macs)
    notes.extend(dims.notes())
    if failed:
        shown = ", ".join(failed[:10]) + (
            f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        )
        notes.append(
            f"MACs counted as 0 for {len(failed)} node(s) whose shapes are unknown: {shown}"
        )
    nested = sum(
        1 for sub in subgraphs(model.graph) for node in sub.node if _counted(node, opsets)
    )
    if nested:
        notes.append(f"MACs of {nested} node(s) inside subgraphs (If/Loop/Scan) are not counted")
    local = {(f.domain, f.name) for f in model.functions}
    calls = sum(1 for n in model.graph.node if (n.domain, n.op_type) in local)
    if calls:
        notes.append(f"MACs inside {calls} call(s) of model-local functions are not counted")
    return per_node, notes
