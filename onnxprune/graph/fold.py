"""Fold the constant chains exporters put in front of weights into initializers.

jax2tf and tf2onnx exports do not store a Conv or Dense weight as the node reads it: they store
it in their own layout and reach the node through constant-only nodes (``Transpose`` from HWIO
to OIHW, ``Reshape``, ``Squeeze``, a ``Mul`` by a folded scale). The channel analysis only
slices initializers (and Identity/Transpose views of them), so such a weight looked "computed
at run time" and its layer was refused. Here each such chain is evaluated once, with onnx's
own reference evaluator (``onnx.reference.ReferenceEvaluator``: no folder of our own), and its
result becomes an initializer of the same name; chain nodes nobody else reads are removed.

What is folded: a float tensor computed only from constants by the ops in ``FOLDABLE``,
read by a node outside the chain, when the result is no larger than the largest constant it
is computed from. That last condition keeps the model's size: a weight-only int8 weight
(``DequantizeLinear`` or ``Cast`` of int8) would become float32, four times larger, and an
fp16 weight read through ``Cast`` twice as large, so neither is folded whole: an fp16 chain
is folded up to its Cast, in fp16, and the weight is then sliced in its own dtype through the
Cast (``GraphView.alias_dtype``); int8 ones are left to the quantized models' rules, which
prune them through their DequantizeLinear. A ``QuantizeLinear`` of a constant float weight
(QAT exports) is folded to its integer tensor, a quarter of the size. Chains of Identity and
Transpose only are left too: the
analysis already follows them. A chain result that is also a graph output keeps its node.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.graph.proto import subgraphs, tensor_nbytes

FOLDABLE = frozenset(
    (
        "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Identity", "Flatten",
        "DequantizeLinear", "QuantizeLinear", "Mul", "Add", "Div", "Sub", "Neg",
    )
)  # fmt: skip

#: Integer results kept: a float weight quantized at run time (``QuantizeLinear`` of a
#: constant, as QAT exports write it) becomes its integer initializer, which the quantized
#: models' rules prune through the DequantizeLinear that reads it (``onnxprune.graph.quant``).
_INTS = frozenset((onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16,
                   onnx.TensorProto.UINT16))  # fmt: skip

#: Chains the channel analysis already follows as views of one initializer.
_VIEWS = frozenset(("Identity", "Transpose"))

_FLOATS = frozenset(
    (
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    )
)  # fmt: skip


def _is_candidate_node(node: onnx.NodeProto) -> bool:
    return (
        node.op_type in FOLDABLE
        and node.domain in ("", "ai.onnx")
        and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                    for a in node.attribute)
    )  # fmt: skip


def _constant_nodes(graph: onnx.GraphProto, constants: set[str]) -> list[int]:
    """Indices of the foldable nodes computed from constants only, in dependency order
    (the node list need not be sorted yet)."""
    known = set(constants)
    order: list[int] = []
    pending = [i for i, n in enumerate(graph.node) if _is_candidate_node(n)]
    changed = True
    while changed:
        changed = False
        rest = []
        for i in pending:
            node = graph.node[i]
            if all(not x or x in known for x in node.input):
                order.append(i)
                known.update(o for o in node.output if o)
                changed = True
            else:
                rest.append(i)
        pending = rest
    return order


def has_weight_chains(graph: onnx.GraphProto) -> bool:
    """Whether some foldable node other than a view is computed from constants only (cheap:
    no evaluation)."""
    inits = {t.name for t in graph.initializer} - {i.name for i in graph.input}
    return any(graph.node[i].op_type not in _VIEWS for i in _constant_nodes(graph, inits))


def fold_weight_chains(model: onnx.ModelProto) -> tuple[int, int]:
    """Fold the main graph's constant weight chains in place (see the module docstring).

    Returns (tensors folded, nodes removed). A chain the reference evaluator cannot run is
    left as it is (the analysis then names the node that reads it, as before).
    """
    graph = model.graph
    inputs = {i.name for i in graph.input}
    inits = {t.name: t for t in graph.initializer if t.name not in inputs}
    order = _keep_dequantize(graph, _constant_nodes(graph, set(inits)))
    if not order:
        return 0, 0
    produced = {o: i for i in order for o in graph.node[i].output if o}
    in_chain = set(order)
    # Names read inside If/Loop bodies count as read outside the chain (outer-scope reads).
    outside_readers = _subgraph_reads(graph)
    for i, node in enumerate(graph.node):
        if i not in in_chain:
            outside_readers.update(x for x in node.input if x)
    graph_outputs = {o.name for o in graph.output}

    def ancestry(name: str) -> tuple[set[int], set[str]]:
        nodes: set[int] = set()
        roots: set[str] = set()
        stack = [name]
        while stack:
            t = stack.pop()
            if t in produced:
                if produced[t] not in nodes:
                    nodes.add(produced[t])
                    stack.extend(x for x in graph.node[produced[t]].input if x)
            elif t in inits:
                roots.add(t)
        return nodes, roots

    candidates: dict[str, tuple[set[int], set[str]]] = {}
    # A result that would grow (fp16 -> Reshape -> Cast(to=float)) may still have its
    # part before the Cast folded, in its own dtype: the Cast then reads an initializer
    # and the analysis follows it as a view (``GraphView.alias_dtype``).
    before_cast: dict[str, str] = {}
    for name in produced:
        if name not in outside_readers or name in graph_outputs:
            continue
        nodes, roots = ancestry(name)
        if all(graph.node[i].op_type in _VIEWS for i in nodes):
            continue
        candidates[name] = (nodes, roots)
        node = graph.node[produced[name]]
        if node.op_type == "Cast" and node.input[0] in produced:
            nodes, roots = ancestry(node.input[0])
            if not all(graph.node[i].op_type in _VIEWS for i in nodes):
                candidates.setdefault(node.input[0], (nodes, roots))
                before_cast[name] = node.input[0]
    if not candidates:
        return 0, 0
    values = _evaluate(model, candidates, order, inits)

    def fits(name: str) -> bool:
        value = values.get(name)
        largest = max((tensor_nbytes(inits[r]) for r in candidates[name][1]), default=0)
        return value is not None and value.nbytes <= largest

    folded: dict[str, np.ndarray] = {}
    for name in values:
        if name in outside_readers and fits(name):
            folded[name] = values[name]
        elif before_cast.get(name) is not None and fits(before_cast[name]):
            folded[before_cast[name]] = values[before_cast[name]]
    if not folded:
        return 0, 0
    for name, value in folded.items():
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return len(folded), _drop_dead_chain(graph, in_chain, set(folded), set(inits))


def _keep_dequantize(graph: onnx.GraphProto, order: list[int]) -> list[int]:
    """Leave a DequantizeLinear of a QuantizeLinear'd constant out of the chains: the weight
    is folded to its integers and stays quantized (not to fake-quantized floats)."""
    quantized = {
        graph.node[i].output[0] for i in order if graph.node[i].op_type == "QuantizeLinear"
    }
    return [
        i for i in order
        if not (graph.node[i].op_type == "DequantizeLinear" and graph.node[i].input[0] in quantized)
    ]  # fmt: skip


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    return {x for sub in subgraphs(graph) for n in sub.node for x in n.input if x}


def _evaluate(
    model: onnx.ModelProto,
    candidates: dict[str, tuple[set[int], set[str]]],
    order: list[int],
    inits: dict[str, onnx.TensorProto],
) -> dict[str, np.ndarray | None]:
    """The float value of each candidate (None for a non-float result), from one run of the
    reference evaluator over the constant nodes involved. When that run fails (the evaluator
    has no kernel for some op at this opset: DequantizeLinear before 19), each chain is run
    alone, and the ones that fail are left out."""
    names = list(candidates)
    results = _run_chains(model, {n: candidates[n] for n in names}, order, inits)
    if results is None:
        found = {}
        for name in names:
            one = _run_chains(model, {name: candidates[name]}, order, inits)
            if one is not None:
                found[name] = one[0]
    else:
        found = dict(zip(names, results, strict=True))
    out: dict[str, np.ndarray | None] = {}
    for name, value in found.items():
        arr = np.asarray(value)
        try:
            elem = onnx.helper.np_dtype_to_tensor_dtype(arr.dtype)
        except (KeyError, TypeError, ValueError):
            elem = None
        out[name] = arr if elem in _FLOATS or elem in _INTS else None
    return out


def _run_chains(
    model: onnx.ModelProto,
    chains: dict[str, tuple[set[int], set[str]]],
    order: list[int],
    inits: dict[str, onnx.TensorProto],
) -> list | None:
    """The values of ``chains`` (name: its nodes and roots) in order, or None on failure."""
    graph = model.graph
    needed = set().union(*(nodes for nodes, _ in chains.values()))
    roots = set().union(*(r for _, r in chains.values()))
    return run_constant_nodes(
        model, [graph.node[i] for i in order if i in needed], [inits[r] for r in sorted(roots)],
        list(chains),
    )  # fmt: skip


def run_constant_nodes(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.TensorProto] | dict[str, np.ndarray],
    outputs: list[str],
) -> list | None:
    """The values of ``outputs`` computed by ``nodes`` (in dependency order) from the
    constants ``inputs`` alone, with onnx's reference evaluator at the model's opsets; None
    when the evaluator cannot run them. Shared by the weight chains and the static shape
    values (``onnxprune.graph.fold_shapes``): one way to evaluate constant subgraphs."""
    from onnx.reference import ReferenceEvaluator

    if isinstance(inputs, dict):
        inputs = [numpy_helper.from_array(np.asarray(v), k) for k, v in inputs.items()]
    sub = onnx.helper.make_graph(
        list(nodes),
        "constant_nodes",
        [],
        [onnx.helper.make_empty_tensor_value_info(n) for n in outputs],
        list(inputs),
    )
    sub_model = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
    sub_model.ir_version = model.ir_version
    try:
        return list(ReferenceEvaluator(sub_model).run(None, {}))
    except Exception:  # the evaluator raises many types on ops it cannot run
        return None


def _drop_dead_chain(
    graph: onnx.GraphProto, in_chain: set[int], folded: set[str], roots: set[str]
) -> int:
    """Remove the chain nodes whose outputs nobody reads any more, then the initializers only
    they read; returns how many nodes went. Nodes outside the chain are never touched."""
    graph_outputs = {o.name for o in graph.output} | _subgraph_reads(graph)
    alive = set(range(len(graph.node)))
    # A folded tensor's producer goes first: its output name now belongs to an initializer.
    dead = {i for i in in_chain if any(o in folded for o in graph.node[i].output)}
    alive -= dead
    while True:
        read = {x for i in alive for x in graph.node[i].input if x} | graph_outputs
        more = {
            i for i in alive & in_chain if not any(o in read for o in graph.node[i].output if o)
        }
        if not more:
            break
        alive -= more
        dead |= more
    read = {x for i in alive for x in graph.node[i].input if x} | graph_outputs
    chain_inputs = {x for i in dead for x in graph.node[i].input if x}
    return remove_folded(graph, dead, (chain_inputs & roots) - read)


def remove_folded(graph: onnx.GraphProto, dead: set[int], unused: set[str]) -> int:
    """Delete the folded nodes ``dead`` and the initializers ``unused`` that only they read;
    returns how many nodes went (shared by the weight-chain and the shape folds)."""
    for i in sorted(dead, reverse=True):
        del graph.node[i]
    if unused:
        kept = [t for t in graph.initializer if t.name not in unused]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return len(dead)


#: Uniform initializers up to this size get a copy per reader (``unshare_uniform``).
UNSHARE_MAX_BYTES = 1 << 20


def unshare_uniform(graph: onnx.GraphProto) -> int:
    """Give each main-graph reader of a shared uniform initializer its own copy, in place;
    returns how many copies were made.

    torch's exporter deduplicates equal initializers: every all-zero bias and every all-one
    LayerNorm scale of one width becomes one tensor that unrelated layers read. A shared
    tensor ties its readers' channels together (they must be sliced alike), so stages that
    share nothing but a constant fill were coupled and blocked. A tensor whose elements are
    all equal carries no such tie: each copy is the same fill, sliced as its reader needs.
    A non-uniform shared tensor (a tied embedding) is a genuine tie and stays shared; so do
    scalars (no channel axis to tie), tensors over ``UNSHARE_MAX_BYTES``, graph outputs, and
    tensors also read inside a subgraph (an outer-scope read).
    """
    inputs = {i.name for i in graph.input}
    inits = {t.name: t for t in graph.initializer if t.name not in inputs}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):  # a node reading it twice is one reader
            if name in inits:
                readers.setdefault(name, []).append(node)
    keep = {o.name for o in graph.output} | _subgraph_reads(graph)
    taken = set(inits) | {o for n in graph.node for o in n.output} | inputs
    copies = 0
    for name, uses in readers.items():
        tensor = inits[name]
        if len(uses) < 2 or name in keep or not _uniform(tensor):
            continue
        for node in uses[1:]:
            copy = onnx.TensorProto()
            copy.CopyFrom(tensor)
            copies += 1
            copy.name = _fresh(f"{name}__unshared", taken)
            taken.add(copy.name)
            graph.initializer.append(copy)
            for j, x in enumerate(node.input):
                if x == name:
                    node.input[j] = copy.name
    return copies


def _uniform(tensor: onnx.TensorProto) -> bool:
    """A float tensor with more than one element, all equal (zeros, ones), small enough."""
    n = int(np.prod(tensor.dims)) if tensor.dims else 1
    if n < 2 or tensor.data_type not in _FLOATS or tensor_nbytes(tensor) > UNSHARE_MAX_BYTES:
        return False
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return False
    value = numpy_helper.to_array(tensor).reshape(-1)
    return bool(np.all(value == value[0]))


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    return name
