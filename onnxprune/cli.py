"""Command line: parse, call the API, print. No pruning logic lives here.

Every anticipated failure ends as one ``error:`` line on stderr and exit code 1 (the model or
a file is the problem) or 2 (the command line is), never a traceback: users run this in
deployment scripts that grep for errors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from onnxprune import __version__, signals
from onnxprune.cli_options import (
    INSPECT_EXAMPLES,
    PRUNE_EXAMPLES,
    RUNS_OPTION,
    TYPED,
    VALIDATE_EXAMPLES,
    data_options,
    input_options,
    inspect_options,
    prune_options,
)
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.graph.outputs import write_side_output
from onnxprune.targets.command import analyze_cmd, sweep_cmd

MAIN_HELP = """Prune an ONNX model and prove it still answers the same.

\b
  onnxprune model.onnx --structured 0.3      remove 30% of channels/neurons (smaller, faster)
  onnxprune model.onnx --unstructured 0.5    zero 50% of weights by magnitude (smaller zipped)
  onnxprune model.onnx --nm 2:4              keep 2 of every 4 weights (sparse tensor cores)
  onnxprune inspect model.onnx               per-layer params and MACs, what can be pruned
  onnxprune sweep model.onnx --targets 1.5,2 measured speed-up, MACs, quality per target
  onnxprune validate model.onnx model.pruned.onnx --calib data.npz --labels labels.npy
                                             agreement, drift and accuracy before/after

The first form is short for `onnxprune prune model.onnx ...`; `onnxprune prune --help`
lists every option. The output is written to <stem>.pruned.onnx beside the input unless
-o is given, only after onnxruntime validated it (use --no-validate to skip).
"""


class _DefaultToPrune(click.Group):
    """Routes `onnxprune MODEL ...` to the prune command so the common case stays short."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[TYPED] = ["onnxprune", *args]  # what the user typed, for the report's page
        if not args:  # bare `onnxprune`: the help, not an error that prints it
            click.echo(ctx.get_help())
            ctx.exit(0)
        if args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=_DefaultToPrune, help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="onnxprune")
def cli() -> None:
    pass


def _check_outputs(inputs: list[Path], outputs: list, force: bool = False) -> None:
    """Every file this command writes, checked against the files it reads before the long
    work starts (``graph.outputs``); ``outputs`` holds (flag, path or None) pairs and
    ``Output``s."""
    from onnxprune.graph.outputs import Output, check_side_outputs

    files = [o if isinstance(o, Output) else Output(*o) for o in outputs]
    check_side_outputs(inputs, [o for o in files if o.path is not None], force=force)


@cli.command("prune", epilog=PRUNE_EXAMPLES)
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@prune_options
def prune_cmd(
    model: Path, output: Path | None, report_path: Path | None, quiet: bool, verbose: bool,
    dry_run: bool, **kw,
) -> None:
    """Prune MODEL and write the validated result."""
    from onnxprune.api import prune_with
    from onnxprune.errors import GateError
    from onnxprune.graph.modelfile import default_output_path
    from onnxprune.graph.outputs import model_outputs
    from onnxprune.options import PruneOptions

    opts = PruneOptions(**kw)
    out = None if dry_run else (output if output is not None else default_output_path(model))
    sides = [("--report", report_path), ("--save-plan", opts.save_plan)]
    written = model_outputs(out) if out is not None else []
    _check_outputs([model, *([opts.plan] if opts.plan else [])], [*written, *sides], opts.force)
    try:
        result = prune_with(model, opts, output=out, progress=not quiet)
    except GateError as exc:  # the report says which gate failed by how much: write it first
        if report_path is not None and exc.report is not None:
            _write_report(report_path, exc.report, model, None, {**kw, "output": output})
        if not quiet and exc.report is not None:
            click.echo(exc.report.render(verbose=verbose))
        raise
    if report_path is not None:
        _write_report(report_path, result.report, model, result.model, {**kw, "output": output})
    if not quiet:
        click.echo(result.report.render(verbose=verbose))


def is_html(path: Path) -> bool:
    """``--report`` writes HTML for a path ending .html or .htm, JSON for any other."""
    return path.suffix.lower() in (".html", ".htm")


def _write_report(path: Path, report, model: Path, pruned, settings: dict) -> None:
    """The report at ``path``: JSON, or the HTML page (with a per-op profile of both models
    when the pruned one is at hand)."""
    if not is_html(path):
        write_side_output(path, "--report", report.write_json)
        return
    from onnxprune.graph.modelfile import load_model
    from onnxprune.report.html import prune_page, write_page
    from onnxprune.report.page_facts import gather_facts

    original = load_model(model).model
    typed = click.get_current_context().meta.get(TYPED)
    facts = gather_facts(
        original, pruned, report, settings, argv=typed, seed=settings.get("seed", 0)
    )
    text = prune_page(report.to_dict(), facts)
    write_side_output(path, "--report", lambda p: write_page(p, text))


@cli.command("inspect", epilog=INSPECT_EXAMPLES)
@click.argument("model", type=click.Path(path_type=Path))
@inspect_options
def inspect_cmd(model: Path, nm: str, input_shapes: tuple, json_path: Path | None) -> None:
    """Per layer: op, weight shape, params and MACs; the groups --structured could prune and
    why the others cannot; each weight's sparsity and N:M status. Writes nothing but --json."""
    import json

    from onnxprune.report.inspection import inspect_data, render_inspection

    _check_outputs([model], [("--json", json_path)])
    data = inspect_data(model, nm, list(input_shapes) or None)
    if json_path is not None:
        text = json.dumps(data, indent=2) + "\n"
        write_side_output(json_path, "--json", lambda p: p.write_text(text))
    click.echo(render_inspection(data))


@cli.command("validate", epilog=VALIDATE_EXAMPLES)
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("pruned", type=click.Path(path_type=Path))
@data_options(
    "adds accuracy before/after.",
    "onnxruntime provider; auto takes CUDA when present.",
    "Seed for random inputs.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    metavar="PATH",
    help="Also write the results as JSON to this path.",
)
@RUNS_OPTION
@input_options
def validate_cmd(original: Path, pruned: Path, json_path: Path | None, **kw) -> None:
    """Compare PRUNED with ORIGINAL on the same inputs: agreement, drift, accuracy."""
    import json

    from onnxprune.errors import GateError
    from onnxprune.options import ValidateOptions
    from onnxprune.report.render import render_evaluation
    from onnxprune.runtime.compare_models import evaluate_files

    opts = ValidateOptions(**kw)
    _check_outputs([original, pruned], [("--json", json_path)])
    try:
        result = evaluate_files(original, pruned, runs=opts.runs, **opts.data_kwargs())
    except GateError as exc:  # write and show the figures before exiting 3
        if json_path is not None and isinstance(exc.report, dict):
            text = json.dumps(exc.report, indent=2) + "\n"
            write_side_output(json_path, "--json", lambda p: p.write_text(text))
        if isinstance(exc.report, dict):
            click.echo(render_evaluation(exc.report))
        raise
    if json_path is not None:
        text = json.dumps(result, indent=2) + "\n"
        write_side_output(json_path, "--json", lambda p: p.write_text(text))
    click.echo(render_evaluation(result))


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every anticipated failure into one `error:` line.

    SIGINT and SIGTERM raise ``signals.Interrupted`` from the first line on, so they unwind
    through the staged-output and temp-folder cleanup and end as exit 130 / 143.
    """
    with signals.handled():
        try:
            code = _run(argv)
        except signals.Interrupted as exc:
            signals.exit_on(exc)
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """The CLI's exit code; every message it prints on failure is one `error:` line."""
    try:
        cli.main(args=argv, prog_name="onnxprune", standalone_mode=False)
        signals.check()
        return 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        return _fail("aborted", 130)
    except click.ClickException as e:
        return _fail(e.format_message(), 2)
    except OnnxPruneError as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("ONNXPRUNE_DEBUG"):
            raise
        return _fail(
            f"internal error ({type(e).__name__}: {e}); set ONNXPRUNE_DEBUG=1 for the traceback",
            1,
        )


def _fail(message: str, code: int) -> int:
    signals.hold()  # a signal now would add a second line to the one being printed
    click.echo(f"error: {message}", err=True)
    return code


cli.add_command(analyze_cmd)  # defined in targets.command: this module stays under 500 lines
cli.add_command(sweep_cmd)
__all__ = ["UsageError", "cli", "main"]
