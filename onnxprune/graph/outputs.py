"""Every file a run writes, checked against every file it reads, before any work starts.

A JSON report written over the input model, a model written over the input's external-data
file (named directly, through a symlink or a hard link), ``-o /dev/null`` replacing the device
with a regular file, a report path that is a folder found only after the model was written:
each loses data or work. ``check_side_outputs`` refuses all of them in one place, for prune
(``-o``, its data file, ``--report``), validate (``--json``) and plan files, with one
``UsageError`` line naming the flag.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph.proto import external_info, is_external, walk_tensors


@dataclass(frozen=True)
class Output:
    """One file a run will write: ``flag`` names it in messages (``-o``, ``--report``)."""

    flag: str
    path: Path
    model: bool = False
    """The model output or its data file: these may replace the input when --force is given."""
    only_if_needed: bool = False
    """Written only for a model that needs external data: a name too long is not refused
    beforehand (an inline model would never write it)."""


def data_file_for(output_path: Path) -> Path:
    """Where a model written to ``output_path`` keeps its external data (beside the real file
    a symlinked output points to, as the staged save writes it)."""
    final = Path(os.path.abspath(output_path))
    try:
        if final.is_symlink():
            final = final.resolve()
    except OSError:  # a name too long to look up: check_side_outputs refuses it
        pass
    return final.with_name(f"{final.name}.data")


def model_outputs(path: Path, flag: str = "-o") -> list[Output]:
    """The model output and the data file it may write."""
    return [Output(flag, Path(path), model=True),
            Output(f"the data file of {flag}" if flag != "-o" else "the output's data file", data_file_for(path), model=True, only_if_needed=True)]  # fmt: skip


def input_data_files(model_path: Path) -> list[Path]:
    """The external-data files an input model's tensors name (resolved; unreadable models
    give none: loading them fails later with its own message)."""
    try:
        model = onnx.load_model(os.fspath(model_path), load_external_data=False)
    except Exception:  # not a model: the load stage names the problem
        return []
    folder = Path(os.path.abspath(model_path)).parent
    files = []
    for tensor in walk_tensors(model):
        if is_external(tensor):
            location = external_info(tensor)[0]
            if location and "\0" not in location:
                files.append(Path(os.path.realpath(folder / location)))
    return sorted(set(files))


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The real path and, for an existing file, (device, inode): hard links match too."""
    try:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
    except OSError:
        key = None
    return os.path.realpath(path), key


def _linked(path: Path) -> bool:
    """A file with other hard links: it may be an input's data file under another name."""
    try:
        return os.stat(path).st_nlink > 1
    except OSError:
        return False


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder if _is_dir(folder) else "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a path too long to look up cannot be written either
        return False


def _check_kind(out: Output) -> None:
    path = out.path
    folder = Path(os.path.abspath(path)).parent
    limit = _name_max(folder)
    if len(os.fsencode(path.name)) > limit and not out.only_if_needed:
        hint = "; name the output with -o" if out.model else ""
        raise UsageError(
            f"{out.flag} {path.name[:40]}...: the file name is longer than the file system "
            f"allows ({limit} bytes){hint}"
        )
    if not _is_dir(folder):
        if out.model:  # the save stage's own check names it (exit 1: the file system)
            return
        raise UsageError(f"{out.flag} folder {folder} does not exist")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # a new file
        if not out.model and not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{out.flag} {path}: cannot write to folder {folder}") from None
        return
    if stat.S_ISDIR(mode):
        raise UsageError(f"{out.flag} {path} is a folder; give a file name")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise UsageError(f"{out.flag} {path} is a device, not a file")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{out.flag} {path} is not a regular file")
    if not out.model and not os.access(path, os.W_OK):
        raise UsageError(f"{out.flag} {path} is not writable")


def check_side_outputs(
    inputs: Sequence[Path], outputs: Sequence[Output], *, force: bool = False
) -> None:
    """Refuse (``UsageError``) any output that is a folder or device, names the same file as
    another output, or would overwrite an input model or one of its data files.

    With ``force``, the model output may replace the input model itself (and then its data
    file the input's); nothing else may, and a report never may.
    """
    for out in outputs:
        _check_kind(out)
    seen: list[tuple[Output, tuple]] = []
    for out in outputs:
        ident = _identity(out.path)
        for other, other_ident in seen:
            if _same(ident, other_ident):
                raise UsageError(f"{other.flag} and {out.flag} are the same file {out.path}")
        seen.append((out, ident))
    model_is_input = False
    for inp in inputs:
        inp_ident = _identity(inp)
        for out, ident in seen:
            if _same(ident, inp_ident):
                if out.model and force:
                    model_is_input = True
                    continue
                if out.flag == "-o":
                    raise UsageError("output path is the input; pass --force to overwrite it")
                raise UsageError(f"{out.flag} {out.path} would overwrite the input model {inp}")
    existing = [(o, i) for o, i in seen if i[1] is not None]
    if not existing:
        return  # only new files: none can be an input's data file
    for inp in inputs:
        # data files live under the model's folder: parse the input only when an existing
        # output is there too (a big inline model is then not read twice for nothing)
        root = os.path.realpath(Path(os.path.abspath(inp)).parent) + os.sep
        if not any(i[0].startswith(root) or _linked(o.path) for o, i in existing):
            continue
        for data in input_data_files(inp):
            data_ident = _identity(data)
            for out, ident in existing:
                if _same(ident, data_ident) and not (out.model and model_is_input):
                    raise UsageError(
                        f"{out.flag} {out.path} would overwrite the external data file "
                        f"{data.name} of the input model {inp}; choose another output name"
                    )


def write_side_output(path: Path, flag: str, write) -> None:
    """``write(path)``, a failure of the disk (full, gone) named as one error line."""
    try:
        write(path)
    except OSError as exc:
        raise OnnxPruneError(f"could not write {flag} {path}: {exc.strerror or exc}") from exc
