"""onnxprune: graph-level pruning for ONNX models, validated with onnxruntime."""

from onnxprune.errors import OnnxPruneError, UsageError

__all__ = ["OnnxPruneError", "UsageError"]
__version__ = "0.1.0"
