"""Validation inputs (issue 10 item 1) and latency you can believe (item 5).

Symbolic sizes are resolved from --input-shape, the data, the declared shape or a default per
dimension role; random validation draws --samples samples batched as the model allows; MACs
are counted at the resolved shapes; latency reports spreads, a significance flag, the batch
and the threads, in prune and in ``onnxprune validate``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxprune
from onnxprune.errors import UsageError
from onnxprune.metrics.macs import count_macs
from onnxprune.options import PruneOptions, ValidateOptions
from onnxprune.runtime.latency import latency_summary, speedup_significant
from onnxprune.runtime.session import open_session
from onnxprune.runtime.shapes import (
    DEFAULT_IMAGE,
    DEFAULT_SEQUENCE,
    parse_input_shapes,
    random_validation_inputs,
    resolve_shapes,
)
from onnxprune.testing import small_cnn


def with_dims(model: onnx.ModelProto, dims: list) -> onnx.ModelProto:
    """``model`` with input 0's dims replaced (ints fixed, strings symbolic)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shape = out.graph.input[0].type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        if isinstance(d, int):
            shape.dim.add().dim_value = d
        else:
            shape.dim.add().dim_param = d
    return out


def symbolic_cnn() -> onnx.ModelProto:
    return with_dims(small_cnn(), ["N", 3, "H", "W"])


def save(model: onnx.ModelProto, tmp_path, name: str) -> str:
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "value, expected",
    [
        ("x=1x3x32x32", {"x": (1, 3, 32, 32)}),
        (["x=1x3x32x32", "mask=2x7"], {"x": (1, 3, 32, 32), "mask": (2, 7)}),
        ("1x3x8x8", {"": (1, 3, 8, 8)}),
        ({"x": (1, 3, 640, 640)}, {"x": (1, 3, 640, 640)}),
        ({"x": "1x3x640x640"}, {"x": (1, 3, 640, 640)}),
        ("input_ids = 1,128", {"input_ids": (1, 128)}),
        (None, {}),
    ],
)
def test_input_shapes_parse(value, expected):
    assert parse_input_shapes(value) == expected


@pytest.mark.parametrize(
    "value, words",
    [
        ("x=1x0x3", "positive"),
        ("x=1x-2", "positive"),
        ("x=", "NAME=1x3x640x640"),
        ("x=1xax3", "NAME=1x3x640x640"),
        (["x=1", "x=2"], "twice"),
        ({"x": (1, True)}, "whole numbers"),
        ({"x": 5}, "NAME=1x3x640x640"),
        (42, "NAME=1x3x640x640"),
    ],
)
def test_bad_input_shapes_are_usage_errors_naming_the_flag(value, words):
    with pytest.raises(UsageError, match="--input-shape") as info:
        ValidateOptions(input_shapes=value)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "given, words",
    [
        ({"y": (1, 3, 8, 8)}, "not an input of the model"),
        ({"x": (1, 3, 8)}, "rank 3 but input 'x' has rank 4"),
        ({"x": (1, 4, 8, 8)}, "sets axis 1 to 4 but the model fixes it to 3"),
    ],
)
def test_input_shapes_are_checked_against_the_model(given, words):
    with pytest.raises(UsageError, match=words):
        resolve_shapes(symbolic_cnn(), given)


def test_the_model_is_checked_before_any_work(tmp_path):
    path = save(symbolic_cnn(), tmp_path, "m.onnx")
    out = tmp_path / "out.onnx"
    with pytest.raises(UsageError, match="not an input"):
        onnxprune.prune(path, output=out, unstructured=0.5, input_shapes="y=1x3x8x8")
    assert not out.exists()


def test_a_nameless_shape_needs_a_one_input_model():
    two = symbolic_cnn()
    two.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2]))
    with pytest.raises(UsageError, match="one-input model"):
        resolve_shapes(two, parse_input_shapes("1x3x8x8"))
    assert resolve_shapes(symbolic_cnn(), parse_input_shapes("2x3x9x9")).shapes == {
        "x": (2, 3, 9, 9)
    }


def test_given_shape_that_disagrees_with_the_data_is_refused():
    data = {"x": np.zeros((4, 3, 16, 16), np.float32)}
    with pytest.raises(UsageError, match="disagrees with the calib data"):
        resolve_shapes(symbolic_cnn(), {"x": (1, 3, 32, 32)}, data)


# --------------------------------------------------------------------------- default roles


def test_default_sizes_by_role():
    image = resolve_shapes(symbolic_cnn())
    assert image.shapes == {"x": (1, 3, DEFAULT_IMAGE, DEFAULT_IMAGE)}
    assert image.sources == {"x": "default"}
    tokens = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["ids"], ["y"])], "t",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
            [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "seq"])],
        )
    )  # fmt: skip
    assert resolve_shapes(tokens).shapes == {"ids": (1, DEFAULT_SEQUENCE)}
    declared = resolve_shapes(small_cnn())  # only the batch is symbolic: declared
    assert declared.shapes == {"x": (1, 3, 8, 8)} and declared.sources == {"x": "declared"}
    fixed = resolve_shapes(with_dims(small_cnn(), [2, 3, 8, 8]))
    assert fixed.shapes == {"x": (2, 3, 8, 8)}


def test_data_sizes_win_over_defaults():
    data = {"x": np.zeros((5, 3, 20, 24), np.float32)}
    got = resolve_shapes(symbolic_cnn(), None, data)
    assert got.shapes == {"x": (1, 3, 20, 24)} and got.sources == {"x": "calib"}


# --------------------------------------------------------------------------- samples and batches


def test_random_samples_batched_as_the_model_allows():
    dynamic = symbolic_cnn()
    one_batch = random_validation_inputs(dynamic, resolve_shapes(dynamic), 16, seed=0)
    assert one_batch["x"].shape == (16, 3, DEFAULT_IMAGE, DEFAULT_IMAGE)
    assert one_batch.run_batch is None  # one run of all 16
    fixed = with_dims(small_cnn(), [1, 3, 8, 8])
    runs = random_validation_inputs(fixed, resolve_shapes(fixed), 16, seed=0)
    assert runs["x"].shape == (16, 3, 8, 8)
    given = resolve_shapes(dynamic, {"x": (2, 3, 8, 8)})
    pairs = random_validation_inputs(dynamic, given, 5, seed=0)
    assert pairs["x"].shape == (6, 3, 8, 8) and pairs.run_batch == 2


def test_fixed_batch_model_gets_sixteen_runs_of_one(tmp_path):
    path = save(with_dims(small_cnn(), [1, 3, 8, 8]), tmp_path, "fixed.onnx")
    v = onnxprune.prune(path, unstructured=0.5, runs=5).report.validation
    assert v.samples == 16 and v.batch == 1
    assert v.input_shapes == {"x": [1, 3, 8, 8]} and v.shape_source == {"x": "declared"}


def test_samples_reach_the_json(tmp_path):
    path = save(small_cnn(), tmp_path, "m.onnx")
    report = tmp_path / "r.json"
    result = onnxprune.prune(path, unstructured=0.5, runs=5, samples=5)
    result.report.write_json(report)
    v = json.loads(report.read_text())["validation"]
    assert v["samples"] == 5 and v["batch"] == 5
    assert v["input_shapes"] == {"x": [5, 3, 8, 8]}
    with pytest.raises(UsageError, match="--samples"):
        PruneOptions(unstructured=0.5, samples=0)


# --------------------------------------------------------------------------- at the given size


def test_symbolic_model_validated_and_counted_at_the_given_shape(tmp_path):
    path = save(symbolic_cnn(), tmp_path, "sym.onnx")
    result = onnxprune.prune(path, unstructured=0.5, runs=5, input_shapes=["x=1x3x32x32"])
    report, v = result.report, result.report.validation
    assert v.input_shapes == {"x": [1, 3, 32, 32]}  # runs of the given batch, at 32x32
    assert v.shape_source == {"x": "--input-shape"} and v.samples == 16
    twin = with_dims(small_cnn(), [1, 3, 32, 32])
    assert report.macs_before == count_macs(twin)[0]
    assert report.macs_before > 2 * count_macs(small_cnn())[0]  # not counted at 8x8 or 1x1
    assert report.macs_after == report.macs_before  # unstructured zeroes, shapes unchanged


def test_without_a_shape_macs_use_the_default_image_size(tmp_path):
    path = save(symbolic_cnn(), tmp_path, "sym.onnx")
    report = onnxprune.prune(path, unstructured=0.5, validate=False).report
    twin = with_dims(small_cnn(), [1, 3, DEFAULT_IMAGE, DEFAULT_IMAGE])
    assert report.macs_before == count_macs(twin)[0]
    assert any("--input-shape" in n for n in report.notes)


def test_structured_pruning_counts_after_at_the_same_shape(tmp_path):
    path = save(symbolic_cnn(), tmp_path, "sym.onnx")
    report = onnxprune.prune(
        path, structured=0.5, round_to=1, runs=5, input_shapes={"x": (1, 3, 16, 16)}
    ).report
    assert report.macs_before == count_macs(with_dims(small_cnn(), [1, 3, 16, 16]))[0]
    assert 0 < report.macs_after < report.macs_before


# --------------------------------------------------------------------------- latency


def test_speedup_significance_is_whether_the_spreads_overlap():
    slow = [10.0, 10.5, 11.0, 10.2, 10.8, 10.1, 10.9, 10.4, 10.6, 10.3]
    fast = [5.0, 5.2, 5.1, 5.3, 5.4, 5.05, 5.15, 5.25, 5.35, 5.45]
    assert speedup_significant(slow, fast) and speedup_significant(fast, slow)
    wandering = [4.8, 11.5, 6.0, 9.0, 5.0, 10.0, 7.0, 8.0, 5.5, 11.0]
    assert not speedup_significant(slow, wandering)
    s = latency_summary(slow, fast)
    assert s["speedup"] == pytest.approx(np.median(slow) / np.median(fast))
    assert s["latency_p10_ms_before"] <= s["latency_ms_before"] <= s["latency_p90_ms_before"]
    assert s["speedup_significant"] is True
    assert latency_summary(slow, slow)["speedup_significant"] is False


def test_threads_reach_the_session(tmp_path):
    path = save(small_cnn(), tmp_path, "m.onnx")
    cpu = ["CPUExecutionProvider"]
    session = open_session(path, cpu, role="model", threads=2)
    assert session.get_session_options().intra_op_num_threads == 2
    default = open_session(path, cpu, role="model", threads=0)
    assert default.get_session_options().intra_op_num_threads == 0
    v = onnxprune.prune(path, unstructured=0.5, runs=5, threads=2).report.validation
    assert v.threads == 2
    with pytest.raises(UsageError, match="--threads"):
        PruneOptions(unstructured=0.5, threads=-1)


def test_prune_table_shows_samples_shapes_and_significance(tmp_path, capsys, run_cli):
    path = save(symbolic_cnn(), tmp_path, "sym.onnx")
    code, out, err = run_cli(
        [path, "--unstructured", 0.5, "--runs", 5, "--input-shape", "x=1x3x16x16",
         "--samples", 4, "--threads", 1, "-o", tmp_path / "o.onnx", "-q"], capsys
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli(
        [path, "--unstructured", 0.5, "--runs", 5, "--input-shape", "x=1x3x16x16",
         "--samples", 4, "-o", tmp_path / "o2.onnx"], capsys
    )  # fmt: skip
    assert code == 0, err
    assert "4 samples; inputs x=1x3x16x16 (--input-shape)" in out
    assert "speed-up" in out and "per run of batch 1" in out


def test_validate_command_measures_latency_with_the_same_keys(tmp_path, capsys, run_cli):
    path = save(symbolic_cnn(), tmp_path, "sym.onnx")
    js = tmp_path / "v.json"
    code, out, err = run_cli(
        ["validate", path, path, "--input-shape", "x=1x3x16x16", "--runs", 5, "--threads", 1,
         "--samples", 3, "--json", js], capsys
    )  # fmt: skip
    assert code == 0, err
    d = json.loads(js.read_text())
    for key in ("latency_ms_before", "latency_ms_after", "latency_p10_ms_before",
                "latency_p90_ms_after", "speedup", "speedup_significant"):  # fmt: skip
        assert key in d, key
    assert d["threads"] == 1 and d["batch"] == 1 and d["runs"] == 5
    assert d["samples"] == 3 and d["input_shapes"] == {"x": [1, 3, 16, 16]}
    assert d["shape_source"] == {"x": "--input-shape"}
    assert "latency median (ms)" in out and "3 samples" in out


def test_validate_command_refuses_a_bad_shape(tmp_path, capsys, run_cli):
    path = save(symbolic_cnn(), tmp_path, "sym.onnx")
    code, _out, err = run_cli(["validate", path, path, "--input-shape", "x=1x3x16"], capsys)
    assert code == 2
    assert err.startswith("error: --input-shape x=1x3x16 has rank 3") and "Traceback" not in err


def test_calibration_data_gives_the_sizes(tmp_path):
    path = save(symbolic_cnn(), tmp_path, "sym.onnx")
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, x=rng.standard_normal((6, 3, 12, 12)).astype(np.float32))
    report = onnxprune.prune(path, unstructured=0.5, runs=5, calib=calib, holdout=False).report
    v = report.validation
    assert v.shape_source == {"x": "calib"} and v.samples == 6
    assert v.input_shapes == {"x": [6, 3, 12, 12]}
    assert report.macs_before == count_macs(with_dims(small_cnn(), [1, 3, 12, 12]))[0]


def test_a_symbol_shared_by_inputs_gets_one_size():
    from onnxprune.testing.graphs import encoder_block

    model = encoder_block()  # x [batch, seq, 16], mask [batch, 1, 1, seq]
    got = resolve_shapes(model, parse_input_shapes("x=1x32x16"))
    assert got.shapes == {"x": (1, 32, 16), "mask": (1, 1, 1, 32)}
    default = resolve_shapes(model)
    assert default.shapes["mask"][3] == default.shapes["x"][1]
    v = onnxprune.prune(model, heads=0.5, runs=5, samples=4).report.validation
    assert v.samples == 4 and v.input_shapes["mask"][0] == v.input_shapes["x"][0] == 4


def test_count_macs_at_input_shapes_leaves_the_model_alone():
    model = symbolic_cnn()
    before = model.SerializeToString()
    macs, notes = count_macs(model, {"x": (2, 3, 32, 32)})
    assert macs == count_macs(with_dims(small_cnn(), [2, 3, 32, 32]))[0]
    assert macs == 2 * count_macs(model, {"x": (1, 3, 32, 32)})[0]
    assert not any("taken as 1" in n for n in notes)
    assert model.SerializeToString() == before


def test_validate_options_check_runs_and_threads():
    assert ValidateOptions(runs=7, threads=3).threads == 3
    with pytest.raises(UsageError, match="--runs"):
        ValidateOptions(runs=0)
    with pytest.raises(UsageError, match="--threads"):
        ValidateOptions(threads=True)
