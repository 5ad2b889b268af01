"""Load-time validity (issue 10, items 6 and 8): an invalid model is refused as what it is.

Each class of broken model goes through the CLI and must give exit 1, exactly one ``error:``
line that names the problem (and the tensor or node), the input untouched and nothing new in
its folder. A merely unsorted node list is sorted and pruned instead, and odd file names work.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.check import raw_data_length
from onnxprune.testing.graphs import mixed_cnn


def init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def set_attr(n: onnx.NodeProto, name: str, value: object) -> None:
    for i, a in enumerate(n.attribute):
        if a.name == name:
            del n.attribute[i]
            break
    n.attribute.append(helper.make_attribute(name, value))


def run(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "-q", "--runs", "5"])
        raise SystemExit(0)
    code = exc.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------ the mutations
def dangling(m):
    node(m, "conv4").input[0] = "nothing_makes_this"


def group_as_string(m):
    set_attr(node(m, "conv4"), "group", "two")


def kernel_shape_disagrees(m):
    set_attr(node(m, "conv4"), "kernel_shape", [5, 5])


def group_zero(m):
    set_attr(node(m, "conv4"), "group", 0)


def opset_1(m):
    m.opset_import[0].version = 1


def raw_data_longer(m):
    t = init(m, "conv4.bias")
    t.raw_data = t.raw_data + b"\0\0\0\0"


def raw_data_shorter(m):
    t = init(m, "conv4.bias")
    t.raw_data = t.raw_data[:-4]


def typed_field_wrong_count(m):
    t = init(m, "conv4.bias")
    values = numpy_helper.to_array(t)
    t.ClearField("raw_data")
    t.float_data.extend(values.tolist()[:-1])


def negative_dim(m):
    init(m, "conv4.bias").dims[0] = -8


def absurd_dim(m):
    init(m, "conv4.bias").dims[0] = 10**12


def unknown_data_type(m):
    init(m, "conv4.bias").data_type = 99


def undefined_data_type(m):
    init(m, "conv4.bias").data_type = 0


def nan_weight(m):
    t = init(m, "conv4.weight")
    a = numpy_helper.to_array(t).copy()
    a.flat[3] = np.nan
    t.CopyFrom(numpy_helper.from_array(a, t.name))


def four_inf_weights(m):
    for name in ("conv1.weight", "conv4.weight", "mm8.weight", "fc11.weight"):
        t = init(m, name)
        a = numpy_helper.to_array(t).copy()
        a.flat[0] = -np.inf
        t.CopyFrom(numpy_helper.from_array(a, t.name))


def nan_in_constant_node(m):
    t = init(m, "mm8.bias")
    a = numpy_helper.to_array(t).copy()
    a[2] = np.inf
    m.graph.initializer.remove(t)
    const = helper.make_node(
        "Constant", [], ["mm8.bias"], name="bias_const", value=numpy_helper.from_array(a)
    )
    m.graph.node.insert(0, const)


def cycle(m):
    node(m, "relu3").input[0] = "relu5_out"


def rank1_gemm_weight(m):
    node(m, "fc11").input[1] = "bn2.mean"


def int_conv_weight(m):
    t = init(m, "conv4.weight")
    t.data_type = TensorProto.INT32  # same byte count: only the type is wrong


def unknown_op(m):
    node(m, "relu5").op_type = "NoSuchOp"


def bad_utf8_name(m):
    # protobuf refuses to set such a string, so it is planted in the bytes by write()
    node(m, "relu5").name = "relu\u00e9"


CASES: list[tuple[Callable, str]] = [
    (dangling, "'nothing_makes_this'"),
    (group_as_string, "group"),
    (kernel_shape_disagrees, "kernel_shape [5, 5]"),
    (group_zero, "group=0"),
    (opset_1, "opset 1, which onnxprune does not support (supported: opsets 7-"),
    (raw_data_longer, "'conv4.bias' holds 36 bytes of data but its dims [8]"),
    (raw_data_shorter, "'conv4.bias' holds 28 bytes"),
    (typed_field_wrong_count, "'conv4.bias' holds 7 values in float_data"),
    (negative_dim, "'conv4.bias' has a negative dimension"),
    (absurd_dim, "'conv4.bias' has dims [1000000000000]"),
    (unknown_data_type, "'conv4.bias' has an unknown data type (99)"),
    (undefined_data_type, "'conv4.bias' has an unknown data type (0)"),
    (nan_weight, "1 weight tensor holds NaN or Inf values ('conv4.weight')"),
    (four_inf_weights, "4 weight tensors hold NaN or Inf values ('conv1.weight', "
     "'conv4.weight', 'mm8.weight' and 1 more)"),
    (nan_in_constant_node, "('mm8.bias')"),
    (cycle, "cycle"),
    (rank1_gemm_weight, "inconsistent"),
    (int_conv_weight, "inconsistent"),
    (unknown_op, "'NoSuchOp', which ai.onnx opset 17 does not define"),
    (bad_utf8_name, "not valid UTF-8"),
]  # fmt: skip


def write(model: onnx.ModelProto, path: Path) -> Path:
    data = model.SerializeToString()
    path.write_bytes(data.replace("relu\u00e9".encode(), b"relu\xff\xfe"))  # same length
    return path


@pytest.mark.parametrize("mode", [["--structured", "0.5"], ["--unstructured", "0.5"]])
@pytest.mark.parametrize(("mutate", "needle"), CASES, ids=[c[0].__name__ for c in CASES])
def test_invalid_model_is_refused_as_what_it_is(mutate, needle, mode, tmp_path, capsys):
    model = mixed_cnn()
    mutate(model)
    src = write(model, tmp_path / "model.onnx")
    before, digest = sorted(os.listdir(tmp_path)), sha(src)
    code, err = run([str(src), *mode], capsys)
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle in err, err
    assert "internal error" not in err and "no prunable weights" not in err
    assert sha(src) == digest
    assert sorted(os.listdir(tmp_path)) == before


def test_opset_1_message_names_the_range(tmp_path, capsys):
    model = mixed_cnn()
    opset_1(model)
    code, err = run([str(write(model, tmp_path / "m.onnx")), "--structured", "0.5"], capsys)
    assert code == 1 and "onnx.version_converter" in err, err


def _external_model(tmp_path: Path, length_delta: int) -> Path:
    model = mixed_cnn()
    t = init(model, "conv4.weight")
    raw = t.raw_data
    (tmp_path / "w.bin").write_bytes(raw + b"\0" * max(length_delta, 0))
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", len(raw) + length_delta)):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)
    return write(model, tmp_path / "ext.onnx")


@pytest.mark.parametrize("delta", [-4, 4])
def test_external_data_length_that_disagrees_with_dims(delta, tmp_path, capsys):
    src = _external_model(tmp_path, delta)
    before = sorted(os.listdir(tmp_path))
    digests = {p: sha(tmp_path / p) for p in before}
    code, err = run([str(src), "--structured", "0.5"], capsys)
    assert code == 1, err
    assert "external data for tensor 'conv4.weight' is" in err and "need 2304" in err, err
    assert err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == before
    assert {p: sha(tmp_path / p) for p in before} == digests


def test_external_data_of_the_right_length_loads(tmp_path, capsys):
    src = _external_model(tmp_path, 0)
    code, err = run([str(src), "--structured", "0.5", "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == 0, err


def test_unsorted_node_list_is_sorted_pruned_and_noted(tmp_path, capsys):
    model = mixed_cnn()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)  # the checker alone would refuse it
    src = write(model, tmp_path / "unsorted.onnx")
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code, err = run([str(src), "--structured", "0.5", "-o", str(out), "--report", str(report)],
                    capsys)  # fmt: skip
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(out)))  # the output is sorted
    notes = json.dumps(json.loads(report.read_text()))
    assert "not in topological order; it was sorted" in notes


def test_model_file_name_that_is_not_utf8_works(tmp_path, capsys):
    folder = os.fsencode(tmp_path)
    src = os.path.join(folder, b"mod\xff\xfe.onnx")
    with open(src, "wb") as fh:
        fh.write(mixed_cnn().SerializeToString())
    code, err = run([os.fsdecode(src), "--structured", "0.5"], capsys)
    assert code == 0, err
    assert os.path.exists(os.path.join(folder, b"mod\xff\xfe.pruned.onnx"))


def test_250_character_file_name_is_a_clear_error(tmp_path, capsys):
    src = tmp_path / ("a" * 250 + ".onnx")
    src.write_bytes(mixed_cnn().SerializeToString())
    before = sorted(os.listdir(tmp_path))
    code, err = run([str(src), "--structured", "0.5"], capsys)  # default output name too long
    assert code == 2, err  # the output's name is the problem: a usage error, checked first
    assert err.startswith("error: -o") and "longer than the file system allows" in err, err
    assert sorted(os.listdir(tmp_path)) == before


def test_raw_data_length_reads_the_size_without_copying():
    for n in (0, 1, 31, 32, 127, 128, 20000):
        t = numpy_helper.from_array(np.zeros(n, np.uint8), "t")
        t.doc_string = "x" * 5
        assert raw_data_length(t) == n


# ------------------------------------------------------------------------ the API, in memory
@pytest.mark.parametrize(("mutate", "needle"), CASES[:-1], ids=[c[0].__name__ for c in CASES[:-1]])
def test_in_memory_invalid_model_raises_onnxprune_error(mutate, needle):
    model = mixed_cnn()
    mutate(model)
    before = model.SerializeToString()
    with pytest.raises(OnnxPruneError) as exc:
        onnxprune.prune(model, structured=0.5, runs=5)
    assert needle in str(exc.value)
    assert model.SerializeToString() == before


def test_in_memory_model_with_unloaded_external_data_is_named():
    model = mixed_cnn()
    t = init(model, "conv4.weight")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    with pytest.raises(OnnxPruneError, match=r"'conv4\.weight' .* external file that was not loaded"):
        onnxprune.prune(model, structured=0.5, runs=5)


def test_in_memory_unsorted_model_is_sorted_on_a_copy():
    model = mixed_cnn()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    before = model.SerializeToString()
    result = onnxprune.prune(model, structured=0.5, runs=5)
    assert (
        "the model's node list was not in topological order; it was sorted" in result.report.notes
    )
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model)


def test_stale_shape_hints_are_not_refused(tmp_path, capsys):
    """onnxruntime merges a value_info or output shape that disagrees leniently: so do the
    load, the graph view (inference wins over a stale annotation) and the final check of a
    structured prune (the original's stale output shape is not blamed on pruning)."""
    model = mixed_cnn()
    model.graph.value_info.append(helper.make_tensor_value_info("relu3_out", 1, [9, 9]))
    dims = model.graph.output[0].type.tensor_type.shape.dim
    dims[-1].dim_value = 7
    src = write(model, tmp_path / "stale.onnx")
    for mode in (["--unstructured", "0.5"], ["--structured", "0.5", "--round-to", "1"]):
        code, err = run([str(src), *mode, "-o", str(tmp_path / "o.onnx"), "--force"], capsys)
        assert code == 0, err
    batch = mixed_cnn()  # the input says batch 2, the declared output still batch 1
    batch.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    src = write(batch, tmp_path / "batch.onnx")
    code, err = run([str(src), "--structured", "0.5", "-o", str(tmp_path / "b.onnx")], capsys)
    assert code == 0, err


def test_custom_domain_ops_pass_the_checks():
    from onnxprune.graph.check import check_graph

    model = mixed_cnn()
    relu = node(model, "relu5")
    relu.op_type, relu.domain = "MyRelu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    assert check_graph(model) == []
