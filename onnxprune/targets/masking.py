"""Masked candidates: a group "loses" slots by having their contribution zeroed, not cut.

The exactness oracle's construction (``onnxprune.testing.oracles.zeroed``, which the package
never imports): a model pruned by a plan gives exactly the outputs of the original with the
removed channels' input slices zeroed at every consumer, and, where no weight holds them
(q @ k^T), the read activation multiplied by a 0/1 mask. So the quality a cut costs is
measured without any rewrite.

Two ways to build the candidates, the cheap one first:

* ``MaskedModel``: **one** session for all candidates. Every weighted consumer of a prunable
  group reads its input through ``x * mask``, the mask being a graph input of the model; all
  ones reproduces the original exactly (x * 1 == x), and a candidate is one feed. Zeroing a
  consumer's input channel is zeroing its input slice (Conv pads with zeros, Gemm and
  MatMul are linear in each row). A group whose consumers' inputs cannot be told apart
  falls back to the second way.
* ``Blobs``: one serialized model per candidate, with the masked weights swapped into the
  shared ``ModelProto`` for one ``SerializeToString`` (a session open per candidate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.graph.view import GraphView, node_label
from onnxprune.structured.dependency import Group
from onnxprune.targets import GroupCurve

__all__ = [
    "Blobs",
    "MaskedModel",
    "contraction_masks",
    "mask_model",
    "masked_values",
    "measured_curve",
    "removed_slots",
    "with_constants",
    "with_masks",
]


def removed_slots(g: Group, scores: np.ndarray, fraction: float) -> np.ndarray:
    """The slots a ``fraction`` cut removes: lowest score first (ties by position), never
    all, and every tensor that sees part of the group keeps one (``make_plan``'s rules)."""
    n = min(int(fraction * g.slots + 1e-9), g.slots - 1)
    order = np.lexsort((np.arange(g.slots), -scores))  # best first
    kept = np.zeros(g.slots, dtype=bool)
    kept[order[: g.slots - n]] = True
    for subset in g.subsets:
        if not kept[subset].any():
            kept[subset[np.argmax(scores[subset])]] = True
    return np.flatnonzero(~kept)


def measured_curve(g, scores, loss: Mapping[str, float]) -> GroupCurve:
    """A group's loss at kept counts from its measured loss per fraction removed: 0 kept
    whole, each fraction at the count its cut keeps, extended in a line to one slot kept
    (the analysis stops at its largest fraction; deeper cuts lose at least as much)."""
    pts: dict[int, float] = {g.slots: 0.0}
    for key, value in loss.items():
        n = len(removed_slots(g, scores, float(key)))
        if n:
            pts[g.slots - n] = float(value)
    keeps = sorted(pts)
    if keeps[0] > 1 and len(keeps) >= 2:
        (k2, v2), (k1, v1) = (keeps[0], pts[keeps[0]]), (keeps[1], pts[keeps[1]])
        slope = max(0.0, (v2 - v1) / (k1 - k2))
        pts[1] = v2 + slope * (k2 - 1)
    return GroupCurve(g.id, g.slots, list(pts), list(pts.values()))


def masked_values(g: Group, view: GraphView, removed: np.ndarray) -> dict[str, np.ndarray]:
    """New values of the weights whose input slices carry the ``removed`` slots, zeroed
    there (what a consumer sees of a channel the plan removes: nothing)."""
    out: dict[str, np.ndarray] = {}
    for m in g.members:
        if m.role != "in":
            continue
        pos = np.flatnonzero(np.isin(m.slot, removed))
        if not len(pos):
            continue
        if m.target not in out:
            value = view.constant(m.target)
            if value is None:
                continue
            out[m.target] = np.array(value, copy=True)
        index: list[object] = [slice(None)] * out[m.target].ndim
        index[m.axis] = pos
        out[m.target][tuple(index)] = 0
    return out


def contraction_masks(g: Group, view: GraphView, removed: np.ndarray) -> dict[str, np.ndarray]:
    """Activations a MatMul of two computed tensors reads on its last axis (q @ k^T): no
    weight holds those channels, so a 0/1 mask multiplies them (tensor -> mask)."""
    out: dict[str, np.ndarray] = {}
    for m in g.members:
        if m.role != "act":
            continue
        rank = view.rank(m.target)
        for use in view.uses(m.target):
            node = view.nodes[use.node]
            if node.op_type != "MatMul" or use.index != 0 or view.is_constant(node.input[1]):
                continue
            if rank is None or m.axis != rank - 1:
                continue
            mask = np.ones(m.size, dtype=np.float32)
            mask[np.isin(m.slot, removed)] = 0.0
            out[m.target] = mask
    return out


def with_masks(model: onnx.ModelProto, masks: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy where each MatMul reading a masked tensor on input 0 reads it times its mask."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    new_nodes = []
    for name, mask in masks.items():
        const, masked = f"{name}__analyze_mask", f"{name}__analyze_masked"
        out.graph.initializer.append(onnx.numpy_helper.from_array(mask, const))
        new_nodes.append((name, onnx.helper.make_node("Mul", [name, const], [masked])))
    nodes = list(out.graph.node)
    del out.graph.node[:]
    for node in nodes:
        for name, mul in new_nodes:
            if node.op_type == "MatMul" and node.input[0] == name:
                if mul not in out.graph.node:
                    out.graph.node.append(mul)
                node.input[0] = mul.output[0]
        out.graph.node.append(node)
    return out


def with_constants(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy whose ``Constant`` nodes named in ``values`` hold the new values (weights that
    are initializers are passed as overrides instead: no copy)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in values:
            del node.attribute[:]
            tensor = onnx.numpy_helper.from_array(values[node.output[0]])
            node.attribute.append(onnx.helper.make_attribute("value", tensor))
    return out


class Blobs:
    """Serialized variants of one model: each candidate's masked weights are swapped into
    the shared ``ModelProto`` for the time of one ``SerializeToString`` and swapped back, so
    no candidate copies the whole model. (onnxruntime's ``add_initializer`` overrides would
    avoid even that, but its graph optimizers read the model's own Conv weights first.)"""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.tensors = {t.name: t for t in model.graph.initializer}

    def masked(self, values: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> bytes:
        others = {k: v for k, v in values.items() if k not in self.tensors}
        if masks or others:  # rare (attention, Constant-node weights): a real copy
            copy = with_constants(self.model, others) if others else self.model
            copy = with_masks(copy, masks) if masks else copy
            inits = {t.name: t for t in copy.graph.initializer}
            for name, value in values.items():
                if name in inits:
                    inits[name].CopyFrom(onnx.numpy_helper.from_array(value, name))
            return copy.SerializeToString()
        saved = {}
        try:
            for name, value in values.items():
                t = self.tensors[name]
                saved[name] = onnx.TensorProto()
                saved[name].CopyFrom(t)
                t.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
            return self.model.SerializeToString()
        finally:
            for name, old in saved.items():
                self.tensors[name].CopyFrom(old)


@dataclass
class _Tap:
    """One masked tensor: a graph input ``mask`` multiplies ``tensor`` for ``readers``."""

    tensor: str
    mask: str
    shape: tuple[int, ...]
    dtype: np.dtype
    readers: set[int] = field(default_factory=set)


@dataclass
class MaskedModel:
    """The model with mask inputs, and per group the masks that remove its slots."""

    model: onnx.ModelProto
    taps: dict[str, _Tap]
    per_group: dict[str, list[tuple[str, np.ndarray]]]
    """Group id -> (tensor, slot of each position on its masked axis) for each tap."""
    fallback: set[str]
    """Groups whose consumers' inputs could not be told apart: masked by ``Blobs``."""

    def ones(self) -> dict[str, np.ndarray]:
        return {t.mask: np.ones(t.shape, dtype=t.dtype) for t in self.taps.values()}

    def feed(self, group: str, removed: np.ndarray) -> dict[str, np.ndarray]:
        """The mask inputs for ``group`` losing the ``removed`` slots (others all ones)."""
        out = self.ones()
        for tensor, slot in self.per_group.get(group, []):
            tap = self.taps[tensor]
            flat = out[tap.mask].reshape(-1)
            flat[np.isin(slot, removed)] = 0
        return out


def _readers(g: Group, view: GraphView, index: Mapping[str, int]) -> list[tuple[str, int]] | None:
    """(tensor, node index) for every read of the group's channels by a weighted consumer
    (its ``in`` members) or a contraction; None when a consumer's input is ambiguous."""
    acts = {m.target for m in g.members if m.role == "act"}
    out: list[tuple[str, int]] = []
    for m in g.members:
        if m.role != "in":
            continue
        i = index.get(m.node)
        if i is None:
            return None
        node = view.nodes[i]
        data = [t for t in node.input if t in acts and not view.is_constant(t)]
        if len(set(data)) != 1:
            return None
        if (data[0], i) not in out:
            out.append((data[0], i))
    for m in g.members:
        if m.role != "act":
            continue
        for use in view.uses(m.target):
            node = view.nodes[use.node]
            contraction = (
                node.op_type == "MatMul" and use.index == 0 and not view.is_constant(node.input[1])
            )
            if (
                contraction
                and view.rank(m.target) == m.axis + 1
                and (m.target, use.node) not in out
            ):
                out.append((m.target, use.node))
    return out


def mask_model(model: onnx.ModelProto, view: GraphView, groups: Sequence[Group]) -> MaskedModel:
    """Build the ``MaskedModel`` (see the module doc) for the prunable ``groups``."""
    index = {node_label(n, i): i for i, n in enumerate(view.nodes)}
    taps: dict[str, _Tap] = {}
    per_group: dict[str, list[tuple[str, np.ndarray]]] = {}
    fallback: set[str] = set()
    dtype = _float_type(model)
    for g in groups:
        reads = _readers(g, view, index)
        act = {m.target: m for m in g.members if m.role == "act"}
        rank_ok = reads is not None and all(view.rank(t) is not None for t, _ in reads)
        if not rank_ok:
            fallback.add(g.id)
            continue
        for tensor, node in reads:
            m = act[tensor]
            rank = int(view.rank(tensor))
            shape = (m.size,) + (1,) * (rank - 1 - m.axis)
            tap = taps.get(tensor)
            if tap is None:
                tap = taps[tensor] = _Tap(tensor, f"{tensor}__analyze_mask", shape, dtype)
            if tap.shape != shape:
                fallback.add(g.id)
                break
            tap.readers.add(node)
            if not any(t == tensor for t, _ in per_group.get(g.id, [])):
                per_group.setdefault(g.id, []).append((tensor, m.slot))
    return MaskedModel(_with_taps(model, taps), taps, per_group, fallback)


def _float_type(model: onnx.ModelProto) -> np.dtype:
    """The float type the activations use: that of the model's float initializers."""
    kinds = {t.data_type for t in model.graph.initializer}
    for elem in (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
        if elem in kinds and onnx.TensorProto.FLOAT not in kinds:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    return np.dtype(np.float32)


def _with_taps(model: onnx.ModelProto, taps: Mapping[str, _Tap]) -> onnx.ModelProto:
    """A copy (sharing nothing with ``model``) where each tap's readers read ``x * mask``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    first_reader: dict[int, list[_Tap]] = {}
    for tap in taps.values():
        first_reader.setdefault(min(tap.readers), []).append(tap)
        elem = onnx.helper.np_dtype_to_tensor_dtype(tap.dtype)
        out.graph.input.append(onnx.helper.make_tensor_value_info(tap.mask, elem, list(tap.shape)))
        for i in tap.readers:
            node = nodes[i]
            for k, name in enumerate(node.input):
                if name == tap.tensor:
                    node.input[k] = f"{tap.tensor}__analyze_masked"
    del out.graph.node[:]
    for i, node in enumerate(nodes):
        for tap in first_reader.get(i, []):
            out.graph.node.append(
                onnx.helper.make_node(
                    "Mul", [tap.tensor, tap.mask], [f"{tap.tensor}__analyze_masked"],
                    name=f"{tap.tensor}__analyze_mul",
                )
            )  # fmt: skip
        out.graph.node.append(node)
    return out
