"""onnxprune: graph-level pruning for ONNX models, validated with onnxruntime.

    from onnxprune import prune
    result = prune("model.onnx", structured=0.3, output="model.pruned.onnx")
    print(result.report.render())

The public names are imported lazily so that `import onnxprune.<module>` stays cheap and the
CLI's --help answers without loading onnxruntime.
"""

from typing import TYPE_CHECKING

from onnxprune.errors import GateError, OnnxPruneError, UsageError

if TYPE_CHECKING:
    from onnxprune.api import PruneResult, prune
    from onnxprune.options import PruneOptions
    from onnxprune.report.results import Report

__all__ = ["GateError", "OnnxPruneError", "PruneOptions", "PruneResult", "Report", "UsageError", "prune"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("prune", "PruneResult"):
        from onnxprune import api

        return getattr(api, name)
    if name == "PruneOptions":
        from onnxprune.options import PruneOptions

        return PruneOptions
    if name == "Report":
        from onnxprune.report.results import Report

        return Report
    raise AttributeError(f"module 'onnxprune' has no attribute {name!r}")
