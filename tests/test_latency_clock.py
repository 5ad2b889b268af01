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


class _Recorded:
    """A real session that notes each run's model and clock, so a test can read the order
    in which the timing ran the models; ``sleep`` seconds per run stand for a bigger model."""

    def __init__(self, session, name: str, log: list, sleep: float = 0.0):
        self.session, self.name, self.log, self.sleep = session, name, log, sleep

    def get_providers(self):
        return self.session.get_providers()

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, outputs, feed):
        self.log.append((self.name, time.perf_counter()))
        time.sleep(self.sleep)
        return self.session.run(outputs, feed)


def _recorded_pair(tmp_path, threads: int, sleep: float = 0.0):
    log: list = []
    sessions = [_Recorded(_session(tmp_path, threads), name, log, sleep) for name in "AB"]
    feeds = [session_feeds(s.session, random_feeds(small_cnn()), "model") for s in sessions]
    return sessions, feeds, log


def _stretches(log: list) -> list[list]:
    """(model, first run's time, runs) per stretch of one model's consecutive runs."""
    out: list[list] = []
    for name, at in log:
        if out and out[-1][0] == name:
            out[-1][2] += 1
        else:
            out.append([name, at, 1])
    return out


def test_more_threads_time_each_model_in_settled_blocks(tmp_path):
    """With the wall clock, each turn first runs the model untimed for SETTLE_S (the model
    before stops spinning), then BLOCK_RUNS timed runs; turns rotate who goes first. A run
    of 25 ms stands for a model big enough that BLOCK_RUNS outlast the settling."""
    from onnxprune.runtime.latency import BLOCK_RUNS, SETTLE_S

    sessions, feeds, log = _recorded_pair(tmp_path, 0, sleep=0.025)
    runs = 2 * BLOCK_RUNS
    times = measure_sessions(sessions, feeds, ["a", "b"], runs=runs, warmup=0, budget_s=None,
                             threads=0)  # fmt: skip
    assert [len(t) for t in times] == [runs, runs]
    turns = _stretches(log)
    # rotated: A B, then B A (B's two turns run back to back, so they show as one stretch)
    assert [t[0] for t in turns] == ["A", "B", "A"]
    # each turn settles with untimed runs first: one at least, besides its timed block
    assert turns[0][2] > BLOCK_RUNS and turns[2][2] > BLOCK_RUNS
    assert turns[1][2] >= 2 * (BLOCK_RUNS + 1)
    assert turns[1][1] - turns[0][1] >= SETTLE_S + BLOCK_RUNS * 0.025  # A settled, then timed


def test_a_fast_model_times_as_many_runs_per_turn_as_fill_the_settling(tmp_path):
    """A 0.1 ms model would spend 99% of its turns settling: its block grows until it lasts
    as long as the settling did, but it still takes MIN_TURNS turns (one turn per model
    would time each at another moment)."""
    from onnxprune.runtime.latency import BLOCK_RUNS, MIN_TURNS, SETTLE_S, _block

    assert _block(BLOCK_RUNS, SETTLE_S, 25.0, 30) == BLOCK_RUNS
    assert _block(BLOCK_RUNS, SETTLE_S, 0.1, 3000) == 1000
    assert _block(BLOCK_RUNS, SETTLE_S, 0.1, 30) == 10  # 30 runs in 3 turns
    assert _block(BLOCK_RUNS, 0.0, 0.1, 30) == BLOCK_RUNS  # no settling: the block as asked
    sessions, feeds, log = _recorded_pair(tmp_path, 0)
    runs = 6 * MIN_TURNS
    measure_sessions(sessions, feeds, ["a", "b"], runs=runs, warmup=0, budget_s=None, threads=0)
    turns = _stretches(log)
    assert [t[0] for t in turns] == ["A", "B", "A", "B"]  # A B | B A | A B, merged
    assert all(t[2] > runs // MIN_TURNS for t in turns)  # each turn settled first


def test_one_thread_alternates_run_by_run(tmp_path):
    """At one thread there is no pool to spin: runs alternate one by one, none untimed."""
    sessions, feeds, log = _recorded_pair(tmp_path, 1)
    measure_sessions(sessions, feeds, ["a", "b"], runs=3, warmup=0, budget_s=None, threads=1)
    assert [name for name, _ in log] == ["A", "B", "B", "A", "A", "B"]
