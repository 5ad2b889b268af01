"""What MAC formulas share: shapes with symbolic dims, and dims taken as 1 when unknown."""

from __future__ import annotations

import math
from collections.abc import Mapping

import onnx

from onnxprune.graph.view import attr

Dim = int | str | None
Shape = tuple[Dim, ...]

_MAX_DIM_NOTES = 8


class UnknownShape(Exception):
    """A node's MACs cannot be computed from the shapes that are known."""


class Dims:
    """Turns dims into ints, taking symbolic and unknown ones as 1 and remembering which."""

    def __init__(self) -> None:
        self.symbols: dict[str, None] = {}  # ordered set
        self.unknown: dict[str, None] = {}  # tensors with an unnamed unknown dim

    def int(self, dim: Dim, tensor: str) -> int:
        if isinstance(dim, int):
            return dim
        if isinstance(dim, str):
            self.symbols[dim] = None
        else:
            self.unknown[tensor] = None
        return 1

    def pick(self, *candidates: tuple[Dim, str]) -> int:
        """The first concrete candidate, else the first one taken as 1."""
        for dim, _ in candidates:
            if isinstance(dim, int):
                return dim
        if not candidates:
            raise UnknownShape
        return self.int(*candidates[0])

    def notes(self) -> list[str]:
        notes = [f"symbolic dimension {s!r} taken as 1 for MACs" for s in self.symbols]
        notes += [f"unknown dimension of {t!r} taken as 1 for MACs" for t in self.unknown]
        if len(notes) > _MAX_DIM_NOTES:
            rest = len(notes) - _MAX_DIM_NOTES + 1
            notes = [
                *notes[: _MAX_DIM_NOTES - 1],
                f"... and {rest} more dimensions taken as 1 for MACs",
            ]
        return notes


def in_shape(node: onnx.NodeProto, shapes: Mapping[str, Shape], i: int) -> Shape | None:
    return shapes.get(node.input[i]) if i < len(node.input) and node.input[i] else None


def out_shape(node: onnx.NodeProto, shapes: Mapping[str, Shape]) -> Shape | None:
    return shapes.get(node.output[0]) if node.output else None


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def conv_out_dim(node: onnx.NodeProto, axis: int, size: int, kernel: int) -> int:
    """One spatial output size of a Conv from its input size (used when inference gave none)."""
    strides = list(attr(node, "strides", []))
    dilations = list(attr(node, "dilations", []))
    stride = strides[axis] if axis < len(strides) else 1
    dilation = dilations[axis] if axis < len(dilations) else 1
    auto_pad = text(attr(node, "auto_pad", "NOTSET"))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-size // stride)
    span = dilation * (kernel - 1) + 1
    if auto_pad == "VALID":
        return max(0, (size - span) // stride + 1)
    pads = list(attr(node, "pads", []))  # all begins, then all ends
    half = len(pads) // 2
    begin, end = (pads[axis], pads[half + axis]) if axis < half else (0, 0)
    return max(0, (size + begin + end - span) // stride + 1)


def conv_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims, w_input: int = 1) -> int:
    """Conv, ConvInteger and QLinearConv (weight input ``w_input``)."""
    x, w, y = in_shape(node, shapes, 0), in_shape(node, shapes, w_input), out_shape(node, shapes)
    xn, wn, yn = node.input[0], node.input[w_input], node.output[0]
    group = int(attr(node, "group", 1))
    kernel_attr = list(attr(node, "kernel_shape", []))
    if w is not None and len(w) >= 3:
        cout, cin_g = d.int(w[0], wn), d.int(w[1], wn)
        kernel = [d.int(k, wn) for k in w[2:]]
    elif kernel_attr and x is not None and len(x) >= 2:
        if y is None or len(y) < 2:
            raise UnknownShape
        cout = d.pick((y[1], yn))
        cin_g = d.int(x[1], xn) // group
        kernel = kernel_attr
    else:
        raise UnknownShape
    spatial = len(kernel)
    if x is None and y is None:
        raise UnknownShape
    batch = d.pick(*[(s[0], n) for s, n in ((x, xn), (y, yn)) if s is not None])
    out = []
    for i in range(spatial):
        yd = y[2 + i] if y is not None and len(y) == spatial + 2 else None
        xd = x[2 + i] if x is not None and len(x) == spatial + 2 else None
        if isinstance(yd, int):
            out.append(yd)
        elif isinstance(xd, int):
            out.append(conv_out_dim(node, i, xd, kernel[i]))
        elif y is not None:
            out.append(d.int(yd, yn))
        else:
            out.append(d.int(xd, xn))
    return batch * cout * math.prod(out) * cin_g * math.prod(kernel)


def _broadcast(x: Dim, y: Dim) -> list[tuple[Dim, str]]:
    """Candidates for one broadcast batch dim (numpy rules), most concrete first."""
    if x == 1:
        return [(y, "b")]
    if y == 1:
        return [(x, "a")]
    return [(x, "a"), (y, "b")]


def matmul_macs(
    node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims, b_input: int = 1
) -> int:
    """MatMul, MatMulInteger and QLinearMatMul (right operand input ``b_input``)."""
    a, b, y = in_shape(node, shapes, 0), in_shape(node, shapes, b_input), out_shape(node, shapes)
    an, bn, yn = node.input[0], node.input[b_input], node.output[0]
    if a is not None and b is not None and len(a) >= 1 and len(b) >= 1:
        aa = (1, a[0]) if len(a) == 1 else a  # numpy: a 1-D left operand is a row
        bb = (b[0], 1) if len(b) == 1 else b  # and a 1-D right operand a column
        m, n = d.int(aa[-2], an), d.int(bb[-1], bn)
        k = d.pick((aa[-1], an), (bb[-2], bn))
        ba, bb_ = list(aa[:-2]), list(bb[:-2])
        width = max(len(ba), len(bb_))
        ba = [1] * (width - len(ba)) + ba
        bb_ = [1] * (width - len(bb_)) + bb_
        batch = 1
        for x, z in zip(ba, bb_, strict=True):
            cands = [(dim, an if who == "a" else bn) for dim, who in _broadcast(x, z)]
            batch *= d.pick(*cands)
        return batch * m * n * k
    # Only the output and one operand: every output element is one K-long dot product.
    if y is None:
        raise UnknownShape
    if a is not None and len(a) >= 1:
        k = d.int(a[-1], an)
    elif b is not None and len(b) >= 1:
        k = d.int(b[0] if len(b) == 1 else b[-2], bn)
    else:
        raise UnknownShape
    return math.prod([d.int(s, yn) for s in y]) * k
