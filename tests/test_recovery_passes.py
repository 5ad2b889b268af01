"""Recovery's passes in bounded memory (issue 14): one onnxruntime session at a time, refit
weights of a big model kept in a file between waves, and a Gram budget sized from the weights.

- the original's pass and the pruned model's pass never have their sessions alive together
  (``runtime.session.live_sessions``, onnxruntime sessions counted as they are made and freed);
- ``LayerStats.original_rows`` + ``add_rows`` (the two passes apart) sum what ``add`` sums;
- a lazily read model's refit weights are lazy again after recovery, with the values a model
  held in memory gets, and a run split in many waves refits the same layers;
- ``waves.gram_budget``: a third of the weights for a lazy model, 1.5 GiB for one read whole,
  an explicit budget as given.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from onnxprune.graph import external
from onnxprune.graph import modelfile as io
from onnxprune.graph.proto import LAZY_MIN_BYTES, is_lazy, tensor_array, tensor_nbytes
from onnxprune.recovery import waves
from onnxprune.recovery.gram import LayerStats
from onnxprune.recovery.layers import find_layers
from onnxprune.recovery.params import ModelParams, augmented
from onnxprune.recovery.recover import RecoveryOptions, recover_structured
from onnxprune.recovery.waves import GRAM_BUDGET_BYTES, gram_budget
from onnxprune.runtime.session import live_sessions
from onnxprune.structured.engine import StructuredOptions, prune_structured
from onnxprune.testing.decoder import write_mlp
from onnxprune.testing.graphs import gemm_mlp

WIDTH = 160  # 160 x 160 float32 = 100 KiB: above LAZY_MIN_BYTES, so these weights stay lazy
ONE_WAVE = RecoveryOptions(waves=1, pass_budget_s=None, max_rows=256)


def _x(n: int = 48, width: int = WIDTH, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)}


@pytest.fixture
def lazy_mlp(tmp_path, monkeypatch):
    """A small MLP with external data, read lazily as a big one is."""
    monkeypatch.setattr(external, "LAZY_MODEL_MIN_BYTES", 0)
    return io.load_model(write_mlp(tmp_path / "mlp.onnx", width=WIDTH, layers=4)).model


def test_the_two_models_sessions_are_never_alive_together():
    model = gemm_mlp()
    pruned, res = prune_structured(model, StructuredOptions(0.5))
    width = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    gc.collect()
    before = live_sessions(reset=True)
    opts = RecoveryOptions(waves=2, pass_budget_s=None, max_rows=256)
    _, rec = recover_structured(model, pruned, res.plan, _x(width=width), opts)
    assert rec.layers  # recovery ran: sessions were opened, one at a time
    assert live_sessions(most=True) == before + 1
    gc.collect()
    assert live_sessions() == before  # and none is left open


def test_rows_taken_in_two_passes_sum_what_one_pass_sums():
    model = gemm_mlp()
    lay = find_layers(model)[1]
    rng = np.random.default_rng(3)
    d = augmented(lay, ModelParams(model)).shape[-1] - 1
    target = rng.standard_normal((1, 4, d + 1)).astype(np.float32)
    one = LayerStats(lay, lay, None, True, target=target)
    two = LayerStats(lay, lay, None, True, target=target)
    for _ in range(3):
        xp, xo = rng.standard_normal((2, 40, d)).astype(np.float32)
        picks = np.sort(rng.choice(40, size=25, replace=False))
        one.add(xp, xo, picks)
        two.add_rows(xp, two.original_rows(xo, picks), picks)
    one.fold(), two.fold()
    np.testing.assert_array_equal(one.gpp, two.gpp)
    np.testing.assert_array_equal(one.target_gop(target), two.target_gop(target))
    assert one.rows == two.rows > 0


def test_refit_weights_of_a_lazy_model_stay_in_a_file_with_the_same_values(lazy_mlp):
    pruned, res = prune_structured(lazy_mlp, StructuredOptions(0.3))
    spilled = io.spill_weights(pruned)
    assert any(map(is_lazy, spilled.graph.initializer))
    held, rec_h = recover_structured(lazy_mlp, pruned, res.plan, _x(), ONE_WAVE)
    lazy, rec_l = recover_structured(lazy_mlp, spilled, res.plan, _x(), ONE_WAVE)
    assert rec_l.layers and [x["err_after"] for x in rec_l.layers] == [
        x["err_after"] for x in rec_h.layers
    ]
    big = [t for t in lazy.graph.initializer if tensor_nbytes(t) >= LAZY_MIN_BYTES]
    assert big and all(map(is_lazy, big))  # refit weights went back to the spill file
    values = {t.name: tensor_array(t) for t in held.graph.initializer}
    for t in lazy.graph.initializer:
        np.testing.assert_array_equal(tensor_array(t), values[t.name])


def test_many_small_waves_refit_the_same_layers_as_one(lazy_mlp):
    pruned, res = prune_structured(lazy_mlp, StructuredOptions(0.3))
    spilled = io.spill_weights(pruned)
    _, one = recover_structured(lazy_mlp, spilled, res.plan, _x(), ONE_WAVE)
    tight = RecoveryOptions(waves=1, pass_budget_s=None, max_rows=256, gram_budget_bytes=1)
    out, many = recover_structured(lazy_mlp, spilled, res.plan, _x(), tight)
    assert one.waves == 1 and many.waves == len(many.layers) == len(one.layers) > 1
    assert [x["layer"] for x in many.layers] == [x["layer"] for x in one.layers]
    assert many.to_dict()["mean_err_after"] <= many.to_dict()["mean_err_before"]
    big = [t for t in out.graph.initializer if tensor_nbytes(t) >= LAZY_MIN_BYTES]
    assert big and all(map(is_lazy, big))  # spilled again after every wave


def test_the_gram_budget_is_sized_from_a_lazy_models_weights(lazy_mlp, monkeypatch):
    weights = sum(tensor_nbytes(t) for t in lazy_mlp.graph.initializer)
    assert gram_budget(lazy_mlp, None) == 64 << 20  # a tiny model: the floor
    monkeypatch.setattr(waves, "LAZY_GRAM_SHARE", 1000.0)  # as if its weights were 1000x
    assert gram_budget(lazy_mlp, None) == int(weights * 1000.0) > 64 << 20
    assert gram_budget(gemm_mlp(), None) == GRAM_BUDGET_BYTES  # read whole: the fixed budget
    assert gram_budget(lazy_mlp, 12345) == 12345

