"""The HTML report: one self-contained page a person reads at a glance and can share.

Built from the report's JSON dict (``Report.to_dict``; for ``analyze``, ``Analysis.to_dict``)
plus the facts only a page shows (``PageFacts``: the command, versions, model hash, per op
type latency, the whole per-sample quality distribution), so a page and its JSON cannot
disagree: the page also carries both, verbatim, in a ``<script type="application/json"
id="onnxprune-data">`` block, and every figure in its summary table has the exact value in
a ``data-value`` attribute. Self-contained: inline CSS, plots as inline SVG
(``report.plots``), no script, font, image or link that leaves the file.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxprune.report.render import TIED_LEGEND, blocked_by_reason, group_label
from onnxprune.report.text import human_bytes, human_count, ratio

__all__ = ["PageFacts", "analysis_page", "blocked_by_reason", "group_label", "prune_page",
           "sweep_page", "write_page"]  # fmt: skip

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1a202c;background:#f7fafc}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.sub{color:#4a5568;margin:0 0 16px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:6px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:3px 12px 3px 0;text-align:left;vertical-align:top}th{color:#4a5568;font-weight:600}
td.num{text-align:right}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;color:#fff}
.pass{background:#2f855a}.fail{background:#c53030}.unknown{background:#718096}
details{margin:4px 0}summary{cursor:pointer}
code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}pre{white-space:pre-wrap;background:#f1f5f9;padding:8px;border-radius:4px}
svg{max-width:100%;height:auto}
.muted{color:#718096}
"""


@dataclass
class PageFacts:
    """What the page shows beyond the JSON report (``report.page_facts`` gathers them)."""

    command: str = ""
    """The exact command line, quoted as a shell would need it."""
    settings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    """``onnxprune``, ``onnxruntime``, ``onnx``, ``python`` versions."""
    model_hash: dict = field(default_factory=dict)
    """``targets.plans.model_hash`` of the input model."""
    node_order: dict = field(default_factory=dict)
    """Node name -> its index in the (topologically sorted) graph: the depth axis."""
    node_ops: dict = field(default_factory=dict)
    """Node name -> op type."""
    profile: dict | None = None
    """``{"before": {op type: ms}, "after": {...}, "runs": n, "note": ...}``; None: not profiled."""
    per_sample_cosine: list = field(default_factory=list)


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _json_block(data: Mapping) -> str:
    text = json.dumps(data, indent=1, default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="onnxprune-data">{text}</script>'


def _cell(key: str, value: object, shown: str) -> str:
    attr = "" if value is None else f' data-key="{_e(key)}" data-value="{_e(value)}"'
    return f'<td class="num"{attr}>{_e(shown)}</td>'


def _blocked_section(blocked: Sequence[Mapping], what: str) -> str:
    if not blocked:
        return ""
    parts = [f"<h3>{_e(what)} left alone, by reason</h3>"]
    for reason, wheres in blocked_by_reason(blocked):
        items = "".join(f"<li><code>{_e(w)}</code></li>" for w in wheres)
        parts.append(
            f"<details><summary><b>{len(wheres)}</b> × {_e(reason)}</summary><ul>{items}</ul>"
            "</details>"
        )
    return "\n".join(parts)


def _verdict(v: Mapping | None) -> tuple[str, str]:
    if not v:
        return "not validated", "unknown"
    if v.get("verdict") == "inconclusive":
        return "inconclusive", "unknown"
    if not v.get("passed", True):
        return "failed", "fail"
    return ("gates passed", "pass") if v.get("gates") else ("ran, no gates asked for", "unknown")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} ms"


def _latency_cell(v: Mapping, when: str) -> str:
    med, p10, p90 = (v.get(f"{k}_{when}") for k in ("latency_ms", "latency_p10_ms", "latency_p90_ms"))
    spread = "" if p10 is None or p90 is None else f" (p10 {p10:.3f} – p90 {p90:.3f})"
    return _cell(f"latency_ms_{when}", med, _ms(med) + spread)


def _summary(r: Mapping) -> str:
    rows = []
    for label, key, fmt in (
        ("parameters", "params", human_count), ("nonzero params", "nonzero", human_count),
        ("MACs", "macs", human_count), ("file size", "size_bytes", human_bytes),
        ("gzip size", "gzip_bytes", human_bytes),
    ):  # fmt: skip
        b, a = r.get(f"{key}_before"), r.get(f"{key}_after")
        rows.append(
            f"<tr><th>{label}</th>{_cell(f'{key}_before', b, fmt(b or 0))}"
            f"{_cell(f'{key}_after', a, fmt(a or 0))}<td class='num'>{ratio(b or 0, a or 0)}</td></tr>"
        )
    v = r.get("validation") or {}
    if v.get("latency_ms_before") is not None:
        sp = v.get("speedup")
        sig = "" if v.get("speedup_significant", True) else " (not significant)"
        shown = "-" if sp is None else f"{sp:.2f}x{sig}"
        rows.append(
            f"<tr><th>latency median</th>{_latency_cell(v, 'before')}{_latency_cell(v, 'after')}"
            f"{_cell('speedup', sp, shown)}</tr>"
        )
    head = "<tr><th></th><th>before</th><th>after</th><th>ratio</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _validation(v: Mapping | None) -> str:
    if not v:
        return "<p class='muted'>No validation ran (--no-validate).</p>"
    rows = [("data", v.get("data") or "-", None, "data"), ("samples", v.get("samples"), v.get("samples"), "samples")]
    if v.get("verdict") == "inconclusive":
        rows.append(("verdict", "inconclusive: " + "; ".join(v.get("inconclusive_reasons", [])), None, "verdict"))
    else:
        for key, fmt in (("cosine", ".6f"), ("max_abs_diff", ".3g"), ("rel_diff", ".3g"), ("top1_agreement", ".2%")):
            x = v.get(key)
            rows.append((key.replace("_", " "), "-" if x is None else format(x, fmt), x, key))
    if v.get("accuracy_before") is not None:
        rows.append(("accuracy", f"{v['accuracy_before']:.2%} → {v['accuracy_after']:.2%}", v["accuracy_after"], "accuracy_after"))
    body = "".join(f"<tr><th>{_e(k)}</th>{_cell(key, raw, str(shown))}</tr>" for k, shown, raw, key in rows)
    gates = "".join(
        f"<li>{_e(g.get('gate'))} {'≥' if 'min' in str(g.get('gate')) else '≤'} {_e(g.get('threshold'))}: "
        f"{_e(g.get('value'))} — <b>{'passed' if g.get('passed') else 'FAILED'}</b></li>"
        for g in v.get("gates", [])
    )
    return f"<table>{body}</table>" + (f"<p>Gates:</p><ul>{gates}</ul>" if gates else "<p class='muted'>No gates asked for.</p>")


def _depth(g: Mapping, order: Mapping[str, int]) -> int:
    return min((order.get(n, 10**9) for n in g.get("nodes") or []), default=10**9)


def _structured(s: Mapping | None, facts: PageFacts) -> tuple[str, list[str]]:
    """The channels chart along the depth, the table of every group, the blocked groups."""
    if not s:
        return "", []
    from onnxprune.report import plots

    groups = sorted(s.get("groups", []), key=lambda g: _depth(g, facts.node_order))
    svgs: list[str] = []
    from onnxprune.report.render import asked_for, search_lines

    target = s.get("target")
    parts = [
        f"<p>{_e(asked_for(s.get('ratio'), target))}, scope {_e(s.get('scope'))}, criterion "
        f"{_e(s.get('criterion'))}, round-to {_e(s.get('round_to'))}: "
        f"{sum(g['channels_after'] != g['channels_before'] for g in groups)} of {len(groups)} "
        f"groups cut, {len(s.get('blocked', []))} left alone.</p>"
    ]
    if target and target.get("metric") in ("speedup", "quality"):  # the search, candidate by candidate
        parts.append("<pre>" + _e("\n".join(line.strip() for line in search_lines(target))) + "</pre>")
    if s.get("hidden"):  # --hidden: approximate, shown apart from the exact cuts
        from onnxprune.structured.stream import stream_lines

        parts.append("<pre>" + _e("\n".join(stream_lines(s["hidden"]))) + "</pre>")
    if groups:
        labels = [group_label(g) for g in groups]
        svg = plots.bar_pairs(labels, [g["channels_before"] for g in groups],
                              [g["channels_after"] for g in groups], "channels / neurons",
                              "Channels per layer, input to output (pale: before, blue: after)")  # fmt: skip
        svgs.append(svg)
        parts.append(f'<figure class="plot" data-plot="channels">{svg}</figure>')
        rows = "".join(
            f"<tr><td><code>{_e(lab)}</code></td><td>{_e(facts.node_ops.get((g.get('nodes') or [''])[0], ''))}</td>"
            f"{_cell('channels_before', g['channels_before'], str(g['channels_before']))}"
            f"{_cell('channels_after', g['channels_after'], str(g['channels_after']))}"
            f"<td>{_e(g.get('note', ''))}</td></tr>"
            for lab, g in zip(labels, groups, strict=True)
        )
        parts.append(
            f"<details><summary>All {len(groups)} groups</summary><table><tr><th>layer "
            "(first producer)</th><th>op</th><th>before</th><th>after</th><th>why kept more</th>"
            f"</tr>{rows}</table></details>"
        )
        if any(len(g.get("nodes") or []) > 1 for g in groups):
            parts.append(f"<p class='muted'>{_e(TIED_LEGEND)}</p>")
    parts.append(_blocked_section(s.get("blocked", []), "Groups"))
    return "\n".join(parts), svgs


def _unstructured(u: Mapping | None) -> tuple[str, list[str]]:
    if not u:
        return "", []
    from onnxprune.report import plots

    tensors = list(u.get("tensors", []))
    parts = [f"<p>{_e(u.get('mode'))} {_e(u.get('target'))}, scope {_e(u.get('scope'))}: "
             f"zeroed {human_count(u.get('zeroed', 0))} weights in {len(tensors)} tensors.</p>"]  # fmt: skip
    svgs = []
    if tensors:
        svg = plots.sparsity_bars([t["tensor"] for t in tensors],
                                  [t.get("sparsity_after", 0.0) for t in tensors],
                                  "Zero weights per tensor after pruning")  # fmt: skip
        svgs.append(svg)
        parts.append(f'<figure class="plot" data-plot="sparsity">{svg}</figure>')
    parts.append(_blocked_section(u.get("skipped", []), "Tensors"))
    return "\n".join(parts), svgs


def _quality(values: Sequence[float]) -> tuple[str, list[str]]:
    if len(values) < 2:
        return "", []
    from onnxprune.report import plots

    svg = plots.histogram(list(values), "cosine of the sample's outputs (pruned vs original)",
                          f"Per-sample quality over {len(values)} samples")  # fmt: skip
    worst = min(values)
    text = f"<p>Worst sample: cosine <b>{worst:.6f}</b> (sample {list(values).index(worst)}).</p>"
    return f'<figure class="plot" data-plot="per_sample_cosine">{svg}</figure>{text}', [svg]


def _profile(p: Mapping | None) -> tuple[str, list[str]]:
    if not p:
        return "", []
    before, after = p.get("before", {}), p.get("after", {})
    if not before and not after:
        return f"<p class='muted'>{_e(p.get('note', 'no profile'))}</p>", []
    from onnxprune.report import plots

    ops = sorted(set(before) | set(after), key=lambda o: -before.get(o, after.get(o, 0.0)))[:20]
    svg = plots.bar_pairs(ops, [before.get(o, 0.0) for o in ops], [after.get(o, 0.0) for o in ops],
                          "ms per run (sum of kernel medians)", "Time per op type", horizontal=True)  # fmt: skip
    note = f"<p class='muted'>{_e(p.get('note', ''))}</p>" if p.get("note") else ""
    parts, svgs = [f'<figure class="plot" data-plot="op_latency">{svg}</figure>'], [svg]
    lb, la = p.get("layers_before") or {}, p.get("layers_after") or {}
    if lb and la:
        saved = sorted(lb, key=lambda n: -(lb[n] - la.get(n, 0.0)))[:LAYERS_SHOWN]
        svg2 = plots.bar_pairs(saved, [lb[n] for n in saved], [la.get(n, 0.0) for n in saved],
                               "ms per run", f"Time per layer: the {len(saved)} that saved most",
                               horizontal=True)  # fmt: skip
        parts.append(f'<figure class="plot" data-plot="layer_latency">{svg2}</figure>')
        svgs.append(svg2)
    return "".join(parts) + note, svgs


LAYERS_SHOWN = 20


def _reproduce(facts: PageFacts) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in facts.versions.items())
    hashes = "".join(f"<li>{_e(k)} <code>{_e(v)}</code></li>" for k, v in facts.model_hash.items())
    return (
        f"<p>Command:</p><pre>{_e(facts.command or '-')}</pre>"
        f"<p>Versions: {_e(versions or '-')}</p><p>Model hash:</p><ul>{hashes}</ul>"
        f"<details><summary>All settings</summary><pre>{_e(json.dumps(facts.settings, indent=1, default=str))}</pre></details>"
    )


def _page(title: str, subtitle: str, sections: Sequence[tuple[str, str]], data: Mapping) -> str:
    body = "\n".join(f"<h2>{_e(h)}</h2><section>{s}</section>" for h, s in sections if s)
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}"
        f"</title><style>{CSS}</style></head><body><main><h1>{_e(title)}</h1>"
        f"<p class='sub'>{subtitle}</p>\n{body}\n{_json_block(data)}</main></body></html>\n"
    )


def prune_page(report: Mapping, facts: PageFacts) -> str:
    """The page of one prune run (``report`` is ``Report.to_dict()``)."""
    v = report.get("validation")
    verdict, cls = _verdict(v)
    svgs: list[str] = []
    structured, s1 = _structured(report.get("structured"), facts)
    unstructured, s2 = _unstructured(report.get("unstructured"))
    quality, s3 = _quality(facts.per_sample_cosine or (v or {}).get("per_sample_cosine", []))
    profile, s4 = _profile(facts.profile)
    svgs += s1 + s2 + s3 + s4
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.get("notes", []) + (v or {}).get("notes", []))
    sections = [
        ("Summary", _summary(report)),
        ("Quality", _validation(v) + quality),
        ("Structured pruning: which layers were cut", structured),
        ("Unstructured pruning", unstructured),
        ("Where the time goes", profile),
        ("Notes", f"<ul>{notes}</ul>" if notes else ""),
        ("Reproduce", _reproduce(facts)),
    ]
    sub = (f"{_e(report.get('input_path') or '-')} → {_e(report.get('output_path') or 'not written')}"
           f" · validation <span class='badge {cls}'>{verdict}</span>")  # fmt: skip
    data = {"report": dict(report), "facts": asdict(facts), "plots": len(svgs)}
    return _page("onnxprune report", sub, sections, data)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def analysis_page(analysis: Mapping, facts: PageFacts) -> str:
    """The page of ``onnxprune analyze`` (``analysis`` is ``Analysis.to_dict()``): the
    sensitivity curve of every group, its costs, the blocked groups by reason."""
    from onnxprune.report import plots

    fr = [float(f) for f in analysis.get("fractions", [])]
    keys = [repr(f) for f in fr]
    groups = list(analysis.get("groups", []))
    curves = {
        (g.get("nodes") or [g["id"]])[0]: ([0.0, *fr], [0.0, *[g.get("loss", {}).get(k, float("nan")) for k in keys]])
        for g in groups
    }
    svg = plots.lines(curves, "fraction of the group's channels removed", "loss (1 - cosine)",
                      "Sensitivity per group (each group cut alone)") if groups else ""  # fmt: skip
    rows = "".join(
        f"<tr><td><code>{_e(group_label(g))}</code></td>{_cell('slots', g['slots'], str(g['slots']))}"
        f"{_cell('macs_share', g['macs_share'], _pct(g['macs_share']))}"
        f"{_cell('latency_share', g['latency_share'], _pct(g['latency_share']))}"
        + "".join(_cell(f"loss@{k}", g.get("loss", {}).get(k), "-" if g.get("loss", {}).get(k) is None else f"{g['loss'][k]:.4f}") for k in keys)
        + "</tr>"
        for g in groups
    )
    head = "<tr><th>group</th><th>slots</th><th>MACs</th><th>latency</th>" + "".join(f"<th>loss@{k}</th>" for k in keys) + "</tr>"
    table = f"<details open><summary>{len(groups)} groups</summary><table>{head}{rows}</table></details>"
    figure = f'<figure class="plot" data-plot="sensitivity">{svg}</figure>' if svg else ""
    sections = [
        ("Sensitivity", figure + table),
        ("Left alone", _blocked_section(analysis.get("blocked", []), "Groups")),
        ("Notes", "".join(f"<p>{_e(n)}</p>" for n in analysis.get("notes", []))),
        ("Reproduce", _reproduce(facts)),
    ]
    data = {"analysis": dict(analysis), "facts": asdict(facts), "plots": 1 if svg else 0}
    sub = f"{_e(analysis.get('model', '-'))} on {_e(analysis.get('provider', '-'))}"
    return _page("onnxprune analysis", sub, sections, data)


def sweep_page(
    sweep: Mapping, facts: PageFacts, *, x: str = "speedup", y: str = "cosine",
    label: str = "target",
) -> str:  # fmt: skip
    """The page of a sweep: its trade-off curve (``y`` against ``x`` of every point of
    ``sweep["points"]`` that has both) and a table of every point's figures."""
    from onnxprune.report import plots

    points = list(sweep.get("points", []))
    drawn = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    svg = plots.tradeoff([float(p[x]) for p in drawn], [float(p[y]) for p in drawn],
                         [str(p.get(label, i)) for i, p in enumerate(drawn)], x, y,
                         f"Trade-off: {y} against {x}") if drawn else ""  # fmt: skip
    keys = [k for k in dict.fromkeys(k for p in points for k in p) if isinstance(points[0].get(k), (int, float, str, type(None)))] if points else []
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    rows = "".join(
        "<tr>" + "".join(_cell(k, p.get(k), "-" if p.get(k) is None else (f"{p[k]:.4g}" if isinstance(p[k], float) else str(p[k]))) for k in keys) + "</tr>"
        for p in points
    )
    figure = f'<figure class="plot" data-plot="tradeoff">{svg}</figure>' if svg else ""
    sections = [("Trade-off", figure + f"<table><tr>{head}</tr>{rows}</table>"),
                ("Reproduce", _reproduce(facts))]  # fmt: skip
    data = {"sweep": dict(sweep), "facts": asdict(facts), "plots": 1 if svg else 0}
    return _page("onnxprune sweep", _e(sweep.get("model", "-")), sections, data)


def write_page(path: str | os.PathLike, text: str) -> None:
    """Write the page whole or not at all (a temporary file beside it, then renamed)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
