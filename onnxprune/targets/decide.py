"""The structured decision of one prune run: by ratio, by target, or from a saved plan.

``onnxprune.api`` calls ``prune_structured_run`` and stays short; the three ways share the
structured engine (``structured.engine.prune_structured``) or, for a saved plan, its
rewrite (``apply_plan``) without analysis, so the same plan cuts the same positions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.structured.engine import StructuredOptions, StructuredResult, prune_structured
from onnxprune.structured.rewrite import apply_plan

SAVED_OPTIONS = ("structured", "heads", "scope", "criterion", "round_to", "max_group_ratio",
                 "exclude", "seed", "target_macs", "target_params", "target_time", "calib",
                 "calib_samples", "calib_preprocess", "input_shapes")  # fmt: skip
"""The ``PruneOptions`` fields a plan file records (``options``): what chose the plan."""


def prune_structured_run(
    original: onnx.ModelProto,
    opts,
    *,
    progress: bool = False,
    stats_for: Callable | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    saved: Mapping | None = None,
) -> tuple[onnx.ModelProto, StructuredResult]:
    """Structured pruning as ``opts`` (``PruneOptions``) asks: ``saved`` (a checked plan
    document, ``targets.plans``) re-applied, else a target's kept counts
    (``targets.allocate.TargetHook``), else the engine's ratio."""
    if saved is not None:
        from onnxprune.targets.plans import saved_plan

        plan = saved_plan(saved)
        settings = plan.settings
        result = StructuredResult.from_plan(plan, str(settings.get("criterion", opts.criterion)))
        result.target = settings.get("target")  # type: ignore[assignment]
        return (original if plan.empty else apply_plan(original, plan)), result
    sopts = StructuredOptions.from_prune(opts)
    hook = None
    if opts.target is not None:
        from onnxprune.targets.allocate import TargetHook
        from onnxprune.targets.measured import with_measured_losses

        opts = with_measured_losses(original, opts)  # with --calib: measured, not score mass
        metric, fraction = opts.target
        hook = TargetHook(
            original, metric, fraction, exclude=opts.exclude, heads=opts.heads,
            max_group_ratio=opts.max_group_ratio, round_to=opts.round_to,
            input_shapes=input_shapes, **(getattr(opts, "hooks", None) or {}),
        )  # fmt: skip
    pruned, result = prune_structured(
        original, sopts, progress=progress, stats_for=stats_for, allocate=hook
    )
    if hook is not None and hook.outcome is not None:
        result.target = hook.outcome.to_dict()
        result.round_to = opts.round_to or 1  # the counts are the solver's, rounded only so
        if result.plan is not None:
            result.plan.settings["target"] = result.target
            result.plan.settings["round_to"] = result.round_to
    return pruned, result


def plan_options(opts) -> dict[str, object]:
    """The options a plan file records, as JSON values."""
    out: dict[str, object] = {}
    for name in SAVED_OPTIONS:
        value = getattr(opts, name, None)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = {k: list(v) for k, v in value.items()}
        elif value is not None and not isinstance(value, bool | int | float | str):
            value = str(value)
        out[name] = value
    return out


def read_run_plan(model: onnx.ModelProto, model_path: Path | None, opts) -> dict | None:
    """Before the long work: --save-plan checked as a side output (``graph.outputs``), and
    the --plan document read and checked against ``model`` (None without --plan)."""
    from onnxprune.targets import plans

    if opts.save_plan is not None:
        from onnxprune.graph.outputs import Output, check_side_outputs

        inputs = [Path(p) for p in (model_path, opts.plan) if p is not None]
        check_side_outputs(inputs, [Output("--save-plan", Path(opts.save_plan))])
    if opts.plan is None:
        return None
    doc = plans.read_plan(opts.plan)
    plans.check_same_model(doc, model, opts.plan)
    return doc


def save_run_plan(
    result: StructuredResult | None, model: onnx.ModelProto, model_path: Path | None, opts
) -> None:
    """After a run that passed: write --save-plan (atomically), a disk failure named."""
    from onnxprune.targets import plans

    if result is None or result.plan is None:
        return
    doc = plans.plan_document(result.plan, model, plan_options(opts),
                              str(model_path) if model_path else None)  # fmt: skip
    try:
        plans.write_plan(opts.save_plan, doc)
    except OSError as exc:
        raise OnnxPruneError(
            f"could not write --save-plan {opts.save_plan}: {exc.strerror or exc}"
        ) from exc
