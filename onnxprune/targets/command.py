"""The ``onnxprune analyze`` and ``onnxprune sweep`` commands: parse, call
``targets.analyzer.analyze_path`` / ``targets.sweep.sweep``, print.

Kept beside the targets package rather than in ``onnxprune.cli`` (which registers it) so
that the CLI module stays under the house size limit; it follows the CLI's rules: one
``error:`` line for bad input (raised here, worded by ``cli.main``), no half-written output.
"""

from __future__ import annotations

from pathlib import Path

import click

from onnxprune.cli_options import (
    CALIB_HELP,
    CRITERION_OPTION,
    EXCLUDE_OPTION,
    HOLDOUT_OPTIONS,
    MAX_GROUP_RATIO_OPTION,
    RUNS_OPTION,
    TYPED,
    apply_options,
    data_options,
    input_options,
)
from onnxprune.graph.outputs import write_side_output
from onnxprune.options import PROVIDERS, default
from onnxprune.targets.flags import JOB_OPTIONS

__all__ = ["analyze_cmd", "sweep_cmd"]

ANALYZE_EXAMPLES = """\b
Examples:
  onnxprune analyze model.onnx
  onnxprune analyze model.onnx --calib images/ --criterion wanda --json sensitivity.json
  onnxprune analyze det.onnx --input-shape images=1x3x640x640 --threads 1 --fractions 0.1,0.3
"""


@click.command("analyze", epilog=ANALYZE_EXAMPLES)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help=CALIB_HELP + " [default: random inputs].")  # fmt: skip
@click.option("--calib-preprocess", default=None, metavar="SPEC",
              help="For an image folder: imagenet, none/raw, or a spec (see prune --help).")  # fmt: skip
@click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x640x640",
    help="Fix an input's sizes (repeatable; NAME= may be left out for a one-input model): "
    "the batch and sizes latency is profiled at.",
)  # fmt: skip
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True, metavar="N",
              help="Samples each candidate is scored on (the first N of --calib, else random).")  # fmt: skip
@click.option("--providers", type=click.Choice(list(PROVIDERS)), default=default("providers"),
              show_default=True, help="onnxruntime provider to profile and score on.")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=0), default=default("threads"),
              show_default=True, metavar="N", help="onnxruntime intra-op threads (0: its own).")  # fmt: skip
@CRITERION_OPTION
@click.option("--fractions", default="0.25,0.5,0.75", show_default=True, metavar="F,F,...",
              help="Fractions of each group's channels removed, one candidate each.")  # fmt: skip
@EXCLUDE_OPTION
@click.option("--seed", type=int, default=default("seed"), show_default=True,
              help="Seed for random inputs and the random criterion.")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              metavar="PATH", help="Also write the analysis as JSON to this path.")  # fmt: skip
@click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
              metavar="PATH", help="Also write the analysis to PATH: a self-contained HTML "
              "page with the sensitivity curves when PATH ends in .html, else JSON.")  # fmt: skip
@click.option("--no-cache", is_flag=True,
              help="Neither read nor write the cache ($XDG_CACHE_HOME/onnxprune).")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def analyze_cmd(
    model: Path, json_path: Path | None, report_path: Path | None, no_cache: bool, quiet: bool,
    **kw,
) -> None:
    """Per prunable group: share of MACs, params and measured latency, and the output loss
    when that group alone loses each fraction of its channels."""
    import json

    from onnxprune.graph.outputs import Output, check_side_outputs
    from onnxprune.report.analysis import render_analysis
    from onnxprune.targets.analyzer import analyze_path

    sides = [Output(flag, p) for flag, p in (("--json", json_path), ("--report", report_path)) if p]
    check_side_outputs([model], sides)
    result = analyze_path(model, use_cache=not no_cache, progress=not quiet, **kw).to_dict()
    text = json.dumps(result, indent=2) + "\n"
    if json_path is not None:
        write_side_output(json_path, "--json", lambda p: p.write_text(text))
    if report_path is not None:
        if report_path.suffix.lower() in (".html", ".htm"):
            page = _page(model, result, kw)
            write_side_output(report_path, "--report", lambda p: _write_page(p, page))
        else:
            write_side_output(report_path, "--report", lambda p: p.write_text(text))
    if not quiet:
        click.echo(render_analysis(result))


SWEEP_EXAMPLES = """\b
Examples:
  onnxprune sweep model.onnx --targets 1.25,1.5,2,3
  onnxprune sweep model.onnx --calib images/ --labels labels.npy --targets 1.5,2 --json curve.json
  onnxprune sweep model.onnx --metric macs --targets 0.8,0.5,0.3 --threads 1
"""


def _sweep_options(f):
    """The flags of ``sweep``: the targets, then prune's data, input and pruning flags."""
    own = [
        click.option("--targets", required=True, metavar="T,T,...",
                     help="Speed-ups (--metric speedup), or MAC reductions (2 = half the "
                     "MACs) or fractions kept (--metric macs), one prune each."),
        click.option("--metric", type=click.Choice(["speedup", "macs"]), default="speedup",
                     show_default=True, help="What a target is: measured speed-up, or MACs."),
        click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
                     metavar="PATH", help="Also write the rows as JSON to this path."),
        click.option("--report", "report_path", type=click.Path(path_type=Path), default=None,
                     metavar="PATH", help="Also write the sweep as a page: PATH.html draws the "
                     "trade-off curve (cosine against measured speed-up or MACs kept); any "
                     "other name gets the JSON."),
        data_options("the rows then show accuracy before/after.",
                     "onnxruntime provider to measure on; auto takes CUDA when present.",
                     "Seed for random inputs and the random criterion."),
        *HOLDOUT_OPTIONS[:2],
        input_options,
        CRITERION_OPTION,
        click.option("--round-to", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Keep channel counts multiples of N [default: exact counts]."),
        MAX_GROUP_RATIO_OPTION,
        EXCLUDE_OPTION,
        RUNS_OPTION,
        click.option("--staircase/--no-staircase", default=None,
                     help="--metric speedup: measure the latency staircase once, first "
                     "[default: on]."),
        *JOB_OPTIONS,
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
    ]  # fmt: skip
    return apply_options(own)(f)


@click.command("sweep", epilog=SWEEP_EXAMPLES)
@click.argument("model", type=click.Path(path_type=Path))
@_sweep_options
def sweep_cmd(model: Path, targets: str, metric: str, json_path: Path | None,
              report_path: Path | None, quiet: bool, **kw) -> None:  # fmt: skip
    """Prune MODEL at each target and print measured speed-up, MACs, params and quality per
    target (nothing is written but --json): the trade-off curve."""
    import json

    from onnxprune.graph.outputs import Output, check_side_outputs
    from onnxprune.targets.sweep import parse_targets, render_sweep, sweep

    values = parse_targets(targets, metric)
    outs = [Output(flag, path) for flag, path in (("--json", json_path), ("--report", report_path))]
    check_side_outputs([model], [o for o in outs if o.path is not None])
    rows = sweep(model, values, metric=metric, base=kw, progress=not quiet)
    doc = {"model": str(model), "metric": metric, "rows": [r.to_dict() for r in rows]}
    text = json.dumps(doc, indent=2) + "\n"
    if json_path is not None:
        write_side_output(json_path, "--json", lambda p: p.write_text(text))
    if report_path is not None and report_path.suffix.lower() in (".html", ".htm"):
        page = _sweep_page(model, doc, "speedup" if metric == "speedup" else "fraction", kw)
        write_side_output(report_path, "--report", lambda p: _write_page(p, page))
    elif report_path is not None:
        write_side_output(report_path, "--report", lambda p: p.write_text(text))
    if not quiet:
        click.echo(render_sweep(rows))


def _write_page(path: Path, page: str) -> None:
    from onnxprune.report.html import write_page

    write_page(path, page)


def _sweep_page(model: Path, doc: dict, x: str, settings: dict) -> str:
    """The sweep as the HTML report's page (``report.html.sweep_page``)."""
    from onnxprune.graph.modelfile import load_model
    from onnxprune.report.html import sweep_page
    from onnxprune.report.page_facts import gather_facts

    original = load_model(model).model
    typed = click.get_current_context().meta.get(TYPED)
    facts = gather_facts(original, None, None, settings, argv=typed, profile=False)
    return sweep_page({"model": doc["model"], "points": doc["rows"]}, facts, x=x, y="cosine")


def _page(model: Path, result: dict, settings: dict) -> str:
    """The analysis as the HTML report's page (``report.html.analysis_page``)."""
    from onnxprune.graph.modelfile import load_model
    from onnxprune.report.html import analysis_page
    from onnxprune.report.page_facts import gather_facts

    original = load_model(model).model
    typed = click.get_current_context().meta.get(TYPED)
    facts = gather_facts(original, None, None, settings, argv=typed, profile=False)
    return analysis_page(result, facts)
