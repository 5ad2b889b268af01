"""Quantized constant weights seen as the float weights they stand for.

A static QDQ model (onnxruntime's ``quantize_static``, QAT exports) stores a Conv or MatMul
weight as an integer initializer read through ``DequantizeLinear(q, scale, zero_point)``;
weight-only block quantization does the same with ``block_size``. For the channel analysis
such a weight *is* a constant: :class:`QuantWeight` says which integer tensor holds it and
how its scale and zero point are laid out, ``value`` dequantizes it (what importance scores
and oracles read), and ``sliced_inputs`` gives the DequantizeLinear's new inputs after a cut:
the integer tensor sliced, a per-axis (or per-block) scale and zero point sliced with it on
that axis, per-tensor ones kept. Removing channels never re-quantizes: the kept integers and
their scales are the original ones, so the kept channels dequantize to the same floats.

``zeroed_integers`` is the integer-domain zeroing of unstructured pruning and of the
exactness oracle: entries set to their zero point dequantize to exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.graph.proto import attr

_INT_TYPES = frozenset(
    (
        onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
        onnx.TensorProto.UINT16, onnx.TensorProto.INT32, onnx.TensorProto.INT4,
        onnx.TensorProto.UINT4,
    )
)  # fmt: skip


@dataclass(frozen=True)
class QuantWeight:
    """``DequantizeLinear(root, scale, zero_point)`` with every input an initializer."""

    root: str
    scale: str
    zero_point: str
    axis: int
    """The axis the scale runs along when it has more than one entry (normalized)."""
    block: int
    """``block_size`` (0: per-axis or per-tensor)."""
    per_tensor: bool
    factor: float = 1.0
    """A constant the scale is multiplied by (a QOperator bias: the input's scale)."""
    packed: int = 0
    """Bits per integer when they are packed into uint8 along the last axis (low bits
    first, MatMulNBits' B); 0: one integer per element. Scale and zero point then have the
    weight's rank (one entry per block) and ``value`` has the unpacked last axis."""
    slots: tuple[tuple[str, int], ...] = ()
    """Where the integers, the scale and the zero point are read: (output of the reading
    node, its input index) each; empty for a DequantizeLinear (its inputs 0, 1, 2)."""

    def slot(self, name: str, k: int) -> tuple[str, int]:
        """(output naming the node that reads logical input ``k``, its input index) for the
        weight ``name`` (0: integers, 1: scale, 2: zero point)."""
        return self.slots[k] if self.slots else (name, k)

    def unsliceable(self, axis: int, size: int) -> tuple[int, str | None]:
        """(positions that must go together on ``axis``, or a reason the axis cannot be cut).

        A per-block scale covers ``block`` consecutive entries of its axis: they go together,
        and a last partial block would be cut mid-block, so such an axis is refused."""
        if not self.block or axis != self.axis:
            return 1, None
        if size % self.block:
            return 1, (
                f"'{self.root}' is quantized in blocks of {self.block} on axis {axis}, "
                f"which do not divide its {size} entries"
            )
        return self.block, None


def weight_of(
    node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]
) -> QuantWeight | None:
    """The quantized weight ``node`` dequantizes, or None (not a DequantizeLinear of
    integer initializers)."""
    if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    names = list(node.input) + [""] * (3 - len(node.input))
    root, scale, zp = names[:3]
    if root not in inits or scale not in inits or (zp and zp not in inits):
        return None
    if inits[root].data_type not in _INT_TYPES:
        return None
    rank = len(inits[root].dims)
    n_scale = int(np.prod(inits[scale].dims)) if inits[scale].dims else 1
    axis = int(attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    block = int(attr(node, "block_size", 0))
    return QuantWeight(root, scale, zp, axis, block, per_tensor=n_scale == 1 and not block)


def cast_mul_weight(
    node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto], casts: Mapping[str, str]
) -> QuantWeight | None:
    """Weight-only int8 written as ``Mul(Cast(int8 initializer), scale initializer)``
    (``casts``: Cast outputs of integer initializers to float, by name). The scale must be
    per-tensor or run along one axis of the weight."""
    if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    for k in (0, 1):
        cast, scale = node.input[k], node.input[1 - k]
        if cast not in casts or scale not in inits:
            continue
        root = casts[cast]
        rank, dims = len(inits[root].dims), list(inits[scale].dims)
        if len(dims) > rank:
            return None
        big = [j for j, d in enumerate(dims) if d != 1]
        if not big:
            return QuantWeight(root, scale, "", 0, 0, True, slots=((cast, 0), (node.output[0], 1 - k)))
        if len(big) != 1 or (len(dims) != 1 and len(dims) != rank):
            return None
        axis = big[0] + rank - len(dims)
        if dims[big[0]] != inits[root].dims[axis]:
            return None
        return QuantWeight(root, scale, "", axis, 0, False,
                           slots=((cast, 0), (node.output[0], 1 - k)))  # fmt: skip
    return None


def is_integer(tensor: onnx.TensorProto) -> bool:
    return tensor.data_type in _INT_TYPES


def unpack(ints: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes holding ``8 // bits`` integers each, low bits first, along the last axis."""
    if bits == 8:
        return ints
    per = 8 // bits
    parts = [(ints >> (bits * j)) & ((1 << bits) - 1) for j in range(per)]
    return np.stack(parts, axis=-1).reshape(*ints.shape[:-1], ints.shape[-1] * per)


def pack(ints: np.ndarray, bits: int) -> np.ndarray:
    """The inverse of ``unpack`` (the last axis a multiple of ``8 // bits``)."""
    if bits == 8:
        return ints.astype(np.uint8)
    per = 8 // bits
    parts = ints.astype(np.uint8).reshape(*ints.shape[:-1], ints.shape[-1] // per, per)
    out = np.zeros(parts.shape[:-1], dtype=np.uint8)
    for j in range(per):
        out |= (parts[..., j] << (bits * j)).astype(np.uint8)
    return out


def _layout(q: QuantWeight, param: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``param`` (a scale or zero point) broadcast to the weight's ``shape``."""
    if q.packed:
        return param  # full rank, one entry per block
    if q.per_tensor:
        return param.reshape(())
    if q.block:
        full = np.repeat(param, q.block, axis=q.axis)
        index = [slice(None)] * full.ndim
        index[q.axis] = slice(0, shape[q.axis])
        return full[tuple(index)]
    view = [1] * len(shape)
    view[q.axis] = -1
    return param.reshape(view)


def _on_axis(q: QuantWeight, param: np.ndarray) -> int:
    """The axis of ``param`` that runs along the weight's ``q.axis`` (0 for a 1-D one)."""
    return q.axis if param.ndim > 1 else 0


def value(q: QuantWeight, read: Callable[[str], np.ndarray]) -> np.ndarray:
    """The dequantized float weight, ``(root - zero_point) * scale`` in the scale's dtype."""
    ints = unpack(read(q.root), q.packed) if q.packed else read(q.root)
    scale = read(q.scale) if q.scale else np.ones((), np.float32)  # a zero point alone
    x = ints.astype(np.float64)
    if q.zero_point:
        x = x - _layout(q, read(q.zero_point).astype(np.float64), ints.shape)
    scale64 = (_layout(q, scale.astype(np.float64), ints.shape) if q.scale else 1.0) * q.factor
    return (x * scale64).astype(scale.dtype)


def zeroed_integers(
    q: QuantWeight, read: Callable[[str], np.ndarray], zero: np.ndarray
) -> np.ndarray:
    """The integer weight with the entries where ``zero`` is True set to their zero point,
    so that they dequantize to exactly 0 (the rest stays as it is)."""
    ints = unpack(read(q.root), q.packed) if q.packed else read(q.root).copy()
    zp = (
        _layout(q, read(q.zero_point), ints.shape)
        if q.zero_point
        else np.zeros((), dtype=ints.dtype)
    )
    ints[zero] = np.broadcast_to(zp, ints.shape)[zero].astype(ints.dtype)
    return pack(ints, q.packed) if q.packed else ints


def requantize(
    q: QuantWeight, read: Callable[[str], np.ndarray], value: np.ndarray
) -> np.ndarray:
    """Float ``value`` as the weight's integers with its *original* scale and zero point:
    ``round(value / scale) + zero_point``, clipped to the integer type (recovery's refit).
    A value that came from ``value(q)`` comes back exactly."""
    ints = read(q.root)
    scale = _layout(q, read(q.scale).astype(np.float64), ints.shape) * q.factor if q.scale \
        else q.factor  # fmt: skip
    zp = _layout(q, read(q.zero_point).astype(np.float64), ints.shape) if q.zero_point else 0.0
    info = np.iinfo(ints.dtype)
    out = np.rint(np.asarray(value, dtype=np.float64) / scale) + zp
    return np.clip(out, info.min, info.max).astype(ints.dtype)


def sliced_inputs(
    q: QuantWeight, read: Callable[[str], np.ndarray], cuts: Sequence[tuple[int, np.ndarray]]
) -> dict[int, np.ndarray]:
    """New values for the DequantizeLinear's inputs (0: integers, 1: scale, 2: zero point)
    after keeping ``kept`` positions on each ``axis`` of ``cuts``; only changed ones."""
    ints = read(q.root)
    params = {1: read(q.scale)}
    if q.zero_point:
        params[2] = read(q.zero_point)
    out: dict[int, np.ndarray] = {}
    for axis, kept in cuts:
        kept = np.asarray(kept, dtype=np.int64)
        ints = np.take(ints, kept, axis=axis)
        out[0] = ints
        if q.per_tensor:
            continue
        if q.block:
            picks, on = (np.unique(kept // q.block), axis) if axis == q.axis else (kept, axis)
        elif axis == q.axis:
            picks, on = kept, -1
        else:
            continue
        for k in params:
            params[k] = np.take(params[k], picks, axis=_on_axis(q, params[k]) if on < 0 else on)
            out[k] = params[k]
    return out


NOT_REFIT = (
    "integer weight of a quantized operator (QLinear*, *Integer, MatMulNBits): recovery "
    "refits weights read through DequantizeLinear or Cast·Mul only, so this layer keeps its "
    "sliced integers"
)


def quantized_inputs(
    inits: Mapping[str, onnx.TensorProto], quantized: Mapping[str, QuantWeight], cuts: Sequence
) -> list[str]:
    """The cut consumer weights (``role == "in"``) that recovery cannot refit: integer
    weights of QLinear* / *Integer / MatMulNBits ops (a weight read through DequantizeLinear
    or Cast·Mul, in ``quantized``, is refit in float and re-quantized)."""
    out = []
    for c in cuts:
        init = inits.get(c.name)
        if c.role == "in" and c.name not in quantized and init is not None and is_integer(init):
            out.append(c.name)
    return out
