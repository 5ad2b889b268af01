"""SIGINT and SIGTERM as exceptions, so an interrupted run unwinds and cleans up.

Python turns SIGINT into ``KeyboardInterrupt`` but lets SIGTERM kill the process on the spot,
skipping every ``finally`` and ``with`` block: a staged output folder or a temporary folder
would be left behind. Here both signals raise ``Interrupted`` (a ``BaseException``, so no
``except Exception`` swallows it and click does not turn it into an "Aborted!" line), the stack
unwinds through the cleanup code, and the CLI prints one ``error:`` line and exits 128 + the
signal number (130, 143) as shells expect. Only the first signal raises: a second one while the
cleanup runs would interrupt the cleanup itself, so it is ignored.

Folders that must not survive a signal even between two statements (a staged output between
its creation and the ``with`` block that discards it) are ``track``-ed; ``cleanup`` removes
whatever is still tracked when the CLI exits on a signal.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_state: dict[str, object] = {"installed": False, "stopping": False, "received": None,
                             "deferring": 0}
_tracked: set[Path] = set()


class Interrupted(BaseException):
    """Raised in the main thread when SIGINT or SIGTERM arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum

    def __str__(self) -> str:
        if self.signum == signal.SIGINT:
            return "interrupted"
        return f"terminated by {signal.Signals(self.signum).name}"


def _handler(signum: int, frame: object) -> None:
    if _state["received"] is None:
        _state["received"] = signum
    if _state["stopping"] or _state["deferring"]:
        return  # stopping: ignored; deferring: ``deferred`` raises when its block ends
    _state["stopping"] = True
    raise Interrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends, then raise: for two statements that must
    not be split, such as creating a folder and tracking it.

    Blocking the signals in this thread is not enough: the kernel hands a process signal to
    any thread that does not block it (onnxruntime's and numpy's pools), and Python then runs
    the handler in the main thread at its next instruction anyway, which left a staged
    folder behind about once in 80 SIGTERMs. So the handler itself waits while a block runs.
    """
    blockable = hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS) if blockable else None
    _state["deferring"] = int(_state["deferring"]) + 1  # type: ignore[call-overload]
    try:
        yield
    finally:
        _state["deferring"] = int(_state["deferring"]) - 1  # type: ignore[call-overload]
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
    if (_state["installed"] and not _state["deferring"] and not _state["stopping"]
            and _state["received"] is not None):  # fmt: skip
        _state["stopping"] = True
        raise Interrupted(int(_state["received"]))  # type: ignore[call-overload]


def check() -> None:
    """Raise ``Interrupted`` if a signal arrived: the exception the handler raised can be
    lost when it fires inside a C extension that clears errors, so the points of no return
    (committing an output, a successful exit) ask again."""
    if _state["received"] is not None:
        raise Interrupted(int(_state["received"]))  # type: ignore[call-overload]


def install() -> dict[int, object] | None:
    """Make SIGINT/SIGTERM raise ``Interrupted``; returns the previous handlers (None when
    already installed, or when not on the main thread, where signals cannot be handled)."""
    if _state["installed"] or threading.current_thread() is not threading.main_thread():
        return None
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state.update(installed=True, stopping=False, received=None)
    return previous


def restore(previous: dict[int, object] | None) -> None:
    """Put back the handlers ``install`` replaced."""
    if previous is None:
        return
    for s, h in previous.items():
        signal.signal(s, h)  # type: ignore[arg-type]
    _state.update(installed=False, stopping=False, received=None)


@contextmanager
def handled() -> Iterator[None]:
    """Signals raise ``Interrupted`` inside the block; the handlers that were there before
    come back after it (so calling the CLI in-process leaves the caller's handlers alone)."""
    previous = install()
    try:
        yield
    finally:
        restore(previous)


def hold() -> None:
    """Ignore further signals: the run is already ending (printing its one error line)."""
    _state["stopping"] = True


def track(path: Path) -> None:
    """Remove ``path`` (a folder) in ``cleanup`` unless ``untrack``-ed first."""
    _tracked.add(Path(path))


def untrack(path: Path) -> None:
    _tracked.discard(Path(path))


def cleanup() -> None:
    """Remove every tracked folder (the CLI calls this when it exits on a signal)."""
    for path in list(_tracked):
        for _ in range(3):  # a file still being closed can make one pass miss it
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
        _tracked.discard(path)


def exit_on(exc: Interrupted) -> None:
    """Clean up, print the one error line and exit with the signal's code."""
    import sys

    hold()
    cleanup()
    sys.stderr.write(f"error: {exc}\n")
    sys.stderr.flush()
    raise SystemExit(exc.exit_code)
