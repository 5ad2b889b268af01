"""Oracles for structured pruning, independent of the rewrite.

Exactness: removing channels must equal, in the *original* model, zeroing those channels'
contributions — the consumers' input slices (Conv ``weight[:, c]``, Gemm/MatMul rows, the HW
row blocks after a Flatten). The zeroed model is built from the plan's ``in`` cuts alone, not
by re-running any rewrite, and both run in onnxruntime on random inputs.

Planted dead: zero whole channels (filters, per-channel parameters, consumer slices) so that
they are provably useless, prune globally with exact counts below the planted fraction: the
outputs must not move, and every removed channel must be a planted one.

Why two oracles: exactness proves the rewrite removes what the plan says and nothing else,
whatever the weights; planted dead proves the plan itself picks the right channels when the
answer is known. Neither reads the rewrite's code, so a bug there cannot hide in its own check.

Failures raise ``AssertionError`` with a message (explicitly, not with ``assert``, so the
checks hold under ``python -O`` and read well outside pytest's assertion rewriting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxprune.calibration.stats import channel_stats
from onnxprune.graph import quant
from onnxprune.graph.proto import set_tensor
from onnxprune.graph.view import GraphView
from onnxprune.runtime.session import CPU, open_session
from onnxprune.structured.dependency import Group, analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.importance import consumer_activations
from onnxprune.structured.plan import Plan


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,  # standard normal > 0: either branch of an If, at random
}


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session, one thread, warnings off: deterministic and quiet on any machine."""
    return open_session(model, [CPU], role="model under test", optimize_all=False, threads=1)


def random_feeds(model: onnx.ModelProto, seed: int = 0, symbolic: int = 1) -> dict[str, np.ndarray]:
    """Standard normal inputs (integers: their absolute values, so token ids index tables;
    booleans: the sign); symbolic dimensions (batch, sequence) get size ``symbolic``."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else symbolic for d in t.shape.dim]
        value = rng.standard_normal(shape)
        if t.elem_type == onnx.TensorProto.BOOL:
            feeds[vi.name] = np.asarray(value > 0)
        elif np.issubdtype(_TYPES[t.elem_type], np.integer):  # ids, masks: small, not negative
            feeds[vi.name] = np.abs(value).astype(_TYPES[t.elem_type])
        else:
            feeds[vi.name] = value.astype(_TYPES[t.elem_type])
    return feeds


def randomize_zero_weights(model: onnx.ModelProto, seed: int = 0) -> int:
    """Give all-zero float weights (rank >= 2) small random values, in place; returns how
    many. A zero-initialized layer (torchvision's ViT head) makes every oracle compare zeros
    with zeros, so checks on real exports with random weights start here."""
    rng = np.random.default_rng(seed)
    n = 0
    for t in model.graph.initializer:
        if len(t.dims) >= 2 and t.data_type == onnx.TensorProto.FLOAT:
            a = numpy_helper.to_array(t)
            if a.size > 1 and not a.any():
                noise = (rng.standard_normal(a.shape) * 0.05).astype(a.dtype)
                t.CopyFrom(numpy_helper.from_array(noise, t.name))
                n += 1
    return n


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of ``model`` on ``feeds``, in graph output order."""
    return session(model).run(None, feeds)


def assert_close(ref: Sequence[np.ndarray], got: Sequence[np.ndarray], rtol: float = 1e-5) -> None:
    """Equal to ``rtol`` relative to each output's scale (max |ref|)."""
    _check(len(ref) == len(got), f"{len(got)} outputs != {len(ref)}")
    for i, (r, g) in enumerate(zip(ref, got, strict=True)):
        _check(r.shape == g.shape, f"output {i}: shape {g.shape} != {r.shape}")
        scale = max(float(np.max(np.abs(r))), 1e-6) if r.size else 1.0
        err = float(np.max(np.abs(r.astype(np.float64) - g))) if r.size else 0.0
        _check(err <= rtol * scale, f"output {i}: max error {err:.3g} > {rtol} * {scale:.3g}")


def zeroed(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """The original model with the removed channels' input slices zeroed at every consumer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(model, shapes=False)
    if any(n.op_type not in ("Conv", "Gemm", "MatMul") for n in model.graph.node):
        # quantized ops register the zero points of their integer weights in the analysis
        view = GraphView(model)
        analyze(model, view=view)
    for cut in plan.params:
        if cut.role != "in":
            continue
        arr = view.value(cut.name).copy()
        gone = np.setdiff1d(np.arange(cut.size), cut.kept)
        index = [slice(None)] * arr.ndim
        index[cut.axis] = gone
        arr[tuple(index)] = 0
        q = view.dequantized_reads.get(cut.name)
        if q is not None:  # an integer weight of a quantized op: to its zero point
            arr = quant.zeroed_integers(q, view.constant, arr == 0)
        set_constant(out, cut.name, arr)
    _mask_contractions(out, plan)
    return out


def set_constant(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Give constant ``name`` a new value, whether an initializer, a Constant node's output
    or an Identity alias of one (which gets its own initializer, leaving the others alone)."""
    for t in model.graph.initializer:
        if t.name == name:
            set_tensor(t, value)
            return
    node = next(n for n in model.graph.node if name in n.output)
    view = GraphView(model, shapes=False)
    if name in view.quantized:  # zero in the integer domain: dequantizes to exactly 0
        q = view.quantized[name]
        ints = quant.zeroed_integers(q, view.constant, value == 0)
        model.graph.initializer.append(numpy_helper.from_array(ints, f"{name}__oracle"))
        reader, index = q.slot(name, 0)
        next(n for n in model.graph.node if reader in n.output).input[index] = f"{name}__oracle"
        return
    if node.op_type == "Constant":
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))
        return
    _check(
        node.op_type in ("Identity", "Transpose", "Cast"),
        f"{name}: not a constant ({node.op_type})",
    )
    if node.op_type == "Cast":  # an fp16 weight read as float: set it in its own dtype
        value = value.astype(GraphView(model, shapes=False).constant(node.input[0]).dtype)
    if node.op_type == "Transpose":
        perm = next(
            (list(a.ints) for a in node.attribute if a.name == "perm"),
            list(range(value.ndim))[::-1],
        )
        value = np.transpose(value, np.argsort(perm))
    model.graph.initializer.append(
        numpy_helper.from_array(np.ascontiguousarray(value), f"{name}__oracle")
    )
    node.input[0] = f"{name}__oracle"


def _mask_contractions(model: onnx.ModelProto, plan: Plan) -> None:
    """A MatMul of two computed tensors consumes channels without a weight (q @ k^T):
    zero the removed channels of its left operand with a mask instead."""
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim)
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    consts = {t.name for t in model.graph.initializer}
    cuts = {c.name: c for c in plan.tensors}
    for node in list(model.graph.node):
        a = node.input[0] if node.op_type == "MatMul" else ""
        cut = cuts.get(a)
        if cut is None or node.input[1] in consts or cut.axis != ranks.get(a, -1) - 1:
            continue
        mask = np.zeros(cut.size, dtype=np.float32)
        mask[cut.kept] = 1
        name = f"{a}__oracle_mask"
        model.graph.initializer.append(numpy_helper.from_array(mask, name))
        model.graph.node.append(onnx.helper.make_node("Mul", [a, name], [f"{a}__masked"]))
        node.input[0] = f"{a}__masked"
    onnx_sort(model)


def onnx_sort(model: onnx.ModelProto) -> None:
    """Topologically sort the nodes (the oracle appends mask nodes at the end)."""
    nodes = list(model.graph.node)
    known = {t.name for t in model.graph.initializer} | {i.name for i in model.graph.input} | {""}
    ordered = []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in known for i in n.input):
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        _check(len(rest) < len(nodes), "the graph has a cycle or an undefined input")
        nodes = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def assert_same_interface(
    model: onnx.ModelProto, pruned: onnx.ModelProto, *, output_types: bool = True
) -> None:
    """The pruned model checks and keeps the original's inputs and outputs (with their types;
    ``output_types=False``: names only, for a cut whose output sizes legitimately differ)."""
    onnx.checker.check_model(pruned, full_check=True)
    _check(
        [(i.name, i.type) for i in pruned.graph.input]
        == [(i.name, i.type) for i in model.graph.input],
        "the pruned model's inputs differ from the original's",
    )
    if output_types:
        same = [(o.name, o.type) for o in pruned.graph.output] == [
            (o.name, o.type) for o in model.graph.output
        ]
    else:
        same = [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    _check(same, "the pruned model's outputs differ from the original's")


def assert_exact(
    model: onnx.ModelProto,
    pruned: onnx.ModelProto,
    plan: Plan,
    *,
    seeds: Sequence[int] = (0, 1),
    rtol: float = 1e-5,
    symbolic: int = 1,
) -> None:
    """The exactness oracle, plus the invariants every rewrite must keep. ``symbolic``: the
    size given to symbolic input dimensions (more than 1 token exercises attention)."""
    assert_same_interface(model, pruned)
    ref_model = zeroed(model, plan)
    for seed in seeds:
        feeds = random_feeds(model, seed, symbolic)
        assert_close(run(ref_model, feeds), run(pruned, feeds), rtol)


def prune_exact(
    model: onnx.ModelProto, ratio: float = 0.5, *, expect_pruned: bool = True, **kw: Any
) -> tuple[onnx.ModelProto, Plan]:
    """Prune with exact counts and check the exactness oracle; returns (pruned, plan).

    ``kw`` go to ``StructuredOptions`` (``heads=``, ``scope=``, ...); ``round_to`` defaults
    to 1 so that small test graphs are really cut. ``expect_pruned=False`` for a graph the
    rule must leave alone (then the oracle still checks the untouched model).
    """
    kw.setdefault("round_to", 1)
    pruned, result = prune_structured(model, StructuredOptions(ratio=ratio, **kw))
    plan = result.plan
    if expect_pruned:
        _check(not plan.empty, f"nothing was pruned; blocked: {result.blocked}")
    assert_exact(model, pruned, plan)
    return pruned, plan


def plant_dead(
    model: onnx.ModelProto, fraction: float, seed: int = 0
) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[Group]]:
    """Zero ``fraction`` of the slots of every prunable group in every scored member.

    Returns the planted model, the planted slots per group id, and the groups.
    """
    groups = analyze(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(model, shapes=False)
    rng = np.random.default_rng(seed)
    planted: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    for g in groups:
        if g.blocked_reason is not None:
            continue
        n = int(np.ceil(fraction * g.slots))
        if n == 0 or n >= g.slots:
            continue
        dead = rng.choice(g.slots, size=n, replace=False)
        planted[g.id] = np.sort(dead)
        for m in g.members:
            if m.role in ("act", "stat"):
                continue
            arr = values.setdefault(m.target, view.constant(m.target).copy())
            pos = np.flatnonzero(np.isin(m.slot, dead))
            index = [slice(None)] * arr.ndim
            index[m.axis] = pos
            arr[tuple(index)] = 0
    for name, arr in values.items():
        set_constant(out, name, arr)
    return out, planted, groups


def blocked_reason(model: onnx.ModelProto, group_id: str = "producer") -> str | None:
    """Why the group ``group_id`` cannot be pruned (None: it can). A rule that must refuse a
    graph is checked with this: the reason names the op and what stops it."""
    return next(g for g in analyze(model) if g.id == group_id).blocked_reason


def _silent_slots(model: onnx.ModelProto, stats: dict) -> dict[str, np.ndarray]:
    """Per group, the slots whose every consumer activation was zero on the data."""
    view = GraphView(model, shapes=False)
    out = {}
    for g in analyze(model):
        quiet = np.ones(g.slots, dtype=bool)
        for m in consumer_activations(g, view):
            st = stats.get(m.target)
            if st is None:
                continue
            loud = np.unique(m.slot[(m.slot >= 0) & (st.sum_abs > 0)])
            quiet[loud] = False
        out[g.id] = np.flatnonzero(quiet)
    return out


def assert_planted_dead(
    model: onnx.ModelProto,
    fraction: float = 0.5,
    ratio: float = 0.3,
    criterion: str = "l1",
    seed: int = 0,
) -> Plan:
    """Prune only planted channels (global scope, exact counts): outputs unchanged.

    ``fraction`` of each prunable group is planted dead, ``ratio`` (below it) is pruned, so a
    correct plan has only dead channels to choose from. Returns the plan for further checks.
    """
    planted_model, planted, _ = plant_dead(model, fraction, seed)
    _check(bool(planted), "no prunable group to plant in")
    feeds = random_feeds(model, seed)

    seen: dict = {}

    def stats_for(
        targets: Any, view: GraphView
    ) -> dict:  # data-aware criteria read activations of the planted model
        seen.update(channel_stats(planted_model, feeds, targets, view=view))
        return seen

    pruned, result = prune_structured(
        planted_model,
        StructuredOptions(ratio=ratio, scope="global", round_to=1, criterion=criterion),
        stats_for=stats_for,
    )
    plan = result.plan
    _check(not plan.empty, f"nothing was pruned; blocked: {result.blocked}")
    silent = _silent_slots(planted_model, seen) if seen else {}
    for gp in plan.groups:
        removed = np.setdiff1d(np.arange(gp.slots), gp.kept)
        # A data-aware criterion may also take a live channel that is zero on every sample
        # it saw: removing it changes nothing on those samples (checked below).
        allowed = np.union1d(planted.get(gp.id, []), silent.get(gp.id, []))
        _check(bool(np.isin(removed, allowed).all()), f"{gp.id}: pruned live channels {removed}")
    assert_close(run(planted_model, feeds), run(pruned, feeds))
    return plan
