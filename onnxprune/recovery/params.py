"""Reading and writing one refit layer's weight and bias in a model.

``ModelParams.add_bias`` is the one place in recovery that changes a graph's structure: a
layer without a bias that the refit gives one gets a bias input (Conv ``B``, Gemm ``C``) or,
after a MatMul, a new ``Add`` node with a new initializer, inserted right after the layer.
Everything else recovery does rewrites initializer values in place.

``write`` is the one writer of recovered weights, and it never writes a non-finite one: a
refit that produced NaN or Inf (extreme calibration values, an overflow in the cast to the
weight's dtype) is refused as a whole, the layer keeps its unrecovered weights, and the
caller records the layer as left alone with ``NONFINITE_REASON``.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.graph import quant
from onnxprune.graph.edit import insert_after
from onnxprune.graph.proto import FreshNames, add_initializer, set_tensor, tensor_array
from onnxprune.graph.view import GraphView
from onnxprune.recovery.layers import Layer

__all__ = ["NONFINITE_REASON", "ModelParams", "augmented", "write"]

NONFINITE_REASON = "the refit gave NaN or Inf weights: kept the unrecovered weights"


class ModelParams:
    """Initializer access by name, and a bias created where a layer has none."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.names = FreshNames(model.graph)
        # A quantized weight (DequantizeLinear, Cast·Mul) is read dequantized and written
        # back re-quantized with its original scale and zero point.
        self.quantized = GraphView(model, shapes=False).quantized

    def _read(self, name: str) -> np.ndarray:
        return tensor_array(self.inits[name])

    def get(self, name: str) -> np.ndarray:
        q = self.quantized.get(name)
        return quant.value(q, self._read) if q is not None else self._read(name)

    def set(self, name: str, value: np.ndarray) -> None:
        q = self.quantized.get(name)
        if q is not None:
            set_tensor(self.inits[q.root], quant.requantize(q, self._read, value))
            return
        set_tensor(self.inits[name], value, keep_dtype=True)

    def add_bias(self, layer: Layer, value: np.ndarray, dtype: np.dtype) -> None:
        """Give ``layer`` a bias input (Conv B, Gemm C: the op spec's ``bias_input``) or an
        Add after it (MatMul).

        This changes the graph's structure: a new initializer always, and for a MatMul a new
        ``Add`` node inserted right after it (the MatMul's output is renamed
        ``<y>_before_bias`` and the Add takes over ``<y>``, so consumers are untouched).
        """
        graph = self.model.graph
        name = self.names.new(f"{layer.weight}_recovered_bias")
        add_initializer(graph, value.astype(dtype), name)
        node = next(n for n in graph.node if n.output and n.output[0] == layer.y)
        if layer.bias_input is not None:
            while len(node.input) < layer.bias_input:
                node.input.append("")
            node.input.append(name)
            for k in reversed(range(len(node.attribute))):
                if node.attribute[k].name == "beta":  # it scaled an absent C: now it would not
                    del node.attribute[k]
            return
        pre = self.names.new(f"{layer.y}_before_bias")
        add = onnx.helper.make_node(
            "Add", [pre, name], [layer.y], name=self.names.new(f"{layer.y}_bias")
        )
        insert_after(graph, node, add, renamed=pre)


def augmented(layer: Layer, params: ModelParams) -> np.ndarray:
    """``[g, out, d+1]``: the layer's weight matrix with its bias (0 if none) as last column."""
    m = layer.matrix(params.get(layer.weight))
    b = params.get(layer.bias).astype(np.float64) if layer.bias else np.zeros(m.shape[:2])
    return np.concatenate([m, b.reshape(*m.shape[:2], 1)], axis=2)


def write(layer: Layer, params: ModelParams, wb: np.ndarray, write_bias: bool) -> bool:
    """Store ``wb`` (``[g, out, d+1]``) as the layer's weight and, with ``write_bias``, bias;
    a layer without a bias gets one (``ModelParams.add_bias``) only when it is not all zero.

    Returns False, writing nothing, when ``wb`` (or what it becomes in the weight's dtype)
    holds NaN or Inf: the layer keeps the weights it had.
    """
    like = params.get(layer.weight)
    part = wb if write_bias else wb[..., :-1]
    with np.errstate(over="ignore", invalid="ignore"):
        cast_ok = bool(np.isfinite(np.asarray(part).astype(like.dtype)).all())
    if not (np.isfinite(part).all() and cast_ok):
        return False
    params.set(layer.weight, layer.unmatrix(wb[..., :-1], like))
    if not write_bias:
        return True
    bias = wb[..., -1].reshape(-1)
    if layer.bias:
        params.set(layer.bias, bias)
    elif np.any(bias != 0):
        params.add_bias(layer, bias, like.dtype)
    return True
