"""Reading and writing ONNX models safely: the names callers use, from where they live.

Everything that touches the user's files goes through ``onnxprune.graph.load`` (parse, pull
external data in, normalize), ``onnxprune.graph.save`` (output-path checks, atomic staged
save) and ``onnxprune.graph.external`` (external-data checks and the data-file writer), so the
rest of onnxprune can work on an in-memory ``ModelProto`` and never think about external data,
half-written outputs or overwriting the input. This module only re-exports them.
"""

from __future__ import annotations

from onnxprune.graph.external import (
    EXTERNAL_DATA_SIZE_THRESHOLD,
    EXTERNAL_DATA_THRESHOLD,
    model_needs_external_data,
    spill_weights,
)
from onnxprune.graph.load import (
    IDENTITY_FOLD_MAX_BYTES,
    TESTED_OPSET_RANGE,
    LoadedModel,
    load_model,
    needs_normalization,
    normalize_model,
    parse_model,
)
from onnxprune.graph.proto import is_external
from onnxprune.graph.save import (
    StagedModel,
    check_output_path,
    default_output_path,
    save_model,
    stage_lending,
    stage_model,
)

__all__ = [
    "EXTERNAL_DATA_SIZE_THRESHOLD",
    "EXTERNAL_DATA_THRESHOLD",
    "IDENTITY_FOLD_MAX_BYTES",
    "TESTED_OPSET_RANGE",
    "LoadedModel",
    "StagedModel",
    "check_output_path",
    "default_output_path",
    "is_external",
    "load_model",
    "model_needs_external_data",
    "needs_normalization",
    "normalize_model",
    "parse_model",
    "save_model",
    "spill_weights",
    "stage_lending",
    "stage_model",
]
