"""Image preprocessing specs: ``--calib-preprocess imagenet`` or ``scale=1/255,mean=...,std=...``.

A malformed spec is a ``UsageError`` (the command line is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from onnxprune.errors import UsageError

__all__ = ["PRESETS", "Preprocess", "parse_preprocess"]

_IMAGENET = "scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225"
#: Named preprocessing specs; ``none`` and ``raw`` keep pixel values 0..255.
PRESETS = {"imagenet": _IMAGENET, "none": "", "raw": ""}


@dataclass(frozen=True)
class Preprocess:
    """``(pixel * scale - mean) / std`` per channel; ``mean``/``std`` hold 1 or C values.

    ``scale`` comes first because the usual mean and std (ImageNet's) are given for pixels
    in [0, 1], not [0, 255].
    """

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    spec: str = "none"

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and set(self.mean) == {0.0} and set(self.std) == {1.0}

    def check(self, channels: int) -> None:
        """Refuse a mean or std whose length fits neither one value nor ``channels``."""
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise UsageError(
                    f"--calib-preprocess {self.spec!r}: {key} has {len(values)} values but the "
                    f"model takes {channels}-channel images: give 1 or {channels}"
                )

    def apply(self, pixels: np.ndarray, channel_axis: int) -> np.ndarray:
        """Normalize float ``pixels`` whose channels lie along ``channel_axis``."""
        self.check(pixels.shape[channel_axis])
        shape = [1] * pixels.ndim
        shape[channel_axis] = -1
        out = pixels * np.float32(self.scale)
        out -= np.asarray(self.mean, np.float32).reshape(shape if len(self.mean) > 1 else [1])
        out /= np.asarray(self.std, np.float32).reshape(shape if len(self.std) > 1 else [1])
        return out


def _number(text: str, key: str, spec: str) -> float:
    try:
        value = float(Fraction(text.strip()))  # "1/255" as well as "0.5" and "2e-3"
    except (ValueError, ZeroDivisionError, OverflowError):
        raise UsageError(
            f"--calib-preprocess {spec!r}: {key} value {text.strip()!r} is not a number"
        ) from None
    return value


def parse_preprocess(spec: str) -> Preprocess:
    """Parse ``"scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225"`` or a preset.

    Presets: ``imagenet`` (that spec), ``none`` and ``raw`` (pixels stay 0..255). Values
    after ``mean=``/``std=`` run up to the next ``key=``; any key may be left out.
    """
    text = str(spec).strip()
    preset = PRESETS.get(text.lower())
    if preset is not None:
        return _parse_fields(preset, shown=text.lower())
    if not text:
        raise UsageError(
            "--calib-preprocess is empty: give a preset (imagenet, none, raw) or a spec "
            "such as scale=1/255,mean=0.5,std=0.5"
        )
    return _parse_fields(text, shown=text)


def _parse_fields(text: str, shown: str) -> Preprocess:
    fields: dict[str, list[float]] = {}
    key = None
    for token in text.split(",") if text else []:
        if "=" in token:
            key, _, token = token.partition("=")
            key = key.strip().lower()
            if key not in ("scale", "mean", "std"):
                raise UsageError(
                    f"--calib-preprocess {shown!r}: unknown key {key!r} "
                    "(keys: scale, mean, std; presets: imagenet, none, raw)"
                )
            if key in fields:
                raise UsageError(f"--calib-preprocess {shown!r}: {key} is given twice")
            fields[key] = []
        elif key is None:
            raise UsageError(
                f"--calib-preprocess {shown!r}: expected key=value (scale, mean, std) or a "
                "preset (imagenet, none, raw)"
            )
        fields[key].append(_number(token, key, shown))
    if len(fields.get("scale", [1.0])) != 1:
        raise UsageError(f"--calib-preprocess {shown!r}: scale takes one value")
    std = tuple(fields.get("std", [1.0]))
    if any(s == 0.0 for s in std):
        raise UsageError(f"--calib-preprocess {shown!r}: std cannot be 0")
    return Preprocess(
        scale=fields.get("scale", [1.0])[0],
        mean=tuple(fields.get("mean", [0.0])),
        std=std,
        spec=shown,
    )
