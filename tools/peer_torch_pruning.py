"""Torch-Pruning (the peer) on a torchvision model, exported to ONNX: the subprocess half of
tools/bench_targets_peers.py. Runs under the torch venv, never in onnxprune's own:

    /tmp/torchvenv/bin/python tools/peer_torch_pruning.py MODEL RATIOS OUTDIR [--round-to 16]

RATIOS is a comma-separated list (one torch import for many exports); each lands in
OUTDIR/MODEL_tp{round_to or 'def'}_{ratio:.4f}.onnx.

MODEL is a torchvision constructor name (resnet50, mobilenet_v2, convnext_tiny), built with
``weights=None`` (random weights: latency and kept counts do not depend on the values). The
pruning is Torch-Pruning's usual call (/work/shared/PEERS.md): magnitude L1 importance, local
(per-layer) ratio, the 1000-way classifier ignored, ``round_to`` None (its default) or 16;
then the TorchScript exporter at opset 17, as the zoo was made. Prints one JSON line with the
parameter counts before and after, per ratio (counted by torch, for a cross-check of the ONNX counts).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch_compat import import_torchvision, setup_torch


def prune(name: str, ratio: float, round_to: int | None) -> tuple[torch.nn.Module, int, int]:
    """Build ``name`` with random weights and prune it with Torch-Pruning at ``ratio``."""
    import torch_pruning as tp

    tv = import_torchvision()
    model = getattr(tv.models, name)(weights=None).eval()
    before = sum(p.numel() for p in model.parameters())
    if ratio > 0:
        ignored = [
            m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000
        ]
        pruner = tp.pruner.MetaPruner(
            model,
            torch.randn(1, 3, 224, 224),
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=ignored,
            global_pruning=False,
            round_to=round_to,
        )
        pruner.step()
    after = sum(p.numel() for p in model.parameters())
    return model.eval(), before, after


def out_name(model: str, round_to: int | None, ratio: float) -> str:
    """File name of one export (bench_targets_peers.py computes the same)."""
    return f"{model}_tp{round_to or 'def'}_{ratio:.4f}.onnx"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("ratios", type=lambda s: [float(r) for r in s.split(",")])
    ap.add_argument("outdir")
    ap.add_argument("--round-to", type=int, default=None)
    args = ap.parse_args()
    for ratio in args.ratios:
        setup_torch(0, threads=1)
        model, before, after = prune(args.model, ratio, args.round_to)
        out = Path(args.outdir) / out_name(args.model, args.round_to, ratio)
        x = torch.randn(1, 3, 224, 224)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"])  # fmt: skip
        print(json.dumps({"ratio": ratio, "params_before": before, "params_after": after,
                          "out": str(out)}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
