"""Writing ONNX models safely: output-path checks and atomic, staged saves.

``stage_model`` writes a complete output (model + external data) into a temporary folder
beside the destination; ``StagedModel.commit`` then moves it into place with ``os.replace``,
so a crash or a full disk never leaves a truncated model where the user expects one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import onnx

from onnxprune import signals
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph import external
from onnxprune.graph.external import (
    PROTOBUF_LIMIT,
    DataWriter,
    externalized_copy,
    total_tensor_bytes,
)
from onnxprune.graph.outputs import check_side_outputs, data_file_for, model_outputs
from onnxprune.graph.proto import (
    LAZY_MIN_BYTES,
    TENSOR_DATA_FIELDS,
    copy_fields,
    external_info,
    is_external,
    is_lazy,
    lazy_source,
    make_lazy,
    materialized,
)
from onnxprune.progress import bytes_bar


def default_output_path(input_path: Path) -> Path:
    """``<stem>.pruned.onnx`` beside the input, so pruning never overwrites it by default."""
    input_path = Path(input_path)
    return input_path.with_name(f"{input_path.stem}.pruned.onnx")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_output_path(input_path: Path, output_path: Path, force: bool) -> None:
    """Fail early, before any work, if the output cannot or should not be written.

    Overwriting the input needs ``force`` (it is the user's only copy); overwriting an
    earlier output does not. The output and its data file are also checked against the
    input's external-data files and for devices (``graph.outputs``).
    """
    output_path = Path(output_path)
    try:
        _check_output_path(Path(input_path), output_path, force)
    except OSError as exc:  # a name too long for the file system, and the like
        raise OnnxPruneError(f"cannot write {output_path}: {exc.strerror or exc}") from exc


def _check_output_path(input_path: Path, output_path: Path, force: bool) -> None:
    folder = Path(os.path.abspath(output_path)).parent
    if not folder.exists():
        raise OnnxPruneError(f"cannot write to folder {folder}: it does not exist")
    if not folder.is_dir():
        raise OnnxPruneError(f"cannot write to folder {folder}: it is not a folder")
    inputs = [] if str(input_path) == "<memory>" else [Path(input_path)]
    check_side_outputs(inputs, model_outputs(output_path), force=force)
    if _same_file(Path(input_path), output_path) and not force:
        raise UsageError("output path is the input; pass --force to overwrite it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OnnxPruneError(f"cannot write to folder {folder}: permission denied")


def _final_path(output_path: Path) -> Path:
    """The file that will really be replaced: through a symlink, its target."""
    output_path = Path(os.path.abspath(output_path))
    if output_path.is_symlink():
        return output_path.resolve()
    return output_path


LEND_MIN_BYTES = 256 << 20
"""Outputs with external data from this size on lend their weights (``lend_weights``)."""


class StagedModel:
    """An output written completely into a temporary folder beside its final path.

    Callers can validate ``path`` (onnxruntime resolves external data next to it) before
    ``commit`` moves it into place. Used as a context manager, it discards itself when the
    block raises before ``commit``.
    """

    def __init__(
        self, temp_dir: Path, final_path: Path, file_names: list[str],
        layout: dict[str, tuple[str, int, int]] | None = None,
    ) -> None:  # fmt: skip
        self._temp_dir = temp_dir
        self._layout = layout or {}  # initializer -> (data file name, offset, length)
        self._borrowers: list[onnx.ModelProto] = []
        self._final_path = final_path
        # Data files first, the .onnx last: the model must never point at missing data.
        self._file_names = file_names
        self._committed = False
        self._discarded = False
        self.path = temp_dir / final_path.name
        self.size_bytes = sum((temp_dir / name).stat().st_size for name in file_names)

    @property
    def final_path(self) -> Path:
        """Where ``commit`` puts the model."""
        return self._final_path

    def commit(self) -> Path:
        """Move the staged files into place (data first, model last) and return the final path.

        If a move fails, files already moved are put back as they were before raising.
        """
        if self._committed:
            return self._final_path
        if self._discarded:
            raise RuntimeError("cannot commit a staged model that was discarded")
        signals.check()  # a signal whose exception was lost must still stop the commit
        folder = self._final_path.parent
        undo: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)
        try:
            for name in self._file_names:
                src, dst = self._temp_dir / name, folder / name
                backup = None
                if name != self._final_path.name and os.path.lexists(dst):
                    backup = self._temp_dir / f".previous-{name}"
                    os.replace(dst, backup)
                undo.append((dst, backup))
                os.replace(src, dst)
        except OSError as exc:
            self._rollback(undo)
            self.discard()
            raise OnnxPruneError(
                f"could not move the output into place at {folder}: {exc.strerror or exc}"
            ) from exc
        self._committed = True
        self._repoint(folder)
        _remove(self._temp_dir)
        return self._final_path

    def lend_weights(
        self, model: onnx.ModelProto, *, before: Callable[[], object] | None = None
    ) -> onnx.ModelProto:
        """A copy of ``model`` whose big initializers are lazy views of the staged data file
        (``model`` itself is left as it is; drop it to give its memory back).

        Once written, the pruned weights need not stay in memory while the two models are
        validated (that is what keeps validation within the memory of one model): they are
        read back from the output when asked. A copy, because protobuf keeps a message's
        bytes in its arena until the whole message goes: clearing fields frees nothing.
        ``commit`` points the copy at the committed file, ``discard`` reads its weights back
        into memory before the file goes. Only outputs of ``LEND_MIN_BYTES`` or more are
        lent (small ones stay as they are); ``before`` runs first (work still reading
        ``model``'s tensors on another thread must finish before they are copied).
        """
        if self._committed or self._discarded or self.size_bytes < LEND_MIN_BYTES:
            return model
        if not any(w[2] >= LAZY_MIN_BYTES for w in self._layout.values()):
            return model
        if before is not None:
            before()
        light = onnx.ModelProto()
        copy_fields(model, light, frozenset({"graph"}))
        copy_fields(model.graph, light.graph, frozenset({"initializer"}))
        for tensor in model.graph.initializer:
            where = self._layout.get(tensor.name)
            out = light.graph.initializer.add()
            if where is None or where[2] < LAZY_MIN_BYTES:
                out.CopyFrom(tensor)
                continue
            copy_fields(tensor, out, TENSOR_DATA_FIELDS)
            make_lazy(out, self._temp_dir / where[0], where[1], where[2])
        self._borrowers.append(light)
        return light

    def _lent(self) -> Iterator[onnx.TensorProto]:
        """The borrowers' tensors that point into the staging folder."""
        prefix = str(self._temp_dir) + os.sep
        for model in self._borrowers:
            for tensor in model.graph.initializer:
                if is_lazy(tensor) and lazy_source(tensor)[0].startswith(prefix):
                    yield tensor

    def _repoint(self, folder: Path) -> None:
        for tensor in list(self._lent()):
            path, offset, length = lazy_source(tensor)
            make_lazy(tensor, folder / os.path.basename(path), offset, length)
        self._borrowers.clear()

    def _take_back(self) -> None:
        for tensor in list(self._lent()):
            tensor.CopyFrom(materialized(tensor))
        self._borrowers.clear()

    def _rollback(self, undo: list[tuple[Path, Path | None]]) -> None:
        for dst, backup in reversed(undo):
            try:
                if backup is not None:
                    os.replace(backup, dst)
                elif not (self._temp_dir / dst.name).exists():  # it was moved: take it back
                    os.remove(dst)
            except OSError:
                pass

    def discard(self) -> None:
        """Remove everything staged; safe to call more than once, and after commit."""
        if self._committed or self._discarded:
            return
        self._discarded = True
        try:
            self._take_back()
        finally:
            _remove(self._temp_dir)

    def __enter__(self) -> StagedModel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not self._committed:
            self.discard()


def stage_model(
    model: onnx.ModelProto, output_path: Path, *, external_data: bool | None = None,
    progress: bool = False,
) -> StagedModel:  # fmt: skip
    """Write ``model`` completely into a temporary folder beside ``output_path``.

    ``external_data=None`` picks external data only when the model needs it; True forces it
    (to keep a model the user stored that way in the same shape). Weights go to
    ``<output name>.data``, streamed one tensor at a time (a lazy one in chunks), with a
    bar of bytes and time left when ``progress``. The caller's ``model`` is not modified.
    """
    final = _final_path(Path(output_path))
    total = total_tensor_bytes(model)
    use_external = (
        total >= external.EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    )
    if not use_external and total > PROTOBUF_LIMIT:
        raise OnnxPruneError(
            f"the model holds {total / 1e9:.1f} GB of tensors, over protobuf's 2 GB limit; "
            "save it with external data"
        )
    temp_dir = None
    try:  # the folder is tracked from birth: a signal at any instant cannot leave it behind
        with signals.deferred():
            temp_dir = Path(tempfile.mkdtemp(dir=final.parent, prefix=".onnxprune-"))
            signals.track(temp_dir)
        with bytes_bar("save", total, enabled=progress and use_external) as bar:
            names, layout = _write_staged(model, temp_dir, final.name, use_external, bar.update)
        return StagedModel(temp_dir, final, names, layout)
    except OSError as exc:
        _remove(temp_dir)
        if temp_dir is None:
            raise OnnxPruneError(
                f"cannot write to folder {final.parent}: {exc.strerror or exc}"
            ) from exc
        raise OnnxPruneError(f"could not write {final}: {exc.strerror or exc}") from exc
    except BaseException:
        _remove(temp_dir)
        raise


def stage_lending(
    model: onnx.ModelProto, output_path: Path, external_data: bool | None, progress: bool,
    before: Callable[[], object] | None = None,
) -> tuple[StagedModel, onnx.ModelProto]:  # fmt: skip
    """``stage_model``, then ``StagedModel.lend_weights``: the staged output and the model
    to go on with (for a big one, a copy whose weights are read from the staged file)."""
    staged = stage_model(model, output_path, external_data=external_data, progress=progress)
    return staged, staged.lend_weights(model, before=before)


def _remove(temp_dir: Path | None) -> None:
    """Remove a staging folder; it stays tracked until it is really gone, so the exit on a
    signal (``signals.cleanup``) tries again whatever interrupted this removal."""
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not os.path.lexists(temp_dir):
            signals.untrack(temp_dir)


def save_model(
    model: onnx.ModelProto, output_path: Path, *, external_data: bool | None = None
) -> int:
    """Stage and commit in one step; returns bytes written (model file + data file)."""
    with stage_model(model, output_path, external_data=external_data) as staged:
        staged.commit()
    return staged.size_bytes


def _write_file(path: Path, content: bytes) -> None:
    """Write one file; a separate function so tests can make it fail midway."""
    with open(path, "wb") as fh:
        fh.write(content)


def _serialize(model: onnx.ModelProto) -> bytes:
    try:
        return model.SerializeToString()
    except Exception as exc:  # upb raises ValueError/EncodeError past 2 GB
        raise OnnxPruneError(
            f"cannot serialize the model ({exc}); it is probably over protobuf's 2 GB limit "
            "and needs external data"
        ) from exc


def _write_staged(
    model: onnx.ModelProto, folder: Path, name: str, use_external: bool, progress=None
) -> tuple[list[str], dict[str, tuple[str, int, int]]]:
    """Write the model (and data file) into ``folder``: the file names, data first, and
    where each externally stored initializer went (name -> (file, offset, length))."""
    onnx_path = folder / name
    if not use_external:
        _write_file(onnx_path, _serialize(model))
        return [name], {}

    data_name = data_file_for(folder / name).name
    writer = DataWriter(folder / data_name, data_name, progress)
    try:
        skeleton = externalized_copy(model, writer)
    finally:
        writer.close()
    _write_file(onnx_path, _serialize(skeleton))
    layout = {}
    for tensor in skeleton.graph.initializer:
        if is_external(tensor):
            location, offset, length = external_info(tensor)
            layout[tensor.name] = (location, offset, length or 0)
    return ([data_name, name] if writer.used else [name]), layout
