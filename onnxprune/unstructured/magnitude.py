"""Unstructured pruning: zero individual weights by magnitude, or to an N:M pattern.

Nothing changes shape here, so nothing downstream has to be rewritten; the model gets smaller
only on disk (zeros compress) and faster only on runtimes with sparse kernels. That is why this
module is separate from the structured engine: it needs to know which initializers are weights
and along which axis their dot products run, and nothing else.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.errors import UsageError
from onnxprune.graph import quant
from onnxprune.graph.proto import set_tensor, tensor_array
from onnxprune.graph.view import GraphView
from onnxprune.ops import opsets_of, spec_for
from onnxprune.options import check_fraction, check_nm

#: Weights with fewer elements than this are left alone: they hold almost no parameters and
#: are usually per-channel vectors in disguise (1x1 convs on 3 channels, tiny heads).
TINY_TENSOR_ELEMENTS = 64

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


@dataclass(frozen=True)
class WeightRef:
    """One prunable weight initializer and the axis its dot products reduce over.

    The reduction axis is what N:M patterns run along: sparse tensor cores skip zeros inside
    each group of M consecutive inputs to one output, so the groups must follow that axis.
    """

    name: str
    node: str
    op_type: str
    shape: tuple[int, ...]
    reduction_axis: int


@dataclass
class WeightSelection:
    weights: list[WeightRef]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tensor or node, reason)
    quantized_ops: dict[str, int] = field(default_factory=dict)


def _excluded(patterns: Sequence[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def find_prunable_weights(
    model: onnx.ModelProto, exclude: Sequence[str] = (), min_elements: int = TINY_TENSOR_ELEMENTS
) -> WeightSelection:
    """Find the weights that may be zeroed: those the op registry names (``OpSpec.weight``:
    Conv, ConvTranspose, Gemm and MatMul built in).

    Biases and normalization parameters are never inputs we select, so they stay intact.
    An integer weight read through DequantizeLinear is selected by its dequantized name,
    scored on its dequantized values and zeroed in the integer domain (its zero point); other
    weights computed at run time are left alone, and quantized operators that block are
    counted so the report can say so.
    """
    inits = {t.name: t for t in model.graph.initializer}
    quantized = quantized_weights(model)
    # A quantized weight is selected by the name its reader sees (the DequantizeLinear
    # output) and read as its integer tensor's shape; it is zeroed in the integer domain.
    readable = {**inits, **{name: inits[q.root] for name, q in quantized.items()}}
    sel = WeightSelection(weights=[])
    seen: dict[str, WeightRef] = {}
    opsets = opsets_of(model)
    for node in model.graph.node:
        spec = spec_for(node, opsets)
        if spec is None:
            continue
        if spec.quantized:
            sel.quantized_ops[node.op_type] = sel.quantized_ops.get(node.op_type, 0) + 1
        found = spec.weight(node, readable) if spec.weight is not None else None
        if found is None:
            continue
        name, axis = found
        tensor = readable[name]
        shape = tuple(int(d) for d in tensor.dims)
        if name in seen:
            if seen[name].reduction_axis != axis:
                sel.skipped.append((name, "shared by nodes that reduce over different axes"))
                sel.weights.remove(seen[name])
            continue
        if _excluded(exclude, node.name, name):
            sel.skipped.append((name, "excluded by --exclude"))
            seen[name] = WeightRef(name, node.name, node.op_type, shape, axis)
            continue
        if tensor.data_type not in FLOAT_TYPES and name not in quantized:  # no zero point known
            sel.skipped.append(
                (name, f"not a float tensor ({onnx.TensorProto.DataType.Name(tensor.data_type)})")
            )
            seen[name] = WeightRef(name, node.name, node.op_type, shape, axis)
            continue
        if int(np.prod(shape)) < min_elements:
            sel.skipped.append((name, f"tiny tensor ({int(np.prod(shape))} elements)"))
            seen[name] = WeightRef(name, node.name, node.op_type, shape, axis)
            continue
        ref = WeightRef(name, node.name or node.op_type, node.op_type, shape, axis)
        seen[name] = ref
        sel.weights.append(ref)
    return sel


def quantized_weights(model: onnx.ModelProto) -> dict[str, quant.QuantWeight]:
    """Integer weights seen as floats (DequantizeLinear, Cast·Mul: ``onnxprune.graph.quant``)
    whose integer tensor has no other reader (zeroing it must not change another node)."""
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for x in node.input:
            readers[x] = readers.get(x, 0) + 1
    view = GraphView(model, shapes=False)
    found = dict(view.quantized)
    roots = {q.root for q in found.values()}
    if any(
        quant.is_integer(t) and len(t.dims) >= 2 and name not in roots
        for name, t in view.initializers.items()
    ):  # integer weights of QLinear*/…Integer ops: their rules name the zero points
        from onnxprune.structured.dependency import analyze

        view = GraphView(model)
        analyze(model, view=view)
        found.update(view.dequantized_reads)
    return {name: q for name, q in found.items() if readers.get(q.root) == 1}


def weight_arrays(model: onnx.ModelProto, refs: Sequence[WeightRef]) -> dict[str, np.ndarray]:
    """The value of each selected weight: a quantized one dequantized (what it computes)."""
    inits = {t.name: t for t in model.graph.initializer}
    quantized = quantized_weights(model)

    def read(name: str) -> np.ndarray:  # a copy: lazy weights are read-only maps
        return np.array(tensor_array(inits[name]))

    return {
        r.name: quant.value(quantized[r.name], read) if r.name in quantized else read(r.name)
        for r in refs
    }


#: A scoring function: weight array and its WeightRef -> importance of each element (same shape).
Scorer = Callable[[np.ndarray, WeightRef], np.ndarray]


def magnitude(weight: np.ndarray, ref: WeightRef) -> np.ndarray:
    return np.abs(weight.astype(np.float32, copy=False))


def _k_smallest_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean keep-mask that drops exactly the k lowest scores (ties broken by position)."""
    flat = scores.reshape(-1)
    keep = np.ones(flat.shape, dtype=bool)
    if k > 0:
        keep[np.argpartition(flat, k - 1)[:k]] = False
    return keep.reshape(scores.shape)


def magnitude_masks(
    arrays: Mapping[str, np.ndarray],
    refs: Sequence[WeightRef],
    ratio: float,
    scope: str = "local",
    scorer: Scorer = magnitude,
    zeros: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Keep-masks that zero the fraction ``ratio`` of weights with the lowest scores
    (``zeros``: that many in each tensor it names instead, ``unstructured.allocation``).

    local: each tensor loses ``round(ratio * size)`` weights. global: one ranking over every
    selected weight, so layers with many small weights give up more; scores are compared as
    they are, which for magnitude means raw |w| (what "global magnitude pruning" means).
    """
    if scope not in ("local", "global") and not zeros:
        raise UsageError(f"--scope must be 'local' or 'global', got {scope!r}")
    scores = {r.name: scorer(arrays[r.name], r) for r in refs}
    if scope == "local" or zeros:
        return {
            r.name: _k_smallest_mask(scores[r.name], (zeros or {}).get(
                r.name, round(ratio * scores[r.name].size)))
            for r in refs
        }
    if not refs:
        return {}
    flat = np.concatenate([scores[r.name].reshape(-1) for r in refs])
    keep = _k_smallest_mask(flat, round(ratio * flat.size))
    masks, offset = {}, 0
    for r in refs:
        n = scores[r.name].size
        masks[r.name] = keep[offset : offset + n].reshape(scores[r.name].shape)
        offset += n
    return masks


def nm_mask(scores: np.ndarray, axis: int, n: int, m: int) -> np.ndarray | None:
    """Keep-mask with N of every M consecutive elements along ``axis``, or None if impossible."""
    if scores.shape[axis] % m:
        return None
    moved = np.moveaxis(scores, axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    drop = np.argpartition(blocks, m - n - 1, axis=-1)[..., : m - n]
    keep = np.ones(blocks.shape, dtype=bool)
    np.put_along_axis(keep, drop, False, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def satisfies_nm(weight: np.ndarray, axis: int, n: int, m: int) -> bool | None:
    """Whether every group of M along ``axis`` has at most N nonzeros; None if M does not divide it."""
    if weight.ndim == 0 or weight.shape[axis] % m:
        return None
    moved = np.moveaxis(weight, axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return bool(((blocks != 0).sum(axis=-1) <= n).all())


@dataclass
class UnstructuredResult:
    mode: str  # "magnitude" or "n:m"
    target: str  # "0.5" or "2:4"
    scope: str
    tensors: list[dict]  # name, op, shape, zeroed, size, sparsity_after
    skipped: list[dict]
    zeroed: int
    selected: int

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "target": self.target,
            "scope": self.scope,
            "selected_params": self.selected,
            "zeroed": self.zeroed,
            "tensors": self.tensors,
            "skipped": self.skipped,
        }


def prune_unstructured(
    model: onnx.ModelProto,
    *,
    ratio: float | None = None,
    nm: str | tuple[int, int] | None = None,
    scope: str = "local",
    exclude: Sequence[str] = (),
    scorer: Scorer = magnitude,
    zeros: Mapping[str, int] | None = None,
) -> tuple[onnx.ModelProto, UnstructuredResult]:
    """Zero weights in a copy of ``model``: the lowest-scoring fraction, or to an N:M pattern.

    ``scorer`` defaults to magnitude; data-aware scorers (|W| times input activation norms)
    plug in here without touching the masking logic.
    """
    if (ratio is None) == (nm is None):
        raise UsageError("choose exactly one of --unstructured RATIO and --nm N:M")
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    sel = find_prunable_weights(pruned, exclude)
    inits = {t.name: t for t in pruned.graph.initializer}
    quantized = quantized_weights(pruned)

    def read(name: str) -> np.ndarray:  # a copy: lazy weights are read-only maps
        return np.array(tensor_array(inits[name]))

    arrays = weight_arrays(pruned, sel.weights)
    skipped = [{"tensor": name, "reason": why} for name, why in sel.skipped]
    if ratio is not None:
        ratio = check_fraction(ratio, "--unstructured")
        if scope == "owl" and zeros is None:  # per-layer ratios from the scorer's outliers
            from onnxprune.unstructured.allocation import owl_zeros

            zeros = owl_zeros(arrays, sel.weights, scorer, ratio)[0]
        masks = magnitude_masks(arrays, sel.weights, ratio, scope, scorer, zeros)
        mode, target = "magnitude", f"{ratio:g}"
    else:
        n, m = check_nm(nm)
        masks = {}
        for r in sel.weights:
            mask = nm_mask(scorer(arrays[r.name], r), r.reduction_axis, n, m)
            if mask is None:
                skipped.append(
                    {
                        "tensor": r.name,
                        "reason": f"reduction axis of size {r.shape[r.reduction_axis]} is not a multiple of {m}",
                    }
                )
            else:
                masks[r.name] = mask
        mode, target, scope = "n:m", f"{n}:{m}", "local"
    tensors, zeroed, selected = [], 0, 0
    for r in sel.weights:
        if r.name not in masks:
            continue
        w = arrays[r.name]
        before_zero = int(np.count_nonzero(w == 0))
        new = np.where(masks[r.name], w, 0).astype(w.dtype, copy=False)
        if r.name in quantized:  # the zero point: dequantizes to exactly 0
            q = quantized[r.name]
            set_tensor(inits[q.root], quant.zeroed_integers(q, read, ~masks[r.name]))
        else:
            set_tensor(inits[r.name], new, keep_dtype=True)
        after_zero = int(new.size - np.count_nonzero(new))
        zeroed += after_zero - before_zero
        selected += w.size
        tensors.append(
            {
                "tensor": r.name,
                "op": r.op_type,
                "shape": list(r.shape),
                "size": int(w.size),
                "sparsity_after": after_zero / w.size,
            }
        )
    result = UnstructuredResult(mode, target, scope, tensors, skipped, zeroed, selected)
    return pruned, result
