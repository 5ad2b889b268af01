"""Tiny recurrent graphs and the oracle of a dead hidden unit.

The exactness oracle (``onnxprune.testing.oracles.zeroed``) already covers LSTM/GRU/RNN: it
zeroes what *reads* a removed unit (R's columns, the next layer's input slices), so a kept
unit never sees it, whatever its own state. This module adds the stronger statement that a
removed unit really is a dead one when its weights say so: with its rows of W, R and B (and
peepholes) zero, its columns of R zero and its initial state 0, its output stays exactly 0
for the default activations (LSTM: ``c = 0.5 * c_prev + 0.5 * tanh(0) = 0``, ``h = 0.5 *
tanh(0) = 0``; GRU: ``h~ = tanh(0) = 0`` so ``h = z * h_prev = 0``; RNN: ``tanh(0) = 0``).
``assert_dead_units`` checks that in onnxruntime, and that pruning those units changes no
output (the planted-dead oracle, for recurrent layers).

``rnn_classifier`` builds the graphs the tests use: an optional Conv-free front-end
projection, one LSTM/GRU/RNN with the given direction, initial states and sequence lengths,
then a Gemm classifier on ``Y_h`` (and optionally a MatMul on ``Y``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnxprune.graph.view import GraphView
from onnxprune.ops.recurrent import GATES, INITIAL, PEEPHOLE
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.graphs import Builder
from onnxprune.testing.oracles import assert_close, random_feeds, run, set_constant

SEQ, BATCH = 5, 2


def rnn_classifier(
    op: str = "LSTM",
    *,
    direction: str = "forward",
    hidden: int = 6,
    features: int = 4,
    classes: int = 3,
    initial: str | None = None,
    seq_lens: bool = False,
    peepholes: bool = False,
    project: bool = True,
    use_y: bool = False,
    seed: int = 0,
    **attrs: Any,
) -> onnx.ModelProto:
    """``x [seq, batch, features]`` -> (MatMul projection) -> ``op`` -> ``Y_h`` -> Transpose
    -> Reshape ``[batch, dirs*hidden]`` -> Gemm. ``initial``: None, ``"const"`` (initializers)
    or ``"input"`` (graph inputs, which block). ``use_y`` adds a second output: ``Y`` through
    Transpose/Reshape ``[seq, batch, dirs*hidden]`` and a MatMul."""
    b = Builder(seed=seed)
    x = b.input([SEQ, BATCH, features])
    inp = b.matmul(x, features, features, name="proj") if project else x
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    ins = [
        inp,
        b.rand([nd, g * hidden, features], "rnn.W"),
        b.rand([nd, g * hidden, hidden], "rnn.R"),
    ]
    ins.append(b.rand([nd, 2 * g * hidden], "rnn.B", 0.3))
    ins.append(b.const(np.array([SEQ, SEQ - 2], np.int32), "seq_lens") if seq_lens else "")
    for k in INITIAL[op]:
        name = f"rnn.init{k}"
        shape = [nd, BATCH, hidden]
        ins.append(
            b.rand(shape, name) if initial == "const" else b.input(shape, name) if initial else ""
        )
    if peepholes and op == "LSTM":
        ins.append(b.rand([nd, 3 * hidden], "rnn.P"))
    while ins and ins[-1] == "" and len(ins) > 3:
        ins.pop()
    outs = b.op(op, ins, n_out=2, name="rnn", hidden_size=hidden, direction=direction, **attrs)
    y, y_h = outs
    t = b.op("Transpose", [y_h], perm=[1, 0, 2])
    flat = b.op("Reshape", [t, b.ints([BATCH, nd * hidden])])
    outputs = [b.gemm(flat, nd * hidden, classes, name="cls")]
    if use_y:
        ty = b.op("Transpose", [y], perm=[0, 2, 1, 3])
        fy = b.op("Reshape", [ty, b.ints([SEQ, BATCH, nd * hidden])])
        outputs.append(b.matmul(fy, nd * hidden, classes, name="frame"))
    return b.build(outputs)


def _unit_rows(n_units: int, gates: int, units: np.ndarray) -> np.ndarray:
    return (np.arange(gates)[:, None] * n_units + units[None, :]).ravel()


def kill_units(model: onnx.ModelProto, node_name: str, units: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` where ``units`` of recurrent node ``node_name`` are dead: their
    rows of W, R, B and P, their columns of R and their initial states are zero. The next
    layer's weights are left as they are: a dead unit must output exactly 0 by itself."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(model, shapes=False)
    node = next(n for n in model.graph.node if n.name == node_name)
    g, hidden = GATES[node.op_type], next(a.i for a in node.attribute if a.name == "hidden_size")
    cuts = [(1, 1, g), (2, 1, g), (2, 2, 1), (3, 1, 2 * g), (PEEPHOLE, 1, 3)]
    cuts += [(k, 2, 1) for k in INITIAL[node.op_type]]
    values: dict[str, np.ndarray] = {}
    for k, axis, blocks in cuts:
        name = node.input[k] if k < len(node.input) else ""
        if not name or view.constant(name) is None:
            continue
        arr = values.setdefault(name, view.constant(name).copy())
        index = [slice(None)] * arr.ndim
        index[axis] = _unit_rows(hidden, blocks, units)
        arr[tuple(index)] = 0
    for name, arr in values.items():
        set_constant(out, name, arr)
    return out


def unit_outputs(model: onnx.ModelProto, node_name: str, feeds: dict) -> list[np.ndarray]:
    """The recurrent node's own outputs (Y, Y_h, ...), exposed as graph outputs and run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    node = next(n for n in probe.graph.node if n.name == node_name)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o)
    probe = onnx.shape_inference.infer_shapes(probe)
    return run(probe, feeds)


def assert_dead_units(
    model: onnx.ModelProto, node_name: str = "rnn", fraction: float = 0.5, seed: int = 0
) -> onnx.ModelProto:
    """Kill ``fraction`` of the node's units: their outputs must be exactly 0 on random
    inputs; pruning as many units as were killed (L2, exact counts, every other group kept
    whole) must remove only dead ones and change no output of the killed model. Returns the
    pruned model."""
    node = next(n for n in model.graph.node if n.name == node_name)
    hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
    rng = np.random.default_rng(seed)
    dead = np.sort(rng.choice(hidden, size=max(1, int(fraction * hidden)), replace=False))
    killed = kill_units(model, node_name, dead)
    feeds = random_feeds(killed, seed)
    for k, out in enumerate(unit_outputs(killed, node_name, feeds)):
        got = float(np.max(np.abs(out[..., dead])))
        if got != 0.0:
            raise AssertionError(f"output {k} of {node_name}: dead units reach {got:.3g}, not 0")
    keep = {g.id: g.slots for g in analyze(killed) if g.blocked_reason is None}
    keep[node_name] = hidden - len(dead)
    pruned, result = prune_structured(
        killed, StructuredOptions(ratio=0.0, criterion="l2", round_to=1, keep=keep)
    )
    group = next((p for p in result.plan.groups if p.id == node_name), None)
    if group is None or len(group.kept) == group.slots:
        raise AssertionError(f"{node_name}: no unit was pruned; blocked: {result.blocked}")
    removed = np.setdiff1d(np.arange(group.slots), group.kept)
    extra = np.setdiff1d(removed, dead)
    if len(extra):
        raise AssertionError(f"{node_name}: live units {extra.tolist()} were pruned")
    assert_close(run(killed, feeds), run(pruned, feeds))
    return pruned
