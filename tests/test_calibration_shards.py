"""Sharded calibration statistics equal the unsharded ones (issue 14, item 3).

Channel statistics and Gram matrices are sums over samples: the calibration set cut into
shards, each reduced on its own (in this process, in worker processes of the targets'
executor, or on Ray) and the shards' sums added, must give what one pass over the whole
set gives. The oracle is ``channel_stats`` on the whole set.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.calibration.stats import (
    DEFAULT_BATCH,
    ChannelStats,
    channel_stats,
    shard_inputs,
    sharded_channel_stats,
)
from onnxprune.targets.executor import LocalExecutor
from onnxprune.testing.graphs import Builder


def _net():
    b = Builder(3)
    x = b.input(["N", 3, 6, 6])
    r1 = b.relu(b.conv(x, 3, 8, name="c1"))
    r2 = b.relu(b.conv(r1, 8, 6, k=1, name="c2"))
    flat = b.op("Flatten", [b.op("GlobalAveragePool", [r2])], axis=1)
    y = b.gemm(flat, 6, 4, name="fc")
    return b.build([y]), {"x": 1, r1: 1, r2: 1, flat: -1}


def _feeds(n: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(5).standard_normal((n, 3, 6, 6)).astype(np.float32)
    x[:, 0] = np.maximum(x[:, 0], 0)  # zeros in a graph input: apoz is not trivially 0 there
    return {"x": x}


def _assert_same(got: dict[str, ChannelStats], want: dict[str, ChannelStats]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].count == want[name].count
        np.testing.assert_allclose(got[name].sum_abs, want[name].sum_abs, rtol=1e-6)
        np.testing.assert_allclose(got[name].sum_sq, want[name].sum_sq, rtol=1e-6)
        np.testing.assert_array_equal(got[name].zeros, want[name].zeros)


def test_shards_cover_every_sample_once_in_whole_batches():
    feeds = _feeds(150)
    parts = shard_inputs(feeds, 3)
    assert [len(p["x"]) for p in parts] == [64, 64, 22]
    assert all(len(p["x"]) % DEFAULT_BATCH == 0 for p in parts[:-1])
    np.testing.assert_array_equal(np.concatenate([p["x"] for p in parts]), feeds["x"])
    assert len(shard_inputs(_feeds(5), 8)) == 5  # never an empty shard


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
def test_in_process_shards_equal_one_pass(shards):
    model, taps = _net()
    feeds = _feeds(100)
    whole = channel_stats(model, feeds, taps)
    assert whole["x"].apoz[0] > 0.3  # the zeros check below is not vacuous
    got = sharded_channel_stats(model, feeds, taps, LocalExecutor(1), shards=shards)
    _assert_same(got, whole)


def test_two_worker_processes_equal_one_pass():
    model, taps = _net()
    feeds = _feeds(70)
    with LocalExecutor(2) as ex:
        got = sharded_channel_stats(model, feeds, taps, ex)
    _assert_same(got, channel_stats(model, feeds, taps))


def test_merge_adds_and_rejects_another_axis():
    a, b = ChannelStats(1), ChannelStats(1)
    a.add(np.ones((2, 3, 4), dtype=np.float32))
    b.add(np.zeros((1, 3, 4), dtype=np.float32))
    merged = ChannelStats(1).merge(a).merge(b)
    assert merged.count == 12
    np.testing.assert_array_equal(merged.apoz, np.full(3, 4 / 12))
    np.testing.assert_array_equal(a.sum_abs, np.full(3, 8.0))  # the first merge copied
    with pytest.raises(Exception, match="different axes"):
        merged.merge(ChannelStats(0))


def test_gram_sums_of_two_shards_equal_one_pass():
    from onnxprune.recovery.gram import LayerStats
    from onnxprune.recovery.layers import find_layers

    model, _ = _net()
    lay = find_layers(model)[0]  # c1: 3x3 Conv, d = 28
    rng = np.random.default_rng(7)
    target = rng.standard_normal((1, 8, 28)).astype(np.float32)
    batches = [rng.standard_normal((4, 3, 6, 6)).astype(np.float32) for _ in range(6)]
    picks = [np.sort(rng.choice(4 * 16, size=30, replace=False)) for _ in batches]

    def fed(part, targeted):
        st = LayerStats(lay, lay, None, False, target=target if targeted else None)
        for x, p in part:
            st.add(x + 0.5, x, p)
        return st

    for targeted in (False, True):
        whole = fed(list(zip(batches, picks, strict=True)), targeted)
        whole.fold()
        a = fed(list(zip(batches[:2], picks[:2], strict=True)), targeted)
        b = fed(list(zip(batches[2:], picks[2:], strict=True)), targeted)
        merged = a.merge(b)
        assert merged.rows == whole.rows == 180
        scale = float(np.abs(whole.gpp).max())  # float32 sums: equal to rounding
        np.testing.assert_allclose(merged.gpp, whole.gpp, rtol=1e-5, atol=1e-6 * scale)
        want = whole.target_gop(target)
        np.testing.assert_allclose(merged.target_gop(target), want, rtol=1e-5,
                                   atol=1e-6 * float(np.abs(want).max()))  # fmt: skip
        got = np.concatenate(merged.check_p)
        np.testing.assert_array_equal(got, np.concatenate(whole.check_p))


def test_prune_with_jobs_and_calib_shards_the_statistics_and_plans_the_same(tmp_path):
    """--jobs 2 --calib with a data-aware criterion: the statistics come from 2 shards and
    the plan equals the one-process plan (sums of the same samples)."""
    import onnx as _onnx

    from onnxprune import prune
    from onnxprune.testing.graphs import small_cnn

    path = tmp_path / "m.onnx"
    _onnx.save(small_cnn(), path)
    rng = np.random.default_rng(0)
    calib = tmp_path / "c.npz"
    np.savez(calib, x=rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    plans = []
    for jobs in (1, 2):
        r = prune(path, structured=0.5, criterion="activation", calib=calib, jobs=jobs,
                  round_to=1, validate=False, lstsq=False, bias_correction=False)  # fmt: skip
        groups = r.report.to_dict()["structured"]["groups"]
        plans.append([(g["id"], g["channels_before"], g["channels_after"]) for g in groups])
    assert plans[0] == plans[1] and any(after < before for _, before, after in plans[0])
