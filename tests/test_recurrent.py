"""LSTM, GRU and RNN hidden units (onnxprune.ops.recurrent): exact in onnxruntime, dead units
stay dead, refusals name their reason before anything is rewritten."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.metrics.macs import count_macs
from onnxprune.ops.recurrent import GATES
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing import Builder, prune_exact
from onnxprune.testing.oracles import random_feeds
from onnxprune.testing.recurrent_oracle import (
    BATCH,
    SEQ,
    assert_dead_units,
    kill_units,
    rnn_classifier,
    unit_outputs,
)

OPS = ("LSTM", "GRU", "RNN")
DIRECTIONS = ("forward", "reverse", "bidirectional")


def _node(model: onnx.ModelProto, name: str = "rnn") -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _hidden(model: onnx.ModelProto, name: str = "rnn") -> int:
    return next(a.i for a in _node(model, name).attribute if a.name == "hidden_size")


def _group(model: onnx.ModelProto, gid: str = "rnn"):
    return next(g for g in analyze(model) if g.id == gid)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_hidden_units_are_exact(op: str, direction: str) -> None:
    model = rnn_classifier(op, direction=direction, use_y=True)
    pruned, _ = prune_exact(model, 0.5)
    assert _hidden(pruned) == 3
    dirs = 2 if direction == "bidirectional" else 1
    w = next(t for t in pruned.graph.initializer if t.name == "rnn.W")
    r = next(t for t in pruned.graph.initializer if t.name == "rnn.R")
    b = next(t for t in pruned.graph.initializer if t.name == "rnn.B")
    g = GATES[op]
    assert list(w.dims) == [dirs, g * 3, 2]  # the projection before it lost 2 of 4 too
    assert list(r.dims) == [dirs, g * 3, 3]
    assert list(b.dims) == [dirs, 2 * g * 3]
    cls = next(t for t in pruned.graph.initializer if t.name == "cls.weight")
    assert list(cls.dims) == [3, dirs * 3]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("direction", ("forward", "bidirectional"))
def test_initial_states_sequence_lengths_and_peepholes(op: str, direction: str) -> None:
    model = rnn_classifier(op, direction=direction, initial="const", seq_lens=True, peepholes=True)
    pruned, _ = prune_exact(model, 0.5)
    init = next(t for t in pruned.graph.initializer if t.name == "rnn.init5")
    assert list(init.dims)[2] == 3
    if op == "LSTM":
        p = next(t for t in pruned.graph.initializer if t.name == "rnn.P")
        assert list(p.dims)[1] == 9


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_dead_units_stay_zero_and_only_they_are_pruned(op: str, direction: str) -> None:
    model = rnn_classifier(op, direction=direction, initial="const", peepholes=True)
    pruned = assert_dead_units(model, fraction=0.5)
    assert _hidden(pruned) == 3


def test_a_live_unit_is_not_zero() -> None:
    """The dead-unit oracle can fail: a unit whose R column is kept reads live units."""
    model = rnn_classifier("LSTM")
    killed = kill_units(model, "rnn", np.array([0]))
    feeds = random_feeds(killed)
    y = unit_outputs(killed, "rnn", feeds)[0]
    assert np.all(y[..., 0] == 0) and np.abs(y[..., 1]).max() > 0


def test_gru_linear_before_reset_and_non_default_activations() -> None:
    prune_exact(rnn_classifier("GRU", direction="bidirectional", linear_before_reset=1), 0.5)
    prune_exact(rnn_classifier("LSTM", activations=["Relu", "Tanh", "Sigmoid"], clip=2.0), 0.5)
    prune_exact(rnn_classifier("RNN", activations=["Relu"]), 0.5)
    prune_exact(rnn_classifier("LSTM", input_forget=1), 0.5)


def test_stacked_bidirectional_lstm() -> None:
    """Y of a bidirectional layer reshaped to [seq, batch, 2H] feeds the next layer: the
    next layer's W columns lose each removed unit in both directions' halves."""
    b = Builder(seed=1)
    x = b.input([SEQ, BATCH, 4])
    h = 5
    y1, _ = b.op(
        "LSTM", [x, b.rand([2, 4 * h, 4], "l1.W"), b.rand([2, 4 * h, h], "l1.R")],
        n_out=2, name="l1", hidden_size=h, direction="bidirectional",
    )  # fmt: skip
    t = b.op("Transpose", [y1], perm=[0, 2, 1, 3])
    flat = b.op("Reshape", [t, b.ints([SEQ, BATCH, 2 * h])])
    w2, r2 = b.rand([2, 4 * h, 2 * h], "l2.W"), b.rand([2, 4 * h, h], "l2.R")
    _, yh = b.op(
        "LSTM", [flat, w2, r2], n_out=2, name="l2", hidden_size=h, direction="bidirectional"
    )
    t2 = b.op("Transpose", [yh], perm=[1, 0, 2])
    out = b.gemm(b.op("Reshape", [t2, b.ints([BATCH, 2 * h])]), 2 * h, 3, name="cls")
    model = b.build([out])
    pruned, _ = prune_exact(model, 0.4)
    w = next(t for t in pruned.graph.initializer if t.name == "l2.W")
    assert list(w.dims) == [2, 4 * 3, 2 * 3]
    assert _hidden(pruned, "l1") == 3 and _hidden(pruned, "l2") == 3


def test_squeezed_unidirectional_output_feeds_a_matmul() -> None:
    b = Builder(seed=2)
    x = b.input([SEQ, BATCH, 4])
    y, _ = b.op(
        "GRU", [x, b.rand([1, 18, 4], "g.W"), b.rand([1, 18, 6], "g.R")], n_out=2,
        name="rnn", hidden_size=6,
    )  # fmt: skip
    sq = b.op("Squeeze", [y, b.ints([1])])
    model = b.build([b.matmul(b.relu(sq), 6, 3, name="head")])
    prune_exact(model, 0.5)


def test_macs_count_the_gate_products_and_shrink() -> None:
    model = rnn_classifier("LSTM", direction="bidirectional", project=False, hidden=6, features=4)
    macs, _ = count_macs(model)
    lstm = SEQ * BATCH * 2 * 4 * 6 * (4 + 6)
    assert macs == lstm + BATCH * 12 * 3
    pruned, _ = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    after, _ = count_macs(pruned)
    assert after == SEQ * BATCH * 2 * 4 * 3 * (4 + 3) + BATCH * 6 * 3


def test_initial_state_from_a_graph_input_blocks() -> None:
    model = rnn_classifier("LSTM", initial="input")
    reason = _group(model).blocked_reason
    assert "rnn.init5" in reason and "graph input" in reason


@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ({"layout": 1}, "layout=1"),
        ({"activations": ["Gelu", "Tanh", "Tanh"]}, "'Gelu'"),
    ],
)
def test_refusals_name_the_reason_and_rewrite_nothing(attrs: dict, words: str) -> None:
    model = rnn_classifier("LSTM", project=True, **attrs) if "layout" not in attrs else None
    if model is None:  # layout=1 reorders every axis: build it by hand
        b = Builder(seed=3)
        x = b.input([BATCH, SEQ, 4])
        _, yh = b.op(
            "LSTM", [b.matmul(x, 4, 4, name="proj"), b.rand([1, 24, 4], "rnn.W"),
                     b.rand([1, 24, 6], "rnn.R")],
            n_out=2, name="rnn", hidden_size=6, layout=1,
        )  # fmt: skip
        flat = b.op("Reshape", [yh, b.ints([BATCH, 6])])
        model = b.build([b.gemm(flat, 6, 3, name="cls")])
    rnn = _group(model)
    assert words in rnn.blocked_reason
    proj = _group(model, "proj")
    assert words in proj.blocked_reason  # its consumer is refused: the projection stays whole
    before = model.SerializeToString()
    _, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    assert result.plan.empty
    assert model.SerializeToString() == before


def test_computed_weight_blocks() -> None:
    b = Builder(seed=4)
    x = b.input([SEQ, BATCH, 4])
    w = b.op("Identity", [b.op("Relu", [b.rand([1, 24, 4], "W0")])])
    _, yh = b.op("LSTM", [x, w, b.rand([1, 24, 6], "rnn.R")], n_out=2, name="rnn", hidden_size=6)
    model = b.build([b.gemm(b.op("Reshape", [yh, b.ints([BATCH, 6])]), 6, 3, name="cls")])
    assert "computed at run time" in _group(model).blocked_reason


def test_units_reaching_a_graph_output_block() -> None:
    b = Builder(seed=5)
    x = b.input([SEQ, BATCH, 4])
    _, yh = b.op(
        "RNN", [x, b.rand([1, 6, 4], "rnn.W"), b.rand([1, 6, 6], "rnn.R")], n_out=2,
        name="rnn", hidden_size=6,
    )  # fmt: skip
    model = b.build([yh])
    assert "graph output" in _group(model).blocked_reason


def test_torch_zero_initial_state_is_dropped_when_units_go() -> None:
    """torch writes ``h0 = zeros(dirs, batch, H)`` as ConstantOfShape of a computed shape
    with H baked in, then a Slice per layer: an absent initial state is the same zeros."""
    b = Builder(seed=6)
    x = b.input([SEQ, "batch", 4])
    batch = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [x]), b.ints([1])]), b.ints([0])])
    shape = b.op(
        "Concat", [b.ints([2]), b.op("Squeeze", [batch, b.ints([0])]), b.ints([6])], axis=0
    )
    zeros = b.op("ConstantOfShape", [shape])
    h0 = b.op("Slice", [zeros, b.ints([0]), b.ints([1]), b.ints([0])])
    c0 = b.op("Slice", [zeros, b.ints([1]), b.ints([2]), b.ints([0])])
    w, r = b.rand([1, 24, 4], "rnn.W"), b.rand([1, 24, 6], "rnn.R")
    _, yh = b.op("LSTM", [x, w, r, "", "", h0, c0], n_out=2, name="rnn", hidden_size=6)
    out = b.gemm(b.op("Squeeze", [yh, b.ints([0])]), 6, 3, name="cls")
    model = b.build([out])
    pruned, _ = prune_exact(model, 0.5)
    lstm = _node(pruned)
    assert _hidden(pruned) == 3 and list(lstm.input[5:7]) == ["", ""]
    assert not any(n.op_type == "ConstantOfShape" for n in pruned.graph.node)


def test_a_non_zero_computed_initial_state_blocks() -> None:
    b = Builder(seed=7)
    x = b.input([SEQ, BATCH, 4])
    h0 = b.op("Relu", [b.input([1, BATCH, 6], "h")])
    w, r = b.rand([1, 18, 4], "rnn.W"), b.rand([1, 18, 6], "rnn.R")
    _, yh = b.op("GRU", [x, w, r, "", "", h0], n_out=2, name="rnn", hidden_size=6)
    model = b.build([b.gemm(b.op("Squeeze", [yh, b.ints([0])]), 6, 3, name="cls")])
    assert "relu" in _group(model).blocked_reason.lower()


def test_unstructured_zeroes_the_input_weights_only() -> None:
    from onnxprune.unstructured.magnitude import find_prunable_weights

    model = rnn_classifier("LSTM", project=False)
    names = {w.name: w.reduction_axis for w in find_prunable_weights(model).weights}
    assert names.get("rnn.W") == 2 and "rnn.R" not in names


def test_activations_without_a_zero_fixed_point_are_still_exact() -> None:
    """Affine with beta 0.5: a unit with zero weights does not stay 0, yet removing it is
    exact, because only removed slices (R's columns, the classifier's rows) read it."""
    model = rnn_classifier(
        "RNN", activations=["Affine"], activation_alpha=[0.5], activation_beta=[0.5]
    )
    prune_exact(model, 0.5)


def test_encoder_states_initialize_the_decoder() -> None:
    """Y_h and Y_c of one LSTM are the initial states of the next: one group of units."""
    b = Builder(seed=8)
    x = b.input([SEQ, BATCH, 4])
    h = 6
    _, yh, yc = b.op(
        "LSTM", [x, b.rand([1, 4 * h, 4], "enc.W"), b.rand([1, 4 * h, h], "enc.R")],
        n_out=3, name="enc", hidden_size=h,
    )  # fmt: skip
    ins = [x, b.rand([1, 4 * h, 4], "dec.W"), b.rand([1, 4 * h, h], "dec.R"), "", "", yh, yc]
    _, dh = b.op("LSTM", ins, n_out=2, name="dec", hidden_size=h)
    model = b.build([b.gemm(b.op("Squeeze", [dh, b.ints([0])]), h, 3, name="cls")])
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    assert [g.id for g in groups] == ["enc"]
    pruned, _ = prune_exact(model, 0.5)
    assert _hidden(pruned, "enc") == _hidden(pruned, "dec") == 3
