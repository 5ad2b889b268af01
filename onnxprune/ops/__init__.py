"""The op registry: everything onnxprune knows about each op type, one :class:`OpSpec` each.

A spec holds an op's channel rule (``propagate``/``rewrite``, see :mod:`onnxprune.ops.base`),
which input is its weight and the axis that weight reduces over, its MAC formula and its
``y = W x + b`` view for recovery. The structured engine, unstructured pruning, metrics,
importance, calibration and recovery all read the registry; none of them names op types.
Specs are keyed by (domain, op type), ``""`` and ``ai.onnx`` being the same domain, with an
optional opset range (``since``/``until``) matched against the model's opset for that domain.
The built-in specs are listed in one table, :func:`onnxprune.ops.registry.default_specs`.
An op type with no rule blocks every channel that reaches it.

Adding an op
------------
One spec, one tiny graph, one oracle test:

1. **The spec**, in one file (a new module here, or your own code)::

       from onnxprune import ops

       class ScaleRule(ops.Rule):            # channel c of the output reads channel c only
           def propagate(self, node, ctx):
               x = ctx.inp(0)
               if x is not None:
                   ctx.set_out(0, x.axis, x.ids)

       ops.register(ops.OpSpec("Atan", rule=ScaleRule()))

   Give it ``weight=`` (``(node, inits) -> (input name, reduction axis) | None``) if it has a
   weight unstructured pruning may zero, ``macs=`` (``(node, shapes, dims) -> int``, see
   :mod:`onnxprune.ops.macs`) if it should count in the MACs, ``linear=`` (a
   :class:`LinearView`) if recovery may refit it. A built-in op goes in its family module
   and in the ``default_specs()`` table; ``override=True`` replaces a built-in spec.
2. **A tiny graph** that uses the op between two prunable layers
   (:class:`onnxprune.testing.graphs.Builder`).
3. **One oracle test**: :func:`onnxprune.testing.oracles.prune_exact` prunes it and checks
   that the pruned model computes exactly what the original does with the removed channels
   zeroed. ``with ops.registered(spec):`` registers for one block only, so tests do not leak
   (``tests/test_ops_custom.py`` is the worked example).
"""

from __future__ import annotations

from onnxprune.ops.base import Rule
from onnxprune.ops.registry import (
    Registry,
    active,
    default_registry,
    default_specs,
    opsets_of,
    register,
    registered,
    rule_for,
    spec_for,
    supported_ops,
    using,
)
from onnxprune.ops.spec import LinearView, OpSpec

__all__ = [
    "LinearView",
    "OpSpec",
    "Registry",
    "Rule",
    "active",
    "default_registry",
    "default_specs",
    "opsets_of",
    "register",
    "registered",
    "rule_for",
    "spec_for",
    "supported_ops",
    "using",
]
