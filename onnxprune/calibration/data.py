"""Calibration and validation inputs from the files users actually have.

Three forms, told apart by what ``--calib`` points at:

* an ``.npz`` file keyed by input name (what a script that already feeds the model writes);
* a folder of ``.npy`` files: ``<input name>.npy`` per input holding every sample along axis
  0, or, for a one-input model, one file per sample (with or without a leading batch axis of
  1), stacked in sorted filename order (what a data pipeline dumping tensors writes);
* a folder of images (png, jpg, jpeg, bmp) for a model with one 4-D image input: each is
  resized to the input's height and width, converted to RGB (or L for one channel) and
  normalized by a preprocessing spec (what a user with a deployed vision model has).

Everything must match the model input's dtype, rank and fixed dimensions; a mismatch is one
``OnnxPruneError`` line that names the array or the file. ``max_samples`` keeps the first N
samples, and files past it are never opened: a folder of a million images costs only what
is used. Image preprocessing specs are parsed by ``onnxprune.calibration.preprocess``.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import onnx

from onnxprune.calibration.preprocess import Preprocess, parse_preprocess
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.runtime.feeds import InputBatch, input_dims, input_dtype, random_inputs, real_inputs
from onnxprune.runtime.session import ort_message

__all__ = ["IMAGE_SUFFIXES", "check_finite", "load_calibration", "make_inputs", "split_holdout"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def make_inputs(
    model: onnx.ModelProto,
    *,
    calib: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 1,
    max_samples: int | None = None,
    preprocess: str | None = None,
) -> InputBatch:
    """Inputs for every real graph input: from calibration data or random.

    ``calib`` is an ``.npz`` keyed by input name, a folder of ``.npy`` files or a folder of
    images (``load_calibration``: dtype, rank and fixed dims must match the model, mismatches
    are errors that name the array or file; ``max_samples`` keeps the first samples;
    ``preprocess`` normalizes images). Without it, random inputs get the input's dtype and
    shape, with a symbolic first dim set to ``batch_size`` and other symbolic dims to 1
    (noted in ``.notes``; ``onnxprune.runtime.feeds.random_inputs``).
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"max samples must be at least 1, got {max_samples}")
    if calib is not None:
        return load_calibration(calib, model, max_samples=max_samples, preprocess=preprocess)
    if preprocess is not None:
        raise UsageError("--calib-preprocess needs --calib (a folder of images)")
    return random_inputs(model, seed=seed, batch_size=batch_size)


def load_calibration(
    path: str | os.PathLike,
    model: onnx.ModelProto,
    *,
    max_samples: int | None = None,
    preprocess: str | None = None,
) -> InputBatch:
    """Inputs for every real input of ``model`` from an .npz, a folder of .npy, or images.

    ``max_samples`` keeps the first N samples (first N files in sorted order). ``preprocess``
    applies to image folders only; its default there is ``imagenet`` for 3-channel inputs
    and ``scale=1/255`` otherwise. ``.notes`` says where the inputs came from, how many
    samples there are, and for images the preprocessing used.
    """
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"max samples must be at least 1, got {max_samples}")
    parsed = parse_preprocess(preprocess) if preprocess is not None else None
    wanted = real_inputs(model)
    folder = Path(path)
    shown = os.fspath(path)
    if folder.is_dir():
        return _load_folder(folder, shown, wanted, max_samples, parsed)
    if parsed is not None:
        raise UsageError(
            f"--calib-preprocess applies to a folder of images; {shown} is not a folder"
        )
    return _load_npz(folder, shown, wanted, max_samples)


def check_finite(arr: np.ndarray, what: str) -> None:
    """Refuse NaN or Inf in float data: a refit on it writes NaN weights, a comparison on it
    proves nothing. ``what`` names the array and the file, as the error must."""
    if arr.dtype.kind not in "fc" or arr.size == 0:
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = int(arr.size - np.count_nonzero(finite))
    first = np.unravel_index(int(np.argmin(finite)), arr.shape)
    sample = f", first in sample {first[0]}" if arr.ndim >= 1 else ""
    raise OnnxPruneError(
        f"{what} holds {bad} NaN or Inf value(s){sample}: calibration and validation data "
        "must be finite"
    )


def split_holdout(
    batch: InputBatch, fraction: float, minimum: int
) -> tuple[InputBatch, InputBatch | None, int]:
    """(fitted, held out, samples held out): the last ``fraction`` (at least 1) of the samples.

    Nothing is held out (``None``, 0) with fewer than ``minimum`` samples or inputs that
    share no batch axis. The held-out part is what validation scores, so the samples recovery
    was fitted to never grade it.
    """
    from onnxprune.runtime.feeds import shared_batch

    n = shared_batch(batch)
    if n is None or n < minimum:
        return batch, None, 0
    k = max(1, int(n * fraction))
    fit = InputBatch({name: a[: n - k] for name, a in batch.items()}, notes=list(batch.notes))
    held = InputBatch({name: a[n - k :] for name, a in batch.items()}, notes=list(batch.notes))
    fit.notes.append(f"scoring and recovery use the first {n - k} of {n} samples")
    held.notes.append(
        f"validation uses the last {k} of {n} samples, held out of scoring and recovery"
    )
    return fit, held, k


def _noted(batch: InputBatch, shown: str, extra: str = "") -> InputBatch:
    for name, arr in batch.items():
        check_finite(arr, f"calibration array {name!r} in {shown}")
    samples = next((a.shape[0] for a in batch.values() if a.ndim >= 1), None)
    count = f" ({samples} samples)" if samples is not None else ""
    batch.notes.insert(0, f"inputs from {shown}{count}{extra}")
    return batch


# --------------------------------------------------------------------------------------------
# Arrays: .npz and per-input .npy
# --------------------------------------------------------------------------------------------


def _check_array(arr: np.ndarray, vi: onnx.ValueInfoProto, max_samples: int | None) -> np.ndarray:
    """``arr`` trimmed to ``max_samples`` rows after checking dtype, rank and fixed dims.

    Trimming comes before any copy, so a memory-mapped .npy reads only the rows kept.
    """
    dtype = input_dtype(vi)
    dims = input_dims(vi)
    if arr.dtype != dtype:
        raise OnnxPruneError(
            f"calibration array {vi.name!r} has dtype {arr.dtype} but the model input is "
            f"{dtype}: save it with .astype(np.{dtype.name})"
        )
    if dims is not None and arr.ndim != len(dims):
        raise OnnxPruneError(
            f"calibration array {vi.name!r} has rank {arr.ndim} (shape {arr.shape}) but the "
            f"model input has rank {len(dims)}"
        )
    if max_samples is not None and arr.ndim >= 1:
        arr = arr[:max_samples]
    if dims is not None:
        # Axis 0 holds samples: a model with a fixed batch takes them in batches of that size
        # (validation and calibration run in chunks), so only fewer samples than one batch fail.
        bad = [
            f"axis {i} is {arr.shape[i]}, the model wants {d}"
            + (" (at least one batch)" if i == 0 else "")
            for i, d in enumerate(dims)
            if isinstance(d, int) and d > 0 and (arr.shape[i] < d if i == 0 else arr.shape[i] != d)
        ]
        if bad:
            raise OnnxPruneError(
                f"calibration array {vi.name!r} has shape {arr.shape}: {'; '.join(bad)}"
            )
    if isinstance(arr, np.memmap):  # read the rows kept; hold no mapping of the file
        return np.array(arr, order="C")
    return np.ascontiguousarray(arr)


def _name_mismatch(names: list[str], have: list[str]) -> str:
    missing = [n for n in names if n not in have]
    extra = sorted(k for k in have if k not in names)
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing)}")
    if extra:
        parts.append(f"unexpected {', '.join(extra)}")
    return "; ".join(parts)


def _load_npz(
    path: Path, shown: str, wanted: list[onnx.ValueInfoProto], max_samples: int | None
) -> InputBatch:
    if not path.is_file():
        raise OnnxPruneError(f"calibration data {shown} is not a file or a folder")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            names = [vi.name for vi in wanted]
            problem = _name_mismatch(names, keys)
            if problem:
                raise OnnxPruneError(
                    f"calibration data {shown} must have one array per model input "
                    f"({', '.join(names)}): {problem}"
                )
            arrays = {}
            for vi in wanted:
                head = _npz_head(path, vi.name, max_samples)
                arrays[vi.name] = npz[vi.name] if head is None else head
    except OnnxPruneError:
        raise
    except Exception as exc:  # zipfile, pickle refusal, bad headers, a bare .npy: "not an npz"
        raise OnnxPruneError(
            f"cannot read calibration data {shown}: not a numpy .npz file ({ort_message(exc)})"
        ) from exc
    batch = InputBatch()
    for vi in wanted:
        batch[vi.name] = _check_array(arrays.pop(vi.name), vi, max_samples)
    return _noted(batch, shown)


def _npz_head(path: Path, key: str, rows: int | None) -> np.ndarray | None:
    """The first ``rows`` rows of array ``key`` of an .npz, reading no further into it.

    An .npz member is a .npy stream (stored or deflated): after its header come the rows in
    order, so the rows kept are read and the rest never decompressed. None when the whole
    array is wanted or the member is unusual (Fortran order, a scalar, objects): the caller
    then reads it the ordinary way, with the ordinary errors.
    """
    if rows is None:
        return None
    fmt = np.lib.format
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        version = fmt.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(member)
        else:
            return None
        if fortran or not shape or dtype.hasobject or shape[0] <= rows:
            return None
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        data = member.read(rows * row_items * dtype.itemsize)
    return np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:])).copy()


def _read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except Exception as exc:
        raise OnnxPruneError(
            f"cannot read calibration file {path}: not a numpy .npy file ({ort_message(exc)})"
        ) from exc
    if not isinstance(arr, np.ndarray):  # np.load returns an NpzFile for a zip archive
        raise OnnxPruneError(f"cannot read calibration file {path}: not a numpy .npy file")
    return arr


# --------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------


def _load_folder(
    folder: Path,
    shown: str,
    wanted: list[onnx.ValueInfoProto],
    max_samples: int | None,
    preprocess: Preprocess | None,
) -> InputBatch:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    npys = [p for p in files if p.suffix.lower() == ".npy"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    kinds = "png, jpg, jpeg, bmp"
    if not files:
        sub = " (subfolders are not searched)" if entries else ""
        raise OnnxPruneError(
            f"calibration folder {shown} is empty: it needs .npy files or images ({kinds}){sub}"
        )
    other = [p for p in files if p not in npys and p not in images]
    if other:
        raise OnnxPruneError(
            f"calibration folder {shown} holds {other[0].name}, which is neither .npy nor an "
            f"image ({kinds}): keep only one kind of calibration file there"
        )
    if npys and images:
        raise OnnxPruneError(
            f"calibration folder {shown} mixes .npy files and images "
            f"({npys[0].name}, {images[0].name}): keep only one kind"
        )
    if images:
        return _load_images(images, shown, wanted, max_samples, preprocess)
    if preprocess is not None:
        raise UsageError(
            f"--calib-preprocess applies to a folder of images; {shown} holds .npy files"
        )
    names = [vi.name for vi in wanted]
    stems = [p.stem for p in npys]
    if len(wanted) == 1 and (len(npys) > 1 or stems != names):
        return _load_npy_samples(npys, shown, wanted[0], max_samples)
    problem = _name_mismatch(names, stems)
    if problem:
        raise OnnxPruneError(
            f"calibration folder {shown} must hold one <input name>.npy per model input "
            f"({', '.join(names)}): {problem}"
        )
    batch = InputBatch()
    by_stem = {p.stem: p for p in npys}
    for vi in wanted:
        batch[vi.name] = _check_array(_read_npy(by_stem[vi.name], mmap=True), vi, max_samples)
    return _noted(batch, shown)


def _load_npy_samples(
    files: list[Path], shown: str, vi: onnx.ValueInfoProto, max_samples: int | None
) -> InputBatch:
    """One sample per file, stacked along a new batch axis into one preallocated array."""
    files = files[:max_samples] if max_samples is not None else files
    dtype = input_dtype(vi)
    dims = input_dims(vi)
    out: np.ndarray | None = None
    first = None
    for i, path in enumerate(files):
        arr = _read_npy(path)
        if arr.dtype != dtype:
            raise OnnxPruneError(
                f"calibration file {path.name} has dtype {arr.dtype} but the model input "
                f"{vi.name!r} is {dtype}: save it with .astype(np.{dtype.name})"
            )
        sample = _one_sample(arr, dims, vi.name, path.name)
        check_finite(sample, f"calibration file {path.name} in {shown} (input {vi.name!r})")
        if out is None:
            first = path.name
            out = np.empty((len(files), *sample.shape), dtype=dtype)
        elif sample.shape != out.shape[1:]:
            raise OnnxPruneError(
                f"calibration file {path.name} holds a sample of shape {sample.shape} but "
                f"{first} holds {out.shape[1:]}: samples are stacked, so they must match"
            )
        out[i] = sample
    assert out is not None  # the caller passes at least one file
    batch = InputBatch()
    batch[vi.name] = out
    return _noted(batch, shown, f", one per .npy file, for input {vi.name!r}")


def _one_sample(
    arr: np.ndarray, dims: list[int | str | None] | None, name: str, file: str
) -> np.ndarray:
    """``arr`` as one sample without its batch axis, checked against the input's dims."""
    if dims is None:  # no shape to go by: each file is taken as one sample as it is
        return arr
    rank = len(dims)
    if arr.ndim == rank and arr.shape[:1] == (1,):
        arr = arr[0]
    elif arr.ndim != rank - 1:
        want = _dims_text(dims[1:])
        raise OnnxPruneError(
            f"calibration file {file} has shape {arr.shape}: a sample for input {name!r} "
            f"{_dims_text(dims)} must have shape {want} or (1, *{want})"
        )
    bad = [
        f"axis {i + 1} is {arr.shape[i]}, the model wants {d}"
        for i, d in enumerate(dims[1:])
        if isinstance(d, int) and d > 0 and arr.shape[i] != d
    ]
    if bad:
        raise OnnxPruneError(
            f"calibration file {file} has shape {arr.shape} for input {name!r}: {'; '.join(bad)}"
        )
    return arr


def _dims_text(dims: list[int | str | None]) -> str:
    return "[" + ", ".join(str(d) if d not in (None, "") else "?" for d in dims) + "]"


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _image_layout(vi: onnx.ValueInfoProto, shown: str) -> tuple[int, int, int, int]:
    """(channel axis, channels, height, width) of a 4-D NCHW or NHWC image input."""
    dims = input_dims(vi)
    if dims is None or len(dims) != 4:
        what = "no shape" if dims is None else f"shape {_dims_text(dims)}"
        raise OnnxPruneError(
            f"calibration folder {shown} holds images, but input {vi.name!r} has {what}: "
            "images need a 4-D NCHW or NHWC input"
        )
    if dims[1] in (1, 3):
        axis = 1
        h, w = dims[2], dims[3]
    elif dims[3] in (1, 3):
        axis = 3
        h, w = dims[1], dims[2]
    else:
        raise OnnxPruneError(
            f"calibration folder {shown} holds images, but input {vi.name!r} "
            f"{_dims_text(dims)} has no 1- or 3-channel axis at 1 (NCHW) or 3 (NHWC)"
        )
    if not (isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0):
        raise OnnxPruneError(
            f"input {vi.name!r} {_dims_text(dims)} has no fixed height and width to resize "
            f"the images in {shown} to: give a folder of .npy files instead"
        )
    return axis, int(dims[axis]), h, w


def _load_images(
    files: list[Path],
    shown: str,
    wanted: list[onnx.ValueInfoProto],
    max_samples: int | None,
    preprocess: Preprocess | None,
) -> InputBatch:
    from PIL import Image, UnidentifiedImageError

    if len(wanted) != 1:
        names = ", ".join(vi.name for vi in wanted)
        raise OnnxPruneError(
            f"calibration folder {shown} holds images, but the model has {len(wanted)} "
            f"inputs ({names}): images feed a model with one image input"
        )
    vi = wanted[0]
    axis, channels, h, w = _image_layout(vi, shown)
    dtype = input_dtype(vi)
    default = preprocess is None
    if preprocess is None:
        if dtype == np.uint8:
            preprocess = parse_preprocess("raw")
        else:
            preprocess = parse_preprocess("imagenet" if channels == 3 else "scale=1/255")
    if dtype.kind != "f" and not (dtype == np.uint8 and preprocess.is_identity):
        raise OnnxPruneError(
            f"input {vi.name!r} is {dtype}: images feed float inputs, or uint8 inputs with "
            "--calib-preprocess none"
        )
    preprocess.check(channels)
    files = files[:max_samples] if max_samples is not None else files
    shape = (len(files), channels, h, w) if axis == 1 else (len(files), h, w, channels)
    out = np.empty(shape, dtype=dtype)
    mode = "RGB" if channels == 3 else "L"
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert(mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                pixels = np.asarray(img, dtype=np.float32)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise OnnxPruneError(
                f"cannot read image {path.name} in {shown}: {ort_message(exc)}"
            ) from exc
        pixels = pixels.reshape(h, w, channels)
        if axis == 1:
            pixels = pixels.transpose(2, 0, 1)
        if dtype == np.uint8:
            out[i] = pixels.astype(np.uint8)
        else:
            out[i] = preprocess.apply(pixels, 0 if axis == 1 else 2)
    layout = "NCHW" if axis == 1 else "NHWC"
    why = f"default for {channels}-channel images" if default else "--calib-preprocess"
    batch = InputBatch()
    batch[vi.name] = out
    extra = f", images resized to {h}x{w} {mode} {layout}, preprocess {preprocess.spec} ({why})"
    return _noted(batch, shown, extra)
