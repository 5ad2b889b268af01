"""runtime.session and runtime.feeds: the one session factory keeps each caller's options,
and the two ways of splitting samples (calibration batches, validation chunks) agree."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxprune.calibration.stats import session as calibration_session
from onnxprune.errors import OnnxPruneError
from onnxprune.runtime.feeds import batches, chunked, sample_count, shared_batch
from onnxprune.runtime.session import open_session, ort_message, run_session
from onnxprune.testing.graphs import gemm_mlp

CPU = ["CPUExecutionProvider"]


def test_a_file_and_the_same_model_in_memory_give_the_same_outputs(tmp_path):
    model = gemm_mlp()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    x = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    name = model.graph.input[0].name
    feed = {name: x["x"]}
    a = run_session(open_session(path, CPU, role="model"), feed, "model")
    b = run_session(open_session(model, CPU, role="model"), feed, "model")
    np.testing.assert_array_equal(a[0], b[0])


def test_validation_and_calibration_sessions_keep_their_options():
    model = gemm_mlp()
    deployed = open_session(model, CPU, role="model").get_session_options()
    assert deployed.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert deployed.log_severity_level == 4  # fatal only: our error line says it once
    with pytest.raises(RuntimeError):  # no entry: onnxruntime's default (threads spin)
        deployed.get_session_config_entry("session.intra_op.allow_spinning")
    calib = calibration_session(model).get_session_options()
    assert calib.log_severity_level == 4
    assert calib.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    one = open_session(model, CPU, role="model", threads=1).get_session_options()
    assert one.intra_op_num_threads == 1


def test_errors_name_the_model_and_keep_the_first_line():
    exc = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : bad thing\nmore detail")
    assert ort_message(exc) == "bad thing"
    broken = gemm_mlp()
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(OnnxPruneError, match="cannot run the pruned model: "):
        open_session(broken, CPU, role="pruned model")
    good = open_session(gemm_mlp(), CPU, role="model")
    with pytest.raises(OnnxPruneError, match=r"^onnxruntime failed on calibration data: "):
        run_session(good, {"x": np.zeros((1, 3), np.float32)}, "model",
                    failure="onnxruntime failed on calibration data")  # fmt: skip


def test_batches_and_chunks_split_samples_by_the_same_rule():
    feed = {"x": np.arange(10, dtype=np.float32)[:, None]}
    assert sample_count(feed) == shared_batch(feed) == 10
    fixed = list(batches(feed, 4, ["x"], fixed=True))
    notes: list[str] = []
    chunks = chunked(feed, 4, notes)
    assert [len(b["x"]) for b in fixed] == [len(c["x"]) for c in chunks] == [4, 4]
    assert any("last 2 of 10 samples dropped" in n for n in notes)
    dynamic = list(batches(feed, 4, ["x"]))
    assert [len(b["x"]) for b in dynamic] == [4, 4, 2]
    assert shared_batch({"x": feed["x"], "s": np.float32(1)}) is None
