"""What onnxprune knows about one op type, in one record: :class:`OpSpec`.

A spec names the op (domain, type, optional opset range) and carries up to four facts, each
optional:

* ``rule``: how channels pass through the node (:class:`onnxprune.ops.base.Rule`); an op with
  no rule blocks every channel that reaches it;
* ``weight``: which input is a prunable weight and the axis its dot products reduce over
  (unstructured pruning, N:M patterns, data-aware importance);
* ``macs``: its multiply-accumulates from the known shapes (``onnxprune.metrics``);
* ``linear``: its ``y = W x + b`` view for recovery (:class:`LinearView`).

``quantized`` marks ops whose presence means the weights are quantized (never touched).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from onnxprune.ops.base import Rule

if TYPE_CHECKING:
    from onnxprune.graph.view import GraphView
    from onnxprune.ops.macs import Dims, Shape

#: (input name, reduction axis) of a node's constant weight, or None: ``weight(node, inits)``.
WeightFn = Callable[[onnx.NodeProto, Mapping[str, onnx.TensorProto]], "tuple[str, int] | None"]
#: Multiply-accumulates of a node: ``macs(node, shapes, dims)``; raises ``UnknownShape``.
MacsFn = Callable[[onnx.NodeProto, "Mapping[str, Shape]", "Dims"], int]

ONNX_DOMAIN = ""


def normalize_domain(domain: str) -> str:
    """``""`` and ``"ai.onnx"`` are the same domain."""
    return ONNX_DOMAIN if domain in ("", "ai.onnx") else domain


def weight_dims(
    node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto], rank: int
) -> list[int] | None:
    """The dims of the node's weight (input 1, an initializer) when it has ``rank`` axes."""
    dims = list(inits[node.input[1]].dims)
    return dims if len(dims) == rank else None


class LinearView:
    """An op seen as ``y = W x + b`` per group over rows of its input (recovery).

    ``layer`` reads a node and returns the fields of a ``recovery.layers.Layer`` beyond its
    index, op and tensor names (``bias``, ``trans_b``, ``groups``, ``kernel``...), or None
    when the node is not a layer recovery can refit. The other methods receive that Layer.
    """

    #: Input index that holds the bias (Conv B, Gemm C), or None: the bias is an Add after it.
    bias_input: int | None = None
    #: Axis of the layer's input ``x`` that holds the features (1: image channels).
    x_channel_axis: int = -1
    #: Whether one row is one token of a ``[batch, tokens, features]`` input.
    token_rows: bool = False

    def layer(
        self, node: onnx.NodeProto, view: GraphView, inits: Mapping[str, onnx.TensorProto],
        bias: str | None,
    ) -> dict[str, Any] | None:  # fmt: skip
        raise NotImplementedError

    def out_axis(self, layer: Any) -> int:
        raise NotImplementedError

    def in_axis(self, layer: Any) -> int:
        raise NotImplementedError

    def matrix(self, layer: Any, w: np.ndarray) -> np.ndarray:
        """The weight as ``[groups, out per group, d]`` (float64)."""
        raise NotImplementedError

    def unmatrix(self, layer: Any, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def positions(self, layer: Any, x_shape: tuple[int, ...]) -> int:
        raise NotImplementedError

    def rows(self, layer: Any, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def feature_scale(
        self, layer: Any, norm: np.ndarray, w_shape: tuple[int, ...]
    ) -> np.ndarray | None:
        """``norm`` (one value per input feature of ``x``) laid out to broadcast against the
        weight: the ``||X_j||`` of Wanda's ``|W_ij| * ||X_j||``. None when sizes disagree."""
        axis = self.in_axis(layer)
        if len(w_shape) != 2 or len(norm) != w_shape[axis]:
            return None
        return norm[:, None] if axis == 0 else norm[None, :]


@dataclass(frozen=True)
class OpSpec:
    """Everything onnxprune knows about one op type (see the module docstring)."""

    op_type: str
    domain: str = ONNX_DOMAIN
    rule: Rule | None = None
    weight: WeightFn | None = None
    macs: MacsFn | None = None
    linear: LinearView | None = None
    quantized: bool = False
    since: int | None = None
    """First opset of ``domain`` this spec applies to (None: any)."""
    until: int | None = None
    """Last opset it applies to, inclusive (None: any)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", normalize_domain(self.domain))

    @property
    def key(self) -> tuple[str, str]:
        return self.domain, self.op_type

    @property
    def name(self) -> str:
        """``Conv``, or ``com.microsoft.Attention`` outside the ONNX domain."""
        return f"{self.domain}.{self.op_type}" if self.domain else self.op_type

    def applies(self, opset: int | None) -> bool:
        """Whether the spec covers ``opset`` (an unknown opset matches every range)."""
        if opset is None:
            return True
        return (self.since is None or opset >= self.since) and (
            self.until is None or opset <= self.until
        )


def specs(names: tuple[str, ...], **facts: Any) -> list[OpSpec]:
    """One spec per name (``op`` or ``domain.op``) sharing the same facts."""
    out = []
    for name in names:
        domain, _, op = name.rpartition(".")
        out.append(OpSpec(op, domain, **facts))
    return out
