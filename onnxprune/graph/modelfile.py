"""Reading and writing ONNX models safely.

Everything that touches the user's files goes through here, so the rest of onnxprune can work
on an in-memory ``ModelProto`` and never think about external data, half-written outputs or
overwriting the input:

* ``load_model`` parses the file, refuses external-data paths that leave the model's folder
  (checked here, before any data is read, rather than trusting onnx's own checks), pulls the
  weights into memory and turns ``Constant``-node weights into initializers so pruning passes
  only have to look in one place.
* ``stage_model`` writes a complete output (model + external data) into a temporary folder
  beside the destination; ``StagedModel.commit`` then moves it into place with ``os.replace``,
  so a crash or a full disk never leaves a truncated model where the user expects one.

The input file is only ever opened for reading.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from types import TracebackType

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError, UsageError

# Above this many bytes of tensor data a model is saved with external data: protobuf cannot
# serialize a message of 2 GiB or more, and graph structure needs some headroom on top of weights.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Tensors smaller than this stay inside the .onnx file even when saving with external data
# (same default as onnx.save_model: tiny tensors are cheaper inline than as file references).
EXTERNAL_DATA_SIZE_THRESHOLD = 1024
# Tensors at least this big start at an offset that is a multiple of _DATA_ALIGNMENT, so
# onnxruntime can memory-map them (64 KiB is the allocation granularity on Windows, and a
# multiple of the page size elsewhere). These are onnx's own historical defaults.
_ALIGN_THRESHOLD = 1024 * 1024
_DATA_ALIGNMENT = 64 * 1024
# Hard protobuf limit for one serialized message.
_PROTOBUF_LIMIT = 2**31 - 1
# Opsets the project's tests cover; others load with a note, not an error.
TESTED_OPSET_RANGE = (11, 22)

_DEFAULT_DOMAINS = ("", "ai.onnx")
_TYPED_DATA_FIELDS = (
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


@dataclass
class LoadedModel:
    """A model read from disk, with every weight in memory.

    ``path`` is the absolute path the user named (normalized, symlinks not followed: external
    data and the default output live beside the path the user gave, as onnx and onnxruntime
    resolve them).
    """

    model: onnx.ModelProto
    path: Path
    used_external_data: bool
    size_bytes: int
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Walking tensors
# --------------------------------------------------------------------------------------------


def _node_graphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held directly in a node's attributes (If branches, Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield the graphs nested anywhere below ``graph``'s nodes."""
    for node in graph.node:
        for sub in _node_graphs(node):
            yield sub
            yield from _subgraphs(sub)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored directly in ``graph``: initializers, sparse ones, node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor in the model: main graph, nested graphs and model-local functions."""
    for graph in (model.graph, *_subgraphs(model.graph)):
        yield from _graph_tensors(graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node)
            for sub in _node_graphs(node):
                for graph in (sub, *_subgraphs(sub)):
                    yield from _graph_tensors(graph)


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


# Packed types narrower than a byte; numpy_helper reports them as one byte per element.
_SUBBYTE_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4, "INT2": 2, "UINT2": 2}


@functools.cache
def _element_bits(data_type: int) -> int:
    try:
        name = onnx.TensorProto.DataType.Name(data_type)
        if name in _SUBBYTE_BITS:
            return _SUBBYTE_BITS[name]
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, ValueError, TypeError):
        return 32


def _tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Size of a tensor's data, from its shape and type.

    Reading ``raw_data`` (even for ``len``) copies the bytes out of protobuf, about a second
    per GB, so the size comes from the dims instead.
    """
    if _is_external(tensor):
        for entry in tensor.external_data:
            if entry.key == "length" and entry.value.isdigit():
                return int(entry.value)
        return 0
    if tensor.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    return math.ceil(math.prod(tensor.dims) * _element_bits(tensor.data_type) / 8)


def model_needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model's tensors are too big to fit in one protobuf file.

    Counts tensor bytes rather than serializing, which would cost as much as saving.
    """
    return _total_tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def _total_tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(_tensor_nbytes(t) for t in _all_tensors(model))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Read an ONNX model with all its weights in memory, ready for pruning.

    Raises OnnxPruneError with a one-line reason for anything that is not a usable model:
    a missing file, bytes that are not ONNX, missing or escaping external data files.
    """
    shown = os.fspath(path)  # errors name the file as the user typed it
    model_path = Path(os.path.abspath(shown))
    if not model_path.is_file():
        raise OnnxPruneError(f"{shown} is not a file")
    try:
        file_size = model_path.stat().st_size
        if file_size > _PROTOBUF_LIMIT:
            raise OnnxPruneError(
                f"{shown} is not a valid ONNX model (it is over protobuf's 2 GB limit; "
                "large models keep their weights in external data files)"
            )
        content = model_path.read_bytes()
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {shown}: {exc.strerror or exc}") from exc

    model = _parse_model(content, shown)
    del content

    notes: list[str] = []
    data_files = _load_external_data(model, model_path.parent)
    if data_files:
        names = ", ".join(sorted(p.name for p in data_files))
        notes.append(
            f"weights loaded from {len(data_files)} external data "
            f"file{'s' if len(data_files) != 1 else ''} ({names})"
        )

    notes.extend(normalize_model(model))

    opset_note = _opset_note(model)
    if opset_note:
        notes.append(opset_note)

    size = file_size + sum(p.stat().st_size for p in data_files)
    return LoadedModel(
        model=model,
        path=model_path,
        used_external_data=bool(data_files),
        size_bytes=size,
        notes=notes,
    )


def _parse_model(content: bytes, shown: str) -> onnx.ModelProto:
    """Parse protobuf bytes, turning every way they can be wrong into one readable error."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(content)
    except Exception as exc:  # protobuf raises DecodeError, and others on odd input
        reason = str(exc).strip() or type(exc).__name__
        raise OnnxPruneError(f"{shown} is not a valid ONNX model ({reason})") from exc
    if model.ir_version <= 0:
        raise OnnxPruneError(f"{shown} is not a valid ONNX model (no IR version)")
    if not model.HasField("graph"):
        raise OnnxPruneError(f"{shown} is not a valid ONNX model (it has no graph)")
    if len(model.graph.node) == 0:
        raise OnnxPruneError(f"{shown} is not a valid ONNX model (its graph has no nodes)")
    return model


def _external_info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length) of an external tensor, validated as numbers."""
    entries = {e.key: e.value for e in tensor.external_data}
    location = entries.get("location", "")
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else None
    except ValueError as exc:
        raise OnnxPruneError(
            f"tensor {tensor.name!r} has a malformed external data offset or length"
        ) from exc
    if offset < 0 or (length is not None and length < 0):
        raise OnnxPruneError(
            f"tensor {tensor.name!r} has a negative external data offset or length"
        )
    return location, offset, length


def _resolve_data_file(location: str, folder: Path, tensor_name: str) -> Path:
    """Where an external-data location points, refusing anything outside ``folder``.

    A model file is untrusted input: a location like ``../../home/u/.ssh/id_rsa`` or a symlink
    planted next to the model must not make us read (and later copy into the output) a file
    the user never meant to share.
    """
    if not location:
        raise OnnxPruneError(f"tensor {tensor_name!r} uses external data but names no file")
    if "\0" in location:
        raise OnnxPruneError(f"tensor {tensor_name!r} has an invalid external data path")
    win = PureWindowsPath(location)
    if os.path.isabs(location) or win.is_absolute() or win.drive or win.root:
        raise OnnxPruneError(
            f"refusing external data path {location!r} for tensor {tensor_name!r}: "
            "absolute paths point outside the model folder"
        )
    root = folder.resolve()
    target = (folder / location).resolve()
    if not target.is_relative_to(root):
        raise OnnxPruneError(
            f"refusing external data path {location!r} for tensor {tensor_name!r}: it resolves "
            f"to {target}, outside the model folder {root} (put the data file beside the model)"
        )
    if not target.exists():
        raise OnnxPruneError(
            f"external data file {folder / location} (needed by tensor {tensor_name!r}) is missing"
        )
    if not target.is_file():
        raise OnnxPruneError(f"external data path {folder / location} is not a file")
    return target


def _load_external_data(model: onnx.ModelProto, folder: Path) -> list[Path]:
    """Check every external-data reference, then read the data into the tensors.

    All checks run before any byte is read, so a bad model fails without partial work.
    Returns the distinct data files used.
    """
    plan: dict[Path, list[tuple[onnx.TensorProto, int, int | None]]] = {}
    for tensor in _all_tensors(model):
        if not _is_external(tensor):
            continue
        location, offset, length = _external_info(tensor)
        data_file = _resolve_data_file(location, folder, tensor.name)
        plan.setdefault(data_file, []).append((tensor, offset, length))

    for data_file, items in plan.items():
        file_size = data_file.stat().st_size
        for tensor, offset, length in items:
            end = offset + (length if length is not None else 0)
            if offset > file_size or end > file_size:
                raise OnnxPruneError(
                    f"external data for tensor {tensor.name!r} runs past the end of "
                    f"{data_file} ({file_size} bytes); the file is truncated or not this "
                    "model's data"
                )

    for data_file, items in plan.items():
        try:
            with open(data_file, "rb") as fh:
                for tensor, offset, length in sorted(items, key=lambda item: item[1]):
                    fh.seek(offset)
                    data = fh.read() if length is None else fh.read(length)
                    if length is not None and len(data) != length:
                        raise OnnxPruneError(
                            f"external data for tensor {tensor.name!r} runs past the end of "
                            f"{data_file}"
                        )
                    tensor.raw_data = data
                    del tensor.external_data[:]
                    tensor.ClearField("data_location")
        except OSError as exc:
            raise OnnxPruneError(f"cannot read {data_file}: {exc.strerror or exc}") from exc
    return list(plan)


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node produces, or None for kinds we leave alone (strings, sparse)."""
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value" and attr.HasField("t"):
        return attr.t
    if attr.name == "value_float":
        return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
    if attr.name == "value_floats":
        return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
    if attr.name == "value_int":
        return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
    if attr.name == "value_ints":
        return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None


def _constants_to_initializers(graph: onnx.GraphProto) -> int:
    """Replace the main graph's Constant nodes by initializers of the same name.

    Pruning passes find weights among initializers; exporters that emit weights as Constant
    nodes would otherwise hide them. Subgraphs are left alone: their constants are local to
    the body and rarely weights. Returns how many nodes were converted.
    """
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    converted: list[int] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Constant" or node.domain not in _DEFAULT_DOMAINS:
            continue
        if len(node.output) != 1 or not node.output[0]:
            continue
        name = node.output[0]
        # An initializer that is also a graph output is not accepted everywhere; keep the node.
        if name in taken or name in graph_outputs:
            continue
        tensor = _constant_tensor(node)
        if tensor is None or _is_external(tensor):
            continue
        init = graph.initializer.add()
        init.CopyFrom(tensor)
        init.name = name
        taken.add(name)
        converted.append(index)
    for index in reversed(converted):
        del graph.node[index]
    return len(converted)


#: Initializers up to this size that reach a node through an Identity are given their own copy.
#: Exporters deduplicate equal tensors (e.g. the all-zero biases of freshly folded BatchNorms)
#: behind Identity nodes; left alone, every consumer would look like a shared weight that
#: cannot be pruned on its own. Large tensors shared this way (tied embeddings) stay shared.
IDENTITY_FOLD_MAX_BYTES = 1 << 20


def _identities_to_initializers(graph: onnx.GraphProto) -> int:
    """Give each small initializer read through an Identity node its own initializer."""
    inits = {t.name: t for t in graph.initializer}
    taken = set(inits) | {i.name for i in graph.input}
    graph_outputs = {o.name for o in graph.output}
    folded: list[int] = []
    for index, node in enumerate(graph.node):
        if node.op_type != "Identity" or node.domain not in _DEFAULT_DOMAINS:
            continue
        if len(node.input) != 1 or len(node.output) != 1 or node.input[0] not in inits:
            continue
        name = node.output[0]
        source = inits[node.input[0]]
        if name in taken or name in graph_outputs or _is_external(source):
            continue
        if _tensor_nbytes(source) > IDENTITY_FOLD_MAX_BYTES:
            continue
        init = graph.initializer.add()
        init.CopyFrom(source)
        init.name = name
        taken.add(name)
        folded.append(index)
    for index in reversed(folded):
        del graph.node[index]
    return len(folded)


def normalize_model(model: onnx.ModelProto) -> list[str]:
    """Make weights visible as initializers, in place; returns notes for the report.

    Constant-node weights (Paddle and older exports) become initializers, and small
    initializers that exporters deduplicated behind Identity nodes get their own copy.
    """
    notes: list[str] = []
    if model.ir_version < 4:
        notes.append(
            f"IR version {model.ir_version} predates separate initializers; "
            "Constant nodes were left as they are"
        )
        return notes
    converted = _constants_to_initializers(model.graph)
    if converted:
        notes.append(
            f"{converted} Constant-node weight{'s' if converted != 1 else ''} "
            "converted to initializers"
        )
    folded = _identities_to_initializers(model.graph)
    if folded:
        notes.append(
            f"{folded} deduplicated initializer{'s' if folded != 1 else ''} "
            "(read through Identity nodes) given their own copy"
        )
    return notes


def needs_normalization(model: onnx.ModelProto) -> bool:
    """Whether ``normalize_model`` would change anything (cheap: looks at node types only)."""
    return any(
        n.op_type in ("Constant", "Identity") and n.domain in _DEFAULT_DOMAINS
        for n in model.graph.node
    )


def _opset_note(model: onnx.ModelProto) -> str | None:
    low, high = TESTED_OPSET_RANGE
    for opset in model.opset_import:
        if opset.domain in _DEFAULT_DOMAINS:
            if low <= opset.version <= high:
                return None
            return f"opset {opset.version} is outside the tested range {low}-{high}"
    return "the model declares no ai.onnx opset"


# --------------------------------------------------------------------------------------------
# Output paths
# --------------------------------------------------------------------------------------------


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
    earlier output does not.
    """
    output_path = Path(output_path)
    folder = Path(os.path.abspath(output_path)).parent
    if not folder.exists():
        raise OnnxPruneError(f"cannot write to folder {folder}: it does not exist")
    if not folder.is_dir():
        raise OnnxPruneError(f"cannot write to folder {folder}: it is not a folder")
    if output_path.is_dir():
        raise UsageError(f"output path {output_path} is a folder; give a file name")
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


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


class StagedModel:
    """An output written completely into a temporary folder beside its final path.

    Callers can validate ``path`` (onnxruntime resolves external data next to it) before
    ``commit`` moves it into place. Used as a context manager, it discards itself when the
    block raises before ``commit``.
    """

    def __init__(self, temp_dir: Path, final_path: Path, file_names: list[str]) -> None:
        self._temp_dir = temp_dir
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
        shutil.rmtree(self._temp_dir, ignore_errors=True)
        return self._final_path

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
        shutil.rmtree(self._temp_dir, ignore_errors=True)

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
    model: onnx.ModelProto, output_path: Path, *, external_data: bool | None = None
) -> StagedModel:
    """Write ``model`` completely into a temporary folder beside ``output_path``.

    ``external_data=None`` picks external data only when the model needs it; True forces it
    (to keep a model the user stored that way in the same shape). Weights go to
    ``<output name>.data``. The caller's ``model`` is not modified.
    """
    final = _final_path(Path(output_path))
    total = _total_tensor_bytes(model)
    use_external = total >= EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    if not use_external and total > _PROTOBUF_LIMIT:
        raise OnnxPruneError(
            f"the model holds {total / 1e9:.1f} GB of tensors, over protobuf's 2 GB limit; "
            "save it with external data"
        )
    try:
        temp_dir = Path(tempfile.mkdtemp(dir=final.parent, prefix=".onnxprune-"))
    except OSError as exc:
        raise OnnxPruneError(
            f"cannot write to folder {final.parent}: {exc.strerror or exc}"
        ) from exc
    try:
        names = _write_staged(model, temp_dir, final.name, use_external)
        return StagedModel(temp_dir, final, names)
    except OSError as exc:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise OnnxPruneError(f"could not write {final}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


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


def _write_staged(model: onnx.ModelProto, folder: Path, name: str, use_external: bool) -> list[str]:
    """Write the model (and data file) into ``folder``; returns the file names, data first."""
    onnx_path = folder / name
    if not use_external:
        _write_file(onnx_path, _serialize(model))
        return [name]

    data_name = f"{name}.data"
    writer = _DataWriter(folder / data_name, data_name)
    try:
        skeleton = _externalized_copy(model, writer)
    finally:
        writer.close()
    _write_file(onnx_path, _serialize(skeleton))
    return [data_name, name] if writer.used else [name]


def _is_repeated(fd: object) -> bool:
    is_repeated = getattr(fd, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return fd.label == fd.LABEL_REPEATED  # type: ignore[attr-defined]  # protobuf < 5


def _copy_fields(src: object, dst: object, skip: frozenset[str]) -> None:
    """Copy every set field of one message into another, except those in ``skip``.

    This is how we avoid copying weights: the skipped fields are the ones holding tensor
    data. Walks the descriptor rather than ``ListFields``, which would copy skipped bytes out.
    """
    for fd in src.DESCRIPTOR.fields:  # type: ignore[attr-defined]
        if fd.name in skip:
            continue
        if _is_repeated(fd):
            values = getattr(src, fd.name)
            if len(values):
                getattr(dst, fd.name).extend(values)
        elif src.HasField(fd.name):  # type: ignore[attr-defined]
            if fd.message_type is not None:
                getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))
            else:
                setattr(dst, fd.name, getattr(src, fd.name))


_TENSOR_DATA_FIELDS = frozenset((*_TYPED_DATA_FIELDS, "raw_data", "external_data", "data_location"))


class _DataWriter:
    """Appends tensor bytes to one external data file, opened only if a tensor needs it."""

    def __init__(self, path: Path, location: str) -> None:
        self._path = path
        self._location = location
        self._fh = None
        self._offset = 0
        self.used = False

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def externalize(self, tensor: onnx.TensorProto, out: onnx.TensorProto) -> None:
        """Fill ``out`` with ``tensor``: metadata plus a file reference, or a plain copy.

        ``tensor`` itself is only read, so the caller's model stays as it was.
        """
        if _is_external(tensor):
            raise ValueError(f"tensor {tensor.name!r} still refers to unloaded external data")
        data = self._tensor_bytes(tensor)
        if data is None:
            out.CopyFrom(tensor)
            return
        _copy_fields(tensor, out, _TENSOR_DATA_FIELDS)
        offset = self._append(data)
        out.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", offset), ("length", len(data))):
            entry = out.external_data.add()
            entry.key = key
            entry.value = str(value)

    def externalize_in_place(self, tensor: onnx.TensorProto) -> None:
        """Like ``externalize`` for a tensor we own (inside a copied subgraph)."""
        data = self._tensor_bytes(tensor)
        if data is None:
            return
        stub = onnx.TensorProto()
        self.externalize(tensor, stub)
        tensor.CopyFrom(stub)

    @staticmethod
    def _tensor_bytes(tensor: onnx.TensorProto) -> bytes | None:
        """The bytes to store externally, or None if the tensor stays inline."""
        if tensor.data_type == onnx.TensorProto.STRING:
            return None
        if tensor.HasField("raw_data"):
            data = tensor.raw_data
            return data if len(data) >= EXTERNAL_DATA_SIZE_THRESHOLD else None
        if _tensor_nbytes(tensor) < EXTERNAL_DATA_SIZE_THRESHOLD:
            return None
        # Values in float_data/int32_data/...: external data holds the raw little-endian form.
        try:
            packed = numpy_helper.from_array(numpy_helper.to_array(tensor))
        except Exception:  # an exotic type numpy_helper cannot round-trip: keep it inline
            return None
        if packed.data_type != tensor.data_type or list(packed.dims) != list(tensor.dims):
            return None
        return packed.raw_data

    def _append(self, data: bytes) -> int:
        if self._fh is None:
            self._fh = open(self._path, "wb")  # noqa: SIM115 - closed in close()
            self.used = True
        if len(data) >= _ALIGN_THRESHOLD:
            padding = -self._offset % _DATA_ALIGNMENT
            if padding:
                self._fh.write(b"\0" * padding)
                self._offset += padding
        offset = self._offset
        self._fh.write(data)
        self._offset += len(data)
        return offset


def _externalized_copy(model: onnx.ModelProto, writer: _DataWriter) -> onnx.ModelProto:
    """A copy of ``model`` whose big tensors point into ``writer``'s file.

    Only metadata and small tensors are copied; weight bytes go straight from the caller's
    model to the data file (onnx's convert_model_to_external_data would mutate the caller's
    model, and copying the whole model first would double peak memory).
    """
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, frozenset({"graph"}))
    _copy_fields(model.graph, skeleton.graph, frozenset({"initializer"}))
    for tensor in model.graph.initializer:
        writer.externalize(tensor, skeleton.graph.initializer.add())
    # Nodes were copied whole, so nested graphs in the skeleton are ours to change.
    for sub in _subgraphs(skeleton.graph):
        for tensor in sub.initializer:
            writer.externalize_in_place(tensor)
    return skeleton
