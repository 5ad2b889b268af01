"""The HTML report's plots: matplotlib figures rendered to SVG text, to be inlined in the page.

matplotlib is imported here only, and only when a plot is asked for (an HTML report), so a
plain prune never pays for it. Each function returns one ``<svg>`` element as text, cleaned
for inlining in HTML5 (``_inline``): no XML prolog, no DOCTYPE, no metadata block and no
namespace declarations, so the page names no ``http`` address and fetches nothing; text
stays text (``svg.fonttype = none``), drawn in the browser's own sans-serif font.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence

__all__ = ["bar_pairs", "histogram", "lines", "sparsity_bars", "tradeoff"]

BEFORE, AFTER = "#c9d3df", "#2b6cb0"
"""Before: a pale bar behind; after: the strong bar in front (what is left)."""
_MAX_TICKS = 40


def _pyplot():
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"svg.fonttype": "none", "font.family": "sans-serif", "font.size": 9,
         "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "onnxprune"}
    )  # fmt: skip
    return plt


def _inline(svg: str) -> str:
    """The ``<svg>`` element alone, without what only a standalone file needs."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)
    return svg.strip()


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    _pyplot().close(fig)
    return _inline(buf.getvalue())


def _ticks(ax, labels: Sequence[str]) -> None:
    """Label at most ``_MAX_TICKS`` bars (every k-th), rotated, shortened from the left."""
    step = max(1, -(-len(labels) // _MAX_TICKS))
    pos = list(range(0, len(labels), step))
    short = [labels[i] if len(labels[i]) <= 28 else "…" + labels[i][-27:] for i in pos]
    ax.set_xticks(pos)
    ax.set_xticklabels(short, rotation=70, ha="right", fontsize=7)


def bar_pairs(
    labels: Sequence[str], before: Sequence[float], after: Sequence[float], ylabel: str,
    title: str, horizontal: bool = False,
) -> str:  # fmt: skip
    """Before (pale, behind) and after (strong, in front) per label, in the given order."""
    plt = _pyplot()
    n = len(labels)
    if horizontal:
        fig, ax = plt.subplots(figsize=(10, max(2.0, 0.28 * n + 0.8)))
        ys = list(range(n))[::-1]
        ax.barh(ys, before, color=BEFORE, label="before", height=0.8)
        ax.barh(ys, after, color=AFTER, label="after", height=0.45)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_xlabel(ylabel)
    else:
        fig, ax = plt.subplots(figsize=(min(16, max(10, 0.16 * n + 2)), 3.6))
        xs = list(range(n))
        ax.bar(xs, before, color=BEFORE, label="before", width=0.9)
        ax.bar(xs, after, color=AFTER, label="after", width=0.55)
        _ticks(ax, list(labels))
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.7, n - 0.3)
    ax.set_title(title, loc="left", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def sparsity_bars(labels: Sequence[str], sparsity: Sequence[float], title: str) -> str:
    """Per tensor, the fraction of its weights that are zero after pruning."""
    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(min(16, max(10, 0.16 * n + 2)), 3.2))
    ax.bar(range(n), [100.0 * s for s in sparsity], color=AFTER, width=0.7)
    _ticks(ax, list(labels))
    ax.set_ylim(0, 100)
    ax.set_ylabel("zero weights (%)")
    ax.set_title(title, loc="left", fontsize=10)
    return _svg(fig)


def histogram(values: Sequence[float], xlabel: str, title: str) -> str:
    """The distribution of ``values`` (one per sample), the worst one marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 2.8))
    bins = min(40, max(5, len(values) // 2))
    ax.hist(values, bins=bins, color=AFTER)
    worst = min(values)
    ax.axvline(worst, color="#c53030", linestyle="--", linewidth=1)
    ax.annotate(f"worst {worst:.4f}", (worst, ax.get_ylim()[1] * 0.9), fontsize=8,
                color="#c53030", xytext=(4, 0), textcoords="offset points")  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title, loc="left", fontsize=10)
    return _svg(fig)


def lines(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
    title: str, legend_max: int = 12,
) -> str:  # fmt: skip
    """One line per named curve (x values, y values); the legend names at most
    ``legend_max`` of them (the highest at their last point)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ranked = sorted(curves.items(), key=lambda kv: -(kv[1][1][-1] if kv[1][1] else 0.0))
    for i, (name, (xs, ys)) in enumerate(ranked):
        short = name if len(name) <= 36 else "…" + name[-35:]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1,
                label=short if i < legend_max else None, alpha=0.9 if i < legend_max else 0.35)  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left", fontsize=10)
    if curves:
        ax.legend(frameon=False, fontsize=7, loc="upper left")
    return _svg(fig)


def tradeoff(
    xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], xlabel: str, ylabel: str,
    title: str,
) -> str:  # fmt: skip
    """A sweep's trade-off curve: one point per run, joined in ``xs`` order, each labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ax.plot([xs[i] for i in order], [ys[i] for i in order], marker="o", color=AFTER)
    for x, y, label in zip(xs, ys, labels, strict=True):
        ax.annotate(label, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left", fontsize=10)
    return _svg(fig)
