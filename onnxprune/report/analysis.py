"""The ``onnxprune analyze`` table: per prunable group, what it costs and what cutting it costs.

Reads the analysis as its JSON dict (``targets.sensitivity.Analysis.to_dict``), so a saved
``--json`` file renders the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

from onnxprune.report.text import human_count, table

__all__ = ["render_analysis"]

_NODE_WIDTH = 48


def _nodes(nodes: list[str]) -> str:
    first = nodes[0] if nodes else "?"
    if len(first) > _NODE_WIDTH:
        first = "..." + first[-(_NODE_WIDTH - 3) :]
    return first + (f" (+{len(nodes) - 1})" if len(nodes) > 1 else "")


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}"


def _loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _timings(d: Mapping) -> list[str]:
    t = d.get("timings_s") or {}
    if not t or d.get("cached"):
        return []
    shown = ", ".join(f"{k} {v:.1f} s" for k, v in t.items())
    return [f"  time: {shown} ({d.get('candidates', 0)} masked candidates)"]


def render_analysis(d: Mapping, max_rows: int | None = None) -> str:
    """The header facts, one row per group (loss = 1 - cosine at each fraction removed),
    the totals, and the blocked groups' count."""
    keys = [repr(float(f)) for f in d.get("fractions", [])]
    header = ["group", "nodes", "slots", "MACs %", "params %", "latency %"]
    header += [f"loss@{k}" for k in keys]
    rows = []
    groups = list(d.get("groups", []))
    for g in groups[: max_rows or len(groups)]:
        loss = g.get("loss", {})
        rows.append(
            [g["id"] if len(g["id"]) <= _NODE_WIDTH else "..." + g["id"][-(_NODE_WIDTH - 3) :],
             _nodes(g.get("nodes", [])), str(g["slots"]), _pct(g["macs_share"]),
             _pct(g["params_share"]), _pct(g["latency_share"])]
            + [_loss(loss.get(k)) for k in keys]
        )  # fmt: skip
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in d.get("input_shapes", {}).items())
    lines = [
        f"analysis of {d.get('model', '?')}"
        + (" (from the cache)" if d.get("cached") else f" in {d.get('seconds', 0.0):.1f} s"),
        f"  provider {d.get('provider')}, threads {d.get('threads') or 'default'}, "
        f"inputs {shapes or '?'}; criterion {d.get('criterion')}; "
        f"{d.get('samples')} {d.get('data')} sample(s)",
        f"  totals: {human_count(d.get('macs_total', 0.0))} MACs, "
        f"{human_count(d.get('params_total', 0.0))} params, "
        f"{d.get('latency_total_ms', 0.0):.2f} ms in kernels "
        f"({d.get('run_ms', 0.0):.2f} ms per run)",
        *_timings(d),
        "",
    ]
    if rows:
        lines.append(table(rows, header))
    else:
        lines.append("no prunable group")
    if max_rows and len(groups) > max_rows:
        lines.append(f"... and {len(groups) - max_rows} more groups (see --json)")
    sums = [
        sum(float(g[k]) for g in groups) for k in ("macs_share", "params_share", "latency_share")
    ]
    lines.append(
        f"prunable groups hold {_pct(sums[0])}% of MACs, {_pct(sums[1])}% of params, "
        f"{_pct(sums[2])}% of measured latency (each node's cost split among the groups "
        "it touches); loss = 1 - output cosine with that fraction of the group's "
        "lowest-scoring channels removed"
    )
    blocked = d.get("blocked", [])
    if blocked:
        lines.append(f"{len(blocked)} group(s) left intact (blocked or excluded; see --json)")
    lines.extend(f"note: {n}" for n in d.get("notes", []))
    return "\n".join(lines)
