"""com.microsoft MatMulNBits: 2/4/8-bit weights packed into bytes, quantized in blocks.

``Y = A @ W^T`` with ``W[n, k] = (q[n, k] - zp[n, k // bs]) * scale[n, k // bs]``; B holds
q as uint8 ``[N, blocks, bytes]`` (consecutive k, low bits first), the scales are
``N * blocks`` long (row after row), the zero points are packed the same way per row (or
float), the bias is ``[N]``.

* **N outputs**: rows of B, of the scales, of the zero points and of the bias; the ``N``
  attribute follows.
* **K inputs**, a whole block at a time (a group slot is a block of ``block_size`` inputs):
  B loses those blocks on its axis 1; the scales and zero points lose them inside each row,
  which is no axis of their flat layout, so the rewrite rebuilds them from the originals
  (zero points unpacked, sliced and packed again); ``K`` follows. Refused with a reason
  when K is not a whole number of blocks, the bits do not divide a byte, or ``g_idx``
  reorders K.

Criteria score the dequantized weight (``GraphView.dequantized_reads``, unpacked), and the
exactness oracle zeroes removed blocks at their zero point, repacked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.quant import QuantWeight, pack, unpack
from onnxprune.graph.view import attr
from onnxprune.ops.base import Rule, claim_constants
from onnxprune.ops.macs import Dims, Shape, UnknownShape, in_shape

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Context
    from onnxprune.structured.rewrite import RewriteContext


def _attrs(node: onnx.NodeProto) -> tuple[int, int, int, int, int]:
    """(N, K, block_size, bits, blocks per row)."""
    n, k = int(attr(node, "N", 0)), int(attr(node, "K", 0))
    bs, bits = int(attr(node, "block_size", 0)), int(attr(node, "bits", 4))
    return n, k, bs, bits, -(-k // bs) if bs else 0


def _zero_points(z: np.ndarray | None, n: int, nb: int, bits: int) -> np.ndarray:
    """Zero points as ``[N, blocks]`` numbers (2^(bits-1) when the op has none)."""
    if z is None:
        return np.full((n, nb), 1 << (bits - 1), dtype=np.uint8)
    if z.dtype == np.uint8 and bits < 8:  # packed like B, whole bytes per row
        return unpack(z.reshape(n, z.size // n), bits)[:, :nb]
    return z.reshape(n, nb)


class MatMulNBitsRule(Rule):
    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        a = ctx.inp(0)
        n_out, k_in, bs, bits, nb = _attrs(node)
        shape_b = ctx.in_shape(1)
        consts = all(ctx.is_const(k) for k in range(1, ctx.n_inputs()) if ctx.input_name(k))
        if not consts or shape_b is None or len(shape_b) != 3 or shape_b[:2] != (n_out, nb):
            ctx.block_inputs("MatMulNBits whose B, scales or zero points are not constants "
                             "of the documented layout is not followed")  # fmt: skip
            claim_constants(ctx)
            return
        ids = ctx.source(1, 0)
        act_order = len(node.input) > 4 and bool(node.input[4])
        if act_order:
            ctx.block(ids, "MatMulNBits with g_idx (act-order) is not followed")
        if a is not None:
            why = _k_refusal(k_in, bs, bits, act_order, a.axis, a.rank)
            if why is not None:
                ctx.block(a.ids, why)
            else:
                blocks = a.ids.reshape(nb, bs)
                ctx.unify(blocks[:, 1:].ravel(), np.repeat(blocks[:, 0], bs - 1))
                ctx.bind(1, 1, blocks[:, 0].copy(), "in")
        for k in (2, 3, 5):
            if k >= ctx.n_inputs() or not ctx.input_name(k):
                continue
            shape = ctx.in_shape(k)
            if not shape or len(shape) > 2 or shape[0] % n_out:
                ctx.block(ids, f"MatMulNBits input {k} does not hold whole rows per output")
                ctx.claim(k)
            else:
                role = "chan" if k == 5 else "stat"  # the bias is scored, scales are not
                ctx.bind(k, 0, np.repeat(ids, shape[0] // n_out), role)
        _score_dequantized(node, ctx)
        rank = ctx.view.rank(node.output[0])
        if rank is not None:
            ctx.set_out(0, rank - 1, ids, rank)

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        n_out, _, bs, bits, nb = _attrs(node)
        out_cut, in_cut = rw.cut(node.output[0]), rw.cut(node.input[0])
        rows = np.asarray(out_cut.kept) if out_cut is not None else np.arange(n_out)
        if out_cut is not None:
            rw.set_attr(node, "N", len(rows))
        if in_cut is None:
            return  # the scales and zero points were sliced with their rows
        blocks = np.unique(np.asarray(in_cut.kept) // bs)
        rw.set_attr(node, "K", len(blocks) * bs)
        scales = rw.constant(node.input[2])
        kept = scales.reshape(n_out, nb)[rows][:, blocks]
        rw.set_input(node, 2, kept.reshape(-1) if scales.ndim == 1 else kept)
        if len(node.input) > 3 and node.input[3]:
            z = rw.constant(node.input[3])
            numbers = _zero_points(z, n_out, nb, bits)[rows][:, blocks]
            if z.dtype == np.uint8 and bits < 8:
                per = 8 // bits
                pad = (-numbers.shape[1]) % per
                numbers = np.pad(numbers, ((0, 0), (0, pad)))
                rw.set_input(node, 3, pack(numbers, bits).reshape(-1))
            else:
                rw.set_input(node, 3, numbers.reshape(-1) if z.ndim == 1 else numbers)


def _k_refusal(k: int, bs: int, bits: int, act_order: bool, axis: int, rank: int) -> str | None:
    if act_order or bits not in (2, 4, 8) or not bs or k % bs or axis != rank - 1:
        return (f"MatMulNBits packs its {k} input features in blocks of {bs} inside bytes "
                f"({bits} bits); its inputs are pruned only a whole block at a time, and not "
                "here (K not a whole number of blocks, bits, g_idx or the axis)")  # fmt: skip
    return None


def _score_dequantized(node: onnx.NodeProto, ctx: Context) -> None:
    """Register B's dequantized view (unpacked, per-block scales and zero points)."""
    n_out, _, _, bits, nb = _attrs(node)
    b, s = node.input[1], node.input[2]
    scales = ctx.view.constant(s)
    if bits not in (2, 4, 8) or b not in ctx.view.initializers or scales is None:
        return
    z = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    zp = _zero_points(ctx.view.constant(z) if z else None, n_out, nb, bits)
    ctx.view.derive(f"{b}::scale", scales.reshape(n_out, nb, 1))
    ctx.view.derive(f"{b}::zero", zp.reshape(n_out, nb, 1))
    ctx.view.dequantized_reads[b] = QuantWeight(
        b, f"{b}::scale", f"{b}::zero", 0, 0, per_tensor=False, packed=bits
    )


def nbits_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims) -> int:
    a = in_shape(node, shapes, 0)
    if a is None or not a:
        raise UnknownShape
    rows = 1
    for s in a[:-1]:
        rows *= d.int(s, node.input[0])
    return rows * int(attr(node, "K", 0)) * int(attr(node, "N", 0))
