"""The one record of a pruning run: what changed, what was measured, what was left alone.

Built from plain data handed over by the stages (metrics, unstructured/structured results,
validation), never from side effects, so the JSON and the terminal table always agree.
The top-level JSON key names are a contract with users' pipelines: add keys, never rename.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    input_path: str | None = None
    output_path: str | None = None
    params_before: int = 0
    params_after: int = 0
    nonzero_before: int = 0
    nonzero_after: int = 0
    macs_before: int = 0
    macs_after: int = 0
    size_bytes_before: int = 0
    size_bytes_after: int = 0
    gzip_bytes_before: int = 0
    gzip_bytes_after: int = 0
    unstructured: dict | None = None
    structured: dict | None = None
    validation: dict | None = None
    recovery: dict | None = None
    """Per pruning kind ("structured", "unstructured"): ``RecoveryResult.to_dict()``."""
    notes: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_path": self.input_path,
            "output_path": self.output_path,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "nonzero_before": self.nonzero_before,
            "nonzero_after": self.nonzero_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "size_bytes_before": self.size_bytes_before,
            "size_bytes_after": self.size_bytes_after,
            "gzip_bytes_before": self.gzip_bytes_before,
            "gzip_bytes_after": self.gzip_bytes_after,
            "unstructured": self.unstructured,
            "structured": self.structured,
            "validation": self.validation,
            "recovery": self.recovery,
            "notes": list(self.notes),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
        }

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def render(self) -> str:
        return render_report(self)


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _ratio(before: float, after: float) -> str:
    if not before:
        return "-"
    return f"{after / before:.3f}x"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(r: list[str]) -> str:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def render_report(r: Report, max_rows: int = 25) -> str:
    out: list[str] = []
    if r.input_path:
        out.append(f"model   {r.input_path}")
    if r.output_path:
        out.append(f"output  {r.output_path}")
    out.append("")
    rows = [
        [
            "parameters",
            human_count(r.params_before),
            human_count(r.params_after),
            _ratio(r.params_before, r.params_after),
        ],
        [
            "nonzero params",
            human_count(r.nonzero_before),
            human_count(r.nonzero_after),
            _ratio(r.nonzero_before, r.nonzero_after),
        ],
        [
            "MACs",
            human_count(r.macs_before),
            human_count(r.macs_after),
            _ratio(r.macs_before, r.macs_after),
        ],
        [
            "file size",
            human_bytes(r.size_bytes_before),
            human_bytes(r.size_bytes_after),
            _ratio(r.size_bytes_before, r.size_bytes_after),
        ],
        [
            "gzip size",
            human_bytes(r.gzip_bytes_before),
            human_bytes(r.gzip_bytes_after),
            _ratio(r.gzip_bytes_before, r.gzip_bytes_after),
        ],
    ]
    v = r.validation
    if v:
        lb, la = v.get("latency_ms_before"), v.get("latency_ms_after")
        if lb is not None and la is not None:
            rows.append(["latency median (ms)", f"{lb:.3f}", f"{la:.3f}", _ratio(lb, la)])
        pb, pa = v.get("latency_p90_ms_before"), v.get("latency_p90_ms_after")
        if pb is not None and pa is not None:
            rows.append(["latency p90 (ms)", f"{pb:.3f}", f"{pa:.3f}", _ratio(pb, pa)])
    out.append(table(rows, ["", "before", "after", "ratio"]))

    if r.unstructured:
        u = r.unstructured
        out.append("")
        sel = u.get("selected_params", 0)
        frac = u["zeroed"] / sel if sel else 0.0
        out.append(
            f"unstructured ({u['mode']} {u['target']}, scope {u['scope']}): zeroed {human_count(u['zeroed'])} "
            f"of {human_count(sel)} selected weights ({frac:.1%}) in {len(u['tensors'])} tensors"
        )
        if u.get("skipped"):
            out.append(f"  left alone: {len(u['skipped'])} tensors")
            for s in u["skipped"][:max_rows]:
                out.append(f"    {s['tensor']}: {s['reason']}")
            if len(u["skipped"]) > max_rows:
                out.append(f"    ... and {len(u['skipped']) - max_rows} more (see --report)")

    if r.structured:
        s = r.structured
        groups = s.get("groups", [])
        changed = [g for g in groups if g["channels_after"] != g["channels_before"]]
        out.append("")
        out.append(
            f"structured (ratio {s.get('ratio')}, scope {s.get('scope')}, criterion {s.get('criterion')}, "
            f"round-to {s.get('round_to')}): pruned {len(changed)} of {len(groups)} groups, "
            f"{len(s.get('blocked', []))} blocked"
        )
        if groups:
            grows = []
            for g in groups[:max_rows]:
                members = g.get("members", [])
                first = members[0] if members else g.get("id", "?")
                more = f" +{len(members) - 1}" if len(members) > 1 else ""
                if "heads_before" in g:
                    more += f" (heads {g['heads_before']}->{g['heads_after']})"
                grows.append(
                    [
                        f"{first}{more}",
                        str(g["channels_before"]),
                        str(g["channels_after"]),
                        f"{g.get('score_min', 0):.3g}/{g.get('score_mean', 0):.3g}/{g.get('score_max', 0):.3g}",
                    ]
                )
            out.append(
                table(grows, ["group (first member)", "before", "after", "score min/mean/max"])
            )
            if len(groups) > max_rows:
                out.append(f"... and {len(groups) - max_rows} more groups (see --report)")
        for b in s.get("blocked", [])[:max_rows]:
            out.append(f"  blocked {b['where']}: {b['reason']}")
        if len(s.get("blocked", [])) > max_rows:
            out.append(f"  ... and {len(s['blocked']) - max_rows} more blocked (see --report)")

    for kind, rec in (r.recovery or {}).items():
        out.append("")
        steps = "+".join(rec.get("steps", [])) or "none"
        line = (
            f"recovery after {kind} pruning ({steps}, {rec.get('samples')} calibration samples, "
            f"{rec.get('seconds', 0):.1f} s): refit {rec.get('layers_refit', 0)} layers"
        )
        if rec.get("mean_err_before") is not None:
            line += (
                f", mean layer output error {rec['mean_err_before']:.3g} -> "
                f"{rec['mean_err_after']:.3g}"
            )
        out.append(line)
        for sk in rec.get("skipped", [])[:max_rows]:
            out.append(f"  left alone {sk['layer']}: {sk['reason']}")

    if v:
        out.append("")
        parts = [
            f"validation on {v.get('provider')}: max abs diff {v.get('max_abs_diff', float('nan')):.3g}",
            f"rel diff {v.get('rel_diff', float('nan')):.3g}",
            f"cosine {v.get('cosine', float('nan')):.6f}",
        ]
        if v.get("top1_agreement") is not None:
            parts.append(f"top-1 agreement {v['top1_agreement']:.1%}")
        if v.get("accuracy_before") is not None:
            parts.append(f"accuracy {v['accuracy_before']:.2%} -> {v['accuracy_after']:.2%}")
        out.append(", ".join(parts))
        for note in v.get("notes", []):
            out.append(f"  {note}")
    if r.notes:
        out.append("")
        out.extend(f"note: {n}" for n in r.notes)
    return "\n".join(out)
