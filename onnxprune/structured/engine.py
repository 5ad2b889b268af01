"""Structured pruning in one call: analyze, score, plan, rewrite.

This is the facade the public API and the CLI call. Each stage stays callable on its own
(``analyze``, ``score_groups``, ``make_plan``, ``apply_plan``) because later features slot in
between them: data-aware scores need the groups, reconstruction needs the rewritten model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import UsageError
from onnxprune.graph.view import GraphView
from onnxprune.options import (
    check_choice,
    check_fraction,
    check_has_activations,
    check_patterns,
)
from onnxprune.structured.dependency import Group, analyze
from onnxprune.structured.importance import CRITERIA, USES_DATA, activation_targets, score_groups
from onnxprune.structured.plan import (
    DEFAULT_ROUND_TO,
    GroupPlan,
    Plan,
    check_plan_options,
    make_plan,
)
from onnxprune.structured.rewrite import apply_plan
from onnxprune.structured.stream import stream_keep, stream_summary

__all__ = [
    "Group",
    "Plan",
    "StructuredOptions",
    "StructuredResult",
    "analyze",
    "apply_plan",
    "make_plan",
    "prune_structured",
    "score_groups",
]


@dataclass(frozen=True)
class StructuredOptions:
    """The structured engine's options, checked on construction (``validate``) with the
    field checks of ``onnxprune.options``; ``from_prune`` maps ``PruneOptions`` onto them."""

    ratio: float
    """Fraction of channels to remove, in [0, 1)."""
    scope: str = "local"
    """``local``: the ratio applies to each group; ``global``: to all prunable channels
    ranked together (normalized scores), capped per group by ``max_group_ratio``."""
    criterion: str = "l1"
    round_to: int | None = None
    """None: ``DEFAULT_ROUND_TO`` (measured fastest on onnxruntime); 1: exact counts."""
    max_group_ratio: float = 0.9
    exclude: Sequence[str] = ()
    """fnmatch globs on node or tensor names: groups touching a match stay intact."""
    seed: int = 0
    stats: Mapping[str, np.ndarray] | None = None
    """Per-tensor activation statistics for data-aware criteria; ignored by the others."""
    heads: float | None = None
    """Fraction of the heads of each attention layer to remove, in [0, 1) (whole key/value
    groups in grouped-query attention); None: heads stay. ``ratio`` never removes heads."""
    keep: Mapping[str, int] | None = None
    """Kept slots per group id (``make_plan``'s ``keep``: exact, no rounding), as chosen by
    ``onnxprune.targets``; groups not listed follow ``ratio``/``heads`` as usual."""
    hidden: float | None = None
    """Fraction of the channels of each LayerNorm/RMSNorm-normalized residual stream to
    remove, in [0, 1) (``onnxprune.structured.stream``; approximate); None: streams stay."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_prune(cls, opts) -> StructuredOptions:
        """The structured part of ``onnxprune.options.PruneOptions``."""
        return cls(
            ratio=opts.structured or 0.0, heads=opts.heads, scope=opts.scope or "local",
            criterion=opts.criterion, round_to=opts.round_to,
            max_group_ratio=opts.max_group_ratio, exclude=opts.exclude, seed=opts.seed,
            hidden=getattr(opts, "hidden", None),
        )  # fmt: skip

    def validate(self) -> None:
        """Raise ``UsageError`` (one line) for options that make no sense.

        The field checks are ``onnxprune.options``'s, so the messages match the API's and the
        CLI's. ``exclude`` given as one string is refused here (the front door,
        ``PruneOptions``, reads it as one pattern; this lower-level call stays strict).
        """
        round_to = DEFAULT_ROUND_TO if self.round_to is None else self.round_to
        check_plan_options(self.ratio, self.scope, round_to, self.max_group_ratio, self.heads)
        if self.hidden is not None:
            check_fraction(self.hidden, "--hidden")
        check_choice(self.criterion, "--criterion", tuple(CRITERIA))
        if isinstance(self.exclude, str):
            raise UsageError(f"--exclude must be a list of patterns, got {self.exclude!r}")
        check_patterns(self.exclude, "--exclude")
        if self.keep is not None and not isinstance(self.keep, Mapping):
            raise UsageError(f"keep must map group ids to kept slot counts, got {self.keep!r}")


@dataclass
class StructuredResult:
    """What structured pruning did: the report's ``structured`` section."""

    groups: list[GroupPlan]
    """Every prunable group, with its kept slots."""
    blocked: list[dict[str, str]]
    """Each blocked group or place (``where``, ``reason``: plan data, as saved in a plan)."""
    scope: str = "local"
    criterion: str = "l1"
    round_to: int = 1
    ratio: float = 0.0
    heads: float | None = None
    plan: Plan | None = None
    target: dict | None = None
    """With ``--target-macs``/``--target-params``: what was asked and reached
    (``onnxprune.targets.allocate.TargetOutcome.to_dict``)."""
    hidden: dict | None = None
    """With ``--hidden``: the hidden-stream section (``stream_summary``), apart from the
    exact cuts because it is approximate."""

    @classmethod
    def from_plan(cls, plan: Plan, criterion: str) -> StructuredResult:
        s = plan.settings
        return cls(
            plan.groups, plan.blocked, scope=str(s.get("scope", "local")), criterion=criterion,
            round_to=int(s.get("round_to", 1)), ratio=float(s.get("ratio", 0.0)),
            heads=s.get("heads"), plan=plan,
        )  # fmt: skip

    @property
    def settings(self) -> dict[str, object]:
        """The plan's settings (ratio, scope, round_to, ...), as saved with the plan."""
        return {} if self.plan is None else self.plan.settings

    @property
    def changed(self) -> list[GroupPlan]:
        """The groups that lost channels."""
        return [g for g in self.groups if g.channels_after != g.channels_before]

    @property
    def prunable(self) -> bool:
        """Whether any group had channels to prune."""
        return any(g.channels_before > 0 for g in self.groups)

    def to_dict(self) -> dict:
        return {
            "scope": self.scope,
            "criterion": self.criterion,
            "round_to": int(self.round_to),
            "ratio": float(self.ratio),
            **({"heads": self.heads} if self.heads is not None else {}),
            "groups": [
                {
                    "id": g.id,
                    "members": list(g.members),
                    "nodes": list(g.nodes),
                    "note": g.note,
                    "channels_before": g.channels_before,
                    "channels_after": g.channels_after,
                    "score_min": g.score_min,
                    "score_mean": g.score_mean,
                    "score_max": g.score_max,
                    **({"heads_before": g.heads, "heads_after": g.heads_after} if g.heads else {}),
                }
                for g in self.groups
            ],
            "blocked": [dict(b) for b in self.blocked],
            **({"target": dict(self.target)} if self.target is not None else {}),
            **({"hidden": dict(self.hidden)} if self.hidden is not None else {}),
        }


def prune_structured(
    model: onnx.ModelProto,
    options: StructuredOptions,
    *,
    progress: bool = False,
    stats_for: Callable[[dict[str, int], GraphView], Mapping] | None = None,
    allocate: Callable[[list[Group], Mapping[str, np.ndarray], GraphView], Mapping[str, int]]
    | None = None,
) -> tuple[onnx.ModelProto, StructuredResult]:
    """Remove whole channels; see issue #3 and the module docstrings of each stage.

    Never mutates ``model``. When nothing can be pruned, ``model`` itself is returned and
    every reason is in ``result.blocked``; the caller decides whether that is an error.
    A data-aware criterion reads ``options.stats``, or asks ``stats_for`` for the statistics
    of the tensors it names (tensor -> channel axis) once the groups are known, with the
    ``GraphView`` already built so its inferred shapes are not inferred again.
    """
    options.validate()
    check_has_activations(options.criterion, options.stats is not None or stats_for is not None)
    round_to = DEFAULT_ROUND_TO if options.round_to is None else options.round_to
    bar = _progress(progress)
    view = GraphView(model)
    bar("analyze")
    groups = analyze(model, view=view, hidden=options.hidden is not None)
    bar("score")
    stats = options.stats
    if options.criterion in USES_DATA and stats is None and stats_for is not None:
        stats = stats_for(activation_targets(groups, view), view)  # the view's shapes, reused
    scores = score_groups(groups, view, options.criterion, stats, seed=options.seed)
    bar("plan")
    keep = options.keep
    if options.hidden is not None:
        keep = {**stream_keep(groups, options.hidden, round_to), **(keep or {})}
    if allocate is not None:
        keep = {**(keep or {}), **allocate(groups, scores, view)}
    plan = make_plan(
        groups,
        scores,
        ratio=options.ratio,
        scope=options.scope,
        round_to=round_to,
        max_group_ratio=options.max_group_ratio,
        exclude=options.exclude,
        heads=options.heads,
        keep=keep,
    )
    plan.settings["criterion"] = options.criterion
    if options.hidden is not None:
        plan.settings["hidden"] = float(options.hidden)
    if not plan.groups and not plan.blocked:
        plan.blocked.append(
            {
                "where": "model",
                "reason": "no prunable producer (Conv, ConvTranspose, Gemm or MatMul with a constant weight)",
            }
        )
    result = StructuredResult.from_plan(plan, options.criterion)
    if options.hidden is not None:
        result.hidden = stream_summary(plan, groups, options.hidden)
    if plan.empty:
        bar(None)
        return model, result
    bar("rewrite")
    pruned = apply_plan(model, plan, view=view)
    bar(None)
    return pruned, result


def _progress(enabled: bool):
    """A tiny stage reporter on the shared progress bar; a no-op when disabled."""
    if not enabled:
        return lambda stage: None
    from onnxprune.progress import progress_bar

    bar = progress_bar(total=4, desc="structured", unit="stage")

    def step(stage: str | None) -> None:
        if stage is None:
            bar.update(bar.total - bar.n)
            bar.close()
        else:
            if bar.n or stage != "analyze":
                bar.update(1)
            bar.set_postfix_str(stage)

    return step
