"""Number formatting and plain-text tables shared by the report, inspect and validate."""

from __future__ import annotations


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def ratio(before: float, after: float) -> str:
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


def gate_text(g: dict) -> str:
    """``passed``/``FAILED`` for one gate entry, with its value and the reason it failed."""
    value = "-" if g.get("value") is None else format(g["value"], ".6g")
    state = "passed" if g["passed"] else "FAILED"
    text = f"{state}: {value} vs {g['threshold']:g}"
    if not g["passed"] and g.get("reason"):
        text += f" ({g['reason']})"
    return text


def gate_row(g: dict) -> list[str]:
    """A ``[--flag, result]`` table row for one gate entry."""
    return ["--" + g["gate"].replace("_", "-"), gate_text(g)]
