"""``Builder``: writes tiny graphs the way exporters do (NCHW, constant weights as
initializers, random values from a seed) and returns them checked, outputs shape-inferred."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class Builder:
    """Accumulates nodes and initializers; ``op`` returns the output name(s)."""

    def __init__(self, seed: int = 0, opset: int = OPSET) -> None:
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[str] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        """A fresh name: ``prefix`` and a counter."""
        self._n += 1
        return f"{prefix}{self._n}"

    def input(self, shape: Sequence[int | str], name: str = "x") -> str:
        """A float graph input; strings in ``shape`` are symbolic dimensions."""
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(
        self, value: np.ndarray | Sequence, name: str | None = None, dtype: DTypeLike = None
    ) -> str:
        """An initializer; float64 values become float32."""
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = name or self.name("c")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, values: Sequence[int], name: str | None = None) -> str:
        """An int64 initializer (shapes, axes, Reshape targets)."""
        return self.const(np.asarray(values, dtype=np.int64), name)

    def rand(
        self,
        shape: Sequence[int],
        name: str | None = None,
        scale: float = 0.5,
        positive: bool = False,
        floor: float = 0.1,
    ) -> str:
        """Seeded normal values; ``positive``: |v| + ``floor`` (scales, variances)."""
        v = self.rng.standard_normal(shape).astype(np.float32) * scale
        return self.const(np.abs(v) + floor if positive else v, name)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        n_out: int = 1,
        name: str | None = None,
        **attrs: Any,
    ) -> str | list[str]:
        """Append a node; its output name, or the list of ``n_out`` names."""
        name = name or self.name(op_type.lower())
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    # ---- layers -------------------------------------------------------------------
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int = 3,
        group: int = 1,
        bias: bool = True,
        stride: int = 1,
        name: str | None = None,
    ) -> str:
        """Conv ``cin`` -> ``cout``, ``k`` x ``k``, same padding, seeded weights scaled by fan-in ** -0.5."""
        name = name or self.name("conv")
        w = self.rand([cout, cin // group, k, k], f"{name}.weight", (cin // group * k * k) ** -0.5)
        ins = [x, w] + ([self.rand([cout], f"{name}.bias", 0.1)] if bias else [])
        return self.op(
            "Conv",
            ins,
            name=name,
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            group=group,
            strides=[stride, stride],
        )

    def conv_t(
        self, x: str, cin: int, cout: int, k: int = 2, group: int = 1, name: str | None = None
    ) -> str:
        """ConvTranspose ``cin`` -> ``cout``, stride 2 (weight ``[cin, cout/group, k, k]``)."""
        name = name or self.name("convt")
        w = self.rand([cin, cout // group, k, k], f"{name}.weight", (cin // group) ** -0.5)
        b = self.rand([cout], f"{name}.bias", 0.1)
        return self.op(
            "ConvTranspose", [x, w, b], name=name, kernel_shape=[k, k], strides=[2, 2], group=group
        )

    def bn(self, x: str, c: int, name: str | None = None) -> str:
        """BatchNormalization over ``c`` channels, non-trivial statistics."""
        name = name or self.name("bn")
        return self.op(
            "BatchNormalization",
            [
                x,
                self.rand([c], f"{name}.scale", 1.0, positive=True),
                self.rand([c], f"{name}.bias", 0.2),
                self.rand([c], f"{name}.mean", 0.2),
                self.rand([c], f"{name}.var", 0.5, positive=True, floor=0.5),
            ],
            name=name,
        )

    def gemm(self, x: str, k: int, n: int, trans_b: bool = True, name: str | None = None) -> str:
        """Gemm ``k`` -> ``n`` with bias; weight ``[n, k]`` (``trans_b``) or ``[k, n]``."""
        name = name or self.name("fc")
        w = self.rand([n, k] if trans_b else [k, n], f"{name}.weight", k**-0.5)
        b = self.rand([n], f"{name}.bias", 0.1)
        return self.op("Gemm", [x, w, b], name=name, transB=int(trans_b))

    def matmul(self, x: str, k: int, n: int, bias: bool = True, name: str | None = None) -> str:
        """MatMul by a ``[k, n]`` weight, then Add of a bias (``bias``), as exporters write Linear."""
        name = name or self.name("mm")
        y = self.op("MatMul", [x, self.rand([k, n], f"{name}.weight", k**-0.5)], name=name)
        return self.op("Add", [y, self.rand([n], f"{name}.bias", 0.1)]) if bias else y

    def relu(self, x: str) -> str:
        """Relu."""
        return self.op("Relu", [x])

    def build(self, outputs: Sequence[str] | None = None, name: str = "tiny") -> onnx.ModelProto:
        """The checked model (opset ``self.opset``, IR 8), outputs typed by strict shape inference."""
        outputs = list(outputs or self.outputs)
        graph = helper.make_graph(
            self.nodes,
            name,
            self.inputs,
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        known = {vi.name: vi for vi in inferred.graph.output}
        del model.graph.output[:]
        model.graph.output.extend(known[o] for o in outputs)
        onnx.checker.check_model(model, full_check=True)
        return model
