"""Memory bounded by the weights (issue 14): lazy weights, streamed saves, weights lent to
the staged output, the two models validated one after the other, peak memory reported."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.graph import external, save
from onnxprune.graph import modelfile as io
from onnxprune.graph.proto import LAZY_MIN_BYTES, is_lazy, lazy_source, tensor_array
from onnxprune.progress import Counter, expect_total
from onnxprune.runtime import validate as v
from onnxprune.runtime.session import open_session
from onnxprune.testing.decoder import write_mlp

WIDTH = 160  # 160 x 160 float32 = 100 KiB: above LAZY_MIN_BYTES, so these weights stay lazy


@pytest.fixture
def mlp(tmp_path, monkeypatch):
    """A small MLP with external data, loaded lazily as a big one would be."""
    monkeypatch.setattr(external, "LAZY_MODEL_MIN_BYTES", 0)
    return write_mlp(tmp_path / "mlp.onnx", width=WIDTH, layers=3)


def test_small_models_are_read_in_whole(tmp_path):
    path = write_mlp(tmp_path / "m.onnx", width=WIDTH, layers=2)
    assert not any(is_lazy(t) for t in io.load_model(path).model.graph.initializer)
    assert all(is_lazy(t) for t in io.load_model(path, lazy=True).model.graph.initializer
               if t.name.endswith("weight"))  # fmt: skip


def _x(n: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((n, WIDTH)).astype(np.float32)}


def test_big_weights_stay_in_their_file_and_read_the_same(mlp):
    loaded = io.load_model(mlp)
    eager = onnx.load(str(mlp))
    values = {t.name: numpy_helper.to_array(t) for t in eager.graph.initializer}
    lazy = [t for t in loaded.model.graph.initializer if is_lazy(t)]
    assert len(lazy) == 3 and all(not t.raw_data for t in lazy)
    for t in loaded.model.graph.initializer:
        assert (4 * np.prod(t.dims) >= LAZY_MIN_BYTES) == is_lazy(t)
        np.testing.assert_array_equal(tensor_array(t), values[t.name])
    assert loaded.model.ByteSize() < 10_000  # the weights are not in the message


def test_a_lazy_array_can_be_changed_without_touching_the_file(mlp):
    loaded = io.load_model(mlp)
    t = next(t for t in loaded.model.graph.initializer if is_lazy(t))
    a = tensor_array(t)
    before = a[0, 0].copy()
    a[0, 0] = 1e6  # copy-on-write map: the model file keeps its bytes
    assert tensor_array(t)[0, 0] == before


def test_a_session_opens_a_model_with_lazy_weights_from_memory(mlp):
    loaded = io.load_model(mlp)
    expected = ort.InferenceSession(str(mlp)).run(None, _x())[0]
    sess = open_session(loaded.model, ["CPUExecutionProvider"], role="model")
    np.testing.assert_allclose(sess.run(None, _x())[0], expected, rtol=1e-4, atol=1e-5)


def test_saving_a_lazy_model_streams_its_weights_into_the_output(mlp, tmp_path):
    loaded = io.load_model(mlp)
    out = tmp_path / "out" / "copy.onnx"
    out.parent.mkdir()
    io.save_model(loaded.model, out, external_data=True)
    written = onnx.load(str(out), load_external_data=False)
    for t in written.graph.initializer:  # plain external data beside the output, no marker
        entries = {e.key: e.value for e in t.external_data}
        assert entries.get("location") in (None, "copy.onnx.data")
        assert "checksum" not in entries
    got = ort.InferenceSession(str(out)).run(None, _x())[0]
    np.testing.assert_allclose(got, ort.InferenceSession(str(mlp)).run(None, _x())[0], rtol=1e-6)


def test_pruning_from_lazy_weights_equals_pruning_in_memory(mlp, tmp_path):
    from_file = onnxprune.prune(mlp, structured=0.3, validate=False, output=tmp_path / "a.onnx")
    in_memory = onnxprune.prune(onnx.load(str(mlp)), structured=0.3, validate=False)
    a = {t.name: tensor_array(t) for t in from_file.model.graph.initializer}
    for t in in_memory.model.graph.initializer:
        np.testing.assert_array_equal(a[t.name], numpy_helper.to_array(t))


def test_lent_weights_follow_the_commit(mlp, tmp_path, monkeypatch):
    monkeypatch.setattr(save, "LEND_MIN_BYTES", 0)
    model = onnxprune.prune(mlp, structured=0.3, validate=False).model
    staged, light = io.stage_lending(model, tmp_path / "p.onnx", True, False)
    assert light is not model and any(is_lazy(t) for t in light.graph.initializer)
    final = staged.commit()
    assert any(is_lazy(t) for t in light.graph.initializer)
    for t in light.graph.initializer:
        if is_lazy(t):
            assert lazy_source(t)[0] == str(final.parent / "p.onnx.data")
            np.testing.assert_array_equal(
                tensor_array(t),
                numpy_helper.to_array(next(m for m in model.graph.initializer if m.name == t.name)),
            )


def test_a_discarded_output_gives_its_weights_back(mlp, tmp_path, monkeypatch):
    monkeypatch.setattr(save, "LEND_MIN_BYTES", 0)
    model = onnxprune.prune(mlp, structured=0.3, validate=False).model
    staged, light = io.stage_lending(model, tmp_path / "p.onnx", True, False)
    staged.discard()
    assert not any(is_lazy(t) for t in light.graph.initializer)
    for t in light.graph.initializer:
        ref = next(m for m in model.graph.initializer if m.name == t.name)
        np.testing.assert_array_equal(numpy_helper.to_array(t), numpy_helper.to_array(ref))


def test_big_models_are_validated_one_after_the_other(mlp, tmp_path, monkeypatch):
    pruned = tmp_path / "p.onnx"
    onnxprune.prune(mlp, structured=0.3, validate=False, output=pruned)
    inputs = _x(8)
    together = v.validate(mlp, pruned, inputs, ["CPUExecutionProvider"], runs=2)
    monkeypatch.setattr(v, "SEQUENTIAL_BYTES", 0)
    apart = v.validate(mlp, pruned, inputs, ["CPUExecutionProvider"], runs=2)
    assert apart.cosine == pytest.approx(together.cosine)
    assert apart.max_abs_diff == pytest.approx(together.max_abs_diff)
    assert any("one after the other" in n for n in apart.notes)
    assert not any("one after the other" in n for n in together.notes)


def test_the_report_says_the_peak_memory(mlp, tmp_path):
    result = onnxprune.prune(mlp, structured=0.3, runs=1, output=tmp_path / "p.onnx")
    path = tmp_path / "r.json"
    result.report.write_json(path)
    memory = json.loads(path.read_text())["memory"]
    assert memory["peak_rss_bytes"] > 10 << 20
    assert memory["weight_bytes"] == result.report.size_bytes_before
    assert set(memory["peak_rss_by_stage"]) <= set(result.report.timings_s)
    assert memory["peak_over_weights"] == pytest.approx(
        memory["peak_rss_bytes"] / memory["weight_bytes"], rel=1e-2
    )


def test_a_counter_learns_its_total():
    class Bar:
        total, n = None, 0

        def update(self, k):
            self.n += k

    bar = Bar()
    c = Counter(bar)
    expect_total(c, 7)
    c(3)
    assert (bar.total, bar.n) == (7, 3)
    expect_total(lambda n: None, 7)  # a plain callable is left alone
    expect_total(None, 7)


def test_recovery_on_spilled_weights_equals_recovery_in_memory(mlp, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((24, WIDTH)).astype(np.float32))
    kw = {"structured": 0.3, "calib": calib, "validate": False}
    lazy = onnxprune.prune(mlp, output=tmp_path / "a.onnx", **kw)
    assert lazy.report.recovery is not None
    eager = onnxprune.prune(onnx.load(str(mlp)), **kw)
    a = {t.name: tensor_array(t) for t in lazy.model.graph.initializer}
    for t in eager.model.graph.initializer:
        np.testing.assert_allclose(a[t.name], tensor_array(t), rtol=1e-5, atol=1e-6)


def test_spilled_weights_read_back_the_same(mlp):
    model = io.load_model(mlp, lazy=False).model
    light = external.spill_weights(model)
    assert light is not model and all(is_lazy(t) for t in light.graph.initializer if t.name.endswith("weight"))
    for t, ref in zip(light.graph.initializer, model.graph.initializer, strict=True):
        np.testing.assert_array_equal(tensor_array(t), numpy_helper.to_array(ref))


def test_a_lazy_weight_holding_nan_is_refused_on_load(mlp):
    from onnxprune.errors import OnnxPruneError

    t = next(t for t in io.load_model(mlp).model.graph.initializer if is_lazy(t))
    path, offset, _ = lazy_source(t)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.float32(np.nan).tobytes())
    with pytest.raises(OnnxPruneError, match="NaN or Inf"):
        io.load_model(mlp)


def test_plan_hash_follows_lazy_weights_not_their_file(mlp, tmp_path):
    """A plan refuses another model by its hash; a lazy weight has no bytes in the message, so
    it is hashed from its file: the same as read in whole, the same when the model is copied
    elsewhere, different when the weights differ (same graph)."""
    import shutil

    from onnxprune.targets.plans import model_hash

    lazy = io.load_model(mlp).model
    assert any(is_lazy(t) for t in lazy.graph.initializer)
    assert model_hash(lazy) == model_hash(io.load_model(mlp, lazy=False).model)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in mlp.parent.iterdir():
        if f.is_file():
            shutil.copy(f, copy / f.name)
    assert model_hash(io.load_model(copy / mlp.name).model) == model_hash(lazy)
    (tmp_path / "other").mkdir()
    other = write_mlp(tmp_path / "other" / "mlp.onnx", width=WIDTH, layers=3, seed=1)
    h_other = model_hash(io.load_model(other).model)
    assert h_other["graph_sha256"] == model_hash(lazy)["graph_sha256"]
    assert h_other["sha256"] != model_hash(lazy)["sha256"]
