"""An on-disk cache of analysis results, so that a second ``analyze`` (or a prune that asks
for the same sensitivities) costs a file read.

An entry is one JSON file named by the sha256 of everything its result depends on: the
model's bytes, the provider, the threads, the input shapes, the criterion, the fractions and
the data (``key``). It lives in ``$XDG_CACHE_HOME/onnxprune`` (``~/.cache/onnxprune``
without it). Entries are written atomically (a temporary file, then a rename), and an entry
that cannot be read or parsed is treated as absent: a cache never fails a run. A cache that
cannot be written (a read-only home) is skipped the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["FORMAT", "cache_dir", "data_digest", "key", "load", "store"]

FORMAT = 1
"""Bumped when what an entry holds changes, so old entries stop matching."""


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/onnxprune``, else ``~/.cache/onnxprune``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnxprune"


def data_digest(inputs: Mapping[str, np.ndarray]) -> str:
    """sha256 of the inputs' names, dtypes, shapes and bytes (calibration or random)."""
    h = hashlib.sha256()
    for name in sorted(inputs):
        arr = np.ascontiguousarray(inputs[name])
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def key(model_digest: str, **parts: object) -> str:
    """The entry's name: sha256 of the model's digest and the other parts, in a fixed order."""
    text = json.dumps({"format": FORMAT, "model": model_digest, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _path(entry: str, folder: Path | None) -> Path:
    return (folder or cache_dir()) / f"analyze-{entry}.json"


def load(entry: str, folder: Path | None = None) -> dict | None:
    """The cached result, or None when absent, unreadable or not a JSON object."""
    try:
        with open(_path(entry, folder), encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def store(entry: str, value: Mapping, folder: Path | None = None) -> bool:
    """Write ``value`` atomically; False (and nothing left behind) when the disk refuses."""
    path = _path(entry, folder)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".analyze-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False
