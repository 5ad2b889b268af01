"""Every file a run writes (-o, its data file, --report, validate --json) is checked against
the files it reads and against each other before any work: one `error:` line, exit 2, the
input untouched and nothing written."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx
import pytest

from onnxprune import UsageError, prune
from onnxprune.graph.outputs import Output, check_side_outputs, input_data_files
from onnxprune.testing.graphs import small_cnn


def _external(folder: Path, name: str = "m.onnx", data: str = "m.onnx.data") -> Path:
    path = folder / name
    onnx.save(small_cnn(), path, save_as_external_data=True, location=data, size_threshold=0)
    return path


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.iterdir())
    }


def _refused(run_cli, capsys, args, folder: Path, match: str) -> None:
    before = _snapshot(folder)
    code, _, err = run_cli(args, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert _snapshot(folder) == before  # the input untouched, nothing new written


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--report", "{m}"], "would overwrite the input model"),
        (["--report", "{data}"], "would overwrite the external data file m.onnx.data"),
        (["-o", "{data}"], "would overwrite the external data file m.onnx.data"),
        (["-o", "{link}"], "would overwrite the external data file m.onnx.data"),
        (["-o", "{hard}"], "would overwrite the external data file m.onnx.data"),
        (["-o", "{dir}/o.onnx", "--report", "{dir}/o.onnx"], "are the same file"),
        (["-o", "{dir}/o.onnx", "--report", "{dir}/o.onnx.data"], "are the same file"),
        (["--report", "{dir}"], "is a folder"),
        (["--report", "{dir}/no/r.json"], "--report folder"),
        (["-o", "{dir}/sub"], "is a folder"),
    ],
)
def test_prune_refuses_side_outputs_that_collide(tmp_path, capsys, run_cli, extra, match):
    m = _external(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.data").symlink_to(tmp_path / "m.onnx.data")
    os.link(tmp_path / "m.onnx.data", tmp_path / "hard.data")
    names = {"m": m, "data": tmp_path / "m.onnx.data", "link": tmp_path / "link.data",
             "hard": tmp_path / "hard.data", "dir": tmp_path}  # fmt: skip
    args = [m, "--unstructured", "0.5", *[a.format(**names) for a in extra]]
    _refused(run_cli, capsys, args, tmp_path, match)


def test_output_on_a_device_is_refused_and_the_device_stays_a_device(tmp_path, capsys, run_cli):
    m = _external(tmp_path)
    _refused(run_cli, capsys, [m, "--unstructured", "0.5", "-o", os.devnull], tmp_path, "device")
    _refused(run_cli, capsys, [m, "--unstructured", "0.5", "--report", os.devnull], tmp_path,
             "device")  # fmt: skip
    assert Path(os.devnull).is_char_device()


def test_a_default_output_whose_data_name_is_the_inputs_data_is_refused(tmp_path, capsys, run_cli):
    m = _external(tmp_path, data="m.pruned.onnx.data")  # what the default output's data is named
    _refused(run_cli, capsys, [m, "--unstructured", "0.5"], tmp_path, "output's data file")
    code, _, err = run_cli([m, "--unstructured", "0.5", "-o", tmp_path / "other.onnx"], capsys)
    assert code == 0, err  # another name works, and the input's data is still its own
    assert prune(m, unstructured=0.5, validate=False).report.unstructured


def test_force_lets_the_output_replace_the_input_and_its_data(tmp_path, capsys, run_cli):
    m = _external(tmp_path)
    code, _, err = run_cli([m, "--unstructured", "0.5", "-o", m, "--force", "--runs", "5"], capsys)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(m))  # the replaced input loads with its data
    # but a report never replaces an input, --force or not
    _refused(run_cli, capsys, [m, "--unstructured", "0.5", "--force", "--report", m], tmp_path,
             "would overwrite the input model")  # fmt: skip


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("m.onnx", "would overwrite the input model"),
        ("p.onnx", "would overwrite the input model"),
        ("m.onnx.data", "would overwrite the external data file"),
        (".", "is a folder"),
        (os.devnull, "device"),
    ],
)
def test_validate_json_may_not_overwrite_an_input(tmp_path, capsys, run_cli, target, match):
    m = _external(tmp_path)
    onnx.save(small_cnn(), tmp_path / "p.onnx")
    json_path = tmp_path / target if target != os.devnull else target
    _refused(run_cli, capsys, ["validate", m, tmp_path / "p.onnx", "--json", json_path],
             tmp_path, match)  # fmt: skip


def test_the_api_checks_the_output_against_the_inputs_data(tmp_path):
    m = _external(tmp_path)
    before = _snapshot(tmp_path)
    for output in (tmp_path / "m.onnx.data", os.devnull):
        with pytest.raises(UsageError):
            prune(m, unstructured=0.5, output=output)
    assert _snapshot(tmp_path) == before


def test_input_data_files_resolve_locations_and_symlinks(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    m = _external(real)
    (tmp_path / "m.onnx").symlink_to(m)
    (tmp_path / "m.onnx.data").symlink_to(real / "m.onnx.data")
    assert input_data_files(tmp_path / "m.onnx") == [(real / "m.onnx.data").resolve()]
    assert input_data_files(tmp_path / "missing.onnx") == []
    with pytest.raises(UsageError, match="external data file"):
        check_side_outputs([tmp_path / "m.onnx"], [Output("--report", real / "m.onnx.data")])
    check_side_outputs([tmp_path / "m.onnx"], [Output("--report", tmp_path / "new.json")])


def test_a_file_name_too_long_is_refused_before_any_work(tmp_path, capsys, run_cli):
    long_input = tmp_path / ("a" * 245 + ".onnx")  # its default output name is over 255 bytes
    onnx.save(small_cnn(), long_input)
    _refused(run_cli, capsys, [long_input, "--unstructured", "0.5"], tmp_path, "name the output")
    m = tmp_path / "m.onnx"
    onnx.save(small_cnn(), m)
    _refused(run_cli, capsys, ["validate", m, m, "--json", tmp_path / ("j" * 300)], tmp_path,
             "longer than the file system allows")  # fmt: skip
    with pytest.raises(UsageError, match="longer than"):
        prune(m, unstructured=0.5, output=tmp_path / ("o" * 300 + ".onnx"))


def test_a_fifo_is_not_a_report_file(tmp_path, capsys, run_cli):
    m = _external(tmp_path)
    os.mkfifo(tmp_path / "pipe")
    _refused(run_cli, capsys, [m, "--unstructured", "0.5", "--report", tmp_path / "pipe"],
             tmp_path, "is not a regular file")  # fmt: skip


def test_a_hard_link_to_the_inputs_data_in_another_folder_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    m = _external(tmp_path / "a")
    os.link(tmp_path / "a" / "m.onnx.data", tmp_path / "b" / "r.json")
    with pytest.raises(UsageError, match=r"external data file m\.onnx\.data"):
        check_side_outputs([m], [Output("--report", tmp_path / "b" / "r.json")])
