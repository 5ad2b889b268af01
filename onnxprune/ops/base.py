"""The contract of a rule: one op family, two small methods.

``propagate(node, ctx)`` runs during the analysis (``onnxprune.structured.dependency.Context``): it says
how the channel axis passes through the node, which constant inputs are sliced with it, what
it couples, and it blocks what it does not fully understand. ``rewrite(node, rw)`` runs after
the plan is made (``onnxprune.structured.rewrite.RewriteContext``) and fixes what slicing initializers
does not: attributes and shape constants (``group``, Reshape targets, Split sizes, Slice
bounds). Most rules have nothing to rewrite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from onnxprune.structured.dependency import Chan, Context
    from onnxprune.structured.rewrite import RewriteContext


class Rule:
    """Base class; subclasses are registered with :func:`onnxprune.ops.register`."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        raise NotImplementedError

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        """Nothing to fix by default: the node has no attribute that counts channels."""


def claim_constants(ctx: Context, start: int = 1) -> None:
    """Mark constant inputs from ``start`` on as read and never sliced."""
    for k in range(start, ctx.n_inputs()):
        if ctx.is_const(k):
            ctx.claim(k)


def data_input(ctx: Context) -> Chan | None:
    """The channels of input 0, with every constant input after it claimed (read, never
    sliced): the start of a rule whose only data input is the first."""
    x = ctx.inp(0)
    claim_constants(ctx)
    return x
