"""The latency table on a tiny model with a fake clock, and the staircase helper."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import onnx
import pytest

from onnxprune.errors import UsageError
from onnxprune.runtime.feeds import random_inputs
from onnxprune.structured.dependency import analyze
from onnxprune.targets.latency import (
    LatencyCurve,
    LatencyTable,
    TableSpec,
    build_latency_table,
    keep_counts,
    staircase,
    staircase_counts,
)
from onnxprune.testing import Builder

RUNS: list[tuple[str, int]] = []


def tiny_model() -> onnx.ModelProto:
    """conv a (3->16) -> relu -> conv b (16->24) -> relu -> conv c (24->4): groups a and b."""
    b = Builder(seed=0)
    x = b.input([1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, name="a"))
    h = b.relu(b.conv(h, 16, 24, name="b"))
    return b.build([b.conv(h, 24, 4, name="c")])


def fake_ms(group: str, keep: int) -> float:
    """A known staircase: group b costs 2 ms per started block of 8 channels, a 1 ms per 4."""
    if group == "b":
        return 10.0 + 2.0 * math.ceil(keep / 8)
    return 10.0 + 1.0 * math.ceil(keep / 4)


def fake_clock(run, group: str, keep: int) -> float:
    """Runs the candidate for real (so it must build and run), returns the known time."""
    out = run()
    assert out and np.all(np.isfinite(out[0]))
    return fake_ms(group, keep)


@pytest.fixture
def spec(tmp_path) -> TableSpec:
    model = tiny_model()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return TableSpec(str(path), dict(random_inputs(model)), threads=1, max_runs=4, timer=fake_clock)


def test_keep_counts_steps_by_four_or_eight_channels_and_ends_at_full_width():
    groups = {g.id: g for g in analyze(tiny_model()) if g.blocked_reason is None}
    assert set(groups) == {"a", "b"}
    assert keep_counts(groups["a"]) == [4, 8, 12, 16]
    assert keep_counts(groups["b"]) == [4, 8, 12, 16, 20, 24]
    assert keep_counts(groups["b"], step=8) == [8, 16, 24]
    assert keep_counts(groups["b"], max_points=3) == [8, 16, 24]  # coarser, still blocks
    assert keep_counts(groups["b"], max_points=2) == [16, 24]


def test_table_with_a_fake_clock_is_the_clock_s_staircase(spec):
    table = build_latency_table(spec, time_budget_s=None)
    assert set(table.curves) == {"a", "b"}
    b = table.curves["b"]
    assert b.keep == [4, 8, 12, 16, 20, 24] and b.slots == 24 and b.runs == 4
    assert b.value == [fake_ms("b", k) for k in b.keep]
    assert b.p10 == b.value and b.p90 == b.value  # no noise: every run the same
    assert b.delta_ms == [fake_ms("b", k) - fake_ms("b", 24) for k in b.keep]
    assert b.price_ms(17) == b.price_ms(20) == 0.0 and b.price_ms(16) == -2.0
    assert table.curves["a"].delta_ms == [-3.0, -2.0, -1.0, 0.0]
    assert table.settings["shapes"] == {"x": [1, 3, 8, 8]} and table.settings["threads"] == 1


def test_staircase_keeps_more_where_it_is_free_and_never_slower(spec):
    table = build_latency_table(spec, time_budget_s=None, groups=["b"])
    assert staircase(table, "b", 20) == 24  # 24 runs as fast as 20
    assert staircase(table, "b", 17) == 24
    assert staircase(table, "b", 16) == 16  # 24 is slower than 16
    assert staircase(table, "b", 3) == 8  # 3 costs what 4 costs, and 8 runs as fast
    assert staircase(table, "b", 24) == 24
    assert staircase_counts(table) == {"b": [8, 16, 24]}  # the solver's allowed steps
    curve = table.curves["b"].price_curve()
    assert curve.keep == [4, 8, 12, 16, 20, 24] and curve.at(16) == -2.0


def test_staircase_prefers_a_faster_step_above_over_a_slower_one():
    curve = LatencyCurve("g", 32, 1, [8, 16, 24, 32], [5, 4, 6, 7], [5, 4, 6, 7], [5, 4, 6, 7],
                         [-2.0, -3.0, -1.0, 0.0], 3)  # fmt: skip
    table = LatencyTable({"g": curve}, 7.0)
    assert staircase(table, "g", 8) == 16  # 16 channels run faster than 8
    assert staircase(table, "g", 17) == 24
    assert staircase(table, "g", 17, slack_ms=1.0) == 32
    with pytest.raises(UsageError, match=r"1\.\.32"):
        staircase(table, "g", 0)
    with pytest.raises(UsageError, match="no group"):
        staircase(table, "h", 8)


def test_table_round_trips_through_json(spec):
    table = build_latency_table(spec, time_budget_s=None, groups=["a"])
    again = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table


def test_budget_is_never_overrun_past_one_group_nor_under_min_runs(tmp_path):
    model = tiny_model()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    spec = TableSpec(str(path), dict(random_inputs(model)), threads=1, min_runs=2, max_runs=500)
    table = build_latency_table(spec, time_budget_s=1e-3)  # the real clock, a tiny budget
    assert all(c.runs == 2 for c in table.curves.values())
    assert table.curves["a"].keep == [4, 8, 12, 16]  # the first group: no estimate yet
    # the budget is spent after the first group: the rest are left unmeasured (free counts)
    # rather than overrun it (a loaded machine overran a 60 s budget tenfold)
    assert "b" not in table.curves and table.settings["unmeasured"] == ["b"]
    assert all(v > 0 for c in table.curves.values() for v in c.value)
    roomy = build_latency_table(spec, time_budget_s=0.5, groups=["a"])
    assert roomy.curves["a"].runs > 2


def test_bad_requests_are_usage_errors(spec):
    with pytest.raises(UsageError, match="no prunable group zz"):
        build_latency_table(spec, groups=["zz"])
    with pytest.raises(UsageError, match="budget"):
        build_latency_table(spec, time_budget_s=0)
    with pytest.raises(UsageError, match="2 points"):
        build_latency_table(spec, max_points=1)


CALLS = itertools.count()


def spiky_clock(run, group: str, keep: int) -> float:
    """The known staircase plus a 50 ms spike on every third run (other work on the box)."""
    run()
    return fake_ms(group, keep) + (50.0 if next(CALLS) % 3 == 0 else 0.0)


def test_min_estimate_sees_through_spikes_that_only_add_time(spec):
    noisy = dataclasses.replace(spec, timer=spiky_clock, max_runs=6, estimate="min")
    table = build_latency_table(noisy, time_budget_s=None, groups=["b"])
    b = table.curves["b"]
    assert b.delta_ms == [fake_ms("b", k) - fake_ms("b", 24) for k in b.keep]
    assert b.best == [fake_ms("b", k) for k in b.keep]
    assert max(b.p90) >= 50.0  # the spikes were there
    with pytest.raises(UsageError, match="estimate"):
        build_latency_table(dataclasses.replace(spec, estimate="mean"))


def test_a_group_whose_cut_is_lost_in_the_noise_gets_the_default_rounding():
    from onnxprune.targets.latency import LatencyCurve, LatencyTable, resolved, staircase_counts

    def curve(gid, deltas, spread):
        full = 10.0
        values = [full + d for d in deltas]
        return LatencyCurve(gid, 16, 1, [8, 12, 16], values, [v - spread for v in values],
                            [v + spread for v in values], list(deltas), 20)  # fmt: skip

    clear = curve("clear", [-2.0, -1.0, 0.0], 0.2)  # saves 2 ms, noise 0.2 ms
    lost = curve("lost", [-0.02, 0.01, 0.0], 0.2)  # saves 0.02 ms within 0.2 ms of noise
    assert resolved(clear) and not resolved(lost)
    counts = staircase_counts(LatencyTable({"clear": clear, "lost": lost}, 10.0, {}))
    # 'lost' is not forced whole: it gets the default rounding's counts (16 slots: just 16)
    assert counts == {"clear": [8, 12, 16], "lost": [16]}
    wide = curve("wide", [-0.02, 0.01, 0.0], 0.2)
    wide.slots = 40
    assert staircase_counts(LatencyTable({"wide": wide}, 10.0, {}))["wide"] == [16, 32, 40]
    heads = curve("heads", [-0.02, 0.01, 0.0], 0.2)
    heads.slots, heads.width = 12, 64  # 12 heads of 64 channels: any head count is a multiple
    assert staircase_counts(LatencyTable({"heads": heads}, 10.0, {}))["heads"] == list(range(1, 13))
