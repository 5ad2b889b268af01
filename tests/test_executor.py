"""Executors: the same results, in order, in-process and in spawned worker processes."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import onnx
import pytest

from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.runtime.feeds import random_inputs
from onnxprune.targets.executor import LocalExecutor, RayExecutor, make_executor
from onnxprune.targets.latency import TableSpec, build_latency_table
from onnxprune.testing import Builder


@pytest.fixture(scope="module")
def pool():
    """One pool of two spawned workers for the file (each spawn costs about a second)."""
    with LocalExecutor(jobs=2) as ex:
        yield ex


def square_with_pid(x: int) -> tuple[int, int]:
    import os

    return x * x, os.getpid()


def refuse_three(x: int) -> int:
    if x == 3:
        raise OnnxPruneError("job 3 has no model")
    return x


def staircase_clock(run, group: str, keep: int) -> float:
    """A fake clock: runs the candidate for real, returns 1 ms per started block of 8."""
    out = run()
    assert np.all(np.isfinite(out[0]))
    return 5.0 + math.ceil(keep / 8) + (0.5 if group == "b" else 0.0)


def test_two_workers_return_items_in_order_from_other_processes(pool):
    import os

    got = pool.map(square_with_pid, range(8))
    assert [v for v, _ in got] == [x * x for x in range(8)]
    assert os.getpid() not in {pid for _, pid in got}  # it really ran elsewhere
    one = LocalExecutor(jobs=1).map(square_with_pid, range(3))
    assert {pid for _, pid in one} == {os.getpid()}  # jobs=1: in this process


def test_latency_table_is_the_same_with_one_and_two_workers(tmp_path, pool):
    b = Builder(seed=1)
    x = b.input([1, 3, 8, 8])
    h = b.relu(b.conv(x, 3, 16, name="a"))
    h = b.relu(b.conv(h, 16, 24, name="b"))
    model = b.build([b.conv(h, 24, 4, name="c")])
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    spec = TableSpec(str(path), dict(random_inputs(model)), max_runs=3, timer=staircase_clock)
    alone = build_latency_table(spec, time_budget_s=None)
    pair = build_latency_table(spec, time_budget_s=None, executor=pool)
    assert pair.settings["workers"] == 2 and alone.settings["workers"] == 1
    assert pair.curves == alone.curves
    assert alone.curves["b"].value == [6.5, 6.5, 7.5, 7.5, 8.5, 8.5]


def test_a_job_s_error_reaches_the_caller_as_it_was(pool):
    with pytest.raises(OnnxPruneError, match="job 3 has no model"):
        pool.map(refuse_three, range(5))


def test_a_job_that_cannot_be_pickled_is_one_clear_error(pool):
    with pytest.raises(OnnxPruneError, match="module level"):
        pool.map(lambda x: x, range(3))
    assert LocalExecutor(jobs=1).map(lambda x: x + 1, [1, 2]) == [2, 3]  # in-process: fine


@pytest.mark.parametrize("jobs", [0, -1, 1.5, True])
def test_jobs_must_be_a_positive_whole_number(jobs):
    with pytest.raises(UsageError, match="--jobs"):
        LocalExecutor(jobs=jobs)


def test_make_executor_picks_ray_only_for_an_address():
    assert isinstance(make_executor(jobs=3), LocalExecutor)
    assert isinstance(make_executor(jobs=3, ray="auto"), RayExecutor)
    with pytest.raises(UsageError, match="address"):
        make_executor(ray=" ")


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_without_the_extra_says_what_to_install():
    with pytest.raises(UsageError, match=r"onnxprune\[ray\]"):
        RayExecutor("127.0.0.1:1").map(square_with_pid, [1])
