"""The registry of per-op rules: the one place to touch when adding an op type.

Each module in this package holds one op family and registers its rule for the op types it
understands. An op type with no rule blocks every channel that reaches it.
"""

from __future__ import annotations

import onnx

from onnxprune.ops.base import Rule

_RULES: dict[str, Rule] = {}


def register(*op_types: str):
    """Class decorator: one instance of the rule serves every listed op type."""

    def deco(cls: type[Rule]) -> type[Rule]:
        inst = cls()
        for op in op_types:
            if op in _RULES:
                raise ValueError(f"two rules for {op}")
            _RULES[op] = inst
        return cls

    return deco


def rule_for(node: onnx.NodeProto) -> Rule | None:
    """The rule for a node, or None; ops of other domains register as ``domain.op``
    (``com.microsoft.Attention``)."""
    if node.domain not in ("", "ai.onnx"):
        return _RULES.get(f"{node.domain}.{node.op_type}")
    return _RULES.get(node.op_type)


def supported_ops() -> list[str]:
    return sorted(_RULES)


# Importing the families fills the registry.
from onnxprune.ops import (  # noqa: E402
    attention,
    conv,
    elementwise,
    layout,
    linear,
    norm,
    pool,
    routing,
    shape,
)

__all__ = [
    "Rule",
    "attention",
    "conv",
    "elementwise",
    "layout",
    "linear",
    "norm",
    "pool",
    "register",
    "routing",
    "rule_for",
    "shape",
    "supported_ops",
]
