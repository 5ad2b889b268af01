"""Weighted layers seen as one thing: ``y = W x + b`` per group, over sampled rows.

Recovery (least squares, bias compensation, OBS) is linear algebra on a weight matrix
``[groups, out, d]`` and the layer's input rows ``[rows, groups, d]`` (a token of a MatMul, a
row of a Gemm, an im2col patch of a Conv). How each op lays its weight and input out is its
spec's :class:`onnxprune.ops.LinearView` (``OpSpec.linear``); this module finds the layers
and hands each method to its view, so the algorithms never look at op types.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.graph.view import GraphView
from onnxprune.ops import LinearView, active, opsets_of, spec_for


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
    domain: str = ""

    @property
    def label(self) -> str:
        return f"{self.op} {self.y}"

    @property
    def view(self) -> LinearView:
        """The op's linear-layer view, from the op registry."""
        spec = active().lookup(self.domain, self.op)
        if spec is None or spec.linear is None:
            raise ValueError(f"{self.op} has no linear-layer view in the op registry")
        return spec.linear

    @property
    def bias_input(self) -> int | None:
        """Input index where the node takes a bias (Conv B, Gemm C); None: a bias is an Add
        after the node (MatMul)."""
        return self.view.bias_input

    @property
    def x_channel_axis(self) -> int:
        """Axis of ``x`` that holds the input features (1 for image channels, else -1)."""
        return self.view.x_channel_axis

    @property
    def token_rows(self) -> bool:
        """Whether a row is one token of a ``[batch, tokens, features]`` input."""
        return self.view.token_rows

    @property
    def out_axis(self) -> int:
        """The weight axis that holds output channels/neurons."""
        return self.view.out_axis(self)

    @property
    def in_axis(self) -> int:
        return self.view.in_axis(self)

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """The weight as ``[groups, out per group, d]`` (float64)."""
        return self.view.matrix(self, w)

    def unmatrix(self, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of ``matrix``, in the dtype of ``like`` and with its shape (up to d, out)."""
        return self.view.unmatrix(self, m, like)

    def positions(self, x_shape: tuple[int, ...]) -> int:
        """How many rows one batch of input ``x_shape`` holds."""
        return self.view.positions(self, x_shape)

    def rows(self, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
        """Rows ``picks`` (indices into ``positions``) of the input as ``[rows, groups, d]``."""
        return self.view.rows(self, x, picks)

    def feature_scale(self, norm: np.ndarray, w_shape: tuple[int, ...]) -> np.ndarray | None:
        """Per-input-feature ``norm`` of ``x`` broadcastable to the weight (Wanda's
        ``||X_j||``), or None when its size does not match the weight's input features."""
        return self.view.feature_scale(self, norm, w_shape)


def find_layers(model: onnx.ModelProto, view: GraphView | None = None) -> list[Layer]:
    """Every node whose op has a linear-layer view and whose weight is a constant initializer.

    Built in: Conv (2-D), Gemm and MatMul. Left out, so never refit: ConvTranspose and
    1-D/3-D Conv (no patch extraction here yet), Gemm with transA or alpha != 1, MatMul whose
    constant is the left operand or not 2-D.
    """
    view = view if view is not None else GraphView(model, shapes=False)
    inits = {t.name: t for t in model.graph.initializer}
    # quantized weights (DequantizeLinear, Cast·Mul) by their dequantized name: refit in
    # float, written back re-quantized (``recovery.params.ModelParams``)
    inits.update({name: inits[q.root] for name, q in view.quantized.items() if q.root in inits})
    opsets = opsets_of(model)
    layers = []
    for i, node in enumerate(view.nodes):
        if len(node.input) < 2 or not node.output:
            continue
        x, w = node.input[0], node.input[1]
        if w not in inits or x in inits:
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        if len(node.input) > 2 and node.input[2] and bias is None:
            continue  # a bias computed at run time: not a parameter, and no room for one
        spec = spec_for(node, opsets)
        if spec is None or spec.linear is None:
            continue
        fields = spec.linear.layer(node, view, inits, bias)
        if fields is not None:
            layers.append(
                Layer(i, node.op_type, x, node.output[0], w, domain=spec.domain, **fields)
            )
    return layers
