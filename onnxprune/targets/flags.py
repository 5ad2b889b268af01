"""The prune command's target and plan flags (click), kept here so ``cli.py`` stays short.

``--target-macs R`` / ``--target-params R`` map onto ``PruneOptions.target_macs`` /
``target_params``, ``--target-speedup S`` onto ``target_speedup`` (``targets.search``),
``--save-plan`` / ``--plan`` onto ``save_plan`` / ``plan``, ``--jobs`` / ``--ray`` onto
``jobs`` / ``ray`` (where a search's candidates run).
"""

from __future__ import annotations

from pathlib import Path

import click

JOB_OPTIONS = [
    click.option(
        "--jobs",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        metavar="N",
        help="Run a search's independent candidates in N worker processes (the quality "
        "search's families; the latency table's groups, which then time with contention "
        "unless N x --threads fits the cores); with --calib, the activation statistics of a "
        "data-aware criterion in N shards of the samples, their sums added.",
    ),
    click.option(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="Run them (and the calibration shards) as tasks on the Ray cluster at ADDRESS "
        "(host:port, or auto; needs "
        "pip install 'onnxprune[ray]' and the model at the same path on every node).",
    ),
]
"""--jobs and --ray: where a search's candidates run (prune and sweep)."""

TARGET_OPTIONS = [
    click.option(
        "--target-macs",
        type=click.FloatRange(0.0, 1.0, min_open=True),
        default=None,
        metavar="R",
        help="Instead of --structured: keep at most fraction R of the MACs, removing channels "
        "per group where they cost least (loss per MAC saved: with --calib each group's "
        "output loss measured after recovery, else the score mass removed; --scope does not "
        "apply); exact counts unless --round-to is given.",
    ),
    click.option(
        "--target-params",
        type=click.FloatRange(0.0, 1.0, min_open=True),
        default=None,
        metavar="R",
        help="The same for the parameters.",
    ),
    click.option(
        "--target-speedup",
        type=click.FloatRange(1.0, min_open=True),
        default=None,
        metavar="S",
        help="Instead of --structured: the per-group cut (cheapest milliseconds first, see "
        "--price-by) whose pruned model runs S times faster, measured in onnxruntime "
        "(--providers, --threads, the validation's batch and shapes), corrected until "
        "within 2.5% or 6 candidates; met within 5%; recovery once, on the result, timed "
        "again when it disagrees with the search. With --calib the uniform cut is searched "
        "to the same speed too, and the one that keeps more after recovery is kept.",
    ),
    click.option(
        "--staircase/--no-staircase",
        default=None,
        help="With --target-speedup: first measure each group's latency at a few widths "
        "(up to 60 s) and keep only counts on that measured staircase [default: on].",
    ),
    click.option(
        "--price-by",
        type=click.Choice(["time", "macs"]),
        default="time",
        show_default=True,
        help="With --target-speedup: what the allocation spends, each layer's profiled "
        "milliseconds on the target (a depthwise convolution costs several times the time "
        "per MAC of a 1x1) or its MACs.",
    ),
    *JOB_OPTIONS,
    click.option(
        "--save-plan",
        type=click.Path(path_type=Path),
        default=None,
        metavar="PATH",
        help="Write the structured decision (kept channels per group, settings, model hash) "
        "as JSON.",
    ),
    click.option(
        "--plan",
        type=click.Path(path_type=Path),
        default=None,
        metavar="PATH",
        help="Re-apply a --save-plan file to the model it was made for (another is refused).",
    ),
]
"""In --help order, after the other pruning flags."""
