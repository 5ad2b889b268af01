"""The field checks every options object uses: one message shape, one place.

Each returns the normalized value or raises ``UsageError`` with ``<flag> must be <what>, got
<value>``, so ``PruneOptions``, ``ValidateOptions`` and the structured engine's
``StructuredOptions`` read the same for the same bad value.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

from onnxprune.errors import UsageError


def is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_fraction(value: object, flag: str) -> float:
    """A fraction in [0, 1): the ratio options."""
    if not (is_real(value) and 0.0 <= float(value) < 1.0):
        raise UsageError(f"{flag} must be a fraction in [0, 1), got {value!r}")
    return float(value)


def check_open_fraction(value: object, flag: str) -> float:
    """A fraction in (0, 1): ``--max-group-ratio``."""
    if not (is_real(value) and 0.0 < float(value) < 1.0):
        raise UsageError(f"{flag} must be in (0, 1), got {value!r}")
    return float(value)


def check_int(value: object, flag: str, minimum: int | None = None) -> int:
    """A whole number, at least ``minimum`` when given."""
    if not is_int(value) or (minimum is not None and value < minimum):
        what = "a whole number" if minimum is None else f"a whole number >= {minimum}"
        raise UsageError(f"{flag} must be {what}, got {value!r}")
    return int(value)


def check_flag(value: object, flag: str, optional: bool = False) -> bool | None:
    """A switch: True or False (or None, "decide for me", where ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        what = "True, False or None" if optional else "True or False"
        raise UsageError(f"{flag} must be {what}, got {value!r}")
    return value


def check_path(value: object, flag: str) -> str | os.PathLike | None:
    """A file path (str or os.PathLike), or None."""
    if value is not None and not isinstance(value, str | os.PathLike):
        raise UsageError(f"{flag} must be a path, got {value!r}")
    return value


def check_choice(value: object, flag: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_patterns(value: object, flag: str) -> tuple[str, ...]:
    """Glob patterns: a string is one pattern; any other iterable holds strings."""
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise UsageError(f"{flag} must be a list of patterns, got {value!r}") from None
    if not all(isinstance(p, str) for p in items):
        raise UsageError(f"{flag} must be a list of patterns, got {value!r}")
    return items


def parse_nm(spec: str) -> tuple[int, int]:
    """Parse an N:M pattern such as ``2:4`` (keep N of every M consecutive weights)."""
    parts = str(spec).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"malformed N:M pattern {spec!r}: expected two integers like 2:4")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise UsageError(f"malformed N:M pattern {spec!r}: need 0 < N < M (keep N of every M)")
    return n, m


def check_nm(value: object, flag: str = "--nm") -> tuple[int, int]:
    """An N:M pattern, as ``"2:4"`` or ``(2, 4)``, returned as ``(n, m)`` with 0 < n < m."""
    if isinstance(value, str):
        return parse_nm(value)
    if (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(is_int(v) for v in value)
        and 0 < value[0] < value[1]
    ):
        return int(value[0]), int(value[1])
    raise UsageError(f"{flag} must be an N:M pattern such as '2:4' (0 < N < M), got {value!r}")


def check_has_activations(criterion: str, has_data: bool) -> None:
    """A data-aware criterion (activation, apoz, wanda) needs calibration data."""
    from onnxprune.structured.importance import DATA_AWARE

    if criterion in DATA_AWARE and not has_data:
        raise UsageError(f"--criterion {criterion} scores from activations: pass --calib PATH")


def check_kept_fraction(value: object, flag: str) -> float:
    """A fraction of the original to keep, in (0, 1]: the targets."""
    if not (is_real(value) and 0.0 < float(value) <= 1.0):
        raise UsageError(f"{flag} must be a fraction in (0, 1], got {value!r}")
    return float(value)


def check_real(value: object, flag: str, low: float, high: float) -> float:
    """A number in [low, high]: the gate thresholds."""
    if not (is_real(value) and low <= float(value) <= high):
        raise UsageError(f"{flag} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def optional(check, value, *args):
    """``check(value, *args)``, or None for None (an option left unset)."""
    return None if value is None else check(value, *args)
