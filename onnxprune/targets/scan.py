"""Which fractions a quality gate alone tries (``--max-drop P`` / ``--min-cosine X``, no
ratio, no target): a schedule robust to a gate that is not monotone in the fraction.

A bisection assumes that every fraction above the boundary passes and every one below
fails, so one unlucky candidate sends it up for good. A gate scored on a finite validation
set is not like that near its threshold: accuracy moves by one sample at a time, and two
nearby fractions are different models (the allocation places each cut anew, recovery refits
each), so around the boundary passes and failures interleave. On the digits CNN
(``--max-drop 1``, 360 test digits, one digit = 0.28 pt) the targeted family, asked for MAC
fractions 0.32, 0.31, ..., 0.09, passed down to 0.23, failed at 0.22-0.17 and at 0.16-0.145
(98.61-98.89%), passed at 0.167, 0.165, 0.14 and 0.135 (99.17%), and failed from 0.13 down.
The bisection (0.5, 0.25, 0.125, 0.1875, 0.219, 0.234) kept 0.232 and never tried below
0.219; the uniform family's 0.213 won, though the targeted cut had the higher cosine at every
matched MAC level.

So the boundary is treated as a *zone*, searched in four phases (``fraction`` in (0, 1],
smaller prunes more; fraction 1, the original, passes by definition and is not run):

1. **down**: ``START``, ``START*STEP``, ``START*STEP**2``, ... until ``STOP_AFTER``
   candidates in a row fail (one failure between passes is noise, not the boundary), the
   floor, or a candidate that cannot be cut further (``Outcome.final``);
2. **up**, only when nothing passed: bisection of (the highest failure, 1), ``UP_STEPS``
   at most, until one passes;
3. **zone**: below the fewest-MACs pass, ``STOP_AFTER`` coarse steps deep (the failures
   the descent tolerated; after phase 2, only down to the failure below the pass: that
   bisection's failures sit close above one another), ``ZONE_STEPS`` fractions per coarse
   step, tried from the fewest MACs up, until one passes: any fraction above the first pass
   keeps more MACs, so it is not worth a candidate;
4. **refine**: ``REFINE_STEPS`` bisections (geometric) between the fewest-MACs pass and
   the nearest fraction tried below it, while they are more than ``RESOLUTION`` apart.

At most ``MAX_CANDIDATES`` run per family. The schedule is the same for every model and
both families (in the uniform family the fraction is the channels kept, so a coarse step
there removes about half the MACs of a chain of convolutions). On the digits CNN it ran 19
candidates (8 targeted, 11 uniform) where the bisection ran 12: 16 s against 25 s at load
5, each candidate timing 5 latency runs instead of 30 (``search.CANDIDATE_RUNS``); it kept
the targeted cut at 0.135x MACs (99.17%) against the uniform 0.213x. The result is the passing fraction with the
fewest MACs among those tried, whether or not its neighbours passed: what the gate asks is
checked on that very model. The price of looking at more candidates near the boundary on
one validation set is selection: the chosen model is the luckiest near the threshold, and
its margin on fresh data can be smaller (README "Targets" shows the neighbours). A larger
``--val`` set, or a smooth gate (``--min-cosine``), narrows the zone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_CANDIDATES", "Outcome", "Step", "scan_fraction"]

START = 0.5
"""The first fraction tried."""
STEP = 2**-0.5
"""The coarse step down: each candidate keeps 1/sqrt(2) of the last one's fraction."""
STOP_AFTER = 2
"""Consecutive failures that end the descent (and the depth of the zone, in steps)."""
UP_STEPS = 6
"""Bisections towards the original when nothing at or below ``START`` passed (to 1/128)."""
ZONE_STEPS = 4
"""Zone fractions per coarse step (each 2**-1/8 = 0.917 of the one above)."""
REFINE_STEPS = 2
"""Bisections below the fewest-MACs pass after the zone."""
RESOLUTION = 0.02
"""Refinement stops when the best pass and the failure below it are within 2%."""
MAX_CANDIDATES = 16
"""Candidates at most per family (a descent to ``FLOOR`` alone is 12)."""
FLOOR = 0.01
"""The smallest fraction tried."""
_NEAR = 0.01
"""A fraction within 1% of one already tried is not run again."""


@dataclass(frozen=True)
class Outcome:
    """What one candidate's run says: whether it passed the gates, and whether a smaller
    fraction cannot cut more (the allocation is at its floor): the descent stops there."""

    passed: bool
    final: bool = False


@dataclass(frozen=True)
class Step:
    """One candidate of the schedule: the fraction, the phase that asked for it, and its
    outcome."""

    fraction: float
    phase: str
    passed: bool


def scan_fraction(
    run: Callable[[float, str], Outcome], *, max_candidates: int = MAX_CANDIDATES,
    floor: float = FLOOR,
) -> tuple[float | None, list[Step]]:  # fmt: skip
    """The passing fraction with the fewest MACs that the schedule found (None when none
    passed) and the candidates in the order run. ``run(fraction, phase)`` runs one
    candidate; the phases are ``down``, ``up``, ``zone`` and ``refine`` (module docstring)."""
    steps: list[Step] = []

    def tried(f: float) -> bool:
        return any(abs(f / s.fraction - 1.0) < _NEAR for s in steps)

    def go(f: float, phase: str) -> Outcome | None:
        if len(steps) >= max_candidates or tried(f):
            return None
        out = run(f, phase)
        steps.append(Step(f, phase, out.passed))
        return out

    def best() -> float | None:
        return min((s.fraction for s in steps if s.passed), default=None)

    _down(go, floor)
    lower = floor
    if best() is None:
        _up(go, steps)
        if best() is not None:  # the zone stays inside the bracket the bisection left
            lower = max((s.fraction for s in steps if s.fraction < best()), default=floor)
    top = best()
    if top is None:
        return None, steps
    for f in _zone(top, lower):
        out = go(f, "zone")
        if out is not None and out.passed:
            break
    for _ in range(REFINE_STEPS):
        top = best()
        below = max((s.fraction for s in steps if s.fraction < top), default=None)
        if below is None or top / below - 1.0 <= RESOLUTION:
            break
        if go(math.sqrt(top * below), "refine") is None:
            break
    return best(), steps


def _down(go, floor: float) -> None:
    """Phase 1: the coarse descent from ``START``."""
    f, failures = START, 0
    while f >= floor:
        out = go(f, "down")
        if out is None:
            return
        failures = 0 if out.passed else failures + 1
        if failures >= STOP_AFTER or out.final:
            return
        f *= STEP


def _up(go, steps: list[Step]) -> None:
    """Phase 2: nothing passed at or below ``START``: bisect towards the original."""
    lo = max(s.fraction for s in steps) if steps else START
    for _ in range(UP_STEPS):
        f = (lo + 1.0) / 2
        out = go(f, "up")
        if out is None or out.passed:
            return
        lo = f


def _zone(top: float, lower: float) -> list[float]:
    """Phase 3's fractions below the pass ``top`` and not below ``lower``, fewest MACs
    first."""
    ratio = STEP ** (1.0 / ZONE_STEPS)
    out = [top * ratio**j for j in range(1, STOP_AFTER * ZONE_STEPS + 1)]
    return sorted(f for f in out if f >= lower)
