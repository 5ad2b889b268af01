"""Activations from calibration data, read with onnxruntime and never held all at once.

Sessions, batches and sample counts come from ``onnxprune.runtime`` (``session``, ``feeds``).

Intermediate tensors are exposed as extra graph outputs ("taps") of a copy of the model, run
batch by batch; the caller folds each batch into running statistics and drops it. When the
tapped tensors of one batch would not fit ``budget_bytes``, they are read in several passes
over the data, a few tensors at a time, so memory stays bounded on any model size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.view import GraphView
from onnxprune.ops.control import outer_reads
from onnxprune.progress import expect_total
from onnxprune.recovery.layers import find_layers
from onnxprune.runtime.feeds import batches, sample_count
from onnxprune.runtime.session import fixed_batch, open_session, run_session

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_BUDGET_BYTES",
    "ChannelStats",
    "batch_size_for",
    "channel_stats",
    "plan_passes",
    "run_taps",
    "session",
    "shard_inputs",
    "sharded_channel_stats",
    "tapped_model",
    "wanda_scorer",
]

DEFAULT_BATCH = 32
"""Samples per run when the model's batch is dynamic: big enough for onnxruntime's threads,
small enough that early CNN activations of a batch stay in tens of MB."""
DEFAULT_BUDGET_BYTES = 512 << 20
_UNKNOWN_BYTES = 4 << 20  # per sample, when a tapped tensor's shape is not known
_MAX_PROTO_BYTES = 2_000_000_000
_RUN_FAILED = "onnxruntime failed on calibration data"


def tapped_model(
    model: onnx.ModelProto, names: Sequence[str], *, only: bool = False
) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names`` (after its own outputs).

    ``only``: output just ``names`` and drop every node they do not need, so a pass that
    reads early layers does not pay for the rest of the network.
    """
    new = onnx.ModelProto()
    if not only:
        new.CopyFrom(model)
        have = {o.name for o in new.graph.output}
        for name in names:
            if name not in have:
                new.graph.output.append(onnx.ValueInfoProto(name=name))
                have.add(name)
        return new
    nodes = list(model.graph.node)
    needed = set(names)
    keep = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):  # nodes are in topological order
        if any(o in needed for o in nodes[i].output) or _has_subgraph(nodes[i]):
            keep[i] = True
            needed.update(x for x in nodes[i].input if x)
            needed.update(outer_reads(nodes[i]))  # what its bodies read by name
    graph = onnx.helper.make_graph(
        [n for n, k in zip(nodes, keep, strict=True) if k],
        model.graph.name,
        [vi for vi in model.graph.input],
        [onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names)],
        [t for t in model.graph.initializer if t.name in needed],
        value_info=[vi for vi in model.graph.value_info if vi.name in needed],
    )
    new.CopyFrom(model)
    new.graph.CopyFrom(graph)
    return new


def _has_subgraph(node: onnx.NodeProto) -> bool:
    """Nodes with subgraphs (If, Loop) may read outer tensors: kept, to stay safe."""
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    )


def session(model: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",)):
    """An onnxruntime session on an in-memory model, with errors a user can read.

    Idle threads do not spin (``open_session(spinning=False)``): the numpy BLAS work done
    between runs (recovery's Gram matrices and solves) would fight them for the cores.
    """
    if model.ByteSize() > _MAX_PROTO_BYTES:
        raise OnnxPruneError(
            "calibration needs the model in one protobuf under 2 GB; this one is larger"
        )
    return open_session(
        model, providers, role="model for calibration", optimize_all=False, spinning=False
    )


def batch_size_for(sess, samples: int) -> int:
    """The model's fixed batch (1 for most CNN exports), else ``DEFAULT_BATCH``."""
    fixed = fixed_batch(sess)
    return fixed if fixed is not None else max(1, min(DEFAULT_BATCH, samples))


def run_taps(
    sess, inputs: Mapping[str, np.ndarray], names: Sequence[str], batch: int
) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """For each batch: (feed, {tapped name: value}). ``sess`` must output ``names``."""
    wanted = [i.name for i in sess.get_inputs()]
    outputs = [o.name for o in sess.get_outputs()]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise OnnxPruneError(f"internal: tensors {missing[:3]} are not outputs of the session")
    for feed in batches(inputs, batch, wanted, fixed=fixed_batch(sess) is not None):
        values = (
            run_session(sess, feed, "model", outputs=names, failure=_RUN_FAILED) if names else []
        )
        yield feed, dict(zip(names, values, strict=True))


def plan_passes(
    view: GraphView, names: Sequence[str], batch: int, budget_bytes: int = DEFAULT_BUDGET_BYTES
) -> list[list[str]]:
    """Split ``names`` into passes whose tapped tensors for one batch fit ``budget_bytes``."""
    passes: list[list[str]] = [[]]
    used = 0
    for name in names:
        shape = view.shape(name)
        per_sample = _UNKNOWN_BYTES
        if shape and all(isinstance(d, int) for d in shape[1:]):
            per_sample = 4 * int(np.prod(shape[1:], dtype=np.int64))
        cost = per_sample * batch
        if passes[-1] and used + cost > budget_bytes:
            passes.append([])
            used = 0
        passes[-1].append(name)
        used += cost
    return [p for p in passes if p]


@dataclass
class ChannelStats:
    """Running per-channel sums of one tensor along one axis."""

    axis: int
    count: int = 0
    sum_abs: np.ndarray | None = None
    sum_sq: np.ndarray | None = None
    zeros: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        axis = self.axis if self.axis >= 0 else x.ndim + self.axis
        moved = np.moveaxis(np.asarray(x, dtype=np.float32), axis, -1).reshape(-1, x.shape[axis])
        parts = (
            np.abs(moved).sum(0, dtype=np.float64),
            np.square(moved).sum(0, dtype=np.float64),
            (moved == 0).sum(0).astype(np.float64),
        )
        if self.sum_abs is None:
            self.sum_abs, self.sum_sq, self.zeros = parts
        else:
            self.sum_abs += parts[0]
            self.sum_sq += parts[1]
            self.zeros += parts[2]
        self.count += moved.shape[0]

    def merge(self, other: ChannelStats) -> ChannelStats:
        """The statistics of both sample sets: every field is a sum over samples, so shards
        of a calibration set reduce to the same statistics as the whole set."""
        if other.axis != self.axis:
            raise OnnxPruneError("internal: merging channel statistics of different axes")
        if other.sum_abs is None:
            return self
        if self.sum_abs is None:
            self.sum_abs, self.sum_sq = other.sum_abs.copy(), other.sum_sq.copy()
            self.zeros = other.zeros.copy()
        else:
            self.sum_abs += other.sum_abs
            self.sum_sq += other.sum_sq
            self.zeros += other.zeros
        self.count += other.count
        return self

    @property
    def mean_abs(self) -> np.ndarray:
        return self.sum_abs / max(1, self.count)

    @property
    def norm(self) -> np.ndarray:
        """L2 norm over every position and sample (Wanda's ``||X_j||``)."""
        return np.sqrt(self.sum_sq)

    @property
    def apoz(self) -> np.ndarray:
        """Average percentage of zeros (Hu et al. 2016): high means the channel rarely fires."""
        return self.zeros / max(1, self.count)


def channel_stats(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    targets: Mapping[str, int],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    view: GraphView | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, ChannelStats]:
    """Per-channel statistics of each tensor in ``targets`` (name -> channel axis).

    Graph inputs can be targets too (they are read from the feed).
    """
    view = view if view is not None else GraphView(model)
    graph_inputs = set(view.graph_inputs)
    stats = {name: ChannelStats(axis) for name, axis in targets.items()}
    computed = [n for n in targets if n not in graph_inputs]
    fed = [n for n in targets if n in graph_inputs]
    sess = session(tapped_model(model, computed), providers)
    batch = batch_size_for(sess, sample_count(inputs))
    passes = plan_passes(view, computed, batch, budget_bytes) or [[]]
    expect_total(progress, len(computed))
    for k, names in enumerate(passes):
        for feed, values in run_taps(sess, inputs, names, batch):
            for name, v in values.items():
                stats[name].add(v)
            if k == 0:
                for name in fed:
                    stats[name].add(feed[name])
        if progress is not None:
            progress(len(names))
    return stats


def shard_inputs(inputs: Mapping[str, np.ndarray], shards: int) -> list[dict[str, np.ndarray]]:
    """``inputs`` split along the sample axis into at most ``shards`` contiguous parts (views,
    no copy); every part but the last a whole number of ``DEFAULT_BATCH`` samples, so a
    dynamic-batch model runs the same batches sharded or not."""
    n = sample_count(inputs)
    per = max(1, -(-n // max(1, shards)))
    per = -(-per // DEFAULT_BATCH) * DEFAULT_BATCH if per > DEFAULT_BATCH else per
    return [{k: v[i : i + per] for k, v in inputs.items()} for i in range(0, n, per)]


def sharded_channel_stats(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    targets: Mapping[str, int],
    executor,
    *,
    shards: int | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> dict[str, ChannelStats]:
    """``channel_stats`` with the calibration set cut in ``shards`` (default: the executor's
    ``workers``) run as jobs of ``executor`` (``onnxprune.targets.executor``: in-process,
    local processes or Ray tasks), the shards' sums added. Each job gets the serialized
    model and its shard of the inputs; memory per job is bounded by ``budget_bytes`` as in
    ``channel_stats``."""
    parts = shard_inputs(inputs, shards if shards is not None else executor.workers)
    blob = model.SerializeToString()
    jobs = [(blob, part, dict(targets), tuple(providers), budget_bytes) for part in parts]
    merged = {name: ChannelStats(axis) for name, axis in targets.items()}
    for result in executor.map(_shard_job, jobs):
        for name, st in result.items():
            merged[name].merge(st)
    return merged


def _shard_job(job: tuple) -> dict[str, ChannelStats]:
    """One shard's statistics (module level: a worker process or Ray task unpickles it)."""
    blob, inputs, targets, providers, budget = job
    model = onnx.ModelProto()
    model.ParseFromString(blob)
    return channel_stats(model, inputs, targets, providers=providers, budget_bytes=budget)


def wanda_scorer(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Callable[[np.ndarray, object], np.ndarray]:
    """Wanda's score ``|W_ij| * ||X_j||`` (Sun et al. 2023) for ``prune_unstructured``.

    ``||X_j||`` is the L2 norm of input feature ``j`` of the weight's layer over every
    calibration row (token, pixel); a Conv weight takes its input channel's norm at every
    kernel position. Weights whose layer is not a plain Gemm/MatMul/Conv keep magnitude.
    """
    view = GraphView(model)
    layers = {}
    for lay in find_layers(model, view):
        layers.setdefault(lay.weight, lay)
    targets = {lay.x: lay.x_channel_axis for lay in layers.values()}
    stats = channel_stats(model, inputs, targets, providers=providers, view=view)

    def score(weight: np.ndarray, ref: object) -> np.ndarray:
        w = np.abs(weight.astype(np.float32, copy=False))
        lay = layers.get(getattr(ref, "name", None))
        if lay is None:
            return w
        norm = stats[lay.x].norm.astype(np.float32)
        scale = lay.feature_scale(norm, w.shape)
        return w if scale is None else w * scale

    return score
