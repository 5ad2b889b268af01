"""If and Loop (onnxprune.ops.control): channels that a body reads by name from the outer
graph are kept whole, with a reason naming the node, before anything is rewritten."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest

from onnxprune.ops.control import outer_reads
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.subgraphs import hoist_branch_weights
from onnxprune.testing import prune_exact
from onnxprune.testing.control_graphs import if_conv_model, loop_model, loop_rnn_model


def _group(model: onnx.ModelProto, gid: str):
    return next(g for g in analyze(model) if g.id == gid)


def test_an_if_with_its_own_weights_blocks_its_producer_up_front() -> None:
    """Branch initializers are not followed: what the branches read stays whole."""
    model = if_conv_model(outer_weights=False)
    reason = _group(model, "c1").blocked_reason
    assert "If 'gate'" in reason and "'x1'" in reason and "initializers of their own" in reason
    before = model.SerializeToString()
    _, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    assert result.plan.empty
    assert model.SerializeToString() == before


def test_an_if_whose_branches_are_understood_is_pruned_through_both() -> None:
    """Both branches run a Conv on the outer ``x1`` with main-graph weights: c1's channels
    leave both branch weights' inputs, and channel c of the If's result is filter c of
    either branch, so both branch Convs lose the same filters and c2 its inputs."""
    model = if_conv_model(outer_weights=True)
    groups = {g.id: g for g in analyze(model)}
    assert groups["c1"].blocked_reason is None and groups["then_conv"].blocked_reason is None
    pruned, plan = prune_exact(model, 0.5)
    cuts = {(c.name, c.axis): len(c.kept) for c in plan.params}
    assert cuts[("then.w", 0)] == cuts[("else.w", 0)] == 4
    assert cuts[("then.w", 1)] == cuts[("else.w", 1)] == 4
    if_node = next(n for n in pruned.graph.node if n.op_type == "If")
    bodies = [a.g for a in if_node.attribute]
    assert [n.op_type for n in bodies[0].node] == ["Conv", "Relu"]
    assert [n.op_type for n in pruned.graph.node] == ["Conv", "Relu", "If", "Conv"]
    dims = [d.dim_value for d in bodies[0].output[0].type.tensor_type.shape.dim]
    assert dims == [1, 4, 8, 8]  # the branch output's declared type follows the cut
    again = {g.id: g for g in analyze(pruned)}  # and the pruned If is understood again
    assert again["then_conv"].blocked_reason is None and again["then_conv"].slots == 4


def test_an_if_with_an_unknown_op_in_a_branch_blocks() -> None:
    model = if_conv_model(outer_weights=True)
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    then = next(a.g for a in if_node.attribute if a.name == "then_branch")
    then.node[1].op_type = "Trilu"  # no rule: the branch is not understood, the If guarded
    reason = _group(model, "c1").blocked_reason
    assert "If 'gate'" in reason and "'x1'" in reason and "without a rule" in reason


def test_a_weight_also_read_inside_a_branch_blocks() -> None:
    """The then-branch adds ``c1.b`` (c1's bias) to its result: c1 loses nothing, whichever
    of the two readers is visited first."""
    model = if_conv_model(shared=True)
    reasons = " ".join(r for _, r in _group(model, "c1").reasons)
    assert "'c1.b'" in reasons and "If 'gate'" in reasons


def test_what_the_body_does_not_read_is_still_pruned_exactly() -> None:
    model = if_conv_model(front=True)
    pruned, plan = prune_exact(model, 0.5)
    assert {g.id for g in plan.groups if len(g.kept) < g.slots} == {"c0"}
    if_node = next(n for n in pruned.graph.node if n.op_type == "If")
    original = next(n for n in model.graph.node if n.op_type == "If")
    assert if_node.SerializeToString() == original.SerializeToString()


def test_a_loop_body_with_an_if_inside_blocks() -> None:
    model = loop_model(nested_if=True)
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    assert "x1" in outer_reads(loop) and "body.w" in outer_reads(loop)
    assert "s_in" not in outer_reads(loop)  # the body's own input
    reason = _group(model, "c1").blocked_reason
    assert "Loop 'loop'" in reason and "'x1'" in reason and "subgraphs of their own" in reason
    _, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    assert result.plan.empty


def test_a_loop_body_convolving_an_outer_activation_is_pruned_exactly() -> None:
    """The body adds Conv(x1) to its carried [1, 8, 8, 8] state: c1's channels leave the
    body Conv's inputs; the state's channels, the body Conv's filters and the initial state
    are one group, cut together."""
    pruned, plan = prune_exact(loop_model(), 0.5)
    cuts = {(c.name, c.axis): len(c.kept) for c in plan.params}
    assert cuts[("body.w", 1)] == 4 and cuts[("body.w", 0)] == 4 and cuts[("state0", 1)] == 4
    assert [n.op_type for n in pruned.graph.node] == ["Conv", "Relu", "Loop", "Conv"]


@pytest.mark.parametrize("scan", [False, True])
def test_a_recurrent_cell_written_as_a_loop_is_pruned_exactly(scan: bool) -> None:
    """h = tanh(x_t Wx + h Wh + b) over 5 steps: the hidden units lose Wx's and Wh's
    columns, Wh's rows, b, h0 and the classifier's (and the per-step MatMul's) rows."""
    model = loop_rnn_model(scan=scan)
    group = _group(model, "cell_loop: h_in (carried)")
    assert group.blocked_reason is None and group.slots == 8
    pruned, plan = prune_exact(model, 0.5)
    cuts = {(c.name, c.axis): len(c.kept) for c in plan.params}
    assert cuts[("cell.wh", 0)] == cuts[("cell.wh", 1)] == cuts[("h0", 1)] == 4
    loop = next(n for n in pruned.graph.node if n.op_type == "Loop")
    body = next(a.g for a in loop.attribute if a.name == "body")
    assert [d.dim_value for d in body.input[2].type.tensor_type.shape.dim] == [2, 4]


def test_the_order_of_visits_does_not_matter() -> None:
    """The If listed before the Conv that produces what it reads (onnxruntime accepts it,
    the sort at load fixes it; the analysis must block either way)."""
    model = if_conv_model()
    nodes = list(model.graph.node)
    if_node = next(n for n in nodes if n.op_type == "If")
    nodes.remove(if_node)
    nodes.insert(0, if_node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert "If 'gate'" in _group(model, "c1").blocked_reason


def test_cli_refuses_up_front_input_untouched_no_output(tmp_path: Path, capsys, run_cli) -> None:
    """Before the guard, a model whose body read an outer activation was pruned, then
    rejected by onnxruntime ("Input channels C is not equal to kernel channels") after the
    rewrite. A body that is not followed (a Loop holding an If) now refuses first."""
    path = tmp_path / "loop_if.onnx"
    onnx.save(loop_model(nested_if=True), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "out.onnx"
    code, _, err = run_cli([path, "--structured", "0.5", "--round-to", "1", "-o", out], capsys)
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert lines[-1].startswith("error: ") and "Loop 'loop' reads 'x1'" in lines[-1]
    assert "Traceback" not in err
    assert not out.exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_cli_moves_branch_weights_out_at_load_and_prunes_through_both(tmp_path, capsys, run_cli):
    """An If whose branches hold their own weights (as torch exports them) is normalized at
    load and pruned through both branches; the report says what moved."""
    model = if_conv_model()
    path, out = tmp_path / "speech_if.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    code, text, err = run_cli([path, "--structured", "0.5", "--round-to", "1", "-o", out], capsys)
    assert code == 0, err
    assert "2 initializers of If branches moved to the main graph" in text
    pruned = onnx.load(out)
    assert {t.name: list(t.dims) for t in pruned.graph.initializer}["then.w"][0] == 4


def test_branch_weights_hoisted_to_the_main_graph_are_pruned_through_both_branches() -> None:
    model = if_conv_model(outer_weights=False)
    hoisted, moved = hoist_branch_weights(model)
    assert moved == 2 and {"then.w", "else.w"} <= {t.name for t in hoisted.graph.initializer}
    _, plan = prune_exact(hoisted, 0.5)  # exact against the hoisted = original model
    cuts = {(c.name, c.axis): len(c.kept) for c in plan.params}
    assert cuts[("then.w", 0)] == cuts[("else.w", 0)] == 4


def test_a_branch_weight_whose_name_is_taken_elsewhere_stays() -> None:
    model = if_conv_model(outer_weights=False)
    if_node = next(n for n in model.graph.node if n.op_type == "If")
    other = next(a.g for a in if_node.attribute if a.name == "else_branch")
    other.initializer[0].name = "c1"  # shadows the main graph's tensor 'c1' inside the branch
    other.node[0].input[1] = "c1"
    _, moved = hoist_branch_weights(model)
    assert moved == 1


@pytest.mark.parametrize("criterion", ["activation", "wanda"])
def test_data_aware_criteria_measure_main_graph_tensors_only(criterion: str) -> None:
    """Tensors inside the Loop body cannot be tapped: the criteria read the main graph's."""
    from onnxprune.calibration.stats import channel_stats
    from onnxprune.testing.oracles import random_feeds

    model = loop_rnn_model()
    feeds = random_feeds(model)
    asked: list[str] = []

    def stats_for(targets: dict[str, int], view) -> dict:
        asked.extend(targets)
        return channel_stats(model, feeds, targets, view=view)

    options = StructuredOptions(ratio=0.5, round_to=1, criterion=criterion)
    _, result = prune_structured(model, options, stats_for=stats_for)
    main = {o for n in model.graph.node for o in n.output} | {"x"}
    assert asked and set(asked) <= main
    assert not result.plan.empty


def test_a_tapped_pass_keeps_what_a_body_reads_by_name() -> None:
    """Calibration's reduced pass (only the nodes a tap needs) must keep the producer of
    the outer tensor a Loop body reads, or onnxruntime refuses the model."""
    from onnxprune.calibration.stats import tapped_model
    from onnxprune.testing.oracles import random_feeds, run

    model = loop_rnn_model()
    tapped = tapped_model(model, ["h_last"], only=True)
    assert "proj" in {n.name for n in tapped.graph.node}
    (h_last,) = run(tapped, random_feeds(model))
    assert h_last.shape == (2, 8)
