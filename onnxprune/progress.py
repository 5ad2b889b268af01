"""One way to show progress: on stderr, only on a terminal, only for work that lasts.

Deployment scripts capture output; a bar there is noise. A person at a terminal waiting
more than a second wants to see movement. tqdm's ``disable=None`` hides bars when stderr is
not a TTY, and ``delay`` keeps sub-second steps silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
) -> tqdm:
    """A tqdm bar that appears after 1 s, on a terminal only, and vanishes when done."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=None if enabled else True,
        delay=1.0,
        leave=False,
        dynamic_ncols=True,
    )
