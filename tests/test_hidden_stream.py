"""The residual stream as its own kind (``--hidden``): analysis, stream oracle, options, report.

Hidden-stream pruning is approximate by design (each LayerNorm/RMSNorm then normalizes over
the kept channels), so these tests check it against that formula
(``onnxprune.testing.stream_oracle``), not against the exactness oracle.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.errors import UsageError
from onnxprune.structured.dependency import analyze
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.structured.stream import APPROXIMATE, stream_lines
from onnxprune.testing import Builder, random_feeds, run
from onnxprune.testing.graphs.transformer import encoder_block, layer_norm, rms_norm
from onnxprune.testing.oracles import zeroed
from onnxprune.testing.stream_oracle import assert_stream, prune_stream, stream_reference


def _ln2d(b: Builder, x: str, c: int, name: str) -> str:
    """torchvision's LayerNorm2d: Permute to NHWC, LayerNormalization, Permute back."""
    h = b.op("Transpose", [x], perm=[0, 2, 3, 1])
    return b.op("Transpose", [layer_norm(b, h, c, name)], perm=[0, 3, 1, 2])


def convnext_tiny(c: int = 16, seed: int = 0) -> onnx.ModelProto:
    """A ConvNeXt in miniature: patchify stem + LayerNorm2d, two blocks (depthwise 3x3,
    Permute, LayerNorm, MLP, layer scale, Permute, residual Add), a downsampling LayerNorm2d +
    2x2 Conv, and the head (GlobalAveragePool, LayerNorm2d, Flatten, Gemm)."""
    b = Builder(seed)
    x = b.input([1, 3, 8, 8])
    s = _ln2d(b, b.op("Conv", [x, b.rand([c, 3, 2, 2], "stem.weight"), b.rand([c], "stem.bias")],
                      name="stem", kernel_shape=[2, 2], strides=[2, 2]), c, "stem.ln")  # fmt: skip
    for i in range(2):
        h = b.conv(s, c, c, k=3, group=c, name=f"b{i}.dw")
        h = layer_norm(b, b.op("Transpose", [h], perm=[0, 2, 3, 1]), c, f"b{i}.ln")
        h = b.matmul(b.relu(b.matmul(h, c, 2 * c, name=f"b{i}.fc1")), 2 * c, c, name=f"b{i}.fc2")
        h = b.op("Mul", [h, b.rand([c], f"b{i}.gamma", 1.0, positive=True)])
        s = b.op("Add", [s, b.op("Transpose", [h], perm=[0, 3, 1, 2])])
    d = b.conv(_ln2d(b, s, c, "down.ln"), c, 2 * c, k=2, stride=2, name="down")
    p = _ln2d(b, b.op("GlobalAveragePool", [d]), 2 * c, "head.ln")
    return b.build([b.gemm(b.op("Flatten", [p]), 2 * c, 10, name="head")])


def vit_tiny(dim: int = 16, tokens: int = 5, seed: int = 0, rms: bool | str = False) -> onnx.ModelProto:
    """A pre-LN transformer stream: patch projection + positional table, two blocks of
    x + fc2(relu(fc1(LN(x)))), a final norm and a classifier; ``rms``: opset-23
    RMSNormalization instead of LayerNormalization, ``"decomposed"``: Llama's RMSNorm
    spelled out (Pow, ReduceMean, Sqrt, Div, Mul)."""
    b = Builder(seed, opset=23 if rms is True else 17)

    def norm(x: str, name: str) -> str:
        if rms == "decomposed":
            return rms_norm(b, x, dim, name)
        if not rms:
            return layer_norm(b, x, dim, name)
        w = b.rand([dim], f"{name}.scale", 1.0, positive=True)
        return b.op("RMSNormalization", [x, w], axis=-1, name=name)

    x = b.input([1, tokens, 12])
    s = b.op("Add", [b.matmul(x, 12, dim, name="embed"), b.rand([1, tokens, dim], "pos", 0.2)])
    for i in range(2):
        h = b.relu(b.matmul(norm(s, f"b{i}.ln"), dim, 2 * dim, name=f"b{i}.fc1"))
        s = b.op("Add", [s, b.matmul(h, 2 * dim, dim, name=f"b{i}.fc2")])
    return b.build([b.matmul(norm(s, "final.ln"), dim, 4, name="cls")])


def test_without_hidden_the_stream_is_blocked_by_its_norm():
    groups = analyze(convnext_tiny())
    stem = next(g for g in groups if g.id == "stem")
    assert stem.blocked_reason is not None and "normalizes over the channel axis" in stem.blocked_reason
    assert not any(g.stream for g in groups)


def test_with_hidden_the_stream_is_one_group_of_every_member():
    groups = analyze(convnext_tiny(), hidden=True)
    stem = next(g for g in groups if g.id == "stem")
    assert stem.blocked_reason is None
    assert stem.stream == ["stem.ln", "b0.ln", "b1.ln", "down.ln"]
    labels = {m.label for m in stem.params}
    for want in ("stem.weight[out]", "b0.dw.weight[out]", "b1.fc2.weight[out]", "b0.fc1.weight[in]",
                 "b0.ln.scale", "b0.ln.bias", "b1.gamma", "down.weight[in]"):  # fmt: skip
        assert want in labels, want
    down = next(g for g in groups if g.id == "down")
    assert down.stream == ["head.ln"] and "head.weight[in]" in {m.label for m in down.params}


def test_convnext_stream_matches_the_norm_over_kept_channels():
    model = convnext_tiny()
    pruned, plan = prune_stream(model, hidden=0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["stem.weight"][0] == 8 and dims["b0.ln.scale"] == [8] and dims["down.weight"][:2] == [16, 8]
    assert dims["head.weight"] == [10, 16]
    assert plan.settings["hidden"] == 0.5


def test_stream_with_exact_groups_too():
    model = convnext_tiny(seed=3)
    pruned, _ = prune_stream(model, hidden=0.25, ratio=0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["b0.fc1.weight"] == [12, 16]  # the stream (16 -> 12) and the MLP (32 -> 16)


@pytest.mark.parametrize("rms", [False, True, "decomposed"])
def test_transformer_stream_with_positional_table(rms):
    model = vit_tiny(rms=rms)
    pruned, _ = prune_stream(model, hidden=0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["pos"] == [1, 5, 8] and dims["embed.weight"] == [12, 8] and dims["cls.weight"] == [8, 4]


def test_the_oracle_is_not_the_exactness_oracle():
    """The cut is approximate: the exact reference (plain zeroing) differs, the norm over
    kept channels agrees; and the oracle's norm formula agrees with numpy."""
    model = vit_tiny(seed=2)
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.0, hidden=0.5, round_to=1))
    feeds = random_feeds(model, 0)
    got = run(pruned, feeds)[0]
    plain = run(zeroed(model, result.plan), feeds)[0]
    assert np.max(np.abs(plain - got)) > 1e-3
    assert_stream(model, pruned, result.plan)


def test_masked_norm_formula_matches_numpy():
    b = Builder(1)
    x = b.input([2, 3, 8])
    model = b.build([layer_norm(b, x, 8, "ln")])
    from onnxprune.structured.plan import Cut, Plan

    kept = [0, 2, 3, 7]
    plan = Plan([], [], [Cut("x", 2, 8, kept, "act")])
    feeds = random_feeds(model, 0)
    ref = run(stream_reference(model, plan), feeds)[0][..., kept]
    v = feeds["x"][..., kept].astype(np.float64)
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    want = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
    want = want * init["ln.scale"][kept] + init["ln.bias"][kept]
    np.testing.assert_allclose(ref, want, rtol=1e-4, atol=1e-5)


def test_stream_from_a_graph_input_stays_blocked():
    model = encoder_block()  # post-LN: the stream is the graph input itself
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.0, hidden=0.5))
    assert result.hidden is not None and result.hidden["groups"] == []
    assert any("graph input" in b["reason"] or "graph output" in b["reason"] for b in result.blocked)
    assert pruned is model


def test_hidden_is_validated():
    with pytest.raises(UsageError, match="--hidden"):
        StructuredOptions(ratio=0.0, hidden=1.0)


def test_report_section_says_approximate():
    _, result = prune_structured(convnext_tiny(), StructuredOptions(ratio=0.0, hidden=0.5, round_to=1))
    section = result.to_dict()["hidden"]
    assert section["exact"] is False and section["note"] == APPROXIMATE
    assert [r["channels_after"] for r in section["groups"]] == [8, 16]
    lines = stream_lines(section)
    assert lines[0] == f"hidden stream: {APPROXIMATE}" and "16 -> 8" in lines[2]


def test_recovery_refits_the_stream_consumers_and_lowers_the_error():
    """The stream's consumers lost input channels, so recovery refits them against the
    original stream; on a low-rank stream (removed channels nearly linear in the kept ones)
    that repairs most of the approximation."""
    from onnxprune.recovery.recover import RecoveryOptions, recover_structured
    from onnxprune.testing import set_constant

    model = vit_tiny(seed=4)
    rng = np.random.default_rng(0)
    set_constant(model, "embed.weight", (rng.standard_normal((12, 5)) @ rng.standard_normal((5, 16)) / 4).astype(np.float32))
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.0, hidden=0.5, round_to=1))
    data = {"x": rng.standard_normal((300, 1, 5, 12)).astype(np.float32)}
    calib, held = {"x": data["x"][:200, 0]}, [{"x": v} for v in data["x"][200:]]
    refit, rec = recover_structured(model, pruned, result.plan, calib, RecoveryOptions(max_rows=2048))
    names = " ".join(x["layer"] for x in rec.layers)
    assert "b0.fc1" in names and "b1.fc1" in names and "cls" in names

    def err(m: onnx.ModelProto) -> float:
        return float(np.mean([np.sum((run(m, f)[0] - run(model, f)[0]) ** 2) for f in held]))

    before, after = err(pruned), err(refit)
    assert after < 0.25 * before, (before, after)  # measured: 20.8 -> 2.57


def bert_like(dim: int = 16, tokens: int = 5, seed: int = 0) -> onnx.ModelProto:
    """A post-LN encoder stream that starts at an embedding lookup: Gather(word table, ids)
    + a position table, LayerNorm, one MLP block with LayerNorm(h + MLP(h)), a pooler."""
    b = Builder(seed)
    ids = b.op("Cast", [b.input([1, tokens], "ids")], to=onnx.TensorProto.INT64)
    e = b.op("Gather", [b.rand([20, dim], "word", 1.0), ids], axis=0)
    h = layer_norm(b, b.op("Add", [e, b.rand([1, tokens, dim], "pos", 0.2)]), dim, "emb.ln")
    f = b.matmul(b.relu(b.matmul(h, dim, 2 * dim, name="up")), 2 * dim, dim, name="down")
    h = layer_norm(b, b.op("Add", [h, f]), dim, "ln2")
    return b.build([b.matmul(h, dim, 3, name="pooler")])


def test_an_embedding_table_starts_the_stream_only_with_hidden():
    model = bert_like()
    assert not any(g.id.startswith("gather") for g in analyze(model) if not g.blocked_reason)
    pruned, _ = prune_stream(model, hidden=0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["word"] == [20, 8] and dims["pos"] == [1, 5, 8] and dims["pooler.weight"] == [8, 3]


def test_cli_hidden_reports_the_stream_apart(tmp_path, capsys, run_cli):
    import json

    path = tmp_path / "cnx.onnx"
    onnx.save(convnext_tiny(), path)
    report = tmp_path / "r.json"
    code, out, err = run_cli(
        [path, "--hidden", "0.5", "--round-to", "1", "--report", report, "--runs", "5"], capsys
    )
    assert code == 0, err
    assert f"hidden stream: {APPROXIMATE}" in out and "(hidden stream, approximate)" in out
    section = json.loads(report.read_text())["structured"]["hidden"]
    assert section["exact"] is False and section["ratio"] == 0.5
    pruned = onnx.load(tmp_path / "cnx.pruned.onnx")
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["stem.weight"][0] == 8


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_cli_hidden_out_of_range_is_one_error_line(tmp_path, capsys, run_cli, value):
    path = tmp_path / "cnx.onnx"
    onnx.save(convnext_tiny(), path)
    code, _, err = run_cli([path, "--hidden", value], capsys)
    assert code != 0 and "--hidden" in err and "Traceback" not in err
    assert not (tmp_path / "cnx.pruned.onnx").exists()


def test_prune_options_hidden():
    from onnxprune.options import PruneOptions

    assert PruneOptions(hidden=0.3).wants_structured
    with pytest.raises(UsageError, match="--hidden"):
        PruneOptions(hidden=1.5)
    with pytest.raises(UsageError, match="--hidden takes a ratio of its own"):
        PruneOptions(hidden=0.3, target_macs=0.5)


def test_html_report_shows_the_stream_section(tmp_path, capsys, run_cli):
    path = tmp_path / "cnx.onnx"
    onnx.save(convnext_tiny(), path)
    page = tmp_path / "r.html"
    code, _, err = run_cli([path, "--hidden", "0.5", "--report", page, "--runs", "5"], capsys)
    assert code == 0, err
    assert "hidden stream: approximate (normalization statistics over kept channels)" in page.read_text()


def test_the_stream_oracle_catches_a_wrong_slice():
    """Reversing the kept entries of one norm's scale (a slice at the wrong positions) must
    fail the oracle, or it would prove nothing."""
    from onnxprune.testing import set_constant

    model = vit_tiny(seed=5)
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.0, hidden=0.5, round_to=1))
    assert_stream(model, pruned, result.plan)
    scale = next(onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name == "b1.ln.scale")
    set_constant(pruned, "b1.ln.scale", scale[::-1].copy())
    with pytest.raises(AssertionError, match="max error"):
        assert_stream(model, pruned, result.plan)


def test_stream_rounds_to_the_nearest_multiple():
    """A 96-wide stream at 0.3 asks for 67 channels: up would keep 80 (17% cut), nearest keeps
    64; a tie goes up, and never below one step nor above the group."""
    from onnxprune.structured.plan import round_keep, round_keep_nearest

    assert round_keep(67, 96, 1, 16) == 80
    assert round_keep_nearest(67, 96, 1, 16) == 64
    assert round_keep_nearest(72, 96, 1, 16) == 80
    assert round_keep_nearest(3, 96, 1, 16) == 16
    assert round_keep_nearest(95, 96, 1, 16) == 96
    assert round_keep_nearest(67, 96, 1, 1) == 67


def test_hidden_stream_of_96_at_0_3_keeps_64_and_still_meets_its_oracle():
    model = convnext_tiny(c=96)
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.0, hidden=0.3))
    rows = result.to_dict()["hidden"]["groups"]
    assert (rows[0]["channels_before"], rows[0]["channels_after"]) == (96, 64)
    from onnxprune.testing.stream_oracle import assert_stream

    assert_stream(model, pruned, result.plan)


def vit_class_token(dim: int = 16, tokens: int = 4, seed: int = 0) -> onnx.ModelProto:
    """torchvision's ViT entry as exported with a dynamic batch: the patch projection
    reshaped by a target computed at run time (``Concat(batch, [D], [T])``), the class token
    ``[1, 1, D]`` expanded to ``(batch, 1, 1)`` and concatenated before the tokens, then the
    positional table, one pre-LN block and a classifier on the class token."""
    b = Builder(seed)
    x = b.input(["N", 3, tokens, 1])
    y = b.conv(x, 3, dim, k=1, name="proj")  # [N, D, tokens, 1]
    batch = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [y]), b.const(np.int64(0))], axis=0),
                               b.ints([0])])  # fmt: skip
    flat = b.op("Reshape", [y, b.op("Concat", [batch, b.ints([dim]), b.ints([tokens])], axis=0)])
    seq = b.op("Transpose", [flat], perm=[0, 2, 1])  # [N, T, D]
    shape = b.op("Concat", [batch, b.ints([1]), b.ints([1])], axis=0)
    cls = b.op("Expand", [b.rand([1, 1, dim], "class_token", 0.5), shape])
    s = b.op("Add", [b.op("Concat", [cls, seq], axis=1), b.rand([1, tokens + 1, dim], "pos", 0.2)])
    h = b.relu(b.matmul(layer_norm(b, s, dim, "b0.ln"), dim, 2 * dim, name="b0.fc1"))
    s = b.op("Add", [s, b.matmul(h, 2 * dim, dim, name="b0.fc2")])
    first = b.op("Gather", [layer_norm(b, s, dim, "final.ln"), b.const(np.int64(0))], axis=1)
    return b.build([b.gemm(first, dim, 4, name="head")])


def test_class_token_joins_the_stream_and_is_cut_with_it():
    """The Expand of a float constant carries its entries as channels (``Source.follower``),
    and the computed Reshape target's private ``[D]`` is rewritten: the whole stream is cut,
    against the stream oracle; exact pruning without --hidden is unchanged."""
    from onnxprune.graph.load import normalize_model

    model = vit_class_token()
    normalize_model(model)  # as the CLI loads it: static shape arithmetic folded
    pruned, _ = prune_stream(model, hidden=0.5)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["class_token"] == [1, 1, 8] and dims["pos"] == [1, 5, 8]
    assert dims["proj.weight"][0] == 8 and dims["head.weight"] == [4, 8]
    groups = analyze(model)
    proj = next(g for g in groups if g.id == "proj")
    assert proj.blocked_reason is not None  # without --hidden the LayerNorm blocks the stream


def test_a_constant_broadcast_alone_is_not_a_group():
    """Entries of a constant that no producer's channels meet make no prunable group."""
    b = Builder()
    x = b.input([2, 3, 4])
    cls = b.op("Expand", [b.rand([1, 1, 4], "table"), b.ints([2, 3, 1])])
    model = b.build([b.op("Add", [x, cls])])
    assert all(g.blocked_reason is not None for g in analyze(model))
