"""External data: checking and reading it on load, writing it on save.

A model file is untrusted input, so every external-data reference is checked (numbers,
paths that stay inside the model's folder, files long enough) before any byte is read. On
save, big tensors go straight from the caller's model into one data file, aligned so that
onnxruntime can memory-map them.
"""

from __future__ import annotations

import os
from pathlib import Path, PureWindowsPath

import onnx
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.proto import (
    LAZY_MIN_BYTES,
    TENSOR_DATA_FIELDS,
    copy_fields,
    external_info,
    is_external,
    is_lazy,
    make_lazy,
    payload_nbytes,
    subgraphs,
    tensor_chunks,
    tensor_nbytes,
    walk_tensors,
)

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
PROTOBUF_LIMIT = 2**31 - 1


def model_needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model's tensors are too big to fit in one protobuf file.

    Counts tensor bytes rather than serializing, which would cost as much as saving.
    """
    return total_tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def total_tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every tensor of the model (nested graphs and functions included)."""
    return sum(tensor_nbytes(t) for t in walk_tensors(model))


def resolve_data_file(location: str, folder: Path, tensor_name: str) -> Path:
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


LAZY_MODEL_MIN_BYTES = 256 << 20
"""Models with this much external data or more keep their big weights lazy on load."""


def load_external_data(
    model: onnx.ModelProto, folder: Path, *, lazy: bool | None = None
) -> list[Path]:
    """Check every external-data reference, then read the small tensors into memory and
    make the big ones lazy (``graph.proto.make_lazy``: read from the file when asked).

    All checks run before any byte is read, so a bad model fails without partial work.
    Weights stay in their files so that peak memory follows the weights a stage really
    works on, not every copy of the model. ``lazy=None`` is lazy from
    ``LAZY_MODEL_MIN_BYTES`` of external data on (a small model is simply read in, as
    onnx.load would); True or False decide. Returns the distinct data files used.
    """
    plan: dict[Path, list[tuple[onnx.TensorProto, int, int | None]]] = {}
    main = len(model.graph.initializer)  # walk_tensors yields these first
    lazy_ok: set[tuple[Path, int]] = set()  # only main-graph weights stay lazy
    for index, tensor in enumerate(walk_tensors(model)):
        if not is_external(tensor):
            continue
        location, offset, length = external_info(tensor)
        data_file = resolve_data_file(location, folder, tensor.name)
        plan.setdefault(data_file, []).append((tensor, offset, length))
        if index < main:
            lazy_ok.add((data_file, offset))

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
            stored = length if length is not None else file_size - offset
            expected = payload_nbytes(tensor.dims, tensor.data_type)
            if stored != expected and tensor.data_type != onnx.TensorProto.STRING:
                raise OnnxPruneError(
                    f"external data for tensor {tensor.name!r} is {stored} bytes but its dims "
                    f"{list(tensor.dims)} need {expected}"
                )

    if lazy is None:
        lazy = sum(_stored(items, f) for f, items in plan.items()) >= LAZY_MODEL_MIN_BYTES
    if not lazy:
        lazy_ok.clear()
    for data_file, items in plan.items():
        try:
            with open(data_file, "rb") as fh:
                for tensor, offset, length in sorted(items, key=lambda item: item[1]):
                    stored = length if length is not None else data_file.stat().st_size - offset
                    big = stored >= LAZY_MIN_BYTES and tensor.data_type != onnx.TensorProto.STRING
                    if big and (data_file, offset) in lazy_ok:
                        make_lazy(tensor, data_file, offset, stored)
                        continue
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


def _stored(items: list[tuple[onnx.TensorProto, int, int | None]], data_file: Path) -> int:
    size = data_file.stat().st_size
    return sum(length if length is not None else size - offset for _, offset, length in items)


class DataWriter:
    """Appends tensor bytes to one external data file, opened only if a tensor needs it."""

    def __init__(self, path: Path, location: str, progress=None) -> None:
        self._progress = progress  # called with the bytes written, for a bar with time left
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
        if is_lazy(tensor):
            copy_fields(tensor, out, TENSOR_DATA_FIELDS)
            self._reference(out, self._append_chunks(tensor_chunks(tensor), tensor_nbytes(tensor)),
                            tensor_nbytes(tensor))  # fmt: skip
            return
        if is_external(tensor):
            raise ValueError(f"tensor {tensor.name!r} still refers to unloaded external data")
        data = self._tensor_bytes(tensor)
        if data is None:
            out.CopyFrom(tensor)
            return
        copy_fields(tensor, out, TENSOR_DATA_FIELDS)
        self._reference(out, self._append(data), len(data))

    def _reference(self, out: onnx.TensorProto, offset: int, length: int) -> None:
        out.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self._location), ("offset", offset), ("length", length)):
            entry = out.external_data.add()
            entry.key = key
            entry.value = str(value)

    def externalize_in_place(self, tensor: onnx.TensorProto) -> None:
        """Like ``externalize`` for a tensor we own (inside a copied subgraph)."""
        data = None if is_lazy(tensor) else self._tensor_bytes(tensor)
        if data is None and not is_lazy(tensor):
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
        if tensor_nbytes(tensor) < EXTERNAL_DATA_SIZE_THRESHOLD:
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
        return self._append_chunks(iter((data,)), len(data))

    def _append_chunks(self, chunks, length: int) -> int:
        """Write ``length`` bytes given in pieces; returns where they start."""
        if self._fh is None:
            self._fh = open(self._path, "wb")  # noqa: SIM115 - closed in close()
            self.used = True
        if length >= _ALIGN_THRESHOLD:
            padding = -self._offset % _DATA_ALIGNMENT
            if padding:
                self._fh.write(b"\0" * padding)
                self._offset += padding
        offset = self._offset
        for data in chunks:
            self._fh.write(data)
            if self._progress is not None:
                self._progress(len(data))
        self._offset += length
        return offset


def externalized_copy(model: onnx.ModelProto, writer: DataWriter) -> onnx.ModelProto:
    """A copy of ``model`` whose big tensors point into ``writer``'s file.

    Only metadata and small tensors are copied; weight bytes go straight from the caller's
    model to the data file (onnx's convert_model_to_external_data would mutate the caller's
    model, and copying the whole model first would double peak memory).
    """
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, frozenset({"graph"}))
    copy_fields(model.graph, skeleton.graph, frozenset({"initializer"}))
    for tensor in model.graph.initializer:
        writer.externalize(tensor, skeleton.graph.initializer.add())
    # Nodes were copied whole, so nested graphs in the skeleton are ours to change.
    for sub in subgraphs(skeleton.graph):
        for tensor in sub.initializer:
            writer.externalize_in_place(tensor)
    return skeleton


_SPILL: list[Path] = []  # the process's spill folder, made on first use


def spill_weights(model: onnx.ModelProto, min_bytes: int | None = None) -> onnx.ModelProto:
    """A copy of ``model`` whose big in-memory main-graph weights are written to a scratch
    data file and read back lazily (``graph.proto.make_lazy``); ``model`` is left as it is.

    Why: work that copies a model (recovery refits a copy and taps copies of it, each
    serialized for onnxruntime) would copy every pruned weight several times over; with the
    weights lazy each copy is a few kilobytes and onnxruntime maps the file. Spill files
    live in one temporary folder, removed when the process exits (or on a signal). Models
    holding less than ``min_bytes`` (default ``LAZY_MODEL_MIN_BYTES``) in memory are
    returned as they are (recovery passes 0 to spill its refit weights after each wave).
    """
    held = sum(tensor_nbytes(t) for t in model.graph.initializer if not is_external(t))
    if held < (LAZY_MODEL_MIN_BYTES if min_bytes is None else min_bytes) or not held:
        return model
    if not _SPILL:
        import atexit
        import shutil
        import tempfile

        from onnxprune import signals

        folder = Path(tempfile.mkdtemp(prefix="onnxprune-spill-"))
        signals.track(folder)
        atexit.register(shutil.rmtree, folder, True)
        _SPILL.append(folder)
    path = _SPILL[0] / f"weights-{len(list(_SPILL[0].iterdir()))}.data"
    writer = DataWriter(path, path.name)
    light = onnx.ModelProto()
    copy_fields(model, light, frozenset({"graph"}))
    copy_fields(model.graph, light.graph, frozenset({"initializer"}))
    try:
        for tensor in model.graph.initializer:
            out = light.graph.initializer.add()
            big = tensor_nbytes(tensor) >= LAZY_MIN_BYTES and not is_external(tensor)
            data = DataWriter._tensor_bytes(tensor) if big else None
            if data is None:
                out.CopyFrom(tensor)
                continue
            copy_fields(tensor, out, TENSOR_DATA_FIELDS)
            offset = writer._append(data)
            writer._fh.flush()
            make_lazy(out, path, offset, len(data))
            del data
    finally:
        writer.close()
    return light
