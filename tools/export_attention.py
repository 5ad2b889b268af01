"""Export attention models whose heads are packed or windowed (tools/ only; needs the CPU torch).

    python tools/export_attention.py [--out /work/zoo2/attn] [--only vit_mha,swin_tiny,swin_t]

* ``vit_mha.onnx``: torchvision ``VisionTransformer`` at toy size (3x32x32, patch 8, 2 layers,
  hidden 64, 4 heads): ``nn.MultiheadAttention``'s packed in-projection (one MatMul to 3*D,
  Reshape to [S, B, 3, D], Transpose, Gather) exactly as in ``vit_b_16``.
* ``swin_tiny.onnx``: torchvision ``SwinTransformer`` at toy size (3x64x64, patch 4, depths
  (2, 2), dims 32/64, heads (2, 4), window 4): windowed attention, shifted windows with
  masks, relative-position bias gathered from a table per head.
* ``swin_t.onnx``: torchvision ``swin_t`` (3x224x224).
* ``minilm_fused.onnx``: with ``--fused PATH`` (a BERT/MiniLM export), onnxruntime's
  transformer optimizer fuses it into com.microsoft Attention, SkipLayerNormalization, ...

Every model: eval mode, random weights from a fixed seed, opset 17, the TorchScript exporter
(``dynamo=False``), input ``input`` with a dynamic batch ``N``, output ``output``; each file is
checked in onnxruntime against torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import torch
from torch_compat import import_torchvision, setup_torch

OPSET = 17


def _build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    tv = import_torchvision()
    if name == "vit_mha":
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(32, 8, 2, 4, 64, 128, num_classes=10), (1, 3, 32, 32)
    if name == "swin_tiny":
        from torchvision.models.swin_transformer import SwinTransformer

        m = SwinTransformer([4, 4], 32, [2, 2], [2, 4], [4, 4], num_classes=10)
        return m, (1, 3, 64, 64)
    if name == "swin_t":
        return tv.models.swin_t(weights=None), (1, 3, 224, 224)
    raise SystemExit(f"unknown model {name}")


def export(name: str, out: str) -> str:
    torch.manual_seed(sum(map(ord, name)))
    model, shape = _build(name)
    model.eval()
    x = torch.randn(shape)
    path = os.path.join(out, f"{name}.onnx")
    with torch.no_grad():
        ref = model(x).numpy()
    # not under no_grad: nn.MultiheadAttention's fast path does not export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), path, dynamo=False, opset_version=OPSET, input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        )  # fmt: skip
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    diff = float(np.max(np.abs(got - ref)))
    print(f"{path}: onnxruntime vs torch max abs diff {diff:.3g}")
    return path


def fuse(src: str, out: str, heads: int, hidden: int) -> str:
    """onnxruntime's transformer optimizer on a BERT-style export: fused Attention, ..."""
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(src, model_type="bert", num_heads=heads, hidden_size=hidden,
                                   opt_level=0)  # fmt: skip
    path = os.path.join(out, os.path.basename(src).replace(".onnx", "_fused.onnx"))
    opt.save_model_to_file(path)
    print(f"{path}: {opt.get_fused_operator_statistics()}")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="/work/zoo2/attn")
    ap.add_argument("--only", default="vit_mha,swin_tiny,swin_t")
    ap.add_argument("--fused", default="", help="a BERT/MiniLM .onnx to fuse (onnxruntime)")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=384)
    args = ap.parse_args(argv)
    setup_torch(0)
    os.makedirs(args.out, exist_ok=True)
    if args.fused:
        fuse(args.fused, args.out, args.heads, args.hidden)
        return 0
    for name in [n for n in args.only.split(",") if n]:
        export(name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
