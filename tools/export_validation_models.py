"""Export the two models the validation checks need (tools/ only; needs the CPU torch wheel).

    python tools/export_validation_models.py [--out zoo]

- ``vit_b_16.onnx``: torchvision ViT-B/16 with ``weights=None``. torchvision initializes the
  classifier head to zeros, so every image gets the same logits: the case where a comparison
  of outputs proves nothing and onnxprune must say *inconclusive* rather than "cosine 1".
- ``yolov8_dynamic.onnx``: the zoo's YOLOv8-style detector (BatchNorm statistics
  re-estimated as ``export_zoo.py`` does) exported with symbolic batch, height and width (``[N, 3, H, W]``), as detectors usually are: validation and MACs must
  take the sizes from ``--input-shape`` or a documented default, never 1x1.

Then ``python tools/check_validation.py`` runs onnxprune on them and on the zoo.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
from export_zoo import calibrate_bn
from torch_compat import import_torchvision, setup_torch
from zoo_models import YoloV8


def export_vit(out: str) -> str:
    tv = import_torchvision()
    torch.manual_seed(0)
    model = tv.models.vit_b_16(weights=None).eval()
    path = os.path.join(out, "vit_b_16.onnx")
    x = torch.randn(1, 3, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), path, dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        )  # fmt: skip
    return path


def export_detector(out: str) -> str:
    torch.manual_seed(0)
    model = YoloV8()
    # BatchNorm statistics re-estimated as the zoo does: at its fresh initialization the
    # network's signal dies out and its outputs hardly depend on the image (onnxprune then
    # says the comparison is inconclusive, rightly, but a detector people ship is not that)
    calibrate_bn(model, (1, 3, 256, 256), torch.Generator().manual_seed(0))
    model.eval()
    path = os.path.join(out, "yolov8_dynamic.onnx")
    x = torch.randn(1, 3, 256, 256)
    names = ["output_s8", "output_s16", "output_s32"]
    axes = {"input": {0: "N", 2: "H", 3: "W"}}
    axes.update({n: {0: "N", 2: f"H{n[-2:]}", 3: f"W{n[-2:]}"} for n in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), path, dynamo=False, opset_version=17,
            input_names=["input"], output_names=names, dynamic_axes=axes,
        )  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="zoo")
    parser.add_argument("--only", default=None, help="vit, detector (comma-separated)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    setup_torch()
    only = set(args.only.split(",")) if args.only else {"vit", "detector"}
    for name, fn in (("vit", export_vit), ("detector", export_detector)):
        if name not in only:
            continue
        print("wrote", fn(args.out))


if __name__ == "__main__":
    main()
