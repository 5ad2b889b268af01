"""The command line's options and examples, each defined once and shared by the commands
that take it (``cli.py`` holds the commands). Kept apart so that the commands stay short and
an option's help, default and type live in one place."""

from __future__ import annotations

from pathlib import Path

import click

from onnxprune.options import PROVIDERS, UNSTRUCTURED_SCOPES, default
from onnxprune.structured.importance import CRITERIA
from onnxprune.targets.flags import TARGET_OPTIONS

TYPED = "onnxprune.typed"
"""``click.Context.meta`` key of the command line as typed (the HTML report repeats it)."""

PRUNE_EXAMPLES = """\b
Examples:
  onnxprune model.onnx --structured 0.3
  onnxprune model.onnx --structured 0.3 --calib images/ --val held_out.npz --min-cosine 0.99
  onnxprune model.onnx --unstructured 0.8 --scope global --calib data.npz -o out.onnx
  onnxprune model.onnx --target-speedup 2 --threads 1 --calib images/
  onnxprune model.onnx --max-drop 1 --calib data.npz --labels labels.npy
      (a gate alone: the fewest MACs that keep it)
"""

INSPECT_EXAMPLES = """\b
Examples:
  onnxprune inspect model.onnx
  onnxprune inspect det.onnx --input-shape images=1x3x640x640 --json layers.json
  onnxprune inspect model.pruned.onnx --nm 2:4
"""

VALIDATE_EXAMPLES = """\b
Examples:
  onnxprune validate model.onnx model.pruned.onnx
  onnxprune validate model.onnx model.pruned.onnx --calib test.npz --labels labels.npy --max-drop 1
  onnxprune validate det.onnx det.pruned.onnx --input-shape images=1x3x640x640 --threads 1
"""


CRITERION_OPTION = click.option(
    "--criterion",
    type=click.Choice(list(CRITERIA)),
    default=default("criterion"),
    show_default=True,
    help="Channel importance for --structured/--heads (activation, apoz and wanda read "
    "--calib activations). [default: auto with --calib: wanda for groups of MatMul/Gemm "
    "layers (FFN neurons, heads), l1 for convolutions; l1 without] --unstructured/--nm "
    "rank weights by |W| for every criterion but wanda, which scores |W| x the input's norm.",
)
MAX_GROUP_RATIO_OPTION = click.option(
    "--max-group-ratio",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=default("max_group_ratio"),
    show_default=True,
    help="With --scope global: most any one group may lose.",
)
EXCLUDE_OPTION = click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave nodes/tensors whose name matches GLOB intact (repeatable).",
)
RUNS_OPTION = click.option(
    "--runs",
    type=click.IntRange(min=5),
    default=default("runs"),
    show_default=True,
    help="Latency runs per model (interleaved).",
)
"""Options several commands take (prune, validate, analyze, sweep), defined once."""


def ratio_option(name: str, help_text: str):
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


calib_samples_option = click.option(
    "--calib-samples",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Use only the first N calibration samples (first N files in sorted order).",
)

calib_preprocess_option = click.option(
    "--calib-preprocess",
    default=None,
    metavar="SPEC",
    help="For an image folder: imagenet, none/raw (0..255), or a spec of scale, mean and "
    "std, e.g. scale=1/255,mean=0.5,std=0.5 (per channel: mean=0.485,0.456,0.406) "
    "[default: imagenet for 3 channels, scale=1/255 otherwise].",
)


GATE_OPTIONS = [
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

HOLDOUT_OPTIONS = [
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


def data_options(labels_effect: str, providers_help: str, seed_help: str):
    """The ``DataOptions`` flags, defined once for prune and validate: --calib,
    --calib-samples, --calib-preprocess, --labels, --providers and --seed."""
    group = [
        click.option(
            "--calib",
            type=click.Path(path_type=Path),
            default=None,
            help=CALIB_HELP + " [default: random inputs].",
        ),
        calib_samples_option,
        calib_preprocess_option,
        click.option(
            "--labels",
            type=click.Path(path_type=Path),
            default=None,
            metavar="PATH",
            help=f"A .npy of integer class labels for the --calib inputs: {labels_effect}",
        ),
        *GATE_OPTIONS,
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

    return apply_options(group)


def apply_options(options: list):
    """One decorator applying ``options`` in the order listed (the order of --help)."""

    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f

    return apply


INPUT_OPTIONS = [
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


input_options = apply_options(INPUT_OPTIONS)
"""--input-shape, --samples and --threads, defined once for prune and validate."""


prune_options = apply_options(
    [
        click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path),
            default=None,
            help="Output path [default: <stem>.pruned.onnx beside the input].",
        ),
        ratio_option(
            "--structured",
            "Remove fraction R of the channels/neurons of every prunable group (physically smaller, faster on dense hardware).",
        ),
        ratio_option(
            "--heads",
            "Remove fraction R of the heads of each attention layer (whole key/value groups in "
            "GQA). With a target (--target-speedup, --target-macs, --target-params, or "
            "--max-drop/--min-cosine alone) heads are allocated with the other groups; "
            "--heads R then fixes them at R (--heads 0 keeps every head).",
        ),
        ratio_option(
            "--hidden",
            "Remove fraction R of the channels of each residual stream normalized by LayerNorm/"
            "RMSNorm (ConvNeXt/Swin stages, a transformer's hidden size): the stem or "
            "embeddings, every projection into and out of the stream, the norms' scale and "
            "bias, positional tables and the classifier input are cut together. Approximate, "
            "not exact: each norm then normalizes over the kept channels (the report says so); "
            "--calib repairs it by refitting the stream's consumers. Stream counts round to "
            "the nearest multiple of --round-to (other groups round up). Without --hidden "
            "those streams are kept whole.",
        ),
        ratio_option(
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
            type=click.Choice(list(UNSTRUCTURED_SCOPES)),
            default=None,
            help="local: every tensor/group loses R. global: one ranking over the whole model. "
            "owl (--unstructured --criterion wanda): per-layer ratios, fewer zeros where a "
            "layer has more outliers (OWL) [default: local; global for --unstructured with "
            "--calib, where OBS recovers it best (README 'Targets')].",
        ),
        CRITERION_OPTION,
        click.option(
            "--round-to",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Keep channel counts multiples of N, rounded up (--hidden streams: to the "
            "nearest) and never above the original "
            "[default: 16, measured fastest in onnxruntime (README, 'Why round-to 16'); "
            "1 = exact counts].",
        ),
        MAX_GROUP_RATIO_OPTION,
        EXCLUDE_OPTION,
        click.option(
            "--validate/--no-validate",
            default=default("validate"),
            show_default=True,
            help="Compare outputs and latency of original and pruned in onnxruntime before writing.",
        ),
        data_options(
            "the report then shows accuracy before/after.",
            "onnxruntime provider for validation; auto takes CUDA when present.",
            "Seed for random inputs and the random criterion.",
        ),
        apply_options(HOLDOUT_OPTIONS),
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
        RUNS_OPTION,
        input_options,
        click.option(
            "--report",
            "report_path",
            type=click.Path(path_type=Path),
            default=None,
            metavar="PATH",
            help="Also write the report to PATH: a self-contained HTML page with plots when "
            "PATH ends in .html (profiles both models per op type: a few seconds more), "
            "else JSON.",
        ),
        click.option("--force", is_flag=True, help="Allow the output to overwrite the input."),
        click.option("--dry-run", is_flag=True, help="Do everything (prune, recover, validate, "
                     "report) but write no model: what --structured would do, before you commit."),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
        click.option(
            "-v", "--verbose", is_flag=True,
            help="List every group in the table (default: the first 25 and a summary line).",
        ),
        *TARGET_OPTIONS,
    ]
)
"""The prune command's options, in --help order, kept apart so the command stays short."""


inspect_options = apply_options(
    [
        click.option("--nm", default="2:4", show_default=True, metavar="N:M",
                     help="Pattern to check each weight against."),
        click.option(
            "--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x640x640",
            help="Fix an input's sizes for the MACs (repeatable; NAME= may be left out for a "
            "one-input model) [default: the declared shape, else 1 for the batch, 224 for "
            "image H/W, 128 for token sequences].",
        ),
        click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
                     metavar="PATH", help="Also write everything shown as JSON to PATH."),
    ]
)
"""The inspect command's options."""
