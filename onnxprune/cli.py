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
from onnxprune.errors import OnnxPruneError, UsageError
from onnxprune.options import PROVIDERS, SCOPES, default
from onnxprune.structured.importance import CRITERIA
from onnxprune.targets.command import analyze_cmd

MAIN_HELP = """Prune an ONNX model and prove it still answers the same.

\b
  onnxprune model.onnx --structured 0.3      remove 30% of channels/neurons (smaller, faster)
  onnxprune model.onnx --unstructured 0.5    zero 50% of weights by magnitude (smaller zipped)
  onnxprune model.onnx --nm 2:4              keep 2 of every 4 weights (sparse tensor cores)
  onnxprune inspect model.onnx               per-tensor shapes, sparsity, 2:4 status, MACs
  onnxprune validate model.onnx model.pruned.onnx --calib data.npz --labels labels.npy
                                             agreement, drift and accuracy before/after

The first form is short for `onnxprune prune model.onnx ...`; `onnxprune prune --help`
lists every option. The output is written to <stem>.pruned.onnx beside the input unless
-o is given, only after onnxruntime validated it (use --no-validate to skip).
"""


class _DefaultToPrune(click.Group):
    """Routes `onnxprune MODEL ...` to the prune command so the common case stays short."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


@click.group(
    cls=_DefaultToPrune, help=MAIN_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="onnxprune")
def cli() -> None:
    pass


def _ratio_option(name: str, help_text: str):
    return click.option(
        name,
        type=click.FloatRange(0.0, 1.0, max_open=True),
        default=None,
        metavar="R",
        help=help_text,
    )


CALIB_HELP = (
    "Calibration/validation inputs: .npz keyed by input name, a folder of .npy files, or a "
    "folder of images"
)


def _check_outputs(inputs: list[Path], outputs: list, force: bool = False) -> None:
    """Every file this command writes, checked against the files it reads before the long
    work starts (``graph.outputs``); ``outputs`` holds (flag, path or None) pairs and
    ``Output``s."""
    from onnxprune.graph.outputs import Output, check_side_outputs

    files = [o if isinstance(o, Output) else Output(*o) for o in outputs]
    check_side_outputs(inputs, [o for o in files if o.path is not None], force=force)


def _write_side_output(path: Path, flag: str, write) -> None:
    """``write(path)``, a failure of the disk (full, gone) named as one error line."""
    try:
        write(path)
    except OSError as exc:
        raise OnnxPruneError(f"could not write {flag} {path}: {exc.strerror or exc}") from exc


_calib_samples_option = click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Use only the first N calibration samples (first N files in sorted order).",
)

_calib_preprocess_option = click.option(
    "--calib-preprocess",
    default=None,
    metavar="SPEC",
    help="For an image folder: imagenet, none/raw (0..255), or a spec such as "
    "'scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225' "
    "[default: imagenet for 3 channels, scale=1/255 otherwise].",
)


_GATE_OPTIONS = [
    click.option(
        "--min-cosine",
        type=float,
        default=None,
        metavar="X",
        help="Gate: fail (exit 3, nothing written) unless the output cosine is at least X.",
    ),
    click.option(
        "--max-drop",
        type=float,
        default=None,
        metavar="P",
        help="Gate: fail unless top-1 accuracy drops by at most P points (needs labels).",
    ),
    click.option(
        "--max-rel-diff",
        type=float,
        default=None,
        metavar="X",
        help="Gate: fail unless max abs diff / max |original output| is at most X.",
    ),
]
"""Quality gates, on prune and validate; an inconclusive validation fails every gate."""

_HOLDOUT_OPTIONS = [
    click.option(
        "--val",
        type=click.Path(path_type=Path),
        default=None,
        metavar="PATH",
        help="Held-out validation inputs (same formats as --calib): validation and gates use "
        "them [default: the last 20% of --calib when it has >= 5 samples, else random].",
    ),
    click.option(
        "--val-labels",
        type=click.Path(path_type=Path),
        default=None,
        metavar="PATH",
        help="A .npy of integer class labels for the --val inputs.",
    ),
    click.option(
        "--holdout/--no-holdout",
        default=default("holdout"),
        show_default=True,
        help="With --calib and no --val: hold its last 20% out of scoring and recovery and "
        "validate on it; --no-holdout validates on the fitted samples (no gates then).",
    ),
    click.option(
        "--keep-failed",
        is_flag=True,
        help="When a gate fails, still write the pruned model, as <stem>.failed.onnx.",
    ),
]


def _data_options(labels_effect: str, providers_help: str, seed_help: str):
    """The ``DataOptions`` flags, defined once for prune and validate: --calib,
    --calib-samples, --calib-preprocess, --labels, --providers and --seed."""
    group = [
        click.option(
            "--calib",
            type=click.Path(path_type=Path),
            default=None,
            help=CALIB_HELP + " [default: random inputs].",
        ),
        _calib_samples_option,
        _calib_preprocess_option,
        click.option(
            "--labels",
            type=click.Path(path_type=Path),
            default=None,
            metavar="PATH",
            help=f"A .npy of integer class labels for the --calib inputs: {labels_effect}",
        ),
        *_GATE_OPTIONS,
        click.option(
            "--providers",
            type=click.Choice(list(PROVIDERS)),
            default=default("providers"),
            show_default=True,
            help=providers_help,
        ),
        click.option(
            "--seed", type=int, default=default("seed"), show_default=True, help=seed_help
        ),
    ]

    return _apply(group)


def _apply(options: list):
    """One decorator applying ``options`` in the order listed (the order of --help)."""

    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f

    return apply


_input_options_list = [
    click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME=1x3x640x640",
        help="Fix an input's sizes for random validation inputs and MACs (repeatable; NAME= "
        "may be left out for a one-input model) [default: from --calib, else the declared "
        "shape, else 1 for the batch, 224 for image H/W, 128 for token sequences].",
    ),
    click.option(
        "--samples",
        type=click.IntRange(min=1),
        default=default("samples"),
        show_default=True,
        metavar="N",
        help="Random validation samples (without --calib), batched as the model allows.",
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=default("threads"),
        show_default=True,
        metavar="N",
        help="onnxruntime intra-op threads for validation and latency (0: onnxruntime's own).",
    ),
]



_input_options = _apply(_input_options_list)
"""--input-shape, --samples and --threads, defined once for prune and validate."""


_prune_options = _apply(
    [
        click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path),
            default=None,
            help="Output path [default: <stem>.pruned.onnx beside the input].",
        ),
        _ratio_option(
            "--structured",
            "Remove fraction R of the channels/neurons of every prunable group (physically smaller, faster on dense hardware).",
        ),
        _ratio_option(
            "--heads",
            "Remove fraction R of the heads of each attention layer (whole key/value groups in GQA).",
        ),
        _ratio_option(
            "--unstructured",
            "Zero fraction R of the prunable weights by magnitude (no shape change).",
        ),
        click.option(
            "--nm",
            default=None,
            metavar="N:M",
            help="Zero weights to an N:M pattern along the reduction axis, e.g. 2:4.",
        ),
        click.option(
            "--scope",
            type=click.Choice(list(SCOPES)),
            default=default("scope"),
            show_default=True,
            help="local: every tensor/group loses R. global: one ranking over the whole model.",
        ),
        click.option(
            "--criterion",
            type=click.Choice(list(CRITERIA)),
            default=default("criterion"),
            show_default=True,
            help="Channel importance for --structured/--heads (activation, apoz, wanda read --calib "
            "activations); for --unstructured/--nm: magnitude, or wanda (|W| x input norm).",
        ),
        click.option(
            "--round-to",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Keep channel counts multiples of N [default: chosen for onnxruntime speed; 1 = exact].",
        ),
        click.option(
            "--max-group-ratio",
            type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
            default=default("max_group_ratio"),
            show_default=True,
            help="With --scope global: most any one group may lose.",
        ),
        click.option(
            "--exclude",
            multiple=True,
            metavar="GLOB",
            help="Leave nodes/tensors whose name matches GLOB intact (repeatable).",
        ),
        click.option(
            "--validate/--no-validate",
            default=default("validate"),
            show_default=True,
            help="Compare outputs and latency of original and pruned in onnxruntime before writing.",
        ),
        _data_options(
            "the report then shows accuracy before/after.",
            "onnxruntime provider for validation; auto takes CUDA when present.",
            "Seed for random inputs and the random criterion.",
        ),
        _apply(_HOLDOUT_OPTIONS),
        click.option(
            "--bias-correction/--no-bias-correction",
            default=None,
            help="Fold the mean contribution of removed channels/weights into the next layer's bias "
            "[default: on with --calib].",
        ),
        click.option(
            "--lstsq/--no-lstsq",
            default=None,
            help="Refit each layer that lost input channels by ridge least squares on calibration "
            "data so its output matches the original [default: on with --calib].",
        ),
        click.option(
            "--obs/--no-obs",
            default=None,
            help="For --unstructured/--nm: choose and compensate zeroed weights with a damped-Hessian "
            "(SparseGPT-style) reconstruction [default: on with --calib].",
        ),
        click.option(
            "--runs",
            type=click.IntRange(min=5),
            default=default("runs"),
            show_default=True,
            help="Latency runs per model (interleaved).",
        ),
        _input_options,
        click.option(
            "--report",
            "report_path",
            type=click.Path(path_type=Path),
            default=None,
            help="Also write the report as JSON to this path.",
        ),
        click.option("--force", is_flag=True, help="Allow the output to overwrite the input."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
    ]
)
"""The prune command's options, in --help order, kept apart so the command stays short."""


@cli.command("prune")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@_prune_options
def prune_cmd(
    model: Path, output: Path | None, report_path: Path | None, quiet: bool, **kw
) -> None:
    """Prune MODEL and write the validated result."""
    from onnxprune.api import prune_with
    from onnxprune.errors import GateError
    from onnxprune.graph.modelfile import default_output_path
    from onnxprune.graph.outputs import model_outputs
    from onnxprune.options import PruneOptions

    opts = PruneOptions(**kw)
    out = output if output is not None else default_output_path(model)
    _check_outputs([model], [*model_outputs(out), ("--report", report_path)], opts.force)
    try:
        result = prune_with(model, opts, output=out, progress=not quiet)
    except GateError as exc:  # the report says which gate failed by how much: write it first
        if report_path is not None and exc.report is not None:
            _write_side_output(report_path, "--report", exc.report.write_json)
        if not quiet and exc.report is not None:
            click.echo(exc.report.render())
        raise
    if report_path is not None:
        _write_side_output(report_path, "--report", result.report.write_json)
    if not quiet:
        click.echo(result.report.render())


@cli.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--nm",
    default="2:4",
    show_default=True,
    metavar="N:M",
    help="Pattern to check each weight against.",
)
def inspect_cmd(model: Path, nm: str) -> None:
    """Print each weight tensor's shape, sparsity and N:M status, and model totals."""
    from onnxprune.report.inspection import inspect_model

    click.echo(inspect_model(model, nm))


@cli.command("validate")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("pruned", type=click.Path(path_type=Path))
@_data_options(
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
@click.option(
    "--runs",
    type=click.IntRange(min=5),
    default=30,
    show_default=True,
    help="Latency runs per model (interleaved).",
)
@_input_options
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
            _write_side_output(json_path, "--json", lambda p: p.write_text(text))
        if isinstance(exc.report, dict):
            click.echo(render_evaluation(exc.report))
        raise
    if json_path is not None:
        text = json.dumps(result, indent=2) + "\n"
        _write_side_output(json_path, "--json", lambda p: p.write_text(text))
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
__all__ = ["UsageError", "cli", "main"]
