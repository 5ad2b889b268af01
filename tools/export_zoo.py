"""Export a zoo of CNNs with random weights to ONNX (tools/ only; needs the CPU torch wheel).

    python tools/export_zoo.py [--out zoo] [--only resnet18,unet] [--bn] [--external]

Every model: eval mode, batch 1, random weights from a fixed per-model seed, opset 17, the
TorchScript exporter (``dynamo=False``), input ``input``, output ``output`` (the YOLO detector
has three: ``output_s8``, ``output_s16``, ``output_s32``). BatchNorm running statistics are
first re-estimated on random inputs (a few train-mode forward passes), so the eval-mode model is
well scaled and its BatchNorm parameters are not the trivial identity of a fresh init; gammas and
betas get a small seeded perturbation for the same reason.

Default: BatchNorm folded into the convolutions (``<name>.onnx``). ``--bn`` keeps the
BatchNormalization nodes (``training=PRESERVE, do_constant_folding=False``) and writes
``<name>_bn.onnx``. ``--external`` writes ``resnet50_ext.onnx`` with the dynamo exporter (opset 18: its
down-conversion to 17 fails), weights in the external file ``resnet50_ext.onnx.data``.

At the end every exported file is run in onnxruntime (CPU) on the export input and compared to
the torch output; the script exits 1 when any model fails that check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch_compat import file_size, human, import_torchvision, setup_torch
from zoo_models import UNet, YoloV8

SEED = 0
OPSET = 17
# max |ort - torch| / max(1, max |torch|): float32 kernels differ in summation order only.
REL_TOL = 1e-3


@dataclass
class Spec:
    name: str
    build: Callable[[], nn.Module]
    shape: tuple[int, ...]
    outputs: tuple[str, ...] = ("output",)


def _tv(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        tv = import_torchvision()
        return getattr(tv.models, name)(weights=None, **kwargs)

    return build


IMG = (1, 3, 224, 224)
SPECS: list[Spec] = [
    Spec("resnet50", _tv("resnet50"), IMG),  # first: other work waits on it
    Spec("resnet18", _tv("resnet18"), IMG),
    Spec("resnext50_32x4d", _tv("resnext50_32x4d"), IMG),
    Spec("mobilenet_v2", _tv("mobilenet_v2"), IMG),
    Spec("mobilenet_v3_large", _tv("mobilenet_v3_large"), IMG),
    Spec("efficientnet_b0", _tv("efficientnet_b0"), IMG),
    Spec("regnet_y_400mf", _tv("regnet_y_400mf"), IMG),
    Spec("mnasnet1_0", _tv("mnasnet1_0"), IMG),
    Spec("densenet121", _tv("densenet121"), IMG),
    Spec("googlenet", _tv("googlenet", aux_logits=False, init_weights=True), IMG),
    Spec("squeezenet1_1", _tv("squeezenet1_1"), IMG),
    Spec("shufflenet_v2_x1_0", _tv("shufflenet_v2_x1_0"), IMG),
    Spec("vgg11_bn", _tv("vgg11_bn"), IMG),
    Spec("alexnet", _tv("alexnet"), IMG),
    Spec("convnext_tiny", _tv("convnext_tiny"), IMG),
    Spec("unet", UNet, (1, 3, 128, 128)),
    Spec("yolov8", YoloV8, (1, 3, 256, 256), ("output_s8", "output_s16", "output_s32")),
]
BY_NAME = {s.name: s for s in SPECS}


def _seed_for(name: str) -> int:
    return SEED + sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 100_003


@torch.no_grad()
def calibrate_bn(model: nn.Module, shape: tuple[int, ...], gen: torch.Generator) -> None:
    """Re-estimate BatchNorm running stats on random inputs; perturb gammas and betas."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
        bn.weight.mul_(0.75 + 0.5 * torch.rand(bn.weight.shape, generator=gen))
        bn.bias.add_(0.1 * torch.randn(bn.bias.shape, generator=gen))
    model.train()
    for _ in range(2):
        model(torch.randn((4, *shape[1:]), generator=gen))
    model.eval()


def build_model(spec: Spec) -> tuple[nn.Module, torch.Tensor]:
    seed = _seed_for(spec.name)
    torch.manual_seed(seed)
    model = spec.build()
    gen = torch.Generator().manual_seed(seed)
    calibrate_bn(model, spec.shape, gen)
    model.eval()
    x = torch.randn(spec.shape, generator=gen)
    return model, x


def _as_list(y) -> list[np.ndarray]:
    ys = y if isinstance(y, (tuple, list)) else (y,)
    return [t.detach().numpy() for t in ys]


def export_one(spec: Spec, out_dir: str, bn: bool) -> tuple[str, list[np.ndarray], np.ndarray]:
    model, x = build_model(spec)
    with torch.no_grad():
        ref = _as_list(model(x))
    path = os.path.join(out_dir, f"{spec.name}{'_bn' if bn else ''}.onnx")
    tmp = path + ".tmp"
    kwargs = {}
    if bn:
        kwargs = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            tmp,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=list(spec.outputs),
            **kwargs,
        )
    os.replace(tmp, path)
    return path, ref, x.numpy()


def export_external(out_dir: str) -> tuple[str, list[np.ndarray], np.ndarray]:
    spec = BY_NAME["resnet50"]
    model, x = build_model(spec)
    with torch.no_grad():
        ref = _as_list(model(x))
    path = os.path.join(out_dir, "resnet50_ext.onnx")
    for stale in (path, path + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            path,
            dynamo=True,
            external_data=True,
            # The dynamo exporter builds opset 18; converting resnet50 down to 17 fails in
            # onnx's version converter (ReduceMean axes input -> attribute), so keep 18.
            opset_version=18,
            input_names=["input"],
            output_names=["output"],
            verbose=False,
        )
    return path, ref, x.numpy()


def check_ort(path: str, x: np.ndarray, ref: list[np.ndarray]) -> tuple[bool, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    if len(outs) != len(ref):
        return False, float("inf")
    worst_rel, worst_abs = 0.0, 0.0
    for o, r in zip(outs, ref, strict=True):
        if o.shape != r.shape:
            return False, float("inf")
        d = float(np.max(np.abs(o - r)))
        worst_abs = max(worst_abs, d)
        worst_rel = max(worst_rel, d / max(1.0, float(np.max(np.abs(r)))))
    return worst_rel <= REL_TOL and np.all(np.isfinite(outs[0])), worst_abs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="zoo", help="output folder (default: zoo)")
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--bn", action="store_true", help="keep BatchNormalization nodes (<name>_bn)")
    ap.add_argument(
        "--external",
        action="store_true",
        help="write resnet50_ext.onnx (+ .data) with dynamo=True (alone: only that model)",
    )
    ap.add_argument("--list", action="store_true", help="list model names and exit")
    args = ap.parse_args(argv)

    if args.list:
        print("\n".join(BY_NAME))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown model(s): {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    specs = [BY_NAME[n] for n in names] if names else list(SPECS)
    if args.external and not names:
        specs = []  # --external alone exports only resnet50_ext

    setup_torch(SEED)
    os.makedirs(args.out, exist_ok=True)
    done: list[tuple[str, np.ndarray, list[np.ndarray]]] = []
    t_all = time.perf_counter()
    for spec in specs:
        t0 = time.perf_counter()
        path, ref, x = export_one(spec, args.out, args.bn)
        dt = time.perf_counter() - t0
        print(f"{path}  {human(file_size(path))}  {dt:.1f}s", flush=True)
        done.append((path, x, ref))
    if args.external:
        t0 = time.perf_counter()
        path, ref, x = export_external(args.out)
        dt = time.perf_counter() - t0
        print(f"{path}  {human(file_size(path))} (with .data)  {dt:.1f}s", flush=True)
        done.append((path, x, ref))

    print("onnxruntime check (CPU, vs torch):")
    failed = []
    for path, x, ref in done:
        try:
            ok, diff = check_ort(path, x, ref)
        except Exception as exc:  # report and continue with the others
            ok, diff = False, float("nan")
            print(f"  {path}: onnxruntime error: {exc}")
        print(f"  {'ok  ' if ok else 'FAIL'} {path}  max abs diff {diff:.3g}")
        if not ok:
            failed.append(path)
    print(f"{len(done) - len(failed)}/{len(done)} ok, total {time.perf_counter() - t_all:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
