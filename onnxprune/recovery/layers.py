"""Gemm, MatMul and Conv seen as one thing: ``y = W x + b`` per group, over sampled rows.

Recovery (least squares, bias compensation, OBS) is linear algebra on a weight matrix
``[groups, out, d]`` and the layer's input rows ``[rows, groups, d]`` (a token of a MatMul, a
row of a Gemm, an im2col patch of a Conv). This module is the only place that knows how each
op lays its weight and input out, so the algorithms never look at op types.

Conv columns run kernel position first and input channel last (``kh, kw, c``): consecutive
columns are consecutive input channels, which is the axis N:M patterns follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.graph.view import GraphView, attr


@dataclass(frozen=True)
class Layer:
    """One node with a constant weight that recovery can refit."""

    index: int
    """Position of the node in the graph (topological order)."""
    op: str
    x: str
    """The data input tensor."""
    y: str
    """The output tensor (names survive the structured rewrite)."""
    weight: str
    bias: str | None
    """The bias initializer: Conv B, Gemm C of shape [N], or the [N] constant of the Add that
    alone reads a MatMul's output (``bias_add`` is then that Add's output)."""
    bias_add: str | None = None
    trans_b: bool = False
    groups: int = 1
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    auto_pad: str = "NOTSET"

    @property
    def label(self) -> str:
        return f"{self.op} {self.y}"

    @property
    def out_axis(self) -> int:
        """The weight axis that holds output channels/neurons."""
        if self.op == "Conv":
            return 0
        if self.op == "Gemm":
            return 0 if self.trans_b else 1
        return 1

    @property
    def in_axis(self) -> int:
        if self.op == "Conv":
            return 1
        if self.op == "Gemm":
            return 1 if self.trans_b else 0
        return 0

    # ---------------------------------------------------------------- weight <-> matrix

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as ``[groups, out per group, d]`` (float64)."""
        w = np.asarray(w, dtype=np.float64)
        if self.op == "Conv":
            o = w.shape[0]
            m = w.transpose(0, 2, 3, 1).reshape(o, -1)  # columns (kh, kw, c)
            return m.reshape(self.groups, o // self.groups, -1)
        if self.op == "Gemm" and self.trans_b:
            return w[None]
        return w.T[None]

    def unmatrix(self, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of ``matrix``, in the dtype of ``like`` and with its shape (up to d, out)."""
        if self.op == "Conv":
            g, opg, d = m.shape
            kh, kw = like.shape[2], like.shape[3]
            w = m.reshape(g * opg, kh, kw, d // (kh * kw)).transpose(0, 3, 1, 2)
        elif self.op == "Gemm" and self.trans_b:
            w = m[0]
        else:
            w = m[0].T
        return np.ascontiguousarray(w.astype(like.dtype))

    # ---------------------------------------------------------------- input rows

    def positions(self, x_shape: tuple[int, ...]) -> int:
        """How many rows one batch of input ``x_shape`` holds."""
        if self.op == "Conv":
            oh, ow = self._out_hw(x_shape)
            return x_shape[0] * oh * ow
        return int(np.prod(x_shape[:-1])) if self.op == "MatMul" else x_shape[0]

    def rows(self, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
        """Rows ``picks`` (indices into ``positions``) of the input as ``[rows, groups, d]``."""
        if self.op == "Conv":
            return self._patches(x, picks)
        flat = x.reshape(-1, x.shape[-1]) if self.op == "MatMul" else x
        return np.asarray(flat[picks], dtype=np.float32)[:, None, :]

    def _pads(self, x_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for k, s, d, n in zip(self.kernel, self.strides, self.dilations, x_shape[2:], strict=True):
                total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
                lo = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
                out.append((lo, total - lo))
            return out[0][0], out[1][0], out[0][1], out[1][1]
        if self.auto_pad == "VALID":
            return 0, 0, 0, 0
        return self.pads

    def _out_hw(self, x_shape: tuple[int, ...]) -> tuple[int, int]:
        t, left, b, r = self._pads(x_shape)
        h, w = x_shape[2] + t + b, x_shape[3] + left + r
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        return (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1

    def _patches(self, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
        c = x.shape[1]
        oh, ow = self._out_hw(x.shape)
        t, left, b, r = self._pads(x.shape)
        if t or left or b or r:
            x = np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)))
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        img, rest = np.divmod(picks, oh * ow)
        row, col = np.divmod(rest, ow)
        # [rows, kh, kw] pixel coordinates of each patch, gathered without an im2col copy.
        ys = row[:, None] * sh + np.arange(kh)[None, :] * dh
        xs = col[:, None] * sw + np.arange(kw)[None, :] * dw
        p = x[img[:, None, None], :, ys[:, :, None], xs[:, None, :]]  # [rows, kh, kw, c]
        g = self.groups
        p = p.reshape(len(picks), kh, kw, g, c // g).transpose(0, 3, 1, 2, 4)
        return np.ascontiguousarray(p.reshape(len(picks), g, -1), dtype=np.float32)


def find_layers(model: onnx.ModelProto, view: GraphView | None = None) -> list[Layer]:
    """Every Conv (2-D), Gemm and MatMul whose weight is a constant initializer.

    Left out, so never refit: ConvTranspose and 1-D/3-D Conv (no patch extraction here yet),
    Gemm with transA or alpha != 1, MatMul whose constant is the left operand or not 2-D.
    """
    view = view if view is not None else GraphView(model, shapes=False)
    inits = {t.name: t for t in model.graph.initializer}
    layers = []
    for i, node in enumerate(view.nodes):
        if len(node.input) < 2 or not node.output:
            continue
        x, w = node.input[0], node.input[1]
        if w not in inits or x in inits:
            continue
        dims = list(inits[w].dims)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            continue  # a bias computed at run time: not a parameter, and no room for one
        if node.op_type == "Conv" and len(dims) == 4:
            layers.append(
                Layer(
                    i, "Conv", x, node.output[0], w, bias,
                    groups=int(attr(node, "group", 1)),
                    kernel=(dims[2], dims[3]),
                    strides=tuple(attr(node, "strides", None) or (1, 1)),
                    dilations=tuple(attr(node, "dilations", None) or (1, 1)),
                    pads=tuple(attr(node, "pads", None) or (0, 0, 0, 0)),
                    auto_pad=_text(attr(node, "auto_pad", "NOTSET")),
                )
            )  # fmt: skip
        elif node.op_type == "Gemm" and len(dims) == 2:
            if attr(node, "transA", 0) or float(attr(node, "alpha", 1.0)) != 1.0:
                continue
            n_out = dims[0] if attr(node, "transB", 0) else dims[1]
            if bias is not None and (
                list(inits[bias].dims) != [n_out] or float(attr(node, "beta", 1.0)) != 1.0
            ):
                bias = None  # a broadcast matrix C or scaled C: not a per-output bias
                if len(node.input) > 2:
                    continue
            layers.append(Layer(i, "Gemm", x, node.output[0], w, bias, trans_b=bool(attr(node, "transB", 0))))
        elif node.op_type == "MatMul" and len(dims) == 2:
            bias, add = _bias_add(view, node.output[0], dims[1], inits)
            layers.append(Layer(i, "MatMul", x, node.output[0], w, bias, bias_add=add))
    return layers


def _bias_add(
    view: GraphView, y: str, n: int, inits: dict
) -> tuple[str | None, str | None]:
    """The [n] constant added to ``y`` by its only reader, an Add, as exporters write biases."""
    uses = view.uses(y)
    if len(uses) != 1 or y in view.graph_outputs:
        return None, None
    add = view.nodes[uses[0].node]
    if add.op_type != "Add" or add.domain or len(add.input) != 2:
        return None, None
    other = add.input[1 - uses[0].index]
    if (
        other in inits
        and list(inits[other].dims) == [n]
        and other not in view.graph_inputs
        and len(view.uses(other)) == 1
    ):
        return other, add.output[0]
    return None, None


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
