"""The Llama-style decoder builder (onnxprune.testing.decoder): what it writes runs in
onnxruntime, holds its weights in external data, and prunes exactly: FFN neurons and whole
key/value groups (GQA), checked by the exactness oracle."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxprune.graph import modelfile as io
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing import assert_exact
from onnxprune.testing.decoder import PRESETS, DecoderConfig, write_decoder, write_mlp


def _feeds(cfg: DecoderConfig, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab, (batch, seq), dtype=np.int64)
    pos = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
    return {"input_ids": ids, "position_ids": pos}


def test_tiny_decoder_runs_from_external_data(tmp_path):
    cfg = PRESETS["tiny"]
    path = write_decoder(tmp_path / "tiny.onnx", cfg)
    assert (tmp_path / "tiny.onnx.data").stat().st_size >= cfg.params * 4
    model = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    onnx.checker.check_model(str(path))
    (logits,) = ort.InferenceSession(str(path)).run(None, _feeds(cfg, 2, 7))
    assert logits.shape == (2, 7, cfg.vocab)
    assert np.isfinite(logits).all() and logits.std() > 0


def test_causal_mask_hides_later_tokens(tmp_path):
    """Changing the last token must not change the logits of the earlier ones."""
    cfg = PRESETS["tiny"]
    session = ort.InferenceSession(str(write_decoder(tmp_path / "t.onnx", cfg)))
    feeds = _feeds(cfg, 1, 6)
    (a,) = session.run(None, feeds)
    feeds["input_ids"][0, -1] = (feeds["input_ids"][0, -1] + 1) % cfg.vocab
    (b,) = session.run(None, feeds)
    np.testing.assert_allclose(a[:, :-1], b[:, :-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("loaded", [False, True])
def test_tiny_decoder_prunes_ffn_and_kv_groups_exactly(tmp_path, loaded):
    """Also as the CLI loads it (``loaded``): load folds repeat_kv's static sizes into
    constants read through ``Where(Equal(s, -1), 1, s)``, which used to block every head."""
    cfg = PRESETS["tiny"]
    path = write_decoder(tmp_path / "tiny.onnx", cfg)
    model = io.load_model(path).model if loaded else onnx.load(str(path))
    pruned, result = prune_structured(model, StructuredOptions(ratio=0.3, heads=0.25, round_to=1))
    sizes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    d = cfg.head_dim
    for i in range(cfg.layers):
        pre = f"model.layers.{i}"
        # one of the 4 key/value groups goes, with the 2 query heads that read it
        assert sizes[f"{pre}.self_attn.k_proj.weight"] == (cfg.hidden, (cfg.kv_heads - 1) * d)
        assert sizes[f"{pre}.self_attn.v_proj.weight"] == (cfg.hidden, (cfg.kv_heads - 1) * d)
        rep = cfg.heads // cfg.kv_heads
        assert sizes[f"{pre}.self_attn.q_proj.weight"] == (cfg.hidden, (cfg.heads - rep) * d)
        assert sizes[f"{pre}.mlp.gate_proj.weight"][1] < cfg.ffn
        assert sizes[f"{pre}.mlp.down_proj.weight"][0] == sizes[f"{pre}.mlp.gate_proj.weight"][1]
    assert_exact(model, pruned, result.plan, symbolic=5)
    (logits,) = ort.InferenceSession(pruned.SerializeToString()).run(None, _feeds(cfg, 2, 9))
    assert logits.shape == (2, 9, cfg.vocab)


def test_config_refuses_heads_that_do_not_split():
    with pytest.raises(ValueError):
        DecoderConfig(hidden=64, heads=6)


def test_presets_grow_to_two_billion_parameters():
    assert PRESETS["0.5B"].params < PRESETS["1B"].params < PRESETS["2B"].params
    assert PRESETS["2B"].params >= 2e9 and PRESETS["2B"].params * 4 >= 8e9


def test_mlp_writer(tmp_path):
    path = write_mlp(tmp_path / "mlp.onnx", width=64, layers=3)
    x = np.ones((2, 64), np.float32)
    (y,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    assert y.shape == (2, 64)
