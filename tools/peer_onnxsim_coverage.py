"""The coverage table's families pruned by onnxsim 0.8.1's ONNX-native pruning functions.

    python3 -m venv /tmp/simvenv && /tmp/simvenv/bin/pip install onnxsim==0.8.1 onnxruntime
    python tools/peer_onnxsim_coverage.py [--sim-python /tmp/simvenv/bin/python] [--out DIR]

For each model the peer runs in its own venv (``--worker``: ``apply_structured_pruning(model,
sparsity=0.3)``, then ``apply_attention_head_pruning(..., sparsity=0.25)`` for attention
models, as the coverage rows ask of onnxprune); this side then says whether onnxruntime runs
the result (and ``onnx.checker`` passes) with the original's output shapes, and its MACs after / before counted as onnxprune
counts them (at the sizes the CLI resolves). Nothing is timed. The models are the ones
``tools/coverage_table.py`` names (random weights, made by the tools it lists).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

MODELS = [
    ("quantized QDQ", "/work/zoo2/quant/resnet50_qdq.onnx", False),
    ("quantized QOperator", "/work/zoo2/quant/resnet50_qop.onnx", False),
    ("weight-only 4-bit MatMulNBits", "/work/zoo2/quant/bert_tiny_nbits.onnx", True),
    ("packed-QKV ViT-B/16", "/work/main/zoo/vit_b_16.onnx", True),
    ("Swin-T", "/work/zoo2/attn/swin_t.onnx", True),
    ("fused-attention MiniLM", "/work/zoo2/attn/minilm_fused.onnx", True),
    ("ConvNeXt-T", "/work/main/zoo/convnext_tiny.onnx", False),
    ("LSTM", "/work/zoo2/rnn/speech_lstm.onnx", False),
    ("GRU", "/work/zoo2/rnn/speech_gru.onnx", False),
    ("If (branch weights inside)", "/work/zoo2/rnn/speech_if_inner.onnx", False),
    ("Loop", "/work/zoo2/rnn/speech_loop.onnx", False),
]


def worker(src: str, dst: str, heads: bool) -> None:
    import onnx
    import onnxsim

    model = onnxsim.apply_structured_pruning(onnx.load(src), sparsity=0.3)
    if heads:
        model = onnxsim.apply_attention_head_pruning(model, sparsity=0.25)
    onnx.save(model, dst, save_as_external_data=model.ByteSize() > 1_900_000_000)


def check(src: Path, dst: Path) -> tuple[str, str]:
    """(valid in onnxruntime, MACs after / before) of the peer's output."""
    import onnx
    import onnxruntime as ort

    from onnxprune.graph import modelfile as io
    from onnxprune.metrics.macs import count_macs
    from onnxprune.runtime.shapes import random_validation_inputs, resolve_shapes

    orig = io.load_model(src).model
    pruned = onnx.load(str(dst))
    shapes = resolve_shapes(orig, (), None).shapes
    macs = count_macs(pruned, shapes)[0] / count_macs(orig, shapes)[0]
    try:
        onnx.checker.check_model(str(dst), full_check=True)
        sess = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        feed = random_validation_inputs(orig, resolve_shapes(orig, (), None), 1, 0)
        names = {i.name for i in sess.get_inputs()}
        first = {k: (v if v.ndim == 0 else v[:1]) for k, v in feed.items() if k in names}
        got = sess.run(None, first)
        want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, first)
        same = [a.shape for a in got] == [w.shape for w in want]
        valid = "yes" if same else "runs, but its outputs changed shape"
    except Exception as exc:  # the row reports what failed
        valid = f"no: {str(exc).splitlines()[0][:140]}"
    return valid, f"{macs:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sim-python", default="/tmp/simvenv/bin/python")
    ap.add_argument("--out", type=Path, default=Path("/tmp/onnxsim-coverage"))
    ap.add_argument("--worker", nargs=3, metavar=("SRC", "DST", "HEADS"))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2] == "1")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    print("| family | onnxsim 0.8.1 result | MACs after/before | valid in ORT |")
    print("| --- | --- | --- | --- |")
    for family, path, heads in MODELS:
        src = Path(path)
        if not src.exists():
            print(f"| {family} | model missing: {src} | - | - |")
            continue
        dst = args.out / src.name
        proc = subprocess.run([args.sim_python, __file__, "--worker", str(src), str(dst),
                               "1" if heads else "0"], capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
            print(f"| {family} | failed: {last} | - | - |", flush=True)
            continue
        valid, macs = check(src, dst)
        print(f"| {family} | {'unchanged' if macs == '1.000' else 'pruned'} | {macs} | {valid} |",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
