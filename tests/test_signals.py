"""SIGINT and SIGTERM at any moment: exit 130 / 143, one `error:` line, no traceback, and
nothing left behind (the staged output folder, temporary folders)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import pytest

from onnxprune import signals
from onnxprune.graph.save import stage_model
from onnxprune.testing.graphs import small_cnn


def _temp_folders() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "onnxprune-*")))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), path)
    return path


def _start(model: Path) -> subprocess.Popen:
    # --runs so large that validation outlasts every signal the tests send
    args = [sys.executable, "-m", "onnxprune", str(model), "--unstructured", "0.5",
            "--runs", "1000000", "-q"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_staged(folder: Path, proc: subprocess.Popen, limit_s: float = 20.0) -> None:
    """Until the staged output folder exists: the run is in the middle of its work."""
    end = time.monotonic() + limit_s
    while not list(folder.glob(".onnxprune-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the run never staged its output"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen, sig: int, folder: Path, before: set[str]) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err and "internal error" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx"]  # no output, no staging
    assert _temp_folders() <= before
    return proc.returncode, err


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_work_cleans_up_and_exits_with_its_code(model, sig, code):
    before = _temp_folders()
    proc = _start(model)
    _wait_for_staged(model.parent, proc)
    returncode, err = _finish(proc, sig, model.parent, before)
    assert returncode == code
    assert err == ("error: interrupted\n" if sig == signal.SIGINT
                   else "error: terminated by SIGTERM\n")  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line_too(model, sig):
    """0.15 s in, the CLI is importing numpy/onnx/click: the handlers are already there."""
    before = _temp_folders()
    proc = _start(model)
    time.sleep(0.15)
    returncode, err = _finish(proc, sig, model.parent, before)
    assert returncode == 128 + sig and err.count("\n") == 1 and err.startswith("error: ")


def test_sigterm_at_once_ends_the_process_with_nothing_written(model):
    """Before the interpreter reaches our first line, SIGTERM's default applies: the process
    ends by the signal (the shell reports 143 either way) without a word or a file."""
    before = _temp_folders()
    proc = _start(model)
    returncode, err = _finish(proc, signal.SIGTERM, model.parent, before)
    assert returncode in (143, -signal.SIGTERM) and err.count("\n") <= 1


def test_handled_turns_sigterm_into_an_exception_and_restores_the_handlers():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(signals.Interrupted) as e, signals.handled():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode; never reached
    assert e.value.exit_code == 143 and str(e.value) == "terminated by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_signal_during_cleanup_is_ignored():
    with pytest.raises(signals.Interrupted), signals.handled():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # would abort the cleanup if it raised
            time.sleep(0.01)
            cleaned = True
    assert cleaned


def test_a_staged_folder_is_tracked_until_committed_or_discarded(tmp_path):
    staged = stage_model(small_cnn(), tmp_path / "out.onnx")
    folder = staged.path.parent
    assert folder.is_dir()
    signals.cleanup()  # what the CLI does on a signal, even before `with staged:` was entered
    assert not folder.exists()
    staged = stage_model(small_cnn(), tmp_path / "out.onnx")
    staged.commit()
    signals.cleanup()
    assert (tmp_path / "out.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
