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


class Counter:
    """A progress callback that can learn its total: ``counter(n)`` counts ``n`` more steps
    done, ``counter.expect(total)`` sets how many there are, from when on the bar shows the
    time left (tqdm's ``<remaining``). Work that only learns its size once it has started
    (recovery's layers, calibration's passes) calls ``expect`` through ``expect_total``, so a
    plain callable (or None) still works as a progress argument.
    """

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, n: int = 1) -> None:
        self.bar.update(n)

    def expect(self, total: int) -> None:
        self.bar.total = total
        refresh = getattr(self.bar, "refresh", None)
        if refresh is not None:
            refresh()

    def close(self) -> None:
        self.bar.close()


def expect_total(progress: Any, total: int) -> None:
    """Tell a progress callback how many steps to expect (ignored by one that cannot hear it)."""
    expect = getattr(progress, "expect", None)
    if expect is not None:
        expect(total)


def counter(
    desc: str, unit: str, *, enabled: bool = True, total: int | None = None
) -> Counter | None:
    """A ``Counter`` on a new bar, or None when progress is off."""
    if not enabled:
        return None
    return Counter(progress_bar(total=total, desc=desc, unit=unit))


def bytes_bar(desc: str, total: int, *, enabled: bool = True) -> tqdm:
    """A bar counting bytes (shown as kB, MB, GB) with the time left: loading and saving
    the weights of a large model."""
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None if enabled else True,
        delay=1.0,
        leave=False,
        dynamic_ncols=True,
    )
