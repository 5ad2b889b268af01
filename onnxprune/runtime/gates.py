"""Quality gates: refuse a pruned model unless its validation meets the user's thresholds.

``--min-cosine X``, ``--max-drop P`` (accuracy points, before minus after) and
``--max-rel-diff X`` are checked against the figures of one validation, on prune and on
``onnxprune validate``. A gate never passes on a comparison that proves nothing: an
*inconclusive* validation (see ``onnxprune.runtime.compare``) or one where the pruned model
gives NaN/Inf where the original is finite fails every gate given. A failed gate is a
``GateError`` (exit code 3) carrying the report, so the report is still written.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.errors import GateError

__all__ = ["Gates", "check_gates", "gate_message", "raise_if_failed"]


@dataclass(frozen=True)
class Gates:
    """The thresholds asked for (None: that gate is not asked for)."""

    min_cosine: float | None = None
    max_drop: float | None = None
    max_rel_diff: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.min_cosine, self.max_drop, self.max_rel_diff))


def _entry(gate: str, threshold: float, value: float | None, ok: bool) -> dict:
    return {"gate": gate, "threshold": threshold, "value": value, "passed": bool(ok)}


def check_gates(result: dict, gates: Gates) -> list[dict]:
    """One ``{"gate", "threshold", "value", "passed"}`` per gate asked for.

    ``result`` holds the validation's figures (``cosine``, ``rel_diff``, ``accuracy_before``
    and ``accuracy_after`` as fractions, ``verdict``, ``nonfinite_outputs``). When the
    comparison is inconclusive or the pruned model is non-finite, every gate fails whatever
    its value (the entry then also has ``"reason"``).
    """
    entries: list[dict] = []
    if gates.min_cosine is not None:
        v = result.get("cosine")
        entries.append(
            _entry("min_cosine", gates.min_cosine, v, v is not None and v >= gates.min_cosine)
        )
    if gates.max_drop is not None:
        before, after = result.get("accuracy_before"), result.get("accuracy_after")
        drop = None if before is None or after is None else 100.0 * (before - after)
        entries.append(
            _entry("max_drop", gates.max_drop, drop, drop is not None and drop <= gates.max_drop)
        )
    if gates.max_rel_diff is not None:
        v = result.get("rel_diff")
        entries.append(
            _entry("max_rel_diff", gates.max_rel_diff, v, v is not None and v <= gates.max_rel_diff)
        )
    vacuous = _why_vacuous(result)
    if vacuous:
        for e in entries:
            e["passed"] = False
            e["reason"] = vacuous
    return entries


def _why_vacuous(result: dict) -> str | None:
    if result.get("nonfinite_outputs"):
        shown = ", ".join(result["nonfinite_outputs"])
        return f"the pruned model gives NaN or Inf where the original is finite ({shown})"
    if result.get("verdict") == "inconclusive":
        return "inconclusive: " + "; ".join(result.get("inconclusive_reasons") or ["no reason"])
    return None


def gate_message(entries: list[dict]) -> str:
    """``gate --min-cosine 0.99 failed: cosine 0.95 (0.04 short)``, for every failed gate."""
    parts = []
    for e in entries:
        if e["passed"]:
            continue
        flag = "--" + e["gate"].replace("_", "-")
        if "reason" in e:
            parts.append(f"{flag} {e['threshold']:g} failed: {e['reason']}")
            continue
        if e["value"] is None:
            parts.append(f"{flag} {e['threshold']:g} failed: no value to check")
            continue
        gap = abs(e["value"] - e["threshold"])
        what = {"min_cosine": "cosine", "max_drop": "accuracy drop (points)",
                "max_rel_diff": "rel diff"}[e["gate"]]  # fmt: skip
        parts.append(
            f"{flag} {e['threshold']:g} failed: {what} {e['value']:.6g} (off by {gap:.3g})"
        )
    return "quality gate failed: " + "; ".join(parts)


def raise_if_failed(entries: list[dict], report: object, tail: str = "") -> None:
    """``GateError`` (exit 3) carrying ``report`` when any gate failed; ``tail`` ends the
    message (what happened to the output)."""
    if all(e["passed"] for e in entries):
        return
    raise GateError(gate_message(entries) + tail, report=report)
