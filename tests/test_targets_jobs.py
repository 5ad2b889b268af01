"""--jobs N / --ray ADDRESS on prune's searches: the same plan with 1 and with 2 workers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.api import prune_with
from onnxprune.errors import UsageError
from onnxprune.options import PruneOptions
from onnxprune.testing.graphs import residual_block, small_cnn


def _files(tmp_path, n=20):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, x=rng.standard_normal((n, 3, 8, 8)).astype(np.float32))
    return path, calib


def _kept(result) -> dict[str, list[int]]:
    return {g.id: list(g.kept) for g in result.report.structured.plan.groups}


def test_the_quality_search_gives_the_same_plan_with_one_and_two_workers(tmp_path):
    path = tmp_path / "r.onnx"
    onnx.save(residual_block(), path)
    runs = {}
    for jobs in (1, 2):  # 2: each family's schedule in its own spawned worker
        opts = PruneOptions(min_cosine=0.95, runs=3, jobs=jobs)
        result = prune_with(path, opts)
        t = result.report.structured.target
        runs[jobs] = (_kept(result), t["allocation"], t["fraction"],
                      [(c["allocation"], c["fraction"], c["passed"]) for c in t["iterations"]])  # fmt: skip
    assert runs[1] == runs[2]
    assert runs[1][1] is not None  # a candidate passed: the search chose something


@pytest.mark.parametrize("kw, words", [
    ({"structured": 0.3, "jobs": 2}, "run a search's candidates"),
    ({"target_macs": 0.5, "ray": "auto"}, "run a search's candidates"),
    ({"target_speedup": 2, "jobs": 0}, "--jobs must be"),
    ({"target_speedup": 2, "ray": " "}, "--ray must be"),
])  # fmt: skip
def test_jobs_and_ray_are_refused_without_a_search_or_when_malformed(kw, words):
    with pytest.raises(UsageError, match=words):
        PruneOptions(**kw)


def test_the_cli_refuses_jobs_without_a_search(tmp_path, capsys):
    from onnxprune.cli import main

    path, calib = _files(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([str(path), "--structured", "0.3", "--jobs", "2", "-q"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: --jobs and --ray")
    with pytest.raises(SystemExit) as exc:
        main([str(path), "--target-macs", "0.6", "--calib", str(calib), "--runs", "5", "-q",
              "-o", str(tmp_path / "out.onnx")])  # fmt: skip
    assert exc.value.code in (0, None)
    assert (tmp_path / "out.onnx").exists()


def test_sweep_takes_jobs_for_speedup_targets_only(tmp_path, capsys):
    from onnxprune.cli import main

    path, _ = _files(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["sweep", str(path), "--metric", "macs", "--targets", "2", "--jobs", "2", "-q"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: --jobs and --ray")
