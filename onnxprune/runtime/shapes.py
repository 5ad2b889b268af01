"""The input sizes a run uses: from ``--input-shape``, the data, the declared shape or a default.

A model with symbolic sizes (``[N, 3, H, W]``) says nothing about the size it is deployed
at, yet random validation inputs and MACs need numbers. Taking every symbolic size as 1 (as
onnxprune once did) validates a detector on a 1x1 image and counts its MACs there. So every
input's shape is *resolved*, and the report says where each came from
(``validation.shape_source``):

* ``--input-shape``: given by the user (``NAME=1x3x640x640``; the name may be left out for a
  one-input model), checked against the model's rank and fixed sizes;
* ``calib`` / ``val``: the shape of one sample of the data (batch axis set to 1);
* ``declared``: the model fixes every size but perhaps the batch axis;
* ``default``: a size per dimension role (``DEFAULT_IMAGE``, ``DEFAULT_SEQUENCE``, else 1).

The batch axis (axis 0) of a resolved shape is the batch of one run: as given, the model's
fixed batch, else 1 (MACs are those of one sample then).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.runtime.feeds import InputBatch, input_dims, input_dtype, random_inputs, real_inputs

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_SEQUENCE",
    "ResolvedShapes",
    "parse_input_shapes",
    "random_validation_inputs",
    "resolve_shapes",
]

DEFAULT_IMAGE = 224
"""Height and width of a 4-D input whose sizes are symbolic (the common classifier size)."""
DEFAULT_SEQUENCE = 128
"""Sequence axes (axis >= 1) of integer (token) inputs whose sizes are symbolic."""

_FLAG = "--input-shape"
_SPEC = re.compile(r"^\s*(?:(?P<name>.+?)\s*=\s*)?(?P<dims>[0-9x,\s-]+)$")


def _bad(value: object, why: str = "") -> UsageError:
    extra = f" ({why})" if why else ""
    return UsageError(f"{_FLAG} must be NAME=1x3x640x640{extra}, got {value!r}")


def _dims_of(text: str, shown: object) -> tuple[int, ...]:
    parts = [p.strip() for p in re.split(r"[x,]", text.strip())]
    if not parts or any(not re.fullmatch(r"-?[0-9]+", p) for p in parts):
        raise _bad(shown)
    return _checked_dims([int(p) for p in parts], shown)


def _checked_dims(dims, shown: object) -> tuple[int, ...]:
    out = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int | np.integer):
            raise _bad(shown, "sizes must be whole numbers")
        if d < 1:
            raise _bad(shown, f"sizes must be positive, got {int(d)}")
        out.append(int(d))
    if not out:
        raise _bad(shown, "no sizes")
    return tuple(out)


def _one(spec: str) -> tuple[str, tuple[int, ...]]:
    m = _SPEC.match(spec) if isinstance(spec, str) else None
    if m is None:
        raise _bad(spec)
    return (m.group("name") or ""), _dims_of(m.group("dims"), spec)


def parse_input_shapes(value: object) -> dict[str, tuple[int, ...]]:
    """``--input-shape`` values as ``{name: dims}``; the name "" stands for the only input.

    Takes a string (``"x=1x3x32x32"``), a sequence of such strings, or a mapping of name to
    dims (a sequence of ints or ``"1x3x32x32"``). Sizes must be positive whole numbers and a
    name may appear once.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    items: list[tuple[str, tuple[int, ...]]] = []
    if isinstance(value, Mapping):
        for name, dims in value.items():
            if not isinstance(name, str):
                raise _bad(value, "input names must be strings")
            if isinstance(dims, str):
                items.append((name, _dims_of(dims, dims)))
            elif isinstance(dims, list | tuple):
                items.append((name, _checked_dims(dims, dims)))
            else:
                raise _bad(dims)
    else:
        try:
            specs = list(value)  # type: ignore[call-overload]
        except TypeError:
            raise _bad(value) from None
        items = [_one(s) for s in specs]
    out: dict[str, tuple[int, ...]] = {}
    for name, dims in items:
        if name in out:
            raise UsageError(f"{_FLAG} given twice for input {name or '(the only input)'!r}")
        out[name] = dims
    return out


@dataclass
class ResolvedShapes:
    """One run's shape per real input, and where each came from (see the module docstring)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "input_shapes": {k: list(v) for k, v in self.shapes.items()},
            "shape_source": dict(self.sources),
        }


def _default_dim(axis: int, rank: int, integer: bool) -> int:
    """The documented size of a symbolic dimension by its role."""
    if axis == 0:
        return 1
    if rank == 4 and axis >= 2 and not integer:
        return DEFAULT_IMAGE
    if integer:
        return DEFAULT_SEQUENCE
    return 1


def _check_given(vi: onnx.ValueInfoProto, dims: tuple[int, ...]) -> None:
    declared = input_dims(vi)
    shown = "x".join(map(str, dims))
    if declared is None:
        return
    if len(declared) != len(dims):
        raise UsageError(
            f"{_FLAG} {vi.name}={shown} has rank {len(dims)} but input {vi.name!r} has rank "
            f"{len(declared)} {_declared_text(declared)}"
        )
    for axis, (d, g) in enumerate(zip(declared, dims, strict=True)):
        if isinstance(d, int) and d > 0 and d != g:
            raise UsageError(
                f"{_FLAG} {vi.name}={shown} sets axis {axis} to {g} but the model fixes it to "
                f"{d} {_declared_text(declared)}"
            )


def _declared_text(declared: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in declared) + "]"


def resolve_shapes(
    model: onnx.ModelProto,
    given: Mapping[str, tuple[int, ...]] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    data_source: str = "calib",
) -> ResolvedShapes:
    """Every real input's shape for one run, checked; ``UsageError`` for a bad ``given``.

    ``given`` is ``parse_input_shapes``'s result; ``data`` (calibration or validation arrays,
    samples on axis 0) gives the sizes of the inputs it holds, named ``data_source``.
    """
    inputs = real_inputs(model)
    given = dict(given or {})
    if "" in given:
        if len(inputs) != 1:
            names = ", ".join(vi.name for vi in inputs)
            raise UsageError(
                f"{_FLAG} without a name needs a one-input model; name one of: {names}"
            )
        given[inputs[0].name] = given.pop("")
    known = {vi.name for vi in inputs}
    unknown = [n for n in given if n not in known]
    if unknown:
        raise UsageError(
            f"{_FLAG} names {unknown[0]!r}, which is not an input of the model "
            f"(inputs: {', '.join(sorted(known)) or 'none'})"
        )
    out = ResolvedShapes()
    bound: dict[str, tuple[int, str]] = {}  # symbol -> (size, source): one size per symbol
    for vi in inputs:
        shape = _from_given_or_data(vi, given, data, data_source, out)
        if shape is not None:
            _bind(vi, shape, out.sources[vi.name], bound)
    for vi in inputs:
        if vi.name not in out.shapes and input_dims(vi) is not None:
            _from_declared(vi, bound, out)
    return out


def _bind(vi: onnx.ValueInfoProto, shape: tuple[int, ...], source: str, bound: dict) -> None:
    """Remember the size each named symbol of ``vi`` got, so other inputs agree with it."""
    for d, size in zip(input_dims(vi) or [], shape, strict=False):
        if isinstance(d, str) and d:
            bound.setdefault(d, (size, source))


def _from_given_or_data(vi, given, data, data_source: str, out: ResolvedShapes):
    """``vi``'s shape from ``--input-shape`` or the data (recorded in ``out``), else None."""
    name = vi.name
    held = None
    if data is not None and name in data and np.ndim(data[name]) >= 1:
        held = tuple(int(d) for d in np.shape(data[name]))
    if name in given:
        _check_given(vi, given[name])
        if held is not None and held[1:] != given[name][1:]:
            raise UsageError(
                f"{_FLAG} {name}={'x'.join(map(str, given[name]))} disagrees with the "
                f"{data_source} data, whose samples are {'x'.join(map(str, held[1:]))}"
            )
        out.shapes[name], out.sources[name] = given[name], "--input-shape"
        return given[name]
    if held is None:
        return None
    declared = input_dims(vi)
    fixed0 = declared[0] if declared and isinstance(declared[0], int) and declared[0] > 0 else 1
    out.shapes[name], out.sources[name] = (fixed0, *held[1:]), data_source
    return out.shapes[name]


def _from_declared(vi: onnx.ValueInfoProto, bound: dict, out: ResolvedShapes) -> None:
    """``vi``'s declared sizes; a symbol another input fixed takes that size, any other
    symbolic size its role's default (and binds it for the inputs that follow)."""
    declared = input_dims(vi) or []
    try:
        integer = input_dtype(vi).kind in "iub"
    except OnnxPruneError:  # not a tensor onnxprune can feed: random inputs say so
        integer = False
    dims, source = [], "declared"
    for axis, d in enumerate(declared):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif isinstance(d, str) and d in bound:
            size, origin = bound[d]
            dims.append(size)
            if origin == "default" or (axis > 0 and source == "declared"):
                source = origin
        elif axis == 0:
            dims.append(1)
        else:
            dims.append(_default_dim(axis, len(declared), integer))
            source = "default"
    out.shapes[vi.name], out.sources[vi.name] = tuple(dims), source
    _bind(vi, out.shapes[vi.name], source, bound)


def random_validation_inputs(
    model: onnx.ModelProto, resolved: ResolvedShapes, samples: int, seed: int
) -> InputBatch:
    """``samples`` random samples at the resolved shapes, batched as the model allows.

    A model with a fixed batch gets runs of that batch; a dynamic batch one run of all the
    samples, unless ``--input-shape`` gave the batch (then runs of that size).
    """
    by_name = {vi.name: vi for vi in real_inputs(model)}
    given_batch = "--input-shape" in resolved.sources.values()  # one batch for all inputs
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in resolved.shapes.items():
        declared = input_dims(by_name[name]) or []
        dynamic = bool(declared) and not (isinstance(declared[0], int) and declared[0] > 0)
        if shape and dynamic and not given_batch:
            shape = (samples, *shape[1:])
        shapes[name] = shape
    batch = random_inputs(model, seed=seed, batch_size=samples, shapes=shapes)
    batch.sources = {**resolved.sources, **{k: v for k, v in batch.sources.items()}}
    return batch
