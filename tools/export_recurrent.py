"""Speech-style recurrent models and a control-flow model, exported and measured.

    /tmp/torchvenv/bin/python tools/export_recurrent.py export [--out /work/zoo2/rnn]
    python tools/export_recurrent.py measure [--out /work/zoo2/rnn] [--ratio 0.3]

``export`` (needs torch; random weights, seed 0, opset 17, TorchScript exporter):

* ``speech_lstm.onnx``: log-mel features ``[B, 80, T]`` -> two Conv1d(k=3)+ReLU (80->128->128)
  -> time-major -> 2-layer bidirectional LSTM, hidden 256 -> last frame -> Linear(512, 32)
  (a keyword-spotting shape); T = 50 at export, B and T dynamic.
* ``speech_gru.onnx``: the same front-end -> 2-layer unidirectional GRU, hidden 256 ->
  Linear(256, 32).
* ``speech_if.onnx``: the same front-end, then an If (built with onnx.helper on the exported
  front-end: torch.jit.script would hide the weights in prim ops) whose two branches each run
  a Conv1d on the front-end's output (an offline and a streaming kernel) with weights of the
  main graph, then a classifier; the condition is a graph input ``streaming``.
* ``speech_if_inner.onnx``: the same, the branch weights stored inside the branches (body
  initializers): guarded as it is; measured also after ``hoist_branch_weights``.
* ``speech_loop.onnx``: the front-end, then a Loop of 3 trips refining a state with a Conv1d
  on the outer front-end output.
* ``speech_loop_cell.onnx``: the front-end, then a tanh RNN cell of 256 written as a Loop over
  the 50 frames (``h = tanh(x_t Wx + h Wh + b)``), then a classifier on the last state.

``measure`` (no torch; the worktree's venv): for each model, ``prune_structured`` at
``--ratio`` with the CLI's defaults (local scope, L1, round-to 16), then MACs before/after
(``count_macs`` at B=1, T=50; an If's two branches are counted, flattened into the main
graph; a Loop body once per trip), exactness (``onnxprune.testing.assert_exact``: pruned ==
original with the removed channels' consumer slices zeroed, in onnxruntime), validity
(``onnx.checker`` full check + an onnxruntime run), or the blocked reason. Prints one
markdown row per model; the CLI equivalent is ``onnxprune MODEL --structured 0.3``.
"""

from __future__ import annotations

import argparse
import os
import sys

OUT = "/work/zoo2/rnn"
MELS, FRAMES, CLASSES = 80, 50, 32


def export(out: str) -> None:
    """Long because it defines and exports four small models in one place."""
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper
    from torch import nn

    torch.manual_seed(0)

    class FrontEnd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(MELS, 128, 3, padding=1)
            self.c2 = nn.Conv1d(128, 128, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c2(torch.relu(self.c1(x))))

    class SpeechRNN(nn.Module):
        def __init__(self, cell: str) -> None:
            super().__init__()
            self.front = FrontEnd()
            bi = cell == "lstm"
            rnn = nn.LSTM if cell == "lstm" else nn.GRU
            self.rnn = rnn(128, 256, num_layers=2, bidirectional=bi)
            self.fc = nn.Linear(512 if bi else 256, CLASSES)

        def forward(self, x):
            h = self.front(x).permute(2, 0, 1)  # [T, B, 128]
            y, _ = self.rnn(h)
            return self.fc(y[-1])

    os.makedirs(out, exist_ok=True)
    x = torch.randn(1, MELS, FRAMES)
    axes = {"mel": {0: "batch", 2: "frames"}, "logits": {0: "batch"}}
    for cell in ("lstm", "gru"):
        path = os.path.join(out, f"speech_{cell}.onnx")
        torch.onnx.export(
            SpeechRNN(cell).eval(), (x,), path, dynamo=False, opset_version=17,
            input_names=["mel"], output_names=["logits"], dynamic_axes=axes,
        )  # fmt: skip
        print("wrote", path, os.path.getsize(path) // 1024, "KiB")
    front = os.path.join(out, "_front.onnx")
    torch.onnx.export(
        FrontEnd().eval(), (x,), front, dynamo=False, opset_version=17,
        input_names=["mel"], output_names=["feat"],
    )  # fmt: skip
    base = onnx.load(front)
    os.remove(front)
    rng = np.random.default_rng(0)

    def weight(graph, shape, name):
        v = rng.standard_normal(shape).astype(np.float32) * (shape[1] * shape[2]) ** -0.5
        graph.initializer.append(numpy_helper.from_array(v, name))
        return name

    def conv_graph(tag, w, out_name, k):
        conv = helper.make_node(
            "Conv", ["feat", w], [f"{tag}_y"], pads=[k // 2] * 2, name=f"{tag}_conv"
        )
        relu = helper.make_node("Relu", [f"{tag}_y"], [out_name])
        vi = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, 128, FRAMES])
        return helper.make_graph([conv, relu], tag, [], [vi])

    def classifier(graph, src):
        weight(graph, [CLASSES, 128, 1], "cls.w")
        graph.node.append(helper.make_node("ReduceMean", [src], ["pooled"], axes=[2], keepdims=1))
        graph.node.append(helper.make_node("Conv", ["pooled", "cls.w"], ["logits3"], name="cls"))
        graph.node.append(helper.make_node("Flatten", ["logits3"], ["logits"]))
        del graph.output[:]
        graph.output.append(
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES])
        )

    def save(model, name):
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = FRAMES
        onnx.checker.check_model(model, full_check=True)
        path = os.path.join(out, name)
        onnx.save(model, path)
        print("wrote", path, os.path.getsize(path) // 1024, "KiB")

    m = onnx.ModelProto()
    m.CopyFrom(base)
    then = conv_graph("offline", weight(m.graph, [128, 128, 5], "offline.w"), "offline_out", 5)
    other = conv_graph(
        "streaming", weight(m.graph, [128, 128, 3], "streaming.w"), "streaming_out", 3
    )
    m.graph.input.append(helper.make_tensor_value_info("streaming", TensorProto.BOOL, []))
    m.graph.node.append(
        helper.make_node(
            "If", ["streaming"], ["mid"], then_branch=other, else_branch=then, name="mode"
        )
    )
    classifier(m.graph, "mid")
    save(m, "speech_if.onnx")
    inner = onnx.ModelProto()  # the same with the branch weights inside the branches
    inner.CopyFrom(m)
    for node in inner.graph.node:
        for a in node.attribute if node.op_type == "If" else ():
            w = next(t for t in inner.graph.initializer if t.name == a.g.node[0].input[1])
            a.g.initializer.append(w)
            inner.graph.initializer.remove(w)
    save(inner, "speech_if_inner.onnx")

    m = onnx.ModelProto()
    m.CopyFrom(base)
    weight(m.graph, [128, 128, 3], "refine.w")
    state0 = numpy_helper.from_array(np.zeros([1, 128, FRAMES], np.float32), "state0")
    m.graph.initializer.extend([state0, numpy_helper.from_array(np.array(3, np.int64), "trips")])
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "go"))
    body = helper.make_graph(
        [
            helper.make_node("Conv", ["feat", "refine.w"], ["r"], pads=[1, 1], name="refine"),
            helper.make_node("Add", ["s_in", "r"], ["s_sum"]),
            helper.make_node("Relu", ["s_sum"], ["s_out"]),
            helper.make_node("Identity", ["c_in"], ["c_out"]),
        ],
        "refine_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 128, FRAMES]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 128, FRAMES]),
        ],
    )
    m.graph.node.append(
        helper.make_node(
            "Loop", ["trips", "go", "state0"], ["refined"], body=body, name="refine_loop"
        )
    )
    m.graph.value_info.append(
        helper.make_tensor_value_info("refined", TensorProto.FLOAT, [1, 128, FRAMES])
    )  # Loop outputs get no shape from inference: annotate it as exporters do
    classifier(m.graph, "refined")
    save(m, "speech_loop.onnx")
    save(_loop_cell(base, weight), "speech_loop_cell.onnx")


def _loop_cell(base, weight):
    """The front-end, then a tanh RNN cell of 256 written as a Loop over the frames (a
    scripted ``for t in range(T)``, weights in the main graph), then a classifier on the
    last state."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.testing.control_graphs import tanh_cell_nodes

    m = onnx.ModelProto()
    m.CopyFrom(base)
    g, hidden = m.graph, 256
    rng = np.random.default_rng(1)
    for shape, name in (
        ([128, hidden], "cell.wx"),
        ([hidden, hidden], "cell.wh"),
        ([hidden, CLASSES], "cls.w"),
    ):
        v = rng.standard_normal(shape).astype(np.float32) * shape[0] ** -0.5
        g.initializer.append(numpy_helper.from_array(v, name))
    g.initializer.extend([
        numpy_helper.from_array(np.zeros([hidden], np.float32), "cell.b"),
        numpy_helper.from_array(np.zeros([1, hidden], np.float32), "h0"),
        numpy_helper.from_array(np.array(FRAMES, np.int64), "frames"),
        numpy_helper.from_array(np.array(True), "go"),
    ])  # fmt: skip
    body = helper.make_graph(
        tanh_cell_nodes("seq"),
        "cell",
        [
            helper.make_tensor_value_info("t", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, hidden]),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, hidden]),
        ],
    )
    g.node.extend([
        helper.make_node("Transpose", ["feat"], ["seq"], perm=[2, 0, 1]),
        helper.make_node("Loop", ["frames", "go", "h0"], ["h_last"], body=body, name="cell_loop"),
        helper.make_node("MatMul", ["h_last", "cls.w"], ["logits"], name="cls"),
    ])  # fmt: skip
    g.value_info.append(helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [1, hidden]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES]))
    return m


def measure(out: str, ratio: float) -> None:
    """One markdown row per model: pruned or blocked-with-reason, MACs, exact, valid."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np
    import onnx

    from onnxprune.graph.load import load_model
    from onnxprune.structured.engine import StructuredOptions, prune_structured
    from onnxprune.structured.subgraphs import hoist_branch_weights
    from onnxprune.testing.oracles import assert_close, run, zeroed

    print(f"| model | result at --structured {ratio} | MACs after/before | exact | valid |")
    print("|---|---|---|---|---|")
    runs = ["speech_lstm", "speech_gru", "speech_if", "speech_if_inner", "speech_if_inner+hoist"]
    for name in [*runs, "speech_loop", "speech_loop_cell"]:
        path = os.path.join(out, f"{name.split('+')[0]}.onnx")
        model = load_model(path).model
        if name.endswith("+hoist"):
            model, _ = hoist_branch_weights(model)
        shapes = {"mel": (1, MELS, FRAMES)}
        pruned, result = prune_structured(model, StructuredOptions(ratio=ratio))
        # Subgraph MACs are not counted by count_macs: count an If's two branches flattened
        # into the main graph (both of them, an upper bound on one run), a Loop's body not.
        before, after = run_macs(model, shapes), run_macs(pruned, shapes)
        plan = result.plan
        cut = [g for g in plan.groups if len(g.kept) < g.slots]
        if plan.empty:
            why = "; ".join(f"{b['where']}: {b['reason']}" for b in plan.blocked[:2])
            print(f"| {name} | blocked: {why} | 1.00 | n/a | input untouched |")
            continue
        feeds = {
            "mel": np.random.default_rng(0).standard_normal((1, MELS, FRAMES)).astype(np.float32)
        }
        try:  # the oracle of assert_exact, with the If's boolean input fed both ways
            ref = zeroed(model, plan)
            for flag in (True, False) if name.startswith("speech_if") else (None,):
                if flag is not None:
                    feeds["streaming"] = np.array(flag)
                assert_close(run(ref, feeds), run(pruned, feeds))
            exact = "yes"
        except AssertionError as exc:
            exact = f"NO ({exc})"
        onnx.checker.check_model(pruned, full_check=True)
        run(pruned, feeds)
        kept = ", ".join(f"{g.id} {len(g.kept)}/{g.slots}" for g in cut[:6])
        left = [f"{b['where']}: {b['reason']}" for b in plan.blocked if "output" not in b["reason"]]
        also = f"; blocked {left[0]}" if left else ""
        ratio_text = f"{after / before:.3f}"
        print(
            f"| {name} | pruned {len(cut)} groups ({kept}){also} | {ratio_text} | {exact} | yes |"
        )


def run_macs(model, shapes) -> int:
    """MACs of one run: an If's two branches both counted (an upper bound), a Loop body
    once per trip (its trip count is a constant here); the rest as ``count_macs``."""
    import numpy as np
    from onnx import numpy_helper

    from onnxprune.metrics.macs import macs_per_node
    from onnxprune.structured.subgraphs import flatten

    flat = flatten(model)
    if flat is None:
        return sum(macs_per_node(model, shapes)[0].values())
    inits = {t.name: t for t in model.graph.initializer}
    trips = {}
    for loop in flat.loops.values():
        count = int(np.asarray(numpy_helper.to_array(inits[loop.input[0]])).reshape(-1)[0])
        body = next(a.g for a in loop.attribute if a.name == "body")
        trips.update({o: count for n in body.node for o in n.output})
    per_node, _ = macs_per_node(flat.model, shapes)
    nodes = flat.model.graph.node
    return sum(m * trips.get(nodes[i].output[0], 1) for i, m in per_node.items())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("mode", choices=("export", "measure"))
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--ratio", type=float, default=0.3)
    args = ap.parse_args()
    if args.mode == "export":
        export(args.out)
    else:
        measure(args.out, args.ratio)


if __name__ == "__main__":
    main()
