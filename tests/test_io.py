"""Tests for onnxprune.graph.modelfile: loading, output-path checks and atomic saving.

Every model is built here with onnx.helper and written to tmp_path; onnxruntime runs the
models to prove that what we load and save still computes the same thing.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph import external, save
from onnxprune.graph import modelfile as io

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 3, 3, 3)).astype(np.float32)
B = RNG.standard_normal(16).astype(np.float32)
X = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)


def conv_model(
    *, opset: int = 17, batch: int | str = 2, weight_as_constant: bool = False
) -> onnx.ModelProto:
    """x -> Conv(W, B) -> Relu -> y, with W and B as initializers or Constant nodes."""
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")]
    if weight_as_constant:
        # float_data (not raw_data) for W, and value_floats for B: both must become initializers.
        w_tensor = helper.make_tensor("w_const", TensorProto.FLOAT, W.shape, W.flatten().tolist())
        nodes[:0] = [
            helper.make_node("Constant", [], ["W"], value=w_tensor),
            helper.make_node("Constant", [], ["B"], value_floats=B.tolist()),
        ]
        inits = []
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 16, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def write(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def run(model_or_path: onnx.ModelProto | Path, x: np.ndarray = X) -> np.ndarray:
    source = (
        str(model_or_path) if isinstance(model_or_path, Path) else model_or_path.SerializeToString()
    )
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def externalize(tensor: onnx.TensorProto, location: str, data_file: Path | None = None) -> None:
    """Append a tensor's bytes to ``data_file`` by hand and point the tensor at ``location``."""
    data = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
    offset = 0
    if data_file is not None:
        with open(data_file, "ab") as fh:
            offset = fh.tell()
            fh.write(data)
    for typed in ("raw_data", "float_data"):
        tensor.ClearField(typed)
    tensor.data_location = TensorProto.EXTERNAL
    entries = (("location", location), ("offset", str(offset)), ("length", str(len(data))))
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".onnxprune-"))


# --- load_model: good input -------------------------------------------------------------------


def test_load_valid_model(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "m.onnx")
    loaded = io.load_model(path)
    assert loaded.path == path.absolute()
    assert loaded.used_external_data is False
    assert loaded.size_bytes == path.stat().st_size
    assert loaded.notes == []
    assert {t.name for t in loaded.model.graph.initializer} == {"W", "B"}
    np.testing.assert_array_equal(run(loaded.model), run(path))


def test_load_accepts_str_path(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "m.onnx")
    assert io.load_model(str(path)).model.graph.node[0].op_type == "Conv"


def test_dynamic_batch_model_loads_and_saves(tmp_path: Path) -> None:
    path = write(conv_model(batch="N"), tmp_path / "dyn.onnx")
    loaded = io.load_model(path)
    assert loaded.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    out = tmp_path / "dyn.pruned.onnx"
    io.save_model(loaded.model, out)
    for batch in (1, 5):
        x = RNG.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        assert run(out, x).shape == (batch, 16, 8, 8)
        np.testing.assert_array_equal(run(out, x), run(path, x))


def test_opset_outside_tested_range_is_noted_not_refused(tmp_path: Path) -> None:
    loaded = io.load_model(write(conv_model(opset=9), tmp_path / "old.onnx"))
    assert "opset 9 is outside the tested range 11-22" in loaded.notes
    in_range = io.load_model(write(conv_model(opset=11), tmp_path / "ok.onnx"))
    assert not any("opset" in note for note in in_range.notes)


# --- load_model: bad input --------------------------------------------------------------------


def test_missing_file_is_named_as_missing(tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError, match=r"nope\.onnx does not exist"):
        io.load_model(tmp_path / "nope.onnx")


def test_directory_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError, match="is a folder"):
        io.load_model(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"this is a README, not a model\nsecond line\n",
        b"",
    ],
    ids=["random-bytes", "text", "empty"],
)
def test_non_onnx_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxPruneError, match=r"bad\.onnx is not a valid ONNX model \(.+\)") as info:
        io.load_model(path)
    assert type(info.value) is OnnxPruneError  # exit code 1, not a usage error


def test_truncated_protobuf_is_refused(tmp_path: Path) -> None:
    data = conv_model().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxPruneError, match="is not a valid ONNX model"):
        io.load_model(path)


def test_model_without_graph_or_nodes_is_refused(tmp_path: Path) -> None:
    no_graph = onnx.ModelProto(ir_version=8)
    with pytest.raises(OnnxPruneError, match="no graph"):
        io.load_model(write(no_graph, tmp_path / "nograph.onnx"))
    empty = helper.make_model(helper.make_graph([], "empty", [], []))
    with pytest.raises(OnnxPruneError, match="no nodes"):
        io.load_model(write(empty, tmp_path / "nonodes.onnx"))


# --- external data ----------------------------------------------------------------------------


def external_conv_model(folder: Path, location: str, data_file: Path | None) -> Path:
    """conv_model with W stored in an external file written by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    model = conv_model()
    externalize(model.graph.initializer[0], location, data_file)
    return write(model, folder / "model.onnx")


def test_missing_external_data_file_is_named(tmp_path: Path) -> None:
    path = external_conv_model(tmp_path, "weights.bin", data_file=None)
    with pytest.raises(OnnxPruneError, match=r"weights\.bin .*is missing"):
        io.load_model(path)


def test_truncated_external_data_file_is_refused(tmp_path: Path) -> None:
    path = external_conv_model(tmp_path, "weights.bin", tmp_path / "weights.bin")
    (tmp_path / "weights.bin").write_bytes(W.tobytes()[:100])
    with pytest.raises(OnnxPruneError, match="runs past the end"):
        io.load_model(path)


def test_traversal_location_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())  # exists and has the right size: only the path is wrong
    path = external_conv_model(tmp_path / "model", "../secret.bin", data_file=None)
    with pytest.raises(OnnxPruneError, match=r"refusing external data path.*outside the model"):
        io.load_model(path)


def test_absolute_location_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())
    path = external_conv_model(tmp_path / "model", str(secret), data_file=None)
    with pytest.raises(OnnxPruneError, match=r"refusing external data path.*outside the model"):
        io.load_model(path)


def test_symlink_escaping_the_model_folder_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(W.tobytes())
    path = external_conv_model(tmp_path / "model", "w.bin", data_file=None)
    (tmp_path / "model" / "w.bin").symlink_to(secret)
    with pytest.raises(OnnxPruneError, match=r"refusing external data path.*outside the model"):
        io.load_model(path)


def test_location_in_a_subfolder_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    path = external_conv_model(tmp_path, "data/../data/w.bin", tmp_path / "data" / "w.bin")
    loaded = io.load_model(path)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.model.graph.initializer[0]), W)


def test_external_data_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    original = conv_model()
    expected = run(original)
    by_hand = conv_model()
    for tensor in by_hand.graph.initializer:  # W at offset 0, B right after it
        externalize(tensor, "model.bin", src / "model.bin")
    write(by_hand, src / "model.onnx")
    loaded = io.load_model(src / "model.onnx")
    assert loaded.used_external_data
    assert loaded.size_bytes == sum(p.stat().st_size for p in src.iterdir())
    assert not any(io.is_external(t) for t in loaded.model.graph.initializer)

    out = tmp_path / "out" / "model.pruned.onnx"
    out.parent.mkdir()
    staged = io.stage_model(loaded.model, out, external_data=True)
    # The staged model is complete and runnable where it lies, before commit.
    assert staged.path.parent.name.startswith(".onnxprune-")
    assert staged.path.parent.parent == out.parent
    np.testing.assert_array_equal(run(staged.path), expected)
    assert not out.exists()
    assert staged.commit() == out
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "model.pruned.onnx",
        "model.pruned.onnx.data",
    ]
    assert staged.size_bytes == sum(p.stat().st_size for p in out.parent.iterdir())

    again = io.load_model(out)
    assert again.used_external_data
    for name in ("W", "B"):
        before = next(t for t in original.graph.initializer if t.name == name)
        after = next(t for t in again.model.graph.initializer if t.name == name)
        np.testing.assert_array_equal(numpy_helper.to_array(after), numpy_helper.to_array(before))
    np.testing.assert_array_equal(run(out), expected)
    # W (1728 bytes) goes to the data file; B (64 bytes) is under the 1024-byte threshold.
    written = onnx.load(out, load_external_data=False)
    assert [io.is_external(t) for t in written.graph.initializer] == [True, False]


def big_weight_model(n_out: int = 64) -> onnx.ModelProto:
    """MatMul with a weight big enough (>= 1 MiB) to be aligned in the data file.

    S (16 bytes) stays inline, M (3000 bytes) goes first into the data file, so W starts at an
    offset that alignment has to move.
    """
    w = RNG.standard_normal((4096, n_out)).astype(np.float32)
    small = RNG.standard_normal((2, 2)).astype(np.float32)
    medium = RNG.standard_normal(750).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            helper.make_node("Identity", ["S"], ["s"]),
            helper.make_node("Identity", ["M"], ["m"]),
        ],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4096])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [750]),
        ],
        [
            numpy_helper.from_array(small, "S"),
            numpy_helper.from_array(medium, "M"),
            numpy_helper.from_array(w, "W"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_external_save_writes_big_tensors_aligned_and_leaves_caller_model_alone(
    tmp_path: Path,
) -> None:
    model = big_weight_model()
    before = model.SerializeToString()
    out = tmp_path / "big.onnx"
    written = io.save_model(model, out, external_data=True)
    assert model.SerializeToString() == before  # the caller's proto was not touched
    data = tmp_path / "big.onnx.data"
    assert written == out.stat().st_size + data.stat().st_size
    stored = onnx.load(out, load_external_data=False)
    s, m, w = stored.graph.initializer
    assert [io.is_external(t) for t in (s, m, w)] == [False, True, True]
    entries = {e.key: e.value for e in w.external_data}
    assert entries["location"] == "big.onnx.data"
    assert int(entries["offset"]) == 64 * 1024  # after M's 3000 bytes, moved to the boundary
    x = RNG.standard_normal((3, 4096)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    expected = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["y"], {"x": x})[0], expected.run(["y"], {"x": x})[0])


def test_model_needs_external_data_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    model = conv_model()  # 1728 + 64 bytes of weights
    assert io.model_needs_external_data(model) is False
    monkeypatch.setattr(external, "EXTERNAL_DATA_THRESHOLD", 1792)
    assert io.model_needs_external_data(model) is True
    monkeypatch.setattr(external, "EXTERNAL_DATA_THRESHOLD", 1793)
    assert io.model_needs_external_data(model) is False


def test_automatic_external_data_follows_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = big_weight_model()
    io.save_model(model, tmp_path / "auto.onnx")
    assert not (tmp_path / "auto.onnx.data").exists()
    monkeypatch.setattr(external, "EXTERNAL_DATA_THRESHOLD", 1000)
    io.save_model(model, tmp_path / "auto2.onnx")
    assert (tmp_path / "auto2.onnx.data").stat().st_size >= 4096 * 64 * 4
    np.testing.assert_array_equal(
        numpy_helper.to_array(io.load_model(tmp_path / "auto2.onnx").model.graph.initializer[2]),
        numpy_helper.to_array(model.graph.initializer[2]),
    )


# --- Constant nodes -----------------------------------------------------------------------------


def test_constant_node_weights_become_initializers(tmp_path: Path) -> None:
    original = conv_model(weight_as_constant=True)
    path = write(original, tmp_path / "const.onnx")
    loaded = io.load_model(path)
    graph = loaded.model.graph
    assert [n.op_type for n in graph.node] == ["Conv", "Relu"]
    assert {t.name for t in graph.initializer} == {"W", "B"}
    assert "2 Constant-node weights converted to initializers" in loaded.notes
    onnx.checker.check_model(loaded.model, full_check=True)
    np.testing.assert_array_equal(run(loaded.model), run(original))
    # Typed (float_data) tensors also go to the external file when saving with external data.
    out = tmp_path / "const.pruned.onnx"
    io.save_model(loaded.model, out, external_data=True)
    stored = onnx.load(out, load_external_data=False)
    assert io.is_external(next(t for t in stored.graph.initializer if t.name == "W"))
    np.testing.assert_array_equal(run(out), run(original))


def if_model() -> onnx.ModelProto:
    """y = x + (cond ? A : Constant C); A is a subgraph initializer, C a subgraph Constant."""
    a = numpy_helper.from_array(np.full((4, 128), 2.0, np.float32), "A")  # 2 KiB: goes external
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["A"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4, 128])],
        [a],
    )
    c = numpy_helper.from_array(np.full((4, 128), -1.0, np.float32), "c")
    else_g = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value=c)],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [4, 128])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["cond"], value=helper.make_tensor("k", 9, [], [1])),
            helper.make_node("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
            helper.make_node("Add", ["x", "r"], ["y"]),
        ],
        "if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 128])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_subgraphs_are_left_alone_and_their_initializers_saved(tmp_path: Path) -> None:
    original = if_model()
    loaded = io.load_model(write(original, tmp_path / "if.onnx"))
    assert [n.op_type for n in loaded.model.graph.node] == ["If", "Add"]  # main Constant gone
    else_branch = next(a.g for a in loaded.model.graph.node[0].attribute if a.name == "else_branch")
    assert [n.op_type for n in else_branch.node] == ["Constant"]  # subgraph untouched
    out = tmp_path / "if.pruned.onnx"
    io.save_model(loaded.model, out, external_data=True)
    stored = onnx.load(out, load_external_data=False)
    # the branch's weight was moved to the main graph at load (a body reads outer names)
    moved = next(t for t in stored.graph.initializer if t.name == "A")
    assert io.is_external(moved)
    x = np.ones((4, 128), np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.full((4, 128), 3.0))
    again = io.load_model(out)
    assert again.used_external_data


# --- output paths ---------------------------------------------------------------------------------


def test_default_output_path() -> None:
    assert io.default_output_path(Path("/m/resnet.onnx")) == Path("/m/resnet.pruned.onnx")
    assert io.default_output_path(Path("model")) == Path("model.pruned.onnx")


def test_output_equal_to_input_needs_force(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "x.onnx")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.onnx"
    link.symlink_to(path)
    for same in (path, tmp_path / "sub" / ".." / "x.onnx", link):
        with pytest.raises(UsageError, match="output path is the input; pass --force"):
            io.check_output_path(path, same, force=False)
        io.check_output_path(path, same, force=True)


def test_force_overwrites_the_input(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "x.onnx")
    loaded = io.load_model(path)
    loaded.model.doc_string = "rewritten"
    io.check_output_path(path, path, force=True)
    io.save_model(loaded.model, path)
    assert io.load_model(path).model.doc_string == "rewritten"
    assert leftovers(tmp_path) == []


def test_overwriting_an_earlier_output_is_fine(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "x.onnx")
    out = tmp_path / "x.pruned.onnx"
    out.write_bytes(b"old output")
    io.check_output_path(path, out, force=False)
    io.save_model(io.load_model(path).model, out)
    np.testing.assert_array_equal(run(out), run(path))


def test_writing_through_a_symlinked_output_replaces_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    io.save_model(conv_model(), link)
    assert link.is_symlink()
    assert onnx.load(target).graph.name == "conv"


def test_output_folder_missing(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "x.onnx")
    out = tmp_path / "no" / "such" / "out.onnx"
    with pytest.raises(OnnxPruneError, match=r"cannot write to folder .*such"):
        io.check_output_path(path, out, force=False)
    with pytest.raises(OnnxPruneError, match="cannot write to folder"):
        io.save_model(conv_model(), out)


def test_output_is_a_folder(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="is a folder"):
        io.check_output_path(path, tmp_path, force=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_output_folder_not_writable(tmp_path: Path) -> None:
    path = write(conv_model(), tmp_path / "x.onnx")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OnnxPruneError, match="cannot write to folder"):
            io.check_output_path(path, locked / "out.onnx", force=False)
        with pytest.raises(OnnxPruneError, match="cannot write to folder"):
            io.save_model(conv_model(), locked / "out.onnx")
    finally:
        locked.chmod(0o700)


# --- atomic saving ---------------------------------------------------------------------------------


def failing_writer(path: Path, content: bytes) -> None:
    """Write half the file, then fail like a full disk."""
    with open(path, "wb") as fh:
        fh.write(content[: len(content) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("external", [False, True])
def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool
) -> None:
    monkeypatch.setattr(save, "_write_file", failing_writer)
    out = tmp_path / "new.onnx"
    with pytest.raises(OnnxPruneError, match=r"could not write .*No space left"):
        io.save_model(big_weight_model(), out, external_data=external)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.onnx"
    io.save_model(big_weight_model(), out, external_data=True)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(save, "_write_file", failing_writer)
    with pytest.raises(OnnxPruneError):
        io.save_model(big_weight_model(n_out=8), out, external_data=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


def test_failed_commit_restores_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.onnx"
    io.save_model(big_weight_model(), out, external_data=True)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        if Path(dst) == out:  # the data file already moved; the model move fails
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OnnxPruneError, match="could not move the output into place"):
        io.save_model(big_weight_model(n_out=8), out, external_data=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
    assert onnx.load(out).graph.initializer[2].dims == [4096, 64]


def test_staged_model_context_manager(tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    with (
        pytest.raises(RuntimeError, match="validation failed"),
        io.stage_model(conv_model(), out) as staged,
    ):
        assert staged.path.exists()
        raise RuntimeError("validation failed")
    assert not out.exists() and leftovers(tmp_path) == []
    staged.discard()  # idempotent

    with io.stage_model(conv_model(), out) as staged:
        assert staged.commit() == out
    staged.discard()  # no effect after commit
    assert out.exists() and leftovers(tmp_path) == []
    assert staged.size_bytes == out.stat().st_size


def test_input_is_never_modified(tmp_path: Path) -> None:
    model = conv_model(weight_as_constant=True)
    externalize(model.graph.node[0].attribute[0].t, "w.bin", tmp_path / "w.bin")
    path = write(model, tmp_path / "in.onnx")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a distinctive, old mtime
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (path, tmp_path / "w.bin")}
    loaded = io.load_model(path)
    assert loaded.used_external_data
    out = tmp_path / "out" / "in.pruned.onnx"
    out.parent.mkdir()
    io.save_model(loaded.model, out, external_data=True)
    io.save_model(loaded.model, tmp_path / "in.pruned.onnx")
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before}
    assert after == before


def test_identity_deduplicated_initializers_get_their_own_copy(tmp_path):
    """TorchScript exports share equal tensors (zero biases) through Identity nodes."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(4, 4, 1, 1)).astype(np.float32), "w2")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [
        helper.make_node("Identity", ["b"], ["b_copy"], name="dedup"),
        helper.make_node("Conv", ["x", "w1", "b"], ["h"], name="c1"),
        helper.make_node("Conv", ["h", "w2", "b_copy"], ["y"], name="c2"),
    ]
    graph = helper.make_graph(
        nodes,
        "dedup",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        initializer=[w1, w2, b],
    )
    path = tmp_path / "dedup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    loaded = io.load_model(path)
    assert [n.op_type for n in loaded.model.graph.node] == ["Conv", "Conv"]
    assert {"b", "b_copy"} <= {t.name for t in loaded.model.graph.initializer}
    assert any("deduplicated" in n for n in loaded.notes)
    onnx.checker.check_model(loaded.model, full_check=True)
    feeds = {"x": rng.normal(size=(1, 3, 4, 4)).astype(np.float32)}
    ref = ort.InferenceSession(str(path)).run(None, feeds)[0]
    got = ort.InferenceSession(loaded.model.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_array_equal(ref, got)
