"""Import helpers shared by the tools/ scripts (torch lives only here, never in onnxprune/).

The registry's torchvision 0.28.0 wheel ships compiled ops built against CUDA that do not load
on the CPU torch wheel; ``import torchvision`` then fails while registering fake kernels for
``torchvision::nms``. The model definitions are plain Python, so we skip the fake-kernel
registration of the absent ops during the import (see /work/shared/TORCH.md).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.library as _L


def import_torchvision():
    """Return the ``torchvision`` module, importable on the CPU-only torch build."""
    _register_fake = _L.register_fake
    _L.register_fake = lambda *a, **k: lambda f: f
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchvision
    finally:
        _L.register_fake = _register_fake
    return torchvision


def setup_torch(seed: int = 0, threads: int | None = None) -> None:
    """Deterministic, quiet torch: fixed seed, deterministic algorithms, bounded threads."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    n = threads or max(1, min(2, os.cpu_count() or 1))
    torch.set_num_threads(n)


def file_size(path: str) -> int:
    """Size of an ONNX file plus its external-data files beside it (``*.data``)."""
    total = os.path.getsize(path)
    for extra in (path + ".data", os.path.splitext(path)[0] + ".data"):
        if os.path.exists(extra):
            total += os.path.getsize(extra)
    return total


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
