"""The terminal table of a ``Report``, read from its typed sections (see README "Report")."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from onnxprune.report.text import gate_row, human_bytes, human_count, ratio, table
from onnxprune.structured.stream import stream_lines

if TYPE_CHECKING:
    from onnxprune.report.results import Report
    from onnxprune.report.sections import Recoveries, UnstructuredSummary
    from onnxprune.structured.engine import StructuredResult


def render_report(r: Report, max_rows: int | None = 25) -> str:
    """The table; ``max_rows`` groups at most (None: all), the rest counted on one line."""
    out: list[str] = []
    if r.input_path:
        out.append(f"model   {r.input_path}")
    if r.output_path:
        out.append(f"output  {r.output_path}")
    out.append("")
    out.append(table(_totals(r), ["", "before", "after", "ratio"]))
    if r.unstructured:
        out += _unstructured(r.unstructured, max_rows)
    if r.structured:
        out += _structured(r.structured, max_rows)
    if r.recovery:
        out += _recovery(r.recovery, max_rows)
    if r.validation:
        out += _validation(r.validation)
    if r.notes:
        out.append("")
        out.extend(f"note: {n}" for n in r.notes)
    return "\n".join(out)


def _row(name: str, before: float, after: float, fmt) -> list[str]:
    return [name, fmt(before), fmt(after), ratio(before, after)]


def _totals(r: Report) -> list[list[str]]:
    rows = [
        _row("parameters", r.params_before, r.params_after, human_count),
        _row("nonzero params", r.nonzero_before, r.nonzero_after, human_count),
        _row("MACs", r.macs_before, r.macs_after, human_count),
        _row("file size", r.size_bytes_before, r.size_bytes_after, human_bytes),
        _row("gzip size", r.gzip_bytes_before, r.gzip_bytes_after, human_bytes),
    ]
    v = r.validation
    if v:
        ms = "{:.3f}".format
        if v.latency_ms_before is not None and v.latency_ms_after is not None:
            rows.append(_row("latency median (ms)", v.latency_ms_before, v.latency_ms_after, ms))
        if v.latency_p90_ms_before is not None and v.latency_p90_ms_after is not None:
            rows.append(
                _row("latency p90 (ms)", v.latency_p90_ms_before, v.latency_p90_ms_after, ms)
            )
        if getattr(v, "latency_p10_ms_before", None) is not None:
            rows.append(
                _row("latency p10 (ms)", v.latency_p10_ms_before, v.latency_p10_ms_after, ms)
            )
    return rows


def latency_line(v) -> str:
    """Speed-up, whether it is significant, and what one timed run was (batch, threads)."""
    speedup = getattr(v, "speedup", None)
    if speedup is None:
        return ""
    significant = getattr(v, "speedup_significant", True)
    verdict = "" if significant else " (not significant: p10-p90 spreads overlap)"
    threads = getattr(v, "threads", 0)
    shown = "onnxruntime's default" if not threads else str(threads)
    batch = getattr(v, "batch", None)
    per = f"per run of batch {batch}" if batch is not None else "per run"
    return f"speed-up {speedup:.2f}x{verdict}; latency {per}, {v.runs} runs, threads {shown}"


def inputs_line(samples, input_shapes: dict, shape_source: dict) -> str:
    """How many samples were compared and at which input shapes (and where they came from)."""
    shapes = ", ".join(
        f"{k}={'x'.join(map(str, d))} ({shape_source.get(k, '?')})" for k, d in input_shapes.items()
    )
    return f"{samples if samples is not None else '-'} samples; inputs {shapes or '-'}"


def _unstructured(u: UnstructuredSummary, max_rows: int | None) -> list[str]:
    r, sel = u.result, u.result.selected
    frac = u.zeroed / sel if sel else 0.0
    out = [
        "",
        f"unstructured ({r.mode} {r.target}, scope {r.scope}): zeroed {human_count(u.zeroed)} "
        f"of {human_count(sel)} selected weights ({frac:.1%}) in {len(u.tensors)} tensors",
    ]
    out += blocked_lines(u.skipped, "tensors left alone")
    return out


def _structured(s: StructuredResult, max_rows: int | None) -> list[str]:
    """Every group accounted for: the first ``max_rows`` (all with None), one line counting
    the rest, and the groups left alone grouped by reason."""
    groups = s.groups
    out = [
        "",
        f"structured ({asked_for(s.ratio, s.target)}, scope {s.scope}, criterion {s.criterion}, "
        f"round-to {s.round_to}): pruned {len(s.changed)} of {len(groups)} groups, "
        f"{len(s.blocked)} left alone",
    ]
    if s.target and s.target.get("metric") in ("speedup", "quality"):  # a search
        out += search_lines(s.target)
    elif s.target:  # --target-macs / --target-params: what was asked and what was reached
        t = s.target
        out.append(f"  target: keep {t['target']:.4g} of the {t['metric']}; reached "
                   f"{t['reached']:.4g} ({t['after']:,} of {t['before']:,}"
                   f"{'' if t['met'] else ', not met: every group at its floor'})")  # fmt: skip
    shown = groups if max_rows is None else groups[:max_rows]
    streams = {r["id"] for r in (s.hidden or {}).get("groups", [])}
    if shown:
        rows = []
        for g in shown:
            label = group_label({"nodes": g.nodes, "members": g.members, "id": g.id})
            if g.heads:
                label += f" (heads {g.heads}->{g.heads_after})"
            if g.id in streams:
                label += " (hidden stream, approximate)"
            scores = f"{g.score_min:.3g}/{g.score_mean:.3g}/{g.score_max:.3g}"
            rows.append([label, str(g.channels_before), str(g.channels_after), scores, g.note])
        header = ["layer (first producer)", "before", "after", "score min/mean/max", "why kept more"]
        out.append(table(rows, header))
        if any(len(g.nodes) > 1 for g in shown):
            out.append(f"  {TIED_LEGEND}")
        rest = groups[len(shown) :]
        if rest:
            cut = sum(1 for g in rest if g.channels_after != g.channels_before)
            out.append(f"  ... and {len(rest)} more groups: {cut} cut, {len(rest) - cut} "
                       "kept whole (--verbose lists every group)")  # fmt: skip
    out += stream_lines(s.hidden or {})
    out += blocked_lines(s.blocked, "groups left alone")
    return out


def asked_for(ratio: float | None, target: dict | None) -> str:
    """What the user asked for: a uniform ratio, or a target (the ratio is then moot)."""
    if not target:
        return f"ratio {ratio}"
    metric = target.get("metric")
    if metric == "speedup":
        return f"target speed-up {target['target']:g}x"
    if metric == "quality":
        return "target: the fewest MACs that pass the gates"
    return f"target {metric} {target['target']:g} of the original"


def search_lines(t: dict) -> list[str]:
    """--target-speedup or a gate alone (``targets.search``): what was asked, what the final
    run measured, and every candidate the search tried with its figures."""
    n = len(t.get("iterations", []))
    if t["metric"] == "speedup":
        got = t.get("reached")
        shown = "-" if got is None else f"{got:.2f}x"
        verdict = "met" if t.get("met") else f"not met: below {1 - t['tolerance']:.2f} x the target"
        timed = (t.get("priced_by") or {}).get("by") == "time"
        at = f"{'time' if timed else 'MAC'} fraction {t['fraction']:.3g}"
        if t.get("allocation") == "uniform":
            at = f"the uniform cut --structured {1 - t['fraction']:.3g}"
        head = (f"  target: speed-up {t['target']:.3g}x measured; the result measured {shown} "
                f"({verdict}) at {at}, {n} candidates:")  # fmt: skip
        if t.get("retimed") is not None:
            again = ", ".join(f"{v:.2f}x" for v in t["retimed"])
            head += (f"\n    (the final run read {t['final_speedup']:.2f}x against the search's "
                     f"{t['search_speedup']:.2f}x; timed again: {again}; the median is shown)")
    else:
        gates = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in t.get("gates", {}).items())
        head = (f"  target: the fewest MACs keeping {gates}: {t.get('allocation')} fraction "
                f"{t['fraction']:.3g} (MACs {t['reached']:.3g}), {n} candidates:")
    out = [head, *compared_lines(t.get("compared"))]
    st = t.get("staircase")
    if st:
        out.append(f"    latency staircase: {st['groups']} groups measured in "
                   f"{st.get('spent_s') or 0:.0f} s, counts kept on their steps" if st.get("used")
                   else f"    latency staircase: off ({st.get('why')})")  # fmt: skip
    by = t.get("priced_by")
    if by and by.get("by") == "time":
        out.append(f"    cuts priced in milliseconds: each node's profiled time ({by['nodes']} "
                   f"nodes, {by['profiled_ms']:.3g} ms a run) times the share of its work kept")
    elif by:
        why = f" ({by['why']})" if by.get("why") else ""
        out.append(f"    cuts priced in MACs{why}")
    if t.get("losses"):
        out.append(f"    losses priced by {t['losses']}")
    for c in t.get("iterations", []):
        speed = "-" if c.get("speedup") is None else f"{c['speedup']:.2f}x"
        cos = "-" if c.get("cosine") is None else f"{c['cosine']:.4f}"
        kind = f"{c['allocation']} " if c.get("allocation") else ""
        line = (f"    {kind}fraction {c['fraction']:.3g}: MACs {c['macs']:.3g}, speed-up {speed}, "
                f"cosine {cos}")  # fmt: skip
        if c.get("accuracy_after") is not None:
            line += f", accuracy {c['accuracy_before']:.2%} -> {c['accuracy_after']:.2%}"
        if "passed" in c:
            line += ", passed" if c["passed"] else ", failed"
        out.append(line + (" (every group at its floor)" if c.get("at_floor") else ""))
    return out


def compared_lines(rows: Sequence[Mapping] | None) -> list[str]:
    """A speed-up search with data: each family's chosen candidate after recovery, and
    which one the run kept (``targets.search``)."""
    if not rows:
        return []
    out = ["    compared after recovery, at the target:"]
    for r in rows:
        if r.get("failed"):
            out.append(f"      {r['allocation']}: not searched ({r['failed']})")
            continue
        cos = "-" if r.get("cosine") is None else f"{r['cosine']:.4f}"
        acc = "" if r.get("accuracy_after") is None else f", accuracy {r['accuracy_after']:.2%}"
        speed = "-" if r.get("search_speedup") is None else f"{r['search_speedup']:.2f}x"
        out.append(f"      {r['allocation']} fraction {r['fraction']:.3g} ({speed}, MACs "
                   f"{r['macs']:.3g}): cosine {cos}{acc}{' (kept)' if r.get('chosen') else ''}")
    return out


def blocked_lines(blocked: Sequence[Mapping], what: str, examples: int = 3) -> list[str]:
    """One line per distinct reason, with its count and the first ``examples`` places."""
    if not blocked:
        return []
    out = [f"  {what}: {len(blocked)}"]
    for reason, wheres in blocked_by_reason(blocked):
        more = f", +{len(wheres) - examples} more" if len(wheres) > examples else ""
        out.append(f"    {len(wheres)} x {reason} ({', '.join(wheres[:examples])}{more})")
    return out


TIED_LEGEND = (
    "(+N tied): N more layers lose the same channels with it (their outputs are added in a "
    "residual sum, or they are the keys and values of the same heads)"
)


def group_label(g: Mapping) -> str:
    """A group as people know it: its first producer node, with ``(+N tied)`` for N more
    producers that share its channels (a residual sum ties them); without node names, its
    first member's tensor."""
    nodes = list(g.get("nodes") or [])
    if not nodes:
        members = list(g.get("members") or [g.get("id", "?")])
        return str(members[0]).removesuffix("[out]")
    more = f" (+{len(nodes) - 1} tied)" if len(nodes) > 1 else ""
    return nodes[0] + more


def blocked_by_reason(blocked: Sequence[Mapping]) -> list[tuple[str, list[str]]]:
    """(reason, places) per distinct reason, the most frequent first; a place is a group
    (``where``) or a tensor (``tensor``), each listed once."""
    by: dict[str, list[str]] = {}
    for b in blocked:
        wheres = by.setdefault(str(b.get("reason", "?")), [])
        where = str(b.get("where", b.get("tensor", "?")))
        if where not in wheres:
            wheres.append(where)
    return sorted(by.items(), key=lambda kv: -len(kv[1]))


def _recovery(recovery: Recoveries, max_rows: int | None) -> list[str]:
    out: list[str] = []
    for kind, rec in recovery.items():
        out.append("")
        steps = "+".join(rec.steps) or "none"
        line = (
            f"recovery after {kind} pruning ({steps}, {rec.samples} calibration samples, "
            f"{rec.seconds or 0:.1f} s): refit {rec.layers_refit or 0} layers"
        )
        if rec.mean_err_before is not None:
            line += (
                f", mean layer output error {rec.mean_err_before:.3g} -> "
                f"{rec.mean_err_after:.3g}"
            )
        out.append(line)
        out += [f"  left alone {sk['layer']}: {sk['reason']}" for sk in rec.skipped[:max_rows]]
    return out


def _validation(v) -> list[str]:
    """``v`` is the runtime's ``ValidationResult``."""

    def num(x: float | None) -> float:
        return math.nan if x is None else x

    data = getattr(v, "data", None)
    head = f"validation on {v.provider}" + (f" ({data} data)" if data else "")
    if getattr(v, "verdict", "conclusive") == "inconclusive":
        # the figures stay in the JSON; printed here they would read as a perfect score
        parts = [f"{head}: inconclusive: {'; '.join(v.inconclusive_reasons)}"]
    else:
        parts = [
            f"{head}: max abs diff {num(v.max_abs_diff):.3g}",
            f"rel diff {num(v.rel_diff):.3g}",
            f"cosine {num(v.cosine):.6f}",
        ]
        if v.top1_agreement is not None:
            parts.append(f"top-1 agreement {v.top1_agreement:.1%}")
    if v.accuracy_before is not None:
        parts.append(f"accuracy {v.accuracy_before:.2%} -> {v.accuracy_after:.2%}")
    lines = ["", ", ".join(parts)]
    if getattr(v, "nonfinite_outputs", None):
        lines.append(
            "  the pruned model gives NaN or Inf where the original is finite: "
            + ", ".join(v.nonfinite_outputs)
        )
    lines += [f"  gate {gate_row(g)[0]}: {gate_row(g)[1]}" for g in getattr(v, "gates", [])]
    facts = [inputs_line(v.samples, getattr(v, "input_shapes", {}), getattr(v, "shape_source", {}))]
    facts += [line for line in [latency_line(v)] if line]
    return [*lines, *(f"  {f}" for f in facts), *(f"  {note}" for note in v.notes)]


def latency_rows(result: dict) -> list[list[str]]:
    """``onnxprune validate``'s latency rows: median, p10 and p90 before / after."""
    if result.get("latency_ms_before") is None:
        return []
    rows = []
    for what, key in (("median", "latency_ms"), ("p10", "latency_p10_ms"), ("p90", "latency_p90_ms")):
        before, after = result[f"{key}_before"], result[f"{key}_after"]
        rows.append([f"latency {what} (ms) before / after", f"{before:.3f} / {after:.3f}"])
    return rows


def evaluation_facts(result: dict) -> list[str]:
    """``onnxprune validate``'s lines on the samples, input shapes and speed-up."""
    from types import SimpleNamespace

    facts = [
        inputs_line(
            result.get("samples"), result.get("input_shapes", {}), result.get("shape_source", {})
        )
    ]
    line = latency_line(SimpleNamespace(**{"runs": 0, **result}))
    return facts + ([line] if line else [])


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render_evaluation(result: dict) -> str:
    """A short table: samples, accuracy, agreement, drift overall and per output, notes."""
    out = []
    if "original" in result:
        out += [f"original  {result['original']}", f"pruned    {result['pruned']}"]
    out.append(f"inputs    {result.get('inputs', '-')} on {result.get('provider', '-')}")
    out.append("")
    rows = [["samples", str(result.get("samples", "-"))]]
    if result.get("accuracy_before") is not None:
        before, after = result["accuracy_before"], result["accuracy_after"]
        rows += [
            ["accuracy before", f"{before:.3f}"],
            ["accuracy after", f"{after:.3f}"],
            ["accuracy drop (points)", f"{100 * (before - after):.2f}"],
        ]
    if result.get("verdict") == "inconclusive":
        # the numbers stay in the JSON; a table of perfect scores here would be a lie
        rows.append(["verdict", "inconclusive: " + "; ".join(result["inconclusive_reasons"])])
    else:
        rows += [
            ["top-1 agreement", _num(result.get("top1_agreement"), ".4f")],
            ["cosine", f"{result['cosine']:.6f}"],
            ["max abs diff", f"{result['max_abs_diff']:.3g}"],
            ["rel diff", f"{result['rel_diff']:.3g}"],
        ]
    if result.get("nonfinite_outputs"):
        shown = ", ".join(result["nonfinite_outputs"])
        rows.append(["non-finite", f"the pruned model gives NaN/Inf in {shown}"])
    rows += [gate_row(g) for g in result.get("gates", [])]
    rows += latency_rows(result)
    out.append(table(rows, ["", "value"]))
    out.extend(f"  {f}" for f in evaluation_facts(result))
    per = [
        [
            p["name"],
            "x".join(str(d) for d in p.get("shape", [])) or "-",
            f"{p['max_abs_diff']:.3g}",
            f"{p['rel_diff']:.3g}",
            f"{p['cosine']:.6f}",
            _num(p.get("top1_agreement"), ".4f"),
        ]
        for p in result.get("per_output", [])
    ]
    if per and result.get("verdict") != "inconclusive":
        out.append("")
        header = ["output", "shape", "max abs diff", "rel diff", "cosine", "top-1"]
        out.append(table(per, header))
    if result.get("notes"):
        out.append("")
        out.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(out)
