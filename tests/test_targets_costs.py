"""The analytic cost model against the metrics of the model really pruned."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.graph.view import GraphView
from onnxprune.metrics.macs import count_macs
from onnxprune.metrics.params import count_params
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.importance import score_groups
from onnxprune.targets.costs import CostModel, curve_keeps
from onnxprune.testing.graphs import (
    Builder,
    concat_block,
    decoder_block,
    depthwise_block,
    dynamic_batch,
    encoder_block,
    flatten_gemm,
    grouped_block,
    residual_block,
    se_block,
    small_cnn,
    split_block,
    unet_block,
)

BUILDS = [residual_block, small_cnn, concat_block, split_block, depthwise_block, se_block,
          grouped_block, flatten_gemm, unet_block, encoder_block, decoder_block]  # fmt: skip


def _model(build):
    model = build()
    view = GraphView(model)
    groups = [g for g in analyze(model, view=view) if g.blocked_reason is None]
    scores = score_groups(groups, view, "l1", None)
    return model, groups, scores, CostModel(model, groups, scores, view=view)


def _really(model, keep, shapes=None):
    pruned, _ = prune_structured(model, StructuredOptions(ratio=0.0, round_to=1, keep=keep))
    return count_macs(pruned, shapes)[0], count_params(pruned)[0]


@pytest.mark.parametrize("build", BUILDS, ids=lambda b: b.__name__)
def test_joint_costs_equal_the_pruned_models_metrics(build):
    model, groups, _, cm = _model(build)
    assert groups
    assert cm.total("macs") == count_macs(model)[0]
    assert cm.total("params") == count_params(model)[0]
    rng = np.random.default_rng(0)
    for _ in range(3):
        keep = {g.id: int(rng.integers(1, g.slots + 1)) for g in groups}
        assert (cm.total("macs", keep), cm.total("params", keep)) == _really(model, keep)


def test_costs_at_fixed_input_sizes_match_count_macs():
    model = dynamic_batch(residual_block())
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    shapes = {"x": (4, 3, 8, 8)}
    cm = CostModel(model, groups, input_shapes=shapes)
    keep = {g.id: max(1, g.slots // 3) for g in groups}
    assert cm.total("macs") == count_macs(model, shapes)[0]
    assert cm.total("macs", keep) == _really(model, keep, shapes)[0]


def test_one_group_alone_is_linear_in_its_kept_count():
    """A Conv between two groups costs kept(A) * kept(B): alone, each group is linear."""
    model, groups, _, cm = _model(residual_block)
    for g in groups:
        curve = cm.curve("macs", g.id)
        assert curve.keep == list(range(1, g.slots + 1))
        steps = np.diff(curve.value)
        assert np.allclose(steps, steps[0]) and steps[0] > 0
        assert curve.value[-1] == cm.total("macs")
        for k in (1, g.slots // 2):
            assert curve.at(k) == _really(model, {g.id: k})[0]


def test_groups_interact_as_the_product_of_removed_counts():
    model, _, _, cm = _model(small_cnn)
    full = cm.total("macs")
    a = full - cm.total("macs", {"c1": 8})
    b = full - cm.total("macs", {"c2": 8})
    both = full - cm.total("macs", {"c1": 8, "c2": 8})
    # c2 (3x3 over 8x8, batch 1) is 16 x 16 x 9 x 64 MACs: the shared term is 8 x 8 x 9 x 64
    assert a + b - both == 8 * 8 * 9 * 64
    assert cm.total("macs", {"c1": 8, "c2": 8}) == _really(model, {"c1": 8, "c2": 8})[0]


def test_a_residual_around_one_conv_is_quadratic():
    """y = x + conv(x): the conv reads and writes the same group."""
    b = Builder(0)
    x = b.input([1, 3, 6, 6])
    h = b.relu(b.conv(x, 3, 8, name="stem"))
    y = b.op("Add", [h, b.conv(h, 8, 8, k=1, name="inner")])
    model = b.build([b.conv(y, 8, 2, k=1, name="head")])
    groups = [g for g in analyze(model) if g.blocked_reason is None]
    cm = CostModel(model, groups)
    (g,) = groups
    values = cm.curve("macs", g.id).value
    assert not np.allclose(np.diff(values), np.diff(values)[0])  # not linear
    assert np.allclose(np.diff(values, 2), np.diff(values, 2)[0])  # quadratic
    assert cm.total("macs", {g.id: 3}) == _really(model, {g.id: 3})[0]


def test_curves_of_big_groups_are_sampled():
    assert curve_keeps(10) == list(range(1, 11))
    ks = curve_keeps(1000)
    assert ks[0] == 1 and ks[-1] == 1000 and len(ks) == 64


def test_slot_cost_is_one_slots_macs():
    _, _, _, cm = _model(small_cnn)
    assert cm.slot_cost("macs", "c1") == cm.total("macs") - cm.total("macs", {"c1": 15})


@pytest.mark.parametrize("build", [residual_block, concat_block, split_block, encoder_block])
def test_change_is_the_difference_of_totals(build):
    _, groups, _, cm = _model(build)
    rng = np.random.default_rng(1)
    for _ in range(5):
        keep = {g.id: int(rng.integers(1, g.slots + 1)) for g in groups}
        g = groups[int(rng.integers(len(groups)))]
        k = int(rng.integers(1, g.slots + 1))
        for metric in ("macs", "params"):
            want = cm.total(metric, {**keep, g.id: k}) - cm.total(metric, keep)
            assert cm.change(metric, keep, g.id, k) == want


@pytest.mark.parametrize("build", BUILDS)
def test_attributed_shares_add_up_to_at_most_the_total(build):
    """analyze's MACs/params columns come from the same cost model as the solver's prices:
    every group's share is non-negative and the shares sum to at most the exact total."""
    _, groups, _, costs = _model(build)
    for metric in ("macs", "params"):
        shares = costs.attributed(metric)
        assert set(shares) == {g.id for g in groups}
        assert all(v >= 0 for v in shares.values())
        assert sum(shares.values()) <= costs.total(metric) + 1e-6


def test_a_conv_between_two_groups_is_split_evenly_and_a_blocked_consumer_goes_to_its_reader():
    *_, costs = _model(small_cnn)
    macs = costs.attributed("macs")
    c1, c2 = 16 * 3 * 9 * 64, 16 * 16 * 9 * 64  # Conv 3->16 and 16->16, 3x3, 8x8 output
    assert macs["c1"] == pytest.approx(c1 + c2 / 2)
    assert macs["c2"] == pytest.approx(c2 / 2 + 16 * 10)  # fc (blocked: reaches the output)
    with pytest.raises(ValueError):
        costs.attributed("ms")


def _macs_as_ms(cm: CostModel, model) -> dict[str, float]:
    """Node 'times' equal to each MAC-priced node's MACs: the time metric must then be the
    MAC count of the model really pruned (an oracle for its node scaling)."""
    from onnxprune.graph.view import node_label

    return {node_label(n, i): float(cm._base_macs[i]) for i, n in enumerate(model.graph.node)
            if cm._base_macs.get(i)}  # fmt: skip


@pytest.mark.parametrize("build", BUILDS, ids=lambda b: b.__name__)
def test_time_priced_at_one_ms_per_mac_is_the_pruned_models_macs(build):
    model, groups, scores, cm = _model(build)
    timed = CostModel(model, groups, scores, view=GraphView(model),
                      node_ms=_macs_as_ms(cm, model), overhead_ms=7.0)  # fmt: skip
    assert timed.total("time") == pytest.approx(count_macs(model)[0] + 7.0)
    rng = np.random.default_rng(2)
    for _ in range(3):
        keep = {g.id: int(rng.integers(1, g.slots + 1)) for g in groups}
        assert timed.total("time", keep) == pytest.approx(_really(model, keep)[0] + 7.0)
        g = groups[int(rng.integers(len(groups)))]
        k = int(rng.integers(1, g.slots + 1))
        want = timed.total("time", {**keep, g.id: k}) - timed.total("time", keep)
        assert timed.change("time", keep, g.id, k) == pytest.approx(want)


def test_an_op_without_macs_scales_with_its_output_and_unknown_nodes_stay():
    """Conv(3->16) -> Relu -> Conv(16->16): the Relu's time scales with the channels kept;
    a node name the model does not have is ignored; the overhead never changes."""
    model, groups, scores, cm = _model(small_cnn)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    from onnxprune.graph.view import node_label

    label = node_label(relu, list(model.graph.node).index(relu))
    gid = next(g.id for g in groups if relu.input[0] in {m.target for m in g.members})
    slots = next(g.slots for g in groups if g.id == gid)
    timed = CostModel(model, groups, scores, view=GraphView(model),
                      node_ms={label: 2.0, "no such node": 5.0}, overhead_ms=1.0)  # fmt: skip
    assert timed.timed and timed.total("time") == pytest.approx(3.0)
    assert timed.total("time", {gid: slots // 2}) == pytest.approx(1.0 + 2.0 * (slots // 2) / slots)
    with pytest.raises(ValueError, match="node_ms"):
        cm.total("time")
