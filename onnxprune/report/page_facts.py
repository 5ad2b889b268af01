"""What the HTML report shows beyond the JSON: the command, versions, hash, time per op type.

Gathered only when an HTML report is asked for: the per-op profile runs both models again
(``targets.profile``, onnxruntime's profiler, with validation's providers and threads, on
one random batch at validation's input shapes), a few seconds a plain prune does not pay.
"""

from __future__ import annotations

import platform
import shlex
import sys
from collections.abc import Mapping, Sequence

import onnx

from onnxprune.graph.view import node_label
from onnxprune.report.html import PageFacts

__all__ = ["command_line", "gather_facts", "kernel_times", "versions"]

PROFILE_RUNS = 10


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed, quoted so it can be pasted back into a shell."""
    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith(("__main__.py", "onnxprune")):
        args[0] = "onnxprune"
    return " ".join(shlex.quote(a) for a in args)


def versions() -> dict[str, str]:
    import onnxruntime

    from onnxprune import __version__

    return {"onnxprune": __version__, "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__, "python": platform.python_version()}  # fmt: skip


def kernel_times(
    model: onnx.ModelProto, providers: Sequence[str], feed: Mapping, threads: int | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds of one run (sum of kernel medians) per op type and per layer. A fused
    kernel counts for its weighted op (Conv+Relu is Conv time, under the Conv's node name);
    kernels that stand for no node of ``model`` (layout reorders, copies) go under
    ``(runtime)``."""
    from onnxprune.targets.profile import attribute, named_copy, profile_model

    named = named_copy(model)
    times = profile_model(named, providers, feed, threads=threads or None, runs=PROFILE_RUNS)
    ops = {node_label(n, i): n.op_type for i, n in enumerate(named.graph.node)}
    where = attribute(times.kernels, named)
    by_op: dict[str, float] = {}
    by_node: dict[str, float] = {}
    for kernel, ms in times.kernels.items():
        labels = where.get(kernel)
        node = labels[-1] if labels else "(runtime)"
        op = ops.get(node, "(runtime)")
        by_op[op] = by_op.get(op, 0.0) + ms
        by_node[node] = by_node.get(node, 0.0) + ms
    return _rounded(by_op), _rounded(by_node)


def _rounded(d: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}


def _profile(original, pruned, validation, seed: int) -> dict | None:
    """Per op type, before and after, at validation's shapes; None when it cannot run."""
    from onnxprune.runtime.session import resolve_providers
    from onnxprune.runtime.shapes import random_validation_inputs, resolve_shapes

    if validation is None:
        return None
    given = {k: tuple(v) for k, v in (validation.input_shapes or {}).items()}
    shown = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in given.items())
    try:
        resolved = resolve_shapes(original, given or None)
        feed = dict(random_validation_inputs(original, resolved, 1, seed))
        providers = resolve_providers("cuda" if "CUDA" in validation.provider else "cpu")
        before, nodes_before = kernel_times(original, providers, feed, validation.threads)
        after, nodes_after = kernel_times(pruned, providers, feed, validation.threads)
    except Exception as exc:  # a page without the profile beats no page
        return {"before": {}, "after": {}, "note": f"profiling failed: {exc}"}
    return {"before": before, "after": after, "runs": PROFILE_RUNS,
            "layers_before": nodes_before, "layers_after": nodes_after,
            "note": f"onnxruntime profiler on {validation.provider}, one random batch at "
                    f"{shown or 'the default shapes'}, median of {PROFILE_RUNS} runs"}  # fmt: skip


def gather_facts(
    original: onnx.ModelProto, pruned: onnx.ModelProto | None, report, settings: Mapping,
    *, argv: Sequence[str] | None = None, profile: bool = True, seed: int = 0,
) -> PageFacts:  # fmt: skip
    """The facts of one run for ``html.prune_page``: see the module doc."""
    from onnxprune.targets.plans import model_hash

    validation = getattr(report, "validation", None)
    prof = _profile(original, pruned, validation, seed) if profile and pruned is not None else None
    nodes = list(original.graph.node)
    return PageFacts(
        command=command_line(argv),
        settings={k: _plain(v) for k, v in settings.items()},
        versions=versions(),
        model_hash=model_hash(original),
        node_order={node_label(n, i): i for i, n in enumerate(nodes)},
        node_ops={node_label(n, i): n.op_type for i, n in enumerate(nodes)},
        profile=prof,
        per_sample_cosine=list(getattr(validation, "per_sample_cosine", []) or []),
    )


def _plain(v: object) -> object:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)
