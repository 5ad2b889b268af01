"""Quantized models pruned through their quantization (issue 12, item 1).

Each form is a tiny onnx.helper graph run in onnxruntime: static QDQ (per-channel and
per-tensor weight scales, per-channel activation scales, block quantization), QOperator
(QLinearConv, QLinearAdd, QGemm), dynamic (ConvInteger / MatMulInteger behind
DynamicQuantizeLinear: blocked, with the reason), com.microsoft MatMulNBits. The exactness
oracle runs on the dequantized model: removed channels' consumer weights are set to their
zero point, so they dequantize to exactly 0.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.view import GraphView
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.oracles import prune_exact, random_feeds, run
from onnxprune.unstructured.magnitude import prune_unstructured

RNG = np.random.default_rng(0)


class QGraph:
    """A small builder of quantized graphs: initializers and nodes, then ``model()``."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", **kw) -> str:
        self.n += 1
        outs = [f"{op}_{self.n}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{op}_{self.n}",
                                           domain=domain, **kw))  # fmt: skip
        return outs[0] if n_out == 1 else outs

    def qweight(self, shape: tuple[int, ...], per_channel: bool = True, axis: int = 0) -> str:
        """An int8 weight read through DequantizeLinear (per-channel on ``axis`` or per-tensor)."""
        i = self.n
        q = self.init(f"w{i}_q", RNG.integers(-100, 100, shape, dtype=np.int8))
        n = shape[axis] if per_channel else None
        s = self.init(f"w{i}_s", RNG.uniform(0.005, 0.02, n).astype(np.float32) if n
                      else np.float32(0.01))  # fmt: skip
        z = self.init(f"w{i}_z", np.zeros(n, np.int8) if n else np.int8(0))
        return self.node("DequantizeLinear", [q, s, z], axis=axis) if n else \
            self.node("DequantizeLinear", [q, s, z])  # fmt: skip

    def qbias(self, n: int) -> str:
        i = self.n
        b = self.init(f"b{i}_q", RNG.integers(-500, 500, n, dtype=np.int32))
        s = self.init(f"b{i}_s", RNG.uniform(1e-4, 2e-4, n).astype(np.float32))
        z = self.init(f"b{i}_z", np.zeros(n, np.int32))
        return self.node("DequantizeLinear", [b, s, z], axis=0)

    def qdq(self, x: str, scale: float = 0.05, channels: int | None = None) -> str:
        """QuantizeLinear then DequantizeLinear on an activation (per-tensor, or per-channel
        on axis 1 with ``channels`` scales)."""
        i = self.n
        if channels:
            s = self.init(f"a{i}_s", np.full(channels, scale, np.float32))
            z = self.init(f"a{i}_z", np.zeros(channels, np.int8))
            q = self.node("QuantizeLinear", [x, s, z], axis=1)
            return self.node("DequantizeLinear", [q, s, z], axis=1)
        s = self.init(f"a{i}_s", np.float32(scale))
        z = self.init(f"a{i}_z", np.int8(0))
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [x, s, z]), s, z])

    def model(self, x_shape, y: str, opset: int = 17, ms: bool = False) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.inits,
        )  # fmt: skip
        ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)]
                                                  if ms else [])  # fmt: skip
        m = helper.make_model(g, opset_imports=ops)
        m.ir_version = 8 if opset < 21 else 10
        shape = run(m, random_feeds(m))[0].shape  # the declared output needs a shape
        m.graph.output[0].CopyFrom(helper.make_tensor_value_info(y, TensorProto.FLOAT, shape))
        return m


def qdq_chain(per_channel: bool = True, act_channels: bool = False, bias: bool = True):
    """x -> QDQ -> Conv(8) -> Relu -> QDQ -> Conv(8) -> QDQ -> Conv(6): two prunable groups."""
    b = QGraph()
    x = b.qdq("x")
    for cin, cout in ((4, 8), (8, 8), (8, 6)):
        w = b.qweight((cout, cin, 3, 3), per_channel)
        inputs = [x, w] + ([b.qbias(cout)] if bias else [])
        x = b.node("Conv", inputs, pads=[1, 1, 1, 1])
        if cout != 6:
            x = b.qdq(b.node("Relu", [x]), channels=cout if act_channels else None)
    return b.model([1, 4, 8, 8], x)


@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_conv_chain_is_exact(per_channel):
    model = qdq_chain(per_channel)
    pruned, _ = prune_exact(model, 0.5)
    sliced = {t.name: list(t.dims) for t in pruned.graph.initializer}
    q = [n for n in sliced if n.endswith("_q_pruned") and n.startswith("w")]
    assert q, "the integer weights are sliced, not replaced by floats"
    assert all(t.data_type != TensorProto.FLOAT or t.dims in ([], [4], [8], [6])
               for t in pruned.graph.initializer), "no float weight tensor appears"  # fmt: skip
    scales = [d for n, d in sliced.items() if n.startswith("w") and "_s" in n]
    if per_channel:
        assert [4] in scales, "per-channel scales are sliced with their filters"
    else:
        assert all(d == [] for d in scales), "per-tensor scales stay"


def test_qdq_per_channel_activation_scales_are_sliced():
    model = qdq_chain(act_channels=True)
    pruned, _ = prune_exact(model, 0.5)
    act = [list(t.dims) for t in pruned.graph.initializer if t.name.startswith("a")]
    assert [4] in act


def test_qdq_weights_score_dequantized():
    """Importance reads the dequantized values: a filter whose integers are large but whose
    scale is tiny is the least important one."""
    model = qdq_chain()
    w = next(t for t in model.graph.initializer if t.name == "w2_s")
    scales = numpy_helper.to_array(w).copy()
    scales[5] = 1e-6
    w.CopyFrom(numpy_helper.from_array(scales, "w2_s"))
    _, result = prune_structured(model, StructuredOptions(ratio=0.125, round_to=1))
    gp = next(g for g in result.plan.groups if g.id == "Conv_5")
    assert gp.kept == [0, 1, 2, 3, 4, 6, 7]


def test_block_quantized_matmul_prunes_whole_blocks_or_blocks():
    """DequantizeLinear with block_size (opset 21) on a [K, N] MatMul weight, blocks along K:
    the N outputs prune freely; the next layer's K inputs go a whole block at a time."""
    b = QGraph()
    x = "x"
    for k, n in ((16, 32), (32, 8)):
        q = b.init(f"wq{k}", RNG.integers(-7, 7, (k, n), dtype=np.int8))
        s = b.init(f"ws{k}", RNG.uniform(0.05, 0.1, (k // 8, n)).astype(np.float32))
        w = b.node("DequantizeLinear", [q, s], axis=0, block_size=8)
        x = b.node("MatMul", [x, w])
        if n == 32:
            x = b.node("Relu", [x])
    model = b.model([2, 16], x, opset=21)
    pruned, plan = prune_exact(model, 0.5)
    g = next(g for g in plan.groups if g.slots * g.width == 32)
    assert g.width == 8 and len(g.kept) == 2
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert [16, 16] in dims.values() and [2, 16] in dims.values()


def test_block_quantized_partial_block_is_refused():
    b = QGraph()
    q = b.init("wq", RNG.integers(-7, 7, (12, 8), dtype=np.int8))
    s = b.init("ws", RNG.uniform(0.05, 0.1, (2, 8)).astype(np.float32))
    w = b.node("DequantizeLinear", [q, s], axis=0, block_size=8)
    h = b.node("Relu", [b.node("MatMul", ["x", b.init("w0", RNG.standard_normal((4, 12))
                                                       .astype(np.float32))])])  # fmt: skip
    y = b.node("MatMul", [h, w])
    reasons = [g.blocked_reason or "" for g in analyze(b.model([2, 4], y, opset=21))]
    assert any("blocks of 8" in r and "wq" in r for r in reasons), reasons


def test_computed_dequantize_input_blocks_with_the_node_named():
    """A weight QuantizeLinear'd at run time is not followed: the Conv says so, nothing is
    rewritten."""
    b = QGraph()
    wf = b.init("wf", RNG.standard_normal((8, 4, 1, 1)).astype(np.float32))
    s, z = b.init("s", np.float32(0.01)), b.init("z", np.int8(0))
    w = b.node("DequantizeLinear", [b.node("QuantizeLinear", [wf, s, z]), s, z])
    h = b.node("Relu", [b.node("Conv", ["x", b.qweight((4, 4, 1, 1))])])
    y = b.node("Conv", [h, w])
    model = b.model([1, 4, 8, 8], y)
    reasons = [g.blocked_reason or "" for g in analyze(model)]
    assert any("Conv weight" in r and "computed at run time" in r for r in reasons), reasons
    _, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    assert result.plan.empty


def test_qdq_view_dequantizes():
    model = qdq_chain()
    view = GraphView(model)
    name = next(iter(view.quantized))
    qw = view.quantized[name]
    ints = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == qw.root))
    scale = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == qw.scale))
    np.testing.assert_allclose(view.constant(name), ints * scale.reshape(-1, 1, 1, 1))


def qop_graph(residual: bool = True) -> onnx.ModelProto:
    """QuantizeLinear -> QLinearConv(8) -> QLinearConv(8) [-> QLinearAdd with the first] ->
    QLinearGlobalAveragePool -> Flatten -> QGemm(5) -> DequantizeLinear, as quantize_static
    writes in QOperator format (uint8 activations, int8 per-channel weights, int32 biases)."""
    b = QGraph()

    def act(tag: str, scale: float = 0.05) -> list[str]:
        return [b.init(f"{tag}_s", np.float32(scale)), b.init(f"{tag}_z", np.uint8(128))]

    def conv(x: str, xq: list[str], cin: int, cout: int, tag: str) -> tuple[str, list[str]]:
        w = b.init(f"{tag}_w", RNG.integers(-60, 60, (cout, cin, 3, 3), dtype=np.int8))
        ws = b.init(f"{tag}_ws", RNG.uniform(0.005, 0.01, cout).astype(np.float32))
        wz = b.init(f"{tag}_wz", np.zeros(cout, np.int8))
        bias = b.init(f"{tag}_b", RNG.integers(-300, 300, cout, dtype=np.int32))
        yq = act(tag, 0.2)
        return b.node("QLinearConv", [x, *xq, w, ws, wz, *yq, bias], pads=[1, 1, 1, 1]), yq

    xq = act("x")
    x = b.node("QuantizeLinear", ["x", *xq])
    h1, h1q = conv(x, xq, 4, 8, "c1")
    h2, h2q = conv(h1, h1q, 8, 8, "c2")
    if residual:
        sq = act("sum", 0.3)
        h2 = b.node("QLinearAdd", [h2, *h2q, h1, *h1q, *sq], domain=MS)
        h2q = sq
    pq = act("pool", 0.3)
    p = b.node("QLinearGlobalAveragePool", [h2, *h2q, *pq], domain=MS, channels_last=0)
    f = b.node("Flatten", [p])
    w = b.init("fc_w", RNG.integers(-60, 60, (5, 8), dtype=np.int8))
    fc = b.node("QGemm", [f, *pq, w, b.init("fc_s", np.full(5, 0.01, np.float32)),
                          b.init("fc_z", np.zeros(5, np.int8)),
                          b.init("fc_b", RNG.integers(-50, 50, 5, dtype=np.int32)),
                          *(fq := act("fco", 0.5))], domain=MS, transB=1)  # fmt: skip
    y = b.node("DequantizeLinear", [fc, *fq])
    return b.model([1, 4, 6, 6], y, ms=True)


MS = "com.microsoft"


@pytest.mark.parametrize("residual", [False, True])
def test_qoperator_chain_is_exact(residual):
    model = qop_graph(residual)
    pruned, _ = prune_exact(model, 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    kept = 4
    assert [kept] in [dims[n] for n in dims if n.startswith("c2_ws")]
    assert [5, kept] in dims.values(), "QGemm's weight loses the removed inputs"
    if not residual:
        assert [kept, kept, 3, 3] in dims.values()


def test_qlinear_conv_weight_behind_an_identity_is_sliced_through_it():
    model = qop_graph(False)
    conv = next(n for n in model.graph.node if n.op_type == "QLinearConv" and "c2_w" in n.input)
    model.graph.node.insert(0, helper.make_node("Identity", ["c2_w"], ["c2_w_id"]))
    conv.input[3] = "c2_w_id"
    pruned, _ = prune_exact(model, 0.5)
    assert TensorProto.INT8 in {t.data_type for t in pruned.graph.initializer if len(t.dims) == 4}


def test_qlinear_matmul_of_two_activations_follows_the_contraction():
    """q @ k^T as QLinearMatMul (both operands computed): the float MatMul rule ties the
    contracted axes; nothing is refused for want of a weight."""
    b = QGraph()
    s, z = b.init("s", np.float32(0.05)), b.init("z", np.uint8(128))
    wq = b.init("wq", RNG.standard_normal((4, 8)).astype(np.float32))
    wk = b.init("wk", RNG.standard_normal((4, 8)).astype(np.float32))
    q = b.node("QuantizeLinear", [b.node("MatMul", ["x", wq]), s, z])
    k = b.node("QuantizeLinear", [b.node("Transpose", [b.node("MatMul", ["x", wk])],
                                         perm=[1, 0]), s, z])  # fmt: skip
    y = b.node("QLinearMatMul", [q, s, z, k, s, z, s, z])
    model = b.model([3, 4], b.node("DequantizeLinear", [y, s, z]))
    reasons = [g.blocked_reason or "" for g in analyze(model)]
    assert not any("QLinearMatMul" in r for r in reasons), reasons


def test_qlinear_conv_scores_dequantized_weights():
    """Channel 3 has the largest integers (filters of +-120, consumer slices of +-1) but a
    scale of 1e-7: dequantized it is the weakest, in integers the strongest."""
    model = qop_graph(False)
    t = {t.name: t for t in model.graph.initializer}

    def edit(name: str, fn) -> None:
        v = numpy_helper.to_array(t[name]).copy()
        fn(v)
        t[name].CopyFrom(numpy_helper.from_array(v, name))

    edit("c1_ws", lambda v: v.__setitem__(3, 1e-7))
    edit("c1_w", lambda v: v.__setitem__(3, 120))
    edit("c2_w", lambda v: v.__setitem__((slice(None), 3), 1))
    _, result = prune_structured(model, StructuredOptions(ratio=0.125, round_to=1))
    gp = next(g for g in result.plan.groups if g.id == "QLinearConv_2")
    assert 3 not in gp.kept and len(gp.kept) == 7


# -------------------------------------------------------------------------- dynamic


def dynamic_graph(static_input: bool) -> onnx.ModelProto:
    """... -> [DynamicQuantizeLinear | QuantizeLinear] -> MatMulInteger(int8 [8, 16], per-column
    zero points) -> Cast -> Mul(scale) -> Relu -> MatMul(float [16, 4]), as quantize_dynamic
    writes it (the static variant quantizes its input with a constant scale)."""
    b = QGraph()
    h = b.node("Relu", [b.node("MatMul", ["x", b.init("w0", RNG.standard_normal((6, 8))
                                                    .astype(np.float32))])])  # fmt: skip
    if static_input:
        s = b.init("xs", np.float32(0.05))
        q, zp = b.node("QuantizeLinear", [h, s, b.init("xz", np.uint8(128))]), "xz"
    else:
        q, s, zp = b.node("DynamicQuantizeLinear", [h], n_out=3)
    w = b.init("w1", RNG.integers(-100, 100, (8, 16), dtype=np.int8))
    wz = b.init("w1z", RNG.integers(-3, 3, 16, dtype=np.int8))
    mm = b.node("MatMulInteger", [q, w, zp, wz])
    scale = b.node("Mul", [s, b.init("w1s", np.float32(0.01))])
    y = b.node("Mul", [b.node("Cast", [mm], to=TensorProto.FLOAT), scale])
    y = b.node("MatMul", [b.node("Relu", [y]), b.init("w2", RNG.standard_normal((16, 4))
                                                    .astype(np.float32))])  # fmt: skip
    return b.model([2, 6], y)


def test_matmul_integer_outputs_prune_exactly():
    model = dynamic_graph(static_input=True)
    pruned, _ = prune_exact(model, 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert [4, 8] in dims.values() and [8] in dims.values(), dims  # weight and its zero points


def test_dynamic_quantize_linear_blocks_with_its_reason():
    """DynamicQuantizeLinear takes one scale over every channel of its input: removing
    channels would change how the kept ones are quantized, so it refuses, by name."""
    model = dynamic_graph(static_input=False)
    reasons = {g.id: g.blocked_reason or "" for g in analyze(model)}
    assert "DynamicQuantizeLinear computes one scale" in reasons["MatMul_1"]
    assert reasons["MatMulInteger_4"] == ""  # its own outputs still prune
    prune_exact(model, 0.5)


def conv_integer_graph() -> onnx.ModelProto:
    b = QGraph()
    s = b.init("xs", np.float32(0.05))
    q = b.node("QuantizeLinear", ["x", s, b.init("xz", np.uint8(128))])
    w = b.init("w1", RNG.integers(-100, 100, (8, 4, 3, 3), dtype=np.int8))
    c = b.node("ConvInteger", [q, w, "xz", b.init("wz", np.int8(2))], pads=[1, 1, 1, 1])
    y = b.node("Mul", [b.node("Cast", [c], to=TensorProto.FLOAT), b.init("ys", np.float32(5e-4))])
    w2 = b.init("w2", RNG.standard_normal((3, 8, 1, 1)).astype(np.float32))
    return b.model([1, 4, 6, 6], b.node("Conv", [b.node("Relu", [y]), w2]))


def test_conv_integer_outputs_prune_exactly():
    pruned, _ = prune_exact(conv_integer_graph(), 0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert [4, 4, 3, 3] in dims.values()


# -------------------------------------------------------------------------- MatMulNBits


def nbits_graph(k: int = 32, n: int = 16, block: int = 16) -> onnx.ModelProto:
    """x -> com.microsoft MatMulNBits (4-bit, K=32, N=16, blocks of 16) -> Relu -> MatMul."""
    b = QGraph()
    blocks = k // block
    packed = b.init("B", RNG.integers(0, 256, (n, blocks, block // 2), dtype=np.uint8))
    scales = b.init("scales", RNG.uniform(0.01, 0.02, n * blocks).astype(np.float32))
    zps = b.init("zp", RNG.integers(0, 256, n * ((blocks + 1) // 2), dtype=np.uint8))
    h = b.node("MatMulNBits", ["x", packed, scales, zps], domain=MS, K=k, N=n, bits=4,
               block_size=block)  # fmt: skip
    w2 = b.init("w2", RNG.standard_normal((n, 3)).astype(np.float32))
    return b.model([2, k], b.node("MatMul", [b.node("Relu", [h]), w2]), ms=True)


def test_matmul_nbits_outputs_prune_exactly():
    pruned, _ = prune_exact(nbits_graph(), 0.5)
    node = next(n for n in pruned.graph.node if n.op_type == "MatMulNBits")
    assert next(a.i for a in node.attribute if a.name == "N") == 8
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert [8, 2, 8] in dims.values() and [16] in dims.values() and [8] in dims.values()


def nbits_mlp(k_blocks_ok: bool = True) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMulNBits(K=32 in blocks of 16, N=16) -> Relu -> MatMul: the
    first MatMul's 32 outputs are MatMulNBits' K inputs (two blocks)."""
    b = QGraph()
    k = 32 if k_blocks_ok else 24
    h = b.node("Relu", [b.node("MatMul", ["x", b.init("w0", RNG.standard_normal((4, k))
                                                    .astype(np.float32))])])  # fmt: skip
    nb = -(-k // 16)
    b.init("B", RNG.integers(0, 256, (16, nb, 8), dtype=np.uint8))
    b.init("scales", RNG.uniform(0.01, 0.02, 16 * nb).astype(np.float32))
    b.init("zp", RNG.integers(0, 256, 16 * ((nb + 1) // 2), dtype=np.uint8))
    y = b.node("MatMulNBits", [h, "B", "scales", "zp"], domain=MS, K=k, N=16, bits=4,
               block_size=16)  # fmt: skip
    w2 = b.init("w2", RNG.standard_normal((16, 3)).astype(np.float32))
    return b.model([2, 4], b.node("MatMul", [b.node("Relu", [y]), w2]), ms=True)


def test_matmul_nbits_inputs_prune_a_whole_block_at_a_time():
    pruned, plan = prune_exact(nbits_mlp(), 0.5)
    g = next(g for g in plan.groups if g.id == "MatMul_1")
    assert g.width == 16 and len(g.kept) == 1
    node = next(n for n in pruned.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: a.i for a in node.attribute}
    assert attrs["K"] == 16 and attrs["N"] == 8
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert [8, 1, 8] in dims.values() and [8] in dims.values()


def test_matmul_nbits_partial_block_is_refused_with_the_reason():
    reasons = [g.blocked_reason or "" for g in analyze(nbits_mlp(k_blocks_ok=False))]
    assert any("MatMulNBits packs its 24 input features in blocks of 16" in r for r in reasons)


def test_matmul_nbits_scores_the_dequantized_rows():
    """Row 5 holds the largest nibbles but a scale of 1e-7: the weakest output."""
    model = nbits_mlp()
    t = {t.name: t for t in model.graph.initializer}
    s = numpy_helper.to_array(t["scales"]).copy().reshape(16, 2)
    s[5] = 1e-7
    t["scales"].CopyFrom(numpy_helper.from_array(s.reshape(-1), "scales"))
    bq = numpy_helper.to_array(t["B"]).copy()
    bq[5] = 0xFF
    t["B"].CopyFrom(numpy_helper.from_array(bq, "B"))
    w2 = numpy_helper.to_array(t["w2"]).copy()
    w2[5] = 1e-3
    t["w2"].CopyFrom(numpy_helper.from_array(w2, "w2"))
    _, result = prune_structured(model, StructuredOptions(ratio=1 / 16, round_to=1))
    g = next(g for g in result.plan.groups if g.id == "MatMulNBits_3")
    assert 5 not in g.kept and len(g.kept) == 15


# -------------------------------------------------------------------------- unstructured


def test_unstructured_zeroes_quantized_weights_at_the_zero_point():
    model = qdq_chain()
    pruned, result = prune_unstructured(model, ratio=0.5)
    assert len(result.tensors) == 3
    view = GraphView(pruned)
    for name, q in view.quantized.items():
        if q.root.startswith("w"):
            ints = view.constant(q.root)
            assert ints.dtype == np.int8
            assert abs(float((view.constant(name) == 0).mean()) - 0.5) < 0.02
    ref, got = run(model, random_feeds(model)), run(pruned, random_feeds(model))
    assert ref[0].shape == got[0].shape


def test_nm_on_quantized_weights_holds_on_the_dequantized_values():
    from onnxprune.unstructured.magnitude import satisfies_nm

    model = qdq_chain()
    pruned, result = prune_unstructured(model, nm="2:4")
    view = GraphView(pruned)
    weights = [n for n, q in view.quantized.items() if q.root.startswith("w")]
    assert len(weights) == 3 and len(result.tensors) == 3
    assert all(satisfies_nm(view.constant(n), 1, 2, 4) for n in weights)


def test_still_blocked_quantized_ops_name_themselves():
    b = QGraph()
    h = b.node("Relu", [b.node("MatMul", ["x", b.init("w0", RNG.standard_normal((4, 8))
                                                    .astype(np.float32))])])  # fmt: skip
    y = b.node("DynamicQuantizeMatMul", [h, b.init("wq", RNG.integers(-9, 9, (8, 3),
               dtype=np.int8)), b.init("s", np.float32(0.1))], domain=MS)  # fmt: skip
    model = b.model([2, 4], y, ms=True)
    reasons = [g.blocked_reason or "" for g in analyze(model)]
    assert any(r.startswith("com.microsoft.DynamicQuantizeMatMul is not followed") for r in reasons)
    _, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    assert result.plan.empty


# -------------------------------------------------------------------------- weight-only int8


def cast_mul_graph() -> onnx.ModelProto:
    """Weight-only int8: int8 initializer -> Cast(float) -> Mul(scale) -> Conv, and a MatMul
    whose [K, N] weight has one scale per column."""
    b = QGraph()

    def weight(shape, scale_shape, tag):
        q = b.init(f"{tag}_q", RNG.integers(-100, 100, shape, dtype=np.int8))
        s = b.init(f"{tag}_s", RNG.uniform(0.005, 0.02, scale_shape).astype(np.float32))
        return b.node("Mul", [b.node("Cast", [q], to=TensorProto.FLOAT), s])

    h = b.node("Relu", [b.node("Conv", ["x", weight((8, 4, 3, 3), (8, 1, 1, 1), "c")])])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h])])
    h = b.node("Relu", [b.node("MatMul", [h, weight((8, 16), (16,), "m")])])
    y = b.node("MatMul", [h, b.init("w2", RNG.standard_normal((16, 3)).astype(np.float32))])
    return b.model([1, 4, 6, 6], y)


def test_cast_mul_int8_weights_prune_exactly_and_stay_int8():
    model = cast_mul_graph()
    pruned, _ = prune_exact(model, 0.5)
    dims = {t.name: (list(t.dims), t.data_type) for t in pruned.graph.initializer}
    assert ([4, 4, 3, 3], TensorProto.INT8) in dims.values()
    assert ([4, 1, 1, 1], TensorProto.FLOAT) in dims.values()  # per-filter scales sliced
    assert ([4, 8], TensorProto.INT8) in dims.values() and ([8], TensorProto.FLOAT) in dims.values()
    assert [n.op_type for n in pruned.graph.node].count("Cast") == 2


def test_cast_mul_unstructured_zeroes_the_integers():
    pruned, result = prune_unstructured(cast_mul_graph(), ratio=0.5)
    ints = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert {t["tensor"] for t in result.tensors} == {"Mul_2_0", "Mul_8_0"}  # w2 is tiny
    assert ints["c_q"].dtype == np.int8 and abs((ints["c_q"] == 0).mean() - 0.5) < 0.02


# -------------------------------------------------------------------------- recovery


def _recover(model):
    from onnxprune.recovery.recover import RecoveryOptions, recover_structured

    pruned, result = prune_structured(model, StructuredOptions(ratio=0.5, round_to=1))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    inputs = {"x": RNG.standard_normal((16, *shape[1:])).astype(np.float32)}
    recovered, rec = recover_structured(model, pruned, result.plan, inputs,
                                        RecoveryOptions(obs=False))  # fmt: skip
    return pruned, recovered, rec, inputs


def test_recovery_refits_qdq_layers_and_requantizes_with_the_original_scales():
    model = qdq_chain()
    pruned, recovered, rec, inputs = _recover(model)
    assert rec.skipped == [] or all("integer weight" not in s["reason"] for s in rec.skipped)
    before = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in recovered.graph.initializer}
    assert {n: a.dtype for n, a in after.items()} == {n: a.dtype for n, a in before.items()}
    assert all(np.array_equal(after[n], before[n]) for n in after if "_s" in n), "scales kept"
    assert any(not np.array_equal(after[n], before[n]) for n in after if n.endswith("_q_pruned"))

    def err(m):
        xs = [{"x": x[None]} for x in inputs["x"]]
        return float(np.mean([np.abs(run(m, f)[0] - run(model, f)[0]).mean() for f in xs]))

    assert err(recovered) < err(pruned)


def test_recovery_leaves_qoperator_layers_and_says_why():
    from onnxprune.graph.quant import NOT_REFIT

    model = qop_graph(False)
    pruned, recovered, rec, inputs = _recover(model)
    assert NOT_REFIT in [s["reason"] for s in rec.skipped], rec.skipped
    feeds = {"x": inputs["x"][:1]}
    np.testing.assert_array_equal(run(recovered, feeds)[0], run(pruned, feeds)[0])


def test_qat_float_weight_is_folded_to_integers_at_load_and_prunes():
    """A QAT export's float weight -> QuantizeLinear -> DequantizeLinear: the load folds the
    QuantizeLinear into an int8 initializer (the DequantizeLinear stays), then it prunes."""
    from onnxprune.graph.load import normalize_model

    b = QGraph()
    wf = b.init("wf", RNG.standard_normal((8, 4, 3, 3)).astype(np.float32))
    s = b.init("s", RNG.uniform(0.01, 0.02, 8).astype(np.float32))
    z = b.init("z", np.zeros(8, np.int8))
    w = b.node("DequantizeLinear", [b.node("QuantizeLinear", [wf, s, z], axis=0), s, z], axis=0)
    h = b.node("Relu", [b.node("Conv", [b.qdq("x"), w], pads=[1, 1, 1, 1])])
    model = b.model([1, 4, 6, 6], b.node("Conv", [h, b.qweight((3, 8, 1, 1))]))
    before = run(model, random_feeds(model))[0]
    normalize_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 3
    folded = next(t for t in model.graph.initializer if t.data_type == TensorProto.INT8
                  and list(t.dims) == [8, 4, 3, 3])  # fmt: skip
    assert folded is not None
    np.testing.assert_array_equal(run(model, random_feeds(model))[0], before)
    prune_exact(model, 0.5)


# -------------------------------------------------------------------------- command line


def test_cli_prunes_a_qdq_model_and_inspects_it(tmp_path, run_cli, capsys):
    path, out = tmp_path / "q.onnx", tmp_path / "q.pruned.onnx"
    onnx.save(qdq_chain(), path)
    code, stdout, err = run_cli([path, "--structured", "0.5", "--round-to", "1", "-o", out,
                                 "--runs", "5"], capsys)  # fmt: skip
    assert code == 0, err
    pruned = onnx.load(out)
    ints = [t for t in pruned.graph.initializer if t.data_type == TensorProto.INT8
            and len(t.dims) == 4]  # fmt: skip
    assert len(ints) == 3 and any(t.dims[0] == 4 for t in ints)
    assert "quantized weights left untouched" not in stdout
    code, stdout, err = run_cli(["inspect", path], capsys)
    assert code == 0, err
    assert "DequantizeLinear" in stdout or "Conv" in stdout


def test_unstructured_zeroes_qoperator_and_integer_weights_at_their_zero_points():
    """QLinearConv/QGemm weights (zero point 0) and a MatMulInteger weight with per-column
    zero points: the zeroed entries are set to the zero point of their column."""
    for model, name, zp_name in ((qop_graph(False), "c1_w", "c1_wz"),
                                 (dynamic_graph(True), "w1", "w1z")):  # fmt: skip
        pruned, result = prune_unstructured(model, ratio=0.5, exclude=["fc_w"])
        assert name in {t["tensor"] for t in result.tensors}
        ints = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
        before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        zp = ints[zp_name].reshape((-1,) + (1,) * (ints[name].ndim - 1)) if name == "c1_w" \
            else ints[zp_name].reshape(1, -1)  # fmt: skip
        changed = ints[name] != before[name]
        assert changed.any() and (np.broadcast_to(zp, ints[name].shape)[changed]
                                  == ints[name][changed]).all()  # fmt: skip
        assert abs(float((ints[name] == np.broadcast_to(zp, ints[name].shape)).mean()) - 0.5) < 0.05
        run(pruned, random_feeds(model))


def test_qlinear_concat_and_sigmoid_pass_channels_exactly():
    """Two QLinearConv branches -> com.microsoft QLinearConcat -> QLinearSigmoid ->
    QLinearConv: each branch prunes on its own, the concat is cut where each says."""
    b = QGraph()

    def act(tag, scale=0.2):
        return [b.init(f"{tag}_s", np.float32(scale)), b.init(f"{tag}_z", np.uint8(128))]

    def conv(x, xq, cin, cout, tag):
        w = b.init(f"{tag}_w", RNG.integers(-60, 60, (cout, cin, 1, 1), dtype=np.int8))
        ws = b.init(f"{tag}_ws", RNG.uniform(0.005, 0.01, cout).astype(np.float32))
        wz = b.init(f"{tag}_wz", np.zeros(cout, np.int8))
        yq = act(tag)
        return b.node("QLinearConv", [x, *xq, w, ws, wz, *yq]), yq

    xq = act("x", 0.05)
    x = b.node("QuantizeLinear", ["x", *xq])
    h1, q1 = conv(x, xq, 4, 8, "a")
    h2, q2 = conv(x, xq, 4, 8, "b")
    cq = act("cat")
    cat = b.node("QLinearConcat", [*cq, h1, *q1, h2, *q2], domain=MS, axis=1)
    sq = act("sig", 0.004)
    sig = b.node("QLinearSigmoid", [cat, *cq, *sq], domain=MS)
    y, yq = conv(sig, sq, 16, 4, "c")
    model = b.model([1, 4, 5, 5], b.node("DequantizeLinear", [y, *yq]), ms=True)
    pruned, plan = prune_exact(model, 0.5)
    assert {g.id for g in plan.groups} == {"QLinearConv_2", "QLinearConv_3"}
    assert [4, 8, 1, 1] in [list(t.dims) for t in pruned.graph.initializer]
