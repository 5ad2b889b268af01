"""What a pruning run is judged by: parameters, nonzeros, MACs and the compressed file size.

Every figure here must stay cheap on big models, because it is computed before and after
every run:

* counts read each weight's bytes once (numpy views, no per-element Python;
  :mod:`onnxprune.metrics.params`);
* MACs come from the op registry's formulas on shapes inferred from a weight-less light copy
  (:mod:`onnxprune.metrics.macs`);
* the compressed size is deflate run per weight tensor on two threads (zlib releases the
  GIL), plus the deflated graph without its weights: what zeros buy on disk
  (:mod:`onnxprune.metrics.size`).

This module composes them into :class:`ModelMetrics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import onnx

from onnxprune.metrics.macs import count_macs
from onnxprune.metrics.params import count_params, scan_params
from onnxprune.metrics.size import compressed_size, compression_note, is_compression_sampled

__all__ = [
    "ModelMetrics",
    "compressed_size",
    "compression_note",
    "compute_metrics",
    "count_macs",
    "count_params",
    "is_compression_sampled",
]


@dataclass
class ModelMetrics:
    """The figures the report compares before and after pruning."""

    params: int  # elements of float initializers (float, float16, bfloat16, double, float8)
    nonzeros: int  # nonzero elements among those
    macs: int  # multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul for one inference
    gzip_bytes: int  # deflated size of the model: what zeros buy on disk
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def compute_metrics(
    model: onnx.ModelProto,
    *,
    compressed: bool = True,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> ModelMetrics:
    """All the figures for one model, with notes on what had to be assumed; MACs at
    ``input_shapes`` when given (see ``macs.count_macs``).

    ``compressed=False`` leaves ``gzip_bytes`` at 0 for a caller that computes
    ``compressed_size`` itself, e.g. on a background thread while other work runs.
    """
    params, nonzeros, unread = scan_params(model)
    macs, notes = count_macs(model, input_shapes)
    gzip_bytes = compressed_size(model) if compressed else 0
    if compressed and is_compression_sampled(model):
        notes.append(compression_note())

    if unread:
        notes.append(
            f"{unread} weight tensor(s) keep their data in external files that were not "
            "loaded: counted as dense and uncompressed"
        )
    return ModelMetrics(
        params=params, nonzeros=nonzeros, macs=macs, gzip_bytes=gzip_bytes, notes=notes
    )
