"""The ``onnxprune analyze`` command: parse, call ``targets.analyzer.analyze_path``, print.

Kept beside the targets package rather than in ``onnxprune.cli`` (which registers it) so
that the CLI module stays under the house size limit; it follows the CLI's rules: one
``error:`` line for bad input (raised here, worded by ``cli.main``), no half-written output.
"""

from __future__ import annotations

from pathlib import Path

import click

from onnxprune.errors import OnnxPruneError
from onnxprune.options import PROVIDERS, default
from onnxprune.structured.importance import CRITERIA

__all__ = ["analyze_cmd"]

CALIB_HELP = (
    "Calibration/validation inputs: .npz keyed by input name, a folder of .npy files, or a "
    "folder of images"
)


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
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default=default("criterion"),
              show_default=True, help="Which channels a fraction removes first (lowest score).")  # fmt: skip
@click.option("--fractions", default="0.25,0.5,0.75", show_default=True, metavar="F,F,...",
              help="Fractions of each group's channels removed, one candidate each.")  # fmt: skip
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave groups touching nodes/tensors matching GLOB out (as prune does).")  # fmt: skip
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
        _write(json_path, "--json", lambda p: p.write_text(text))
    if report_path is not None:
        if report_path.suffix.lower() in (".html", ".htm"):
            page = _page(model, result, kw)
            _write(report_path, "--report", lambda p: _write_page(p, page))
        else:
            _write(report_path, "--report", lambda p: p.write_text(text))
    if not quiet:
        click.echo(render_analysis(result))


def _write(path: Path, flag: str, write) -> None:
    try:
        write(path)
    except OSError as exc:
        raise OnnxPruneError(f"could not write {flag} {path}: {exc.strerror or exc}") from exc


def _write_page(path: Path, page: str) -> None:
    from onnxprune.report.html import write_page

    write_page(path, page)


def _page(model: Path, result: dict, settings: dict) -> str:
    """The analysis as the HTML report's page (``report.html.analysis_page``)."""
    from onnxprune.cli_options import TYPED
    from onnxprune.graph.modelfile import load_model
    from onnxprune.report.html import analysis_page
    from onnxprune.report.page_facts import gather_facts

    original = load_model(model).model
    typed = click.get_current_context().meta.get(TYPED)
    facts = gather_facts(original, None, None, settings, argv=typed, profile=False)
    return analysis_page(result, facts)
