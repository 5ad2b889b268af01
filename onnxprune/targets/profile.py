"""Measured time per node: onnxruntime's profiler, read back onto the original graph's nodes.

MACs are a poor proxy for time (issue 11: MobileNetV2's early 16-32 channel layers hold few
MACs and most of the latency), so the analysis measures. onnxruntime writes a JSON trace
when ``SessionOptions.enable_profiling`` is on: one ``Node`` event per kernel per run, named
``<node name>_kernel_time``, with its duration in microseconds. This module runs a model a
few times with profiling on, takes each kernel's median over the timed runs, and says which
nodes of the *original* graph each kernel stands for.

Why that mapping is needed: at full optimization onnxruntime fuses and renames. A kernel
keeps the original node's name when nothing was fused (hence every unnamed node is named
with its label first); a fused NCHWc Conv is named after the tensor it produces plus
``_nchwc`` (the Relu's output for Conv+Relu). Such a name is read back by stripping the
suffix, finding the tensor's producer and walking back through the elementwise ops fused
into it up to the weighted op (Conv, Gemm, MatMul). Graph-level fusions append their name
to the first node's (``<node>/MatMulAddFusion``, ``<node>/QuickGeluFusion/``): ConvNeXt-T's
MatMul+Add pairs, 41.6 of its 53.9 profiled ms, were read back onto no node until this.
Kernels that stand for no original node (layout reorders, copies, fused Gelu kernels named
``Gelu_token_N``) stay in the total, in no node's time.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.graph.view import node_label
from onnxprune.ops import opsets_of, spec_for
from onnxprune.runtime.session import open_session, run_session, session_feeds

__all__ = ["KernelTimes", "attribute", "named_copy", "node_times", "parse_trace",
           "profile_model", "profile_models"]

_SUFFIX = "_kernel_time"
_STRIP = re.compile(r"_(nchwc|fused|token_\d+|\d+|[A-Za-z]+)$|/[A-Za-z]*Fusion/?$|/$")
_WALK = 4  # elementwise ops walked back through to the weighted op of a fused kernel
_FUSED = frozenset(
    {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Add", "Sum",
     "BatchNormalization", "Mul"}
)  # fmt: skip
"""Ops onnxruntime folds into the kernel of the op before them (activation, Sum fusion)."""


@dataclass
class KernelTimes:
    """Median milliseconds per profiled kernel, and the totals of one run."""

    kernels: dict[str, float] = field(default_factory=dict)
    """Kernel name (without ``_kernel_time``) -> median ms over the timed runs."""
    total_ms: float = 0.0
    """The sum of the kernels' medians: shares of it add up (a median of per-run sums does
    not, on a busy machine each run has its own slow kernels)."""
    run_ms: float = 0.0
    """Median wall time of one run as onnxruntime's profiler saw it (kernels + overhead)."""
    runs: int = 0


def named_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself when every node has a name, else a copy whose unnamed nodes are
    named with their label (``Conv#3(y)``), so the profiler's names can be read back."""
    if all(n.name for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, node in enumerate(out.graph.node):
        if not node.name:
            node.name = node_label(node, i)
    return out


def parse_trace(events: Sequence[Mapping], skip: int = 0) -> KernelTimes:
    """Per-kernel medians from onnxruntime's trace events; the first ``skip`` runs (warm-up)
    are left out. A kernel event belongs to the ``model_run`` whose interval holds it."""
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )[skip:]
    per_run: list[dict[str, float]] = [{} for _ in runs]
    starts = np.array([r["ts"] for r in runs], dtype=np.float64)
    for e in events:
        name = str(e.get("name", ""))
        if e.get("cat") != "Node" or not name.endswith(_SUFFIX) or not len(runs):
            continue
        k = int(np.searchsorted(starts, float(e["ts"]), side="right")) - 1
        if k < 0 or float(e["ts"]) > runs[k]["ts"] + runs[k]["dur"]:
            continue
        key = name[: -len(_SUFFIX)]
        per_run[k][key] = per_run[k].get(key, 0.0) + float(e["dur"]) / 1000.0
    names = sorted({n for r in per_run for n in r})
    kernels = {n: statistics.median(r.get(n, 0.0) for r in per_run) for n in names}
    return KernelTimes(
        kernels=kernels,
        total_ms=float(sum(kernels.values())),
        run_ms=statistics.median(float(r["dur"]) / 1000.0 for r in runs) if runs else 0.0,
        runs=len(runs),
    )


def profile_model(
    model: onnx.ModelProto,
    providers: Sequence[str],
    feed: Mapping[str, np.ndarray],
    *,
    threads: int | None = None,
    runs: int = 10,
    warmup: int = 2,
) -> KernelTimes:
    """Run ``model`` (already ``named_copy``'d) ``warmup + runs`` times on ``feed`` with
    profiling on, at full graph optimization as deployed; the trace file is removed."""
    return profile_models([model], providers, feed, threads=threads, runs=runs,
                          warmup=warmup)[0]  # fmt: skip


def profile_models(
    models: Sequence[onnx.ModelProto],
    providers: Sequence[str],
    feed: Mapping[str, np.ndarray],
    *,
    threads: int | None = None,
    runs: int = 10,
    warmup: int = 2,
) -> list[KernelTimes]:
    """``profile_model`` of several models at once, their runs alternating round by round:
    two profiles taken one after the other differ by the machine's drift (MobileNetV2's
    kernels summed 4.4 to 5.8 ms in four profiles in a row at 1 thread), and a fit on two
    models' kernel times (``targets.time_model``) needs them to share it."""
    with tempfile.TemporaryDirectory(prefix="onnxprune-profile-") as folder:
        sessions = [open_session(m, providers, role="model", threads=threads,
                                 profile=os.path.join(folder, f"trace{i}"))
                    for i, m in enumerate(models)]  # fmt: skip
        fed = [session_feeds(sess, feed, "model") for sess in sessions]
        for _ in range(warmup + runs):
            for sess, f in zip(sessions, fed, strict=True):
                run_session(sess, f, "model")
        out = []
        for sess in sessions:
            with open(sess.end_profiling(), encoding="utf-8") as fh:
                out.append(parse_trace(json.load(fh), skip=warmup))
    return out


def attribute(kernels: Mapping[str, float], model: onnx.ModelProto) -> dict[str, list[str]]:
    """Kernel name -> the labels of the original nodes it stands for (see the module doc);
    kernels that stand for none are left out."""
    nodes = list(model.graph.node)
    labels = [node_label(n, i) for i, n in enumerate(nodes)]
    by_name = {n.name: i for i, n in enumerate(nodes) if n.name}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    uses: dict[str, int] = {}
    for n in nodes:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    consts = {t.name for t in model.graph.initializer} | {
        o for n in nodes if n.op_type == "Constant" for o in n.output
    }  # Clip's bounds are often Constant nodes' outputs (torch exports): not data inputs
    opsets = opsets_of(model)
    out: dict[str, list[str]] = {}
    for kernel in kernels:
        name = kernel
        for _ in range(3):
            if name in by_name:
                out[kernel] = [labels[by_name[name]]]
                break
            if name in producer:
                chain = _fused_chain(producer[name], nodes, producer, uses, consts, opsets)
                out[kernel] = [labels[i] for i in chain]
                break
            stripped = _STRIP.sub("", name)
            if stripped == name or not stripped:
                break
            name = stripped
    return out


def _fused_chain(start: int, nodes, producer, uses, consts, opsets) -> list[int]:
    """``start`` and, while it is an op that fuses into its input's kernel (``_FUSED``), the
    single-use nodes before it, back to a weighted op."""
    chain = [start]
    i = start
    for _ in range(_WALK):
        spec = spec_for(nodes[i], opsets)
        if (spec is not None and spec.macs is not None) or nodes[i].op_type not in _FUSED:
            break
        data = [t for t in nodes[i].input if t and t not in consts and t in producer]
        if len(data) != 1 or uses.get(data[0], 0) != 1:
            break
        i = producer[data[0]]
        chain.append(i)
    return chain


def node_times(times: KernelTimes, model: onnx.ModelProto) -> tuple[dict[str, float], float]:
    """(original node label -> ms, ms no node stands for): what ``targets.costs``' ``time``
    metric prices. A fused kernel's time goes to the weighted op it was fused into (the Conv
    of a Conv+Relu: the Relu's output has the Conv's channels, so the MAC fraction scales
    both); a kernel standing for several nodes without a weighted one is split evenly."""
    opsets = opsets_of(model)
    by_label = {node_label(n, i): n for i, n in enumerate(model.graph.node)}
    out: dict[str, float] = {}
    mapped = attribute(times.kernels, model)
    for kernel, labels in mapped.items():
        ms = times.kernels[kernel]
        weighted = [lb for lb in labels if getattr(spec_for(by_label[lb], opsets), "macs", None)
                    is not None]  # fmt: skip
        share = weighted[:1] or labels
        for lb in share:
            out[lb] = out.get(lb, 0.0) + ms / len(share)
    rest = float(sum(ms for k, ms in times.kernels.items() if k not in mapped))
    return out, rest
