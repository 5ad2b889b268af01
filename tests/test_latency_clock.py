"""Which clock times a run: thread CPU time at one CPU thread, the wall clock otherwise."""

from __future__ import annotations

import time

import onnx

from onnxprune.runtime.latency import clock_for, clock_name, measure_sessions
from onnxprune.runtime.session import open_session, session_feeds
from onnxprune.testing.graphs import small_cnn
from onnxprune.testing.oracles import random_feeds


def _session(tmp_path, threads: int):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    return open_session(path, ["CPUExecutionProvider"], role="model", threads=threads)


def test_one_cpu_thread_is_timed_by_thread_time_and_more_threads_by_the_wall(tmp_path):
    one, many = _session(tmp_path, 1), _session(tmp_path, 0)
    assert clock_for([one], 1) is time.thread_time
    assert clock_name(clock_for([one], 1)) == "thread CPU time (1 thread)"
    assert clock_for([many], 0) is time.perf_counter
    assert clock_name(clock_for([many], None)) == "wall clock"


def test_thread_time_does_not_count_a_sleep_the_wall_clock_would(tmp_path, monkeypatch):
    """The point of the CPU clock: time the thread spends not running (another process has
    the core) is not the model's. A sleep inside the run stands for that wait."""
    import onnxprune.runtime.latency as latency

    session = _session(tmp_path, 1)
    feeds = [session_feeds(session, random_feeds(small_cnn()), "model")]
    real = latency.run_session

    def slow(*args):
        time.sleep(0.02)
        return real(*args)

    monkeypatch.setattr(latency, "run_session", slow)
    cpu = measure_sessions([session], feeds, ["m"], runs=3, warmup=0, budget_s=None, threads=1)
    wall = measure_sessions([session], feeds, ["m"], runs=3, warmup=0, budget_s=None, threads=0)
    assert max(cpu[0]) < 15.0 <= min(wall[0])
