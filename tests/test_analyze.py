"""The sensitivity analysis (issue 11, part 1) on tiny graphs: masked losses, attributed
costs, the profiler's trace read back onto the graph, and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.view import GraphView
from onnxprune.runtime.feeds import random_inputs
from onnxprune.structured.dependency import analyze
from onnxprune.structured.importance import score_groups
from onnxprune.targets import cache
from onnxprune.targets.analyzer import analyze_path, parse_fractions
from onnxprune.targets.masking import Blobs, removed_slots
from onnxprune.targets.profile import KernelTimes, attribute, node_times, parse_trace
from onnxprune.targets.sensitivity import _Runner, analyze_model, prunable_groups
from onnxprune.testing import plant_dead, small_cnn
from onnxprune.testing.graphs.blocks import (
    concat_block,
    conv_bn_relu,
    depthwise_block,
    flatten_gemm,
    mlp_block,
    residual_block,
    se_block,
)
from onnxprune.testing.graphs.transformer import mha_block

CPU = ["CPUExecutionProvider"]


def _analyze(model: onnx.ModelProto, tmp_path: Path, **kw):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    kw.setdefault("use_cache", False)
    return analyze_path(path, cache_folder=tmp_path / "cache", **kw)


def _row(result, gid: str):
    return next(g for g in result.groups if g.id == gid)


def test_planted_dead_group_loses_nothing_until_its_dead_channels_are_gone(tmp_path):
    planted, dead, _ = plant_dead(conv_bn_relu(c_mid=16), 0.5)
    assert len(dead["conv1"]) == 8
    result = _analyze(planted, tmp_path, fractions="0.25,0.5,0.75")
    loss = _row(result, "conv1").loss
    assert loss["0.25"] == 0.0 and loss["0.5"] == 0.0  # only dead channels removed
    assert loss["0.75"] > 1e-3  # 4 live channels go too


def test_a_group_whose_channels_all_matter_loses_more_the_more_is_cut(tmp_path):
    result = _analyze(conv_bn_relu(c_mid=16), tmp_path)
    loss = _row(result, "conv1").loss
    assert 0.0 < loss["0.25"] < loss["0.5"] < loss["0.75"]
    assert result.fractions == [0.25, 0.5, 0.75]


@pytest.mark.parametrize("build", [small_cnn, residual_block, concat_block, se_block, mlp_block])
def test_shares_are_fractions_that_sum_to_at_most_one(build, tmp_path):
    result = _analyze(build(), tmp_path)
    assert result.groups
    for key in ("macs_share", "params_share", "latency_share"):
        values = [getattr(g, key) for g in result.groups]
        assert all(0.0 <= v <= 1.0 for v in values)
        assert sum(values) <= 1.0 + 1e-9
    assert sum(g.macs_share for g in result.groups) > 0.5  # the convs are the groups'


def test_costs_are_split_among_the_groups_a_node_belongs_to(tmp_path):
    """small_cnn: c1 owns c1 and shares c2 with group c2; fc's group is blocked (it reaches
    the output), so fc's cost is c2's alone. A fake clock makes the latency exact."""
    model = small_cnn()
    inputs = random_inputs(model, batch_size=2)

    def clock(m, feed):
        return KernelTimes(kernels={"c1": 3.0, "c2": 1.0, "fc": 1.0, "relu": 0.0}, total_ms=5.0)

    result = analyze_model(
        model, inputs, inputs, clock, providers=CPU, threads=None, shapes={"x": (1, 3, 8, 8)}
    )
    c1, c2 = _row(result, "c1"), _row(result, "c2")
    assert c1.latency_ms == pytest.approx(3.5) and c2.latency_ms == pytest.approx(1.5)
    assert c1.latency_share == pytest.approx(0.7)
    macs_c1 = 16 * 3 * 9 * 64  # Conv 3->16, 3x3, 8x8 output
    macs_c2 = 16 * 16 * 9 * 64
    assert c1.macs == pytest.approx(macs_c1 + macs_c2 / 2)
    assert c2.macs == pytest.approx(macs_c2 / 2 + 16 * 10)
    assert c1.macs_share + c2.macs_share == pytest.approx(1.0)
    assert [b["where"] for b in result.blocked] == ["fc"]


@pytest.mark.parametrize(
    "build",
    [residual_block, concat_block, se_block, flatten_gemm, mlp_block, depthwise_block,
     lambda: mha_block(form="const")],
)  # fmt: skip
def test_mask_inputs_give_the_zeroed_weights_losses(build):
    """One session with mask inputs must score every candidate as the oracle's construction
    (the consumers' input slices zeroed in a copy) does."""
    model = build()
    view = GraphView(model)
    groups, _ = prunable_groups(analyze(model, view=view))
    scores = score_groups(groups, view)
    inputs = random_inputs(model, batch_size=2)
    fast = _Runner(model, view, groups, inputs, CPU, None, None)
    slow = _Runner(model, view, groups, inputs, CPU, None, None)
    slow.masked.fallback = {g.id for g in groups}
    slow.blobs = Blobs(model)
    assert groups
    for g in groups:
        removed = removed_slots(g, scores[g.id], 0.5)
        a, b = fast.loss(g, removed), slow.loss(g, removed)
        assert a[0] == pytest.approx(b[0], abs=1e-5), g.id
        assert a[0] > 0.0, g.id


def test_blobs_leave_the_shared_model_as_it_was():
    model = small_cnn()
    before = model.SerializeToString()
    blob = Blobs(model).masked({"c2.w": np.zeros((16, 16, 3, 3), np.float32)}, {})
    assert model.SerializeToString() == before and blob != before


def test_removed_slots_take_the_lowest_scores_and_never_all():
    g = next(g for g in analyze(small_cnn()) if g.id == "c1")
    scores = np.arange(16, dtype=float)[::-1].copy()
    assert removed_slots(g, scores, 0.25).tolist() == [12, 13, 14, 15]
    assert len(removed_slots(g, scores, 0.999)) == 15


def test_the_cache_returns_the_same_result_and_a_new_criterion_misses(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    folder = tmp_path / "cache"
    first = analyze_path(path, cache_folder=folder)
    again = analyze_path(path, cache_folder=folder)
    assert not first.cached and again.cached
    a, b = first.to_dict(), again.to_dict()
    a.pop("cached"), b.pop("cached")
    assert a == b
    other = analyze_path(path, cache_folder=folder, criterion="l2")
    assert not other.cached
    assert len(list(folder.glob("analyze-*.json"))) == 2


def test_a_corrupt_cache_entry_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    folder = tmp_path / "cache"
    analyze_path(path, cache_folder=folder)
    (entry,) = folder.glob("analyze-*.json")
    for garbage in ("{not json", json.dumps({"groups": 3}), "[]"):
        entry.write_text(garbage)
        result = analyze_path(path, cache_folder=folder)
        assert not result.cached and result.groups
    assert analyze_path(path, cache_folder=folder).cached


def test_no_cache_neither_reads_nor_writes(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    folder = tmp_path / "cache"
    analyze_path(path, cache_folder=folder, use_cache=False)
    assert not folder.exists()


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "onnxprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "onnxprune"


def test_cache_key_depends_on_every_part():
    base = dict(providers=["CPU"], threads=1, shapes={"x": [1]}, criterion="l1")
    k = cache.key("m", **base)
    assert k == cache.key("m", **base)
    assert k != cache.key("m2", **base)
    assert k != cache.key("m", **{**base, "threads": 2})
    assert k != cache.key("m", **{**base, "shapes": {"x": [2]}})


def test_fractions_are_checked():
    assert parse_fractions("0.5,0.25,0.5") == [0.25, 0.5]
    for bad in ("0", "1", "x", ""):
        with pytest.raises(Exception, match="--fractions"):
            parse_fractions(bad)


# --------------------------------------------------------------------------- the profiler


def test_trace_medians_skip_the_warmup_and_sum_per_kernel():
    events = []
    for run, scale in enumerate([100.0, 1.0, 3.0, 2.0]):  # run 0 is warm-up
        t0 = run * 1000
        events.append({"cat": "Session", "name": "model_run", "ts": t0, "dur": 900})
        events.append({"cat": "Node", "name": "a_kernel_time", "ts": t0 + 1, "dur": 10 * scale})
        events.append({"cat": "Node", "name": "b_kernel_time", "ts": t0 + 5, "dur": 1000})
        events.append({"cat": "Node", "name": "b_fence_before", "ts": t0 + 5, "dur": 7})
    t = parse_trace(events, skip=1)
    assert t.runs == 3
    assert t.kernels == {"a": pytest.approx(0.02), "b": pytest.approx(1.0)}
    assert t.total_ms == pytest.approx(1.02) and t.run_ms == pytest.approx(0.9)


def test_fused_kernel_names_map_back_to_the_original_nodes():
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["y"], name="", kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )  # fmt: skip
    model = helper.make_model(graph)
    mapped = attribute({"r_nchwc": 1.0, "conv": 1.0, "ReorderOutput": 1.0, "y_nchwc": 1.0}, model)
    assert mapped["r_nchwc"] == ["relu", "conv"]  # Conv+Relu fused, named after the Relu's output
    assert mapped["conv"] == ["conv"]
    assert mapped["y_nchwc"] == ["MaxPool#2(y)"]
    assert "ReorderOutput" not in mapped
    fused = attribute({"conv/MatMulAddFusion": 1.0, "relu/QuickGeluFusion/": 1.0}, model)
    assert fused == {"conv/MatMulAddFusion": ["conv"], "relu/QuickGeluFusion/": ["relu"]}


def test_a_clip_with_constant_bounds_maps_back_to_its_conv_and_node_times_go_to_the_conv():
    """torch exports ReLU6 as Clip(x, Constant, Constant): the bounds are no data inputs, so
    the fused kernel named after the Clip's output is the Conv's (before, the walk stopped at
    the Clip and MobileNetV2's Conv time was priced as an activation's)."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    lo = helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0])
    hi = helper.make_tensor("hi", TensorProto.FLOAT, [], [6.0])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Constant", [], ["l"], name="k0", value=lo),
        helper.make_node("Constant", [], ["h"], name="k1", value=hi),
        helper.make_node("Clip", ["c", "l", "h"], ["y"], name="clip"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )  # fmt: skip
    model = helper.make_model(graph)
    kernels = {"y_nchwc": 3.0, "ReorderOutput": 0.5}
    assert attribute(kernels, model)["y_nchwc"] == ["clip", "conv"]
    node_ms, rest = node_times(KernelTimes(kernels=kernels, total_ms=3.5), model)
    assert node_ms == {"conv": 3.0} and rest == 0.5


def test_real_profile_accounts_for_the_groups_time(tmp_path):
    result = _analyze(small_cnn(), tmp_path)
    assert result.latency_total_ms > 0.0 and result.run_ms > 0.0
    assert sum(g.latency_share for g in result.groups) > 0.3
