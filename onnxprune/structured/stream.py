"""The residual stream as its own kind of channel (``--hidden R``): approximate, opt-in.

A transformer's or ConvNeXt's residual stream is normalized over its channels (LayerNorm,
RMSNorm) before every block, so removing a stream channel changes what every other channel
normalizes to: no cut of it can be exact, and the exact analysis blocks it. With ``--hidden``
the analysis (``analyze(..., hidden=True)``) lets each such normalization join the stream
instead: embeddings or stem, every projection into and out of the stream, the residual Adds,
the norms' scale and bias, positional tables and layer-scale constants become one group
(``Group.stream`` names its norms), scored like any group by all the weights touching each
channel. This module decides how many of its channels stay (``R`` of them go, rounded like
other groups) and describes the result for the report, which lists it apart from the exact
cuts: after the rewrite each norm computes its statistics over the kept channels only, which
is what ``onnxprune.testing.stream_oracle`` checks and what recovery (``--calib``) repairs.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnxprune.structured.groups import Group
from onnxprune.structured.plan import GroupPlan, Plan, round_keep_nearest

APPROXIMATE = "approximate (normalization statistics over kept channels)"
"""How the report qualifies hidden-stream pruning: it is never exact."""


def stream_groups(groups: Sequence[Group]) -> list[Group]:
    """The prunable hidden-stream groups (blocked ones keep every channel)."""
    return [g for g in groups if g.stream and g.blocked_reason is None]


def stream_keep(groups: Sequence[Group], hidden: float, round_to: int) -> dict[str, int]:
    """Kept slots per hidden-stream group (``make_plan``'s ``keep``): ``hidden`` of the slots
    go, rounded to the *nearest* multiple of ``round_to`` channels, where other groups round
    up. A model has one stream group per stage, each in every layer of it, so rounding up
    biases the whole cut: Swin-T and ConvNeXt-T at ``--hidden 0.3`` kept 1040 of 1440 stream
    channels (96->80, 192->144) and 0.556x / 0.529x of the MACs; nearest keeps 1008 (the
    ratio asked: 96->64, 192->128) and 0.522x / 0.496x, and runs faster (README, "Coverage")."""
    out: dict[str, int] = {}
    for g in stream_groups(groups):
        asked = max(1, g.slots - int(hidden * g.slots + 1e-9))
        out[g.id] = round_keep_nearest(asked, g.slots, g.width, round_to)
    return out


def stream_summary(plan: Plan, groups: Sequence[Group], hidden: float) -> dict:
    """The report's ``hidden`` section: the ratio, the word *approximate*, and per stream
    group its channels before and after and the normalizations now over kept channels."""
    norms = {g.id: list(g.stream) for g in stream_groups(groups)}
    rows: list[dict] = []
    by_id: dict[str, GroupPlan] = {g.id: g for g in plan.groups}
    for gid, where in norms.items():
        gp = by_id.get(gid)
        if gp is None:
            continue
        rows.append(
            {
                "id": gid,
                "channels_before": gp.channels_before,
                "channels_after": gp.channels_after,
                "norms": where,
            }
        )
    return {"ratio": float(hidden), "exact": False, "note": APPROXIMATE, "groups": rows}


def stream_lines(section: dict) -> list[str]:
    """The text report's lines for the ``hidden`` section (empty when there is none)."""
    if not section:
        return []
    rows = section.get("groups", [])
    before = sum(r["channels_before"] for r in rows)
    after = sum(r["channels_after"] for r in rows)
    head = f"hidden stream: {section.get('note', APPROXIMATE)}"
    if not rows:
        return [head, "  no stream was cut: none is normalized over its channels, or each is "
                      "kept whole for a reason listed under the groups left alone"]
    lines = [head, f"  --hidden {section['ratio']:g}: {before} -> {after} stream channels in "
                   f"{len(rows)} stream(s)"]  # fmt: skip
    for r in rows:
        lines.append(
            f"  {r['id']}: {r['channels_before']} -> {r['channels_after']} "
            f"({len(r['norms'])} norms over kept channels)"
        )
    return lines
