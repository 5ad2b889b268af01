"""LSTM, GRU and RNN: hidden units as channels.

Hidden unit j of a recurrent layer owns, in each direction, row j of every gate block of
``W [dirs, G*H, input]`` and ``R [dirs, G*H, H]`` (G = 4 for LSTM's i, o, f, c; 3 for GRU's
z, r, h; 1 for RNN), entry j of each of the 2G blocks of ``B [dirs, 2*G*H]`` (the Wb and Rb
halves), entry j of the 3 peephole blocks ``P [dirs, 3*H]``, column j of ``R`` (what the other
units read of it), and position j of ``initial_h``/``initial_c`` ``[dirs, batch, H]``. The
outputs carry the units on their last axis: ``Y [seq, dirs, batch, H]``, ``Y_h``/``Y_c``
``[dirs, batch, H]``; the Transpose/Reshape/Squeeze after them and the next layer's input
slices follow from their own rules. A layer also *consumes* channels: the columns of W.

Per position ids make the gate blocks free: the unit ids are tiled G times along W's rows,
so one slot owns its rows in every block. Both directions share the same units (a
bidirectional Y is usually reshaped to ``[seq, batch, 2H]``, so a consumer reads both).

Why it is exact whatever the activations: every gate is elementwise per unit, so a kept
unit's state reads a removed unit only through R's columns, which the oracle zeroes (``in``
members) like any consumer slice; nothing needs the removed unit's state to be 0.
``onnxprune.testing.recurrent_oracle`` checks the stronger statement as well (a unit whose
rows and columns are zero stays exactly 0 with the default activations).

Refused with a reason (before any rewrite): ``layout=1`` (batch first, which onnxruntime does
not run, so no oracle can check it), activation names outside the ONNX list, weights or biases
computed at run time, initial states from somewhere that does not follow the units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxprune.graph.view import attr
from onnxprune.ops.base import Rule
from onnxprune.ops.macs import Dims, Shape, UnknownShape, in_shape, text
from onnxprune.ops.spec import OpSpec

if TYPE_CHECKING:
    from onnxprune.graph.view import GraphView
    from onnxprune.structured.dependency import Context
    from onnxprune.structured.rewrite import RewriteContext

#: Gate blocks per unit in W and R.
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Input index of initial_h (and initial_c for LSTM), and of LSTM's peepholes P.
INITIAL = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}
PEEPHOLE = 7
#: The elementwise activations the ONNX recurrent ops define (each acts per unit).
ACTIVATIONS = frozenset(
    {
        "relu", "tanh", "sigmoid", "affine", "leakyrelu", "thresholdedrelu", "scaledtanh",
        "hardsigmoid", "elu", "softsign", "softplus",
    }
)  # fmt: skip


def directions(node: onnx.NodeProto) -> int:
    return 2 if text(attr(node, "direction", "forward")) == "bidirectional" else 1


def refusal(node: onnx.NodeProto, ctx: Context) -> str | None:
    """Why the node's hidden units cannot be followed, or None."""
    op = node.op_type
    if int(attr(node, "layout", 0)) != 0:
        return f"{op} with layout=1 (batch first) is not supported (onnxruntime does not run it)"
    for k, what in ((1, "weight W"), (2, "recurrence weight R")):
        if not ctx.is_const(k):
            return f"{op} {what} '{ctx.input_name(k)}' is computed at run time"
    for k, what in ((3, "bias B"), (PEEPHOLE, "peepholes P")):
        if ctx.input_name(k) and not ctx.is_const(k) and (k == 3 or op == "LSTM"):
            return f"{op} {what} '{ctx.input_name(k)}' is computed at run time"
    unknown = [text(a) for a in attr(node, "activations", []) if text(a).lower() not in ACTIVATIONS]
    if unknown:
        return f"{op} activation {unknown[0]!r} is not one onnxprune knows to act per unit"
    hidden, w = attr(node, "hidden_size", None), ctx.in_shape(1)
    if hidden is None or w is None or len(w) != 3 or w[1] != GATES[op] * int(hidden):
        return f"{op} hidden_size does not match its weight W"
    return None


class RecurrentRule(Rule):
    """Hidden units of LSTM/GRU/RNN (see the module docstring)."""

    def propagate(self, node: onnx.NodeProto, ctx: Context) -> None:
        op = node.op_type
        reason = refusal(node, ctx)
        if reason is not None:
            _refuse(node, ctx, reason)
            return
        gates = GATES[op]
        hidden = int(attr(node, "hidden_size"))
        ids = ctx.fresh(hidden)
        self._input_side(ctx)
        ctx.bind(1, 1, np.tile(ids, gates), "out")
        ctx.bind(2, 1, np.tile(ids, gates), "out")
        ctx.bind(2, 2, ids, "in")
        if ctx.input_name(3):
            ctx.bind(3, 1, np.tile(ids, 2 * gates), "chan")
        if ctx.input_name(4):
            ctx.inp(4)  # sequence_lens: integers, no channels
            if ctx.is_const(4):
                ctx.claim(4)
        for k in INITIAL[op]:
            _initial_state(ctx, k, ids)
        if op == "LSTM" and ctx.input_name(PEEPHOLE):
            ctx.bind(PEEPHOLE, 1, np.tile(ids, 3), "chan")
        ctx.set_out(0, 3, ids, 4)
        for k in range(1, len(node.output)):
            ctx.set_out(k, 2, ids, 3)

    @staticmethod
    def _input_side(ctx: Context) -> None:
        """The layer as a consumer: input feature k is column k of W."""
        x = ctx.inp(0)
        if x is None:
            return
        if x.axis == 2 and x.rank == 3:
            ctx.bind(1, 2, x.ids, "in")
        else:
            ctx.block(x.ids, f"{ctx.node.op_type} reads its input features on axis 2")

    def rewrite(self, node: onnx.NodeProto, rw: RewriteContext) -> None:
        for k, name in enumerate(node.output):
            cut = rw.cut(name) if name else None
            if cut is not None and cut.axis == (3 if k == 0 else 2):
                rw.set_attr(node, "hidden_size", len(cut.kept))
                for i in INITIAL[node.op_type]:
                    name = node.input[i] if i < len(node.input) else ""
                    if name and not rw.view.is_constant(name) and is_zeros(rw.view, name):
                        node.input[i] = ""  # an absent initial state is zeros: the same
                return


#: Ops that keep a tensor all zeros when their data input is (shape plumbing around h0).
_KEEP_ZEROS = ("Slice", "Gather", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Expand", "Cast")


def is_zeros(view: GraphView, name: str) -> bool:
    """Whether computed tensor ``name`` is provably all zeros: a ``ConstantOfShape`` of 0
    (its default), through slicing and reshaping only. Torch writes an LSTM's default
    ``h0``/``c0`` that way, with the hidden size baked into the shape it computes."""
    for _ in range(8):
        found = view.producer.get(name)
        if found is None:
            return False
        node = view.nodes[found[0]]
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "ConstantOfShape":
            value = attr(node, "value", None)
            return value is None or not np.any(onnx.numpy_helper.to_array(value))
        if node.op_type not in _KEEP_ZEROS:
            return False
        name = node.input[0]
    return False


def _refuse(node: onnx.NodeProto, ctx: Context, reason: str) -> None:
    """Keep every channel the node touches: its inputs' and, as a blocked group that names
    the reason, its hidden units (so a report says why the layer was left whole)."""
    ctx.block_inputs(reason)
    for k in range(1, ctx.n_inputs()):
        if ctx.is_const(k):
            ctx.claim(k)
    shape = ctx.out_shape(1) or ctx.out_shape(0)
    size = shape[-1] if shape else attr(node, "hidden_size", None)
    if isinstance(size, int) and size > 0:
        ids = ctx.fresh(size)
        ctx.block(ids, reason)
        for k in range(len(node.output)):
            ctx.set_out(k, 3 if k == 0 else 2, ids, 4 if k == 0 else 3)


def _initial_state(ctx: Context, k: int, ids: np.ndarray) -> None:
    """``initial_h``/``initial_c`` [dirs, batch, H] lose the removed units: a constant is
    sliced, a tracked tensor must carry the same units, anything else blocks them."""
    if not ctx.input_name(k):
        return
    if ctx.is_const(k):
        ctx.bind(k, 2, ids, "stat")
        return
    if is_zeros(ctx.view, ctx.input_name(k)) and ctx.inp(k) is None:
        return  # torch's h0 = zeros(layers * dirs, batch, H): dropped by the rewrite
    other = ctx.inp_or_pseudo(k, 2)
    if other is None or len(other) != len(ids):
        ctx.block(ids, f"the initial state '{ctx.input_name(k)}' has units of unknown layout")
        return
    ctx.unify(ids, other)


def recurrent_macs(node: onnx.NodeProto, shapes: Mapping[str, Shape], d: Dims) -> int:
    """``seq * batch * dirs * G*H * (input + H)``: the gate matrix products of every step
    (elementwise gate arithmetic is not counted, like activations elsewhere)."""
    x, w = in_shape(node, shapes, 0), in_shape(node, shapes, 1)
    if x is None or w is None or len(x) != 3 or len(w) != 3:
        raise UnknownShape
    xn, wn = node.input[0], node.input[1]
    seq, batch = (x[1], x[0]) if int(attr(node, "layout", 0)) else (x[0], x[1])
    rows = d.int(w[1], wn)
    hidden = rows // GATES[node.op_type]
    steps = d.int(seq, xn) * d.int(batch, xn)
    return steps * d.int(w[0], wn) * rows * (d.int(w[2], wn) + hidden)


def recurrent_weight(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]):
    """``W [dirs, G*H, input]`` reduces over its input axis (2): unstructured and N:M
    pruning zero its entries; R stays dense (its dot products feed back every step)."""
    if len(node.input) > 1 and node.input[1] in inits and len(inits[node.input[1]].dims) == 3:
        return node.input[1], 2
    return None


SPECS = [
    OpSpec(op, rule=RecurrentRule(), weight=recurrent_weight, macs=recurrent_macs) for op in GATES
]
