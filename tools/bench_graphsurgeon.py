"""onnx-graphsurgeon against the plain protobuf path, on a ResNet-50-sized graph (issue 9).

The two jobs graphsurgeon would earn its keep at in onnxprune: topologically sorting a graph
whose node list is out of order, and removing dead nodes (and the initializers only they
read). Both are timed through graphsurgeon (``import_onnx`` -> ``toposort``/``cleanup`` ->
``export_onnx``) and through a protobuf implementation (Kahn's algorithm over node
inputs/outputs; reverse reachability from the graph outputs), and each result is checked
for what survives: node order (sorting keeps the original relative order where it can),
node names, node doc_strings, model metadata (and doc_string), graph value_info, producer, opset and
initializer order; ``topo`` says whether the result is sorted, ``order`` whether its node
order is the expected one (the original for a sorted input, the least-moved sort for a
shuffled one), ``bytes`` whether the untouched parts serialize identically.

The model is ResNet-50 as torch exports it in eval mode (BatchNorm folded into the convs:
53 Conv, 49 Relu, 16 Add, MaxPool, GlobalAveragePool, Flatten, Gemm; 25.6 M float32
parameters), built with ``onnx.helper`` from seeded random weights, so no torch is needed;
``--bn`` keeps the BatchNormalization nodes instead. Every node gets a doc_string and the
model metadata, as exporters write them; shape inference fills value_info.

Usage: ``python tools/bench_graphsurgeon.py [--repeat 5] [--bn] [--dead 16] [--model FILE]``
(``--model zoo/resnet50.onnx``: the torch export of ``tools/export_zoo.py`` instead).
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper


# ---- the model ---------------------------------------------------------------------------
def resnet50(bn: bool = False, seed: int = 0) -> onnx.ModelProto:
    """ResNet-50 v1.5 (stride on the 3x3 conv), NCHW, batch N, 224x224, 1000 classes."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:])) or 1
        arr = (rng.standard_normal(shape, dtype=np.float32) * fan_in**-0.5).astype(np.float32)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(op: str, ins: list[str], name: str, **attrs) -> str:
        out = f"{name}_output_0"
        n = helper.make_node(op, ins, [out], name=name, **attrs)
        n.doc_string = f"torch/nn/modules/{op.lower()}.py:1 /{name}"
        nodes.append(n)
        return out

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str, relu: bool) -> str:
        w = weight(f"{name}.weight", (cout, cin, k, k))
        attrs = dict(kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride, stride])
        if bn:
            y = node("Conv", [x, w], f"/{name}/Conv", **attrs)
            ps = [weight(f"{name}.bn.{p}", (cout,)) for p in ("scale", "bias", "mean")]
            var = f"{name}.bn.var"
            inits.append(numpy_helper.from_array(np.ones(cout, np.float32), var))
            y = node("BatchNormalization", [y, *ps, var], f"/{name}/BatchNormalization")
        else:
            b = weight(f"{name}.bias", (cout,))
            y = node("Conv", [x, w, b], f"/{name}/Conv", **attrs)
        return node("Relu", [y], f"/{name}/Relu") if relu else y

    x = conv("input", 3, 64, 7, 2, "conv1", True)
    x = node("MaxPool", [x], "/maxpool/MaxPool", kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2])
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for i in range(blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            p = f"layer{stage + 1}.{i}"
            y = conv(x, cin, width, 1, 1, f"{p}.conv1", True)
            y = conv(y, width, width, 3, stride, f"{p}.conv2", True)
            y = conv(y, width, width * 4, 1, 1, f"{p}.conv3", False)
            short = conv(x, cin, width * 4, 1, stride, f"{p}.downsample", False) if i == 0 else x
            x = node("Relu", [node("Add", [y, short], f"/{p}/Add")], f"/{p}/Relu")
            cin = width * 4
    x = node("GlobalAveragePool", [x], "/avgpool/GlobalAveragePool")
    x = node("Flatten", [x], "/Flatten", axis=1)
    fc = [weight("fc.weight", (1000, 2048)), weight("fc.bias", (1000,))]
    nodes.append(helper.make_node("Gemm", [x, *fc], ["output"], name="/fc/Gemm", transB=1))
    graph = helper.make_graph(
        nodes,
        "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name, model.producer_version = "pytorch", "2.13.0"
    model.doc_string = "ResNet-50, BatchNorm folded" if not bn else "ResNet-50"
    helper.set_model_props(model, {"source": "bench_graphsurgeon", "classes": "1000"})
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def shuffled(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    order = np.random.default_rng(seed).permutation(len(out.graph.node))
    nodes = [out.graph.node[i] for i in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for c, n in zip(copies, nodes, strict=True):
        c.CopyFrom(n)
    del out.graph.node[:]
    out.graph.node.extend(copies)
    return out


def with_dead(model: onnx.ModelProto, count: int, seed: int = 0) -> onnx.ModelProto:
    """``count`` dead 1x1 Conv -> Relu branches off the stage outputs (as a pruning rewrite
    leaves behind), each with its own weight initializer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(seed)
    shapes = {vi.name: vi for vi in out.graph.value_info}

    def channels(name: str) -> int:
        dims = shapes[name].type.tensor_type.shape.dim if name in shapes else []
        return dims[1].dim_value if len(dims) == 4 else 0

    relus = [n.output[0] for n in out.graph.node if n.op_type == "Relu" and channels(n.output[0])]
    for k in range(count):
        src = relus[k * len(relus) // count]
        c = channels(src)
        w = rng.standard_normal((8, c, 1, 1), dtype=np.float32)
        out.graph.initializer.append(numpy_helper.from_array(w, f"dead{k}.weight"))
        conv = helper.make_node(
            "Conv", [src, f"dead{k}.weight"], [f"dead{k}_c"], name=f"/dead{k}/Conv"
        )
        out.graph.node.append(conv)
        out.graph.node.append(
            helper.make_node("Relu", [f"dead{k}_c"], [f"dead{k}_r"], name=f"/dead{k}/Relu")
        )
    return out


# ---- the protobuf path -------------------------------------------------------------------
def proto_toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Kahn's algorithm over node inputs/outputs, the ready node of lowest original index
    first: a sorted graph comes back unchanged, an unsorted one moves as little as it can.
    The copy shares nothing with ``model``."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    consumers: list[list[int]] = [[] for _ in g.node]
    waiting = [0] * len(g.node)
    for i, n in enumerate(g.node):
        for src in {producer[t] for t in n.input if t in producer}:
            consumers[src].append(i)
            waiting[i] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in consumers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(g.node):
        raise ValueError("the graph has a cycle")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [out.graph.node[i] for i in order]
    kept = [onnx.NodeProto() for _ in nodes]
    for k, n in zip(kept, nodes, strict=True):
        k.CopyFrom(n)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    return out


def proto_cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the nodes no graph output depends on and the initializers only they read."""
    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    live = set()
    stack = [producer[o.name] for o in g.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        stack.extend(producer[t] for t in g.node[i].input if t in producer)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    dead = [i for i in range(len(g.node)) if i not in live]
    for i in reversed(dead):
        del out.graph.node[i]
    used = {t for n in out.graph.node for t in n.input} | {o.name for o in g.output}
    for i in reversed(range(len(out.graph.initializer))):
        if out.graph.initializer[i].name not in used:
            del out.graph.initializer[i]
    produced = {t for n in out.graph.node for t in n.output}
    for i in reversed(range(len(out.graph.value_info))):
        if out.graph.value_info[i].name not in produced:
            del out.graph.value_info[i]
    return out


# ---- graphsurgeon -----------------------------------------------------------------------
def gs_roundtrip(model: onnx.ModelProto) -> onnx.ModelProto:
    return gs.export_onnx(gs.import_onnx(model))


def gs_toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    graph.toposort()
    return gs.export_onnx(graph)


def gs_cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    graph.cleanup()
    return gs.export_onnx(graph)


def proto_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


# ---- what survives -------------------------------------------------------------------------
def survives(ref: onnx.ModelProto, got: onnx.ModelProto) -> dict[str, bool]:
    """Compare ``got`` with the expected result ``ref`` (the same job done by hand)."""
    rg, gg = ref.graph, got.graph
    vi = {v.name: v.SerializeToString() for v in rg.value_info}
    gvi = {v.name: v.SerializeToString() for v in gg.value_info}
    return {
        "topo": is_sorted(got),
        "order": [n.name for n in rg.node] == [n.name for n in gg.node],
        "names": sorted(n.name for n in rg.node) == sorted(n.name for n in gg.node),
        "doc_strings": {n.name: n.doc_string for n in rg.node}
        == {n.name: n.doc_string for n in gg.node},
        "metadata": [(p.key, p.value) for p in ref.metadata_props]
        == [(p.key, p.value) for p in got.metadata_props]
        and ref.doc_string == got.doc_string,
        "value_info": vi == gvi,
        "producer": (ref.producer_name, ref.producer_version)
        == (got.producer_name, got.producer_version),
        "opset/ir": (list(ref.opset_import), ref.ir_version)
        == (list(got.opset_import), got.ir_version),
        "init_order": [t.name for t in rg.initializer] == [t.name for t in gg.initializer],
        "bytes": ref.SerializeToString() == got.SerializeToString(),
    }


def is_sorted(model: onnx.ModelProto) -> bool:
    g = model.graph
    known = {t.name for t in g.initializer} | {i.name for i in g.input} | {""}
    for n in g.node:
        if not all(t in known for t in n.input):
            return False
        known.update(n.output)
    return True


def timed(fn: Callable, arg: onnx.ModelProto, repeat: int) -> tuple[float, float, onnx.ModelProto]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(arg)
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bn", action="store_true", help="keep BatchNormalization nodes")
    parser.add_argument("--dead", type=int, default=16, help="dead branches for the cleanup")
    parser.add_argument("--model", help="an .onnx file (e.g. zoo/resnet50.onnx) instead")
    args = parser.parse_args()

    if args.model:
        model = onnx.shape_inference.infer_shapes(onnx.load(args.model))
        title = args.model
    else:
        model = resnet50(args.bn)
        title = f"ResNet-50{' with BatchNorm' if args.bn else ''} (onnx.helper)"
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    print(
        f"{title}: {len(model.graph.node)} nodes, "
        f"{len(model.graph.initializer)} initializers, {params / 1e6:.1f} M parameters, "
        f"{model.ByteSize() / 2**20:.0f} MiB; onnx {onnx.__version__}, "
        f"onnx-graphsurgeon {gs.__version__}; median (min) of {args.repeat}"
    )
    mixed = shuffled(model)
    dead = with_dead(model, args.dead)
    cases = [
        ("copy / round trip", model, proto_copy, gs_roundtrip, model),
        ("toposort shuffled", mixed, proto_toposort, gs_toposort, proto_toposort(mixed)),
        ("toposort sorted", model, proto_toposort, gs_toposort, model),
        (f"cleanup {args.dead} dead", dead, proto_cleanup, gs_cleanup, model),
    ]
    keys = list(survives(model, model))
    print(f"{'job':20s} {'path':13s} {'seconds':>16s}  " + " ".join(keys))
    for job, arg, mine, theirs, expected in cases:
        for label, fn in (("protobuf", mine), ("graphsurgeon", theirs)):
            med, best, out = timed(fn, arg, args.repeat)
            ok = survives(expected, out)
            flags = " ".join(f"{'yes' if ok[k] else 'NO':>{len(k)}s}" for k in keys)
            print(f"{job:20s} {label:13s} {med:7.4f} ({best:.4f})  {flags}")
    lost = gs_roundtrip(model)
    print(
        "after a graphsurgeon round trip: node doc_strings kept "
        f"{sum(bool(n.doc_string) for n in lost.graph.node)}"
        f"/{sum(bool(n.doc_string) for n in model.graph.node)}, "
        f"metadata_props {len(lost.metadata_props)}/{len(model.metadata_props)}, "
        f"model doc_string {'kept' if lost.doc_string == model.doc_string else 'lost'}, "
        f"graph name {lost.graph.name!r} (was {model.graph.name!r})"
    )


if __name__ == "__main__":
    main()
