"""SIGINT and SIGTERM at any moment: exit 130 / 143, one `error:` line, no traceback, and
nothing left behind (the staged output folder, temporary folders)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from onnxprune import signals
from onnxprune.graph.save import stage_model
from onnxprune.testing.graphs import small_cnn


@pytest.fixture
def model(tmp_path: Path, monkeypatch) -> Path:
    """The model alone in its folder; the runs get their own TMPDIR (other test runs on the
    machine use /tmp too), checked by ``_temp_folders``."""
    (tmp_path / "work").mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    path = tmp_path / "work" / "m.onnx"
    onnx.save(small_cnn(), path)
    return path


def _temp_folders() -> set[str]:
    return set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "*")))


def _start(model: Path) -> subprocess.Popen:
    # --runs so large that validation outlasts every signal the tests send
    args = [sys.executable, "-m", "onnxprune", str(model), "--unstructured", "0.5",
            "--runs", "1000000", "-q"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_staged(folder: Path, proc: subprocess.Popen, limit_s: float = 60.0) -> None:
    """Until the staged output folder exists: the run is in the middle of its work."""
    end = time.monotonic() + limit_s
    while not list(folder.glob(".onnxprune-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the run never staged its output"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen, sig: int, folder: Path, before: set[str]) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "internal error" not in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["m.onnx"]  # no output, no staging
    assert _temp_folders() <= before  # no onnxprune-* (or other) temp folder left
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


def _wait_for_handlers(proc: subprocess.Popen, limit_s: float = 60.0) -> None:
    """Until the process catches SIGTERM (Linux: the SigCgt mask of /proc/PID/status), i.e.
    onnxprune's first line ran; the CLI and numpy/onnx are still being imported then."""
    status = Path(f"/proc/{proc.pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to see when the handlers are installed")
    end = time.monotonic() + limit_s
    while True:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        if int(fields["SigCgt"].strip(), 16) & (1 << (signal.SIGTERM - 1)):
            return
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.001)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line_too(model, sig):
    before = _temp_folders()
    proc = _start(model)
    _wait_for_handlers(proc)
    returncode, err = _finish(proc, sig, model.parent, before)
    assert returncode == 128 + sig and err.count("\n") == 1 and err.startswith("error: "), err


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


def test_the_console_command_handles_sigterm_like_python_m(model):
    script = Path(sys.executable).with_name("onnxprune")
    if not script.exists():
        pytest.skip("the onnxprune console script is not installed beside this python")
    before = _temp_folders()
    proc = subprocess.Popen(
        [str(script), str(model), "--unstructured", "0.5", "--runs", "1000000", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_staged(model.parent, proc)
    returncode, err = _finish(proc, signal.SIGTERM, model.parent, before)
    assert returncode == 143 and err == "error: terminated by SIGTERM\n"


def test_a_signal_whose_exception_was_lost_still_stops_the_commit(tmp_path):
    """A handler's exception raised inside a C extension that clears errors is lost; the
    commit asks again, so the output is not written and the run still ends on the signal."""
    with pytest.raises(signals.Interrupted) as e, signals.handled():
        staged = stage_model(small_cnn(), tmp_path / "out.onnx")
        with staged:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            except signals.Interrupted:
                pass  # what such an extension does
            staged.commit()
    assert e.value.exit_code == 143
    assert list(tmp_path.iterdir()) == []


def test_a_signal_another_thread_receives_still_waits_for_a_deferred_block():
    """The kernel gives a process signal to any thread that does not block it; Python then
    runs the handler in the main thread at once. ``deferred`` must hold it all the same (a
    staged folder between its creation and its tracking was left behind otherwise)."""
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)  # started before the block: signals unblocked
    other.start()
    done = []
    try:
        with pytest.raises(signals.Interrupted) as e, signals.handled(), signals.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler has run by now
            done.append(True)
    finally:
        stop.set()
        other.join()
    assert done == [True] and e.value.exit_code == 143
