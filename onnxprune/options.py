"""The options of a run: built once, normalized once, checked once, for the CLI and the API.

``PruneOptions`` (the ``prune`` command and ``onnxprune.prune``) and ``ValidateOptions`` (the
``validate`` command) are frozen dataclasses whose constructor normalizes and validates every
field, so an options object that exists is a valid one. Both share ``DataOptions``: the
calibration data, labels, providers and seed. The structured engine's ``StructuredOptions``
uses the same field checks below, so a bad value reads the same from every door.

Normalization: a string given for a sequence option (``exclude="head*"``) is one pattern, not
its characters; an N:M pattern is a ``(n, m)`` tuple whether given as ``"2:4"`` or ``(2, 4)``.
Numbers are type-checked (``True``, ``"0.5"`` and ``"abc"`` are not numbers).

Every message has one shape, ``<flag> must be <what>, got <value>``, naming the command-line
flag, so a script calling the API and a person at the terminal read the same thing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from onnxprune.errors import UsageError
from onnxprune.option_checks import (  # noqa: F401  (re-exported: the checks' old home)
    check_choice,
    check_flag,
    check_fraction,
    check_has_activations,
    check_int,
    check_kept_fraction,
    check_nm,
    check_open_fraction,
    check_path,
    check_patterns,
    check_real,
    is_int,
    is_real,
    optional,
    parse_nm,
)

SCOPES = ("local", "global")
UNSTRUCTURED_SCOPES = (*SCOPES, "owl")  # owl: per-layer ratios (unstructured.allocation)
HOLDOUT_FRACTION = 0.2
"""With only --calib, this last fraction of its samples is held out for validation."""
HOLDOUT_MIN = 5
"""... when there are at least this many samples (fewer: all are used, and flagged)."""
PROVIDERS = ("cpu", "cuda", "auto")
PRICES = ("time", "macs")
"""What a --target-speedup search's allocation spends (``PruneOptions.price_by``)."""


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """What a run is fed and where it runs: shared by ``prune`` and ``validate``."""

    calib: str | os.PathLike | None = None
    calib_samples: int | None = None
    calib_preprocess: str | None = None
    labels: str | os.PathLike | None = None
    providers: str = "cpu"
    seed: int = 0
    min_cosine: float | None = None
    """Gate: fail (exit 3) unless the cosine of the outputs is at least this."""
    max_drop: float | None = None
    """Gate: fail unless top-1 accuracy drops by at most this many points (needs labels)."""
    max_rel_diff: float | None = None
    """Gate: fail unless max abs diff / max |reference| is at most this."""
    input_shapes: dict | None = None
    """``--input-shape``: ``{"x": (1, 3, 640, 640)}``, or strings ``"x=1x3x640x640"``;
    stored as ``{name: dims}`` ("" for the only input). Checked against the model at load."""
    samples: int = 16
    """``--samples``: random validation samples (without --calib)."""
    threads: int = 0
    """``--threads``: onnxruntime intra-op threads for validation and latency (0: its own)."""

    def __post_init__(self) -> None:
        from onnxprune.runtime.shapes import parse_input_shapes

        self._set(input_shapes=parse_input_shapes(self.input_shapes) or None)
        self._set(samples=check_int(self.samples, "--samples", 1))
        self._set(threads=check_int(self.threads, "--threads", 0))
        self._set(
            min_cosine=optional(check_real, self.min_cosine, "--min-cosine", -1.0, 1.0),
            max_drop=optional(check_real, self.max_drop, "--max-drop", 0.0, 100.0),
            max_rel_diff=optional(check_real, self.max_rel_diff, "--max-rel-diff", 0.0, 1e300),
        )
        self._set(calib_samples=optional(check_int, self.calib_samples, "--calib-samples", 1))
        self._set(providers=check_choice(self.providers, "--providers", PROVIDERS))
        self._set(seed=check_int(self.seed, "--seed", 0))
        self._set(calib=check_path(self.calib, "--calib"))
        self._set(labels=check_path(self.labels, "--labels"))
        if self.calib_preprocess is not None and not isinstance(self.calib_preprocess, str):
            raise UsageError(
                f"--calib-preprocess must be a string, got {self.calib_preprocess!r}"
            )
        if self.calib is None:
            asked = [flag for flag, value in self._needs_calib().items() if value]
            if asked:
                raise UsageError(f"{asked[0]} needs --calib: pass --calib PATH")

    @property
    def gates(self):
        """The quality gates asked for (``onnxprune.runtime.gates.Gates``)."""
        from onnxprune.runtime.gates import Gates

        return Gates(self.min_cosine, self.max_drop, self.max_rel_diff)

    def _check_max_drop(self, has_labels: bool, which: str) -> None:
        if self.max_drop is not None and not has_labels:
            raise UsageError(
                f"--max-drop compares accuracy before and after: pass {which} for the "
                "validation data"
            )

    def _needs_calib(self) -> dict[str, object]:
        """Options that only mean something with --calib, by flag (in message order)."""
        return {"--labels": self.labels, "--calib-samples": self.calib_samples,
                "--calib-preprocess": self.calib_preprocess}  # fmt: skip

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def data_kwargs(self) -> dict[str, object]:
        """The shared fields as keyword arguments (for ``evaluate_files``)."""
        return {f.name: getattr(self, f.name) for f in fields(DataOptions)}


@dataclass(frozen=True, kw_only=True)
class ValidateOptions(DataOptions):
    """The ``validate`` command: compare two model files on the same inputs."""

    runs: int = 30
    """``--runs``: latency runs per model (interleaved)."""

    def __post_init__(self) -> None:
        self._set(runs=check_int(self.runs, "--runs", 1))
        super().__post_init__()
        self._check_max_drop(self.labels is not None, "--calib and --labels")


@dataclass(frozen=True, kw_only=True)
class PruneOptions(DataOptions):
    """Every knob of one ``prune`` run, normalized and checked on construction."""

    structured: float | None = None
    heads: float | None = None
    hidden: float | None = None
    """``--hidden R``: remove fraction R of the channels of each LayerNorm/RMSNorm-normalized
    residual stream (``onnxprune.structured.stream``); approximate, reported apart."""
    unstructured: float | None = None
    nm: tuple[int, int] | None = None
    """Given as ``"2:4"`` or ``(2, 4)``; stored as ``(2, 4)``."""
    scope: str | None = None
    """``--scope``; None: local, except ``--unstructured`` with ``--calib``, which defaults
    to global (``unstructured_scope``: README "Targets", the MLP at 90% keeps 97.5% vs 94.7%)."""
    criterion: str | None = None
    """None: ``auto`` with --calib, ``l1`` without (``importance.resolve_criterion``)."""
    round_to: int | None = None
    max_group_ratio: float = 0.9
    exclude: tuple[str, ...] = ()
    validate: bool = True
    runs: int = 30
    force: bool = False
    external_data: bool | None = None
    bias_correction: bool | None = None
    lstsq: bool | None = None
    obs: bool | None = None
    val: str | os.PathLike | None = None
    """Held-out validation data (same formats as ``calib``): validation and gates use it."""
    val_labels: str | os.PathLike | None = None
    """Integer labels of the ``val`` samples (accuracy, ``--max-drop``)."""
    holdout: bool = True
    """With ``calib`` and no ``val``: hold the last ``HOLDOUT_FRACTION`` of the calibration
    samples (at least 1, when there are at least ``HOLDOUT_MIN``) out of scoring and recovery
    and validate on them. False (``--no-holdout``): fit and validate on all of them."""
    keep_failed: bool = False
    """When a gate fails, still write the pruned model, as ``<stem>.failed.onnx``."""
    target_macs: float | None = None
    """``--target-macs R``: keep at most fraction R of the MACs, channels chosen per group
    (``onnxprune.targets``); replaces ``structured``."""
    target_params: float | None = None
    """``--target-params R``: the same for the parameters."""
    target_time: float | None = None
    """API only, set by the --target-speedup search for its candidates: keep at most fraction
    R of the profiled milliseconds (``targets.costs``' ``time`` metric; the node times come
    in ``hooks``)."""
    save_plan: str | os.PathLike | None = None
    """``--save-plan PATH``: write the structured decision there (``targets.plans``)."""
    plan: str | os.PathLike | None = None
    """``--plan PATH``: re-apply a saved decision to the model it was made for."""
    target_speedup: float | None = None
    """``--target-speedup S``: the MAC fraction whose pruned model runs S times faster,
    measured (``onnxprune.targets.search``); replaces ``structured``."""
    staircase: bool | None = None
    """``--staircase/--no-staircase``: with --target-speedup, measure a latency table first
    and keep each group's count on its measured staircase (``targets.latency``); None: on
    with --target-speedup."""
    price_by: str = "time"
    """``--price-by``: what a --target-speedup search's allocation spends, ``time`` (each
    node's profiled milliseconds, ``targets.costs``) or ``macs`` (README "Targets")."""
    jobs: int = 1
    """``--jobs N``: a search's independent candidates in N local worker processes
    (``targets.executor``): the quality search's families, the latency table's groups;
    and the calibration statistics of a data-aware criterion, in N shards of the samples."""
    ray: str | None = None
    """``--ray ADDRESS``: the same jobs as tasks on that Ray cluster (``onnxprune[ray]``)."""
    hooks: dict | None = None
    """API only, set by ``targets.search`` for its candidates: ``losses_for`` (measured
    sensitivities), ``allowed_for`` (a measured latency staircase), ``node_ms`` and
    ``overhead_ms`` (profiled node times, for ``target_time``) handed to the target
    allocation (``targets.allocate.TargetHook``)."""

    def __post_init__(self) -> None:
        from onnxprune.structured.importance import CRITERIA, resolve_criterion

        self._check_targets()
        if self.search is None and all(x is None for x in (
                self.structured, self.heads, self.hidden, self.unstructured, self.nm,
                self.target, self.plan)):  # fmt: skip
            raise UsageError(
                "nothing to do: pass --structured RATIO, --heads RATIO, --hidden RATIO, "
                "--unstructured RATIO, "
                "--nm N:M, --target-macs R, --target-params R, --target-speedup S, or a "
                "quality gate (--max-drop P, --min-cosine X) alone for the fastest model "
                "that keeps it"
            )
        if self.unstructured is not None and self.nm is not None:
            raise UsageError("choose one of --unstructured and --nm")
        self._set(
            structured=optional(check_fraction, self.structured, "--structured"),
            heads=optional(check_fraction, self.heads, "--heads"),
            hidden=optional(check_fraction, self.hidden, "--hidden"),
            unstructured=optional(check_fraction, self.unstructured, "--unstructured"),
            nm=optional(check_nm, self.nm, "--nm"),
            scope=optional(check_choice, self.scope, "--scope", UNSTRUCTURED_SCOPES),
            criterion=check_choice(resolve_criterion(self.criterion, self.calib is not None),
                                   "--criterion", tuple(CRITERIA)),
            round_to=optional(check_int, self.round_to, "--round-to", 1),
            max_group_ratio=check_open_fraction(self.max_group_ratio, "--max-group-ratio"),
            exclude=check_patterns(self.exclude, "--exclude"),
            runs=check_int(self.runs, "--runs", 1),
            validate=check_flag(self.validate, "--validate"),
            force=check_flag(self.force, "--force"),
            external_data=check_flag(self.external_data, "external_data", optional=True),
            bias_correction=check_flag(self.bias_correction, "--bias-correction", True),
            lstsq=check_flag(self.lstsq, "--lstsq", True),
            obs=check_flag(self.obs, "--obs", True),
        )
        super().__post_init__()
        check_has_activations(self.criterion, self.calib is not None)
        self._check_owl()
        self._check_jobs()
        self._check_validation_data()

    def _check_jobs(self) -> None:
        """--jobs N and --ray ADDRESS: where a search's candidates run."""
        self._set(jobs=check_int(self.jobs, "--jobs", 1))
        if self.ray is not None and not (isinstance(self.ray, str) and self.ray.strip()):
            raise UsageError(f"--ray must be a cluster address (host:port, auto), got {self.ray!r}")
        if (self.jobs > 1 or self.ray is not None) and self.search is None and self.calib is None:
            raise UsageError("--jobs and --ray run a search's candidates or shards of the "
                             "calibration set: pass --target-speedup S, a gate alone "
                             "(--max-drop P, --min-cosine X), or --calib")  # fmt: skip

    def _check_owl(self) -> None:
        """--scope owl: per-layer sparsity for --unstructured, from Wanda's outliers."""
        if self.scope != "owl":
            return
        if self.unstructured is None or self.wants_structured:
            raise UsageError("--scope owl allocates --unstructured sparsity per layer: pass "
                             "--unstructured RATIO alone (structured and --nm use local or "
                             "global)")  # fmt: skip
        if self.criterion != "wanda":
            raise UsageError("--scope owl weighs each layer by its Wanda outliers (weights x "
                             "activations): pass --criterion wanda with --calib")  # fmt: skip

    def _check_validation_data(self) -> None:
        """--val, --val-labels, --no-holdout and the gates make sense together."""
        if not isinstance(self.holdout, bool):
            raise UsageError(f"--holdout must be True or False, got {self.holdout!r}")
        if self.val_labels is not None and self.val is None:
            raise UsageError("--val-labels needs --val: they label the --val samples")
        if self.val is not None and not self.validate:
            raise UsageError("--val is validation data: it cannot be used with --no-validate")
        if not self.gates.any:
            return
        if not self.validate:
            raise UsageError(
                "a gate (--min-cosine, --max-drop, --max-rel-diff) needs validation: "
                "drop --no-validate"
            )
        if self.val is not None:
            self._check_max_drop(self.val_labels is not None, "--val-labels")
        else:
            self._check_max_drop(self.labels is not None, "--labels")
        if self.calib is not None and self.val is None and not self.holdout:
            raise UsageError(
                "a gate scored on the data recovery was fitted to is not a gate: with "
                "--no-holdout pass held-out data with --val PATH (or drop --no-holdout)"
            )

    def _check_targets(self) -> None:
        """--target-macs, --target-params, --plan and --save-plan make sense together."""
        self._set(
            target_macs=optional(check_kept_fraction, self.target_macs, "--target-macs"),
            target_params=optional(check_kept_fraction, self.target_params, "--target-params"),
            target_time=optional(check_kept_fraction, self.target_time, "target_time"),
            save_plan=check_path(self.save_plan, "--save-plan"),
            plan=check_path(self.plan, "--plan"),
        )
        if sum(x is not None for x in (self.target_macs, self.target_params,
                                       self.target_time)) > 1:  # fmt: skip
            raise UsageError("choose one of --target-macs and --target-params")
        if self.target_time is not None and "node_ms" not in (self.hooks or {}):
            raise UsageError("target_time prices by profiled node times: hooks['node_ms']")
        self._check_speedup()
        flag = "--target-macs" if self.target_macs is not None else "--target-params"
        if self.hidden is not None and (self.target is not None or self.target_speedup is not None):
            raise UsageError("--hidden takes a ratio of its own: combine it with --structured R, "
                             "not with --target-macs, --target-params or --target-speedup")  # fmt: skip
        if self.target is not None and self.structured is not None:
            raise UsageError(f"choose one of --structured and {flag}: the target chooses "
                             "how much each group loses")  # fmt: skip
        if self.plan is not None:
            given = [f for f, v in (("--structured", self.structured), ("--heads", self.heads),
                                    ("--hidden", self.hidden),
                                    (flag, self.target)) if v is not None]  # fmt: skip
            if given:
                raise UsageError(f"--plan re-applies a saved decision: drop {given[0]}")
        if self.save_plan is not None and not (self.wants_structured or self.plan):
            raise UsageError("--save-plan saves a structured decision: pass --structured, "
                             "--heads, --target-macs or --target-params")  # fmt: skip

    def _check_speedup(self) -> None:
        """--target-speedup: a number above 1, alone among the targets, measured."""
        s = self.target_speedup
        self._set(staircase=check_flag(self.staircase, "--staircase", optional=True),
                  price_by=check_choice(self.price_by, "--price-by", PRICES))
        if s is None:
            if self.staircase:
                raise UsageError("--staircase prices the --target-speedup search: pass "
                                 "--target-speedup S")  # fmt: skip
            return
        if not (is_real(s) and 1.0 < float(s) <= 1000.0):
            raise UsageError(f"--target-speedup must be a number above 1, got {s!r}")
        self._set(target_speedup=float(s))
        for flag, value in (("--structured", self.structured), ("--plan", self.plan),
                            ("--target-macs", self.target_macs),
                            ("--target-params", self.target_params)):  # fmt: skip
            if value is not None:
                raise UsageError(f"choose one of {flag} and --target-speedup: the speed-up "
                                 "chooses how much each group loses")  # fmt: skip
        if not self.validate:
            raise UsageError("--target-speedup is measured in onnxruntime: drop --no-validate")

    @property
    def uses_staircase(self) -> bool:
        """Whether a --target-speedup search measures the latency staircase first."""
        return self.target_speedup is not None and self.staircase is not False

    @property
    def search(self) -> str | None:
        """Which search this run is (``targets.search``): ``"speedup"`` for
        --target-speedup, ``"quality"`` for --max-drop/--min-cosine with nothing else to
        do but --heads R, which fixes the heads as in a target (the fewest MACs that keep
        that quality), None for a plain run."""
        if self.target_speedup is not None:
            return "speedup"
        plain = (self.structured, self.hidden, self.unstructured, self.nm,  # --heads: fixed
                 self.target_macs, self.target_params, self.target_time, self.plan)  # fmt: skip
        if all(x is None for x in plain) and (self.max_drop is not None
                                              or self.min_cosine is not None):  # fmt: skip
            return "quality"
        return None

    @property
    def unstructured_scope(self) -> str:
        """--scope for --unstructured: as given, else global with --calib (OBS recovers a
        model-wide ranking best: README "Targets") and local without data."""
        if self.scope is not None:
            return self.scope
        return "global" if self.calib is not None else "local"

    @property
    def target(self) -> tuple[str, float] | None:
        """(metric, fraction kept) of --target-macs / --target-params, or None."""
        if self.target_macs is not None:
            return "macs", self.target_macs
        if self.target_params is not None:
            return "params", self.target_params
        if self.target_time is not None:
            return "time", self.target_time
        return None

    def _needs_calib(self) -> dict[str, object]:
        return {"--bias-correction": self.bias_correction, "--lstsq": self.lstsq,
                "--obs": self.obs, **super()._needs_calib()}  # fmt: skip

    @property
    def wants_structured(self) -> bool:
        return (self.structured is not None or self.heads is not None
                or self.hidden is not None or self.target is not None or self.plan is not None
                or self.search is not None)  # fmt: skip

    @property
    def wants_unstructured(self) -> bool:
        return self.unstructured is not None or self.nm is not None

    def step(self, name: str) -> bool:
        """Whether recovery step ``name`` runs: as asked, else on exactly when --calib is."""
        asked = {"bias": self.bias_correction, "lstsq": self.lstsq, "obs": self.obs}[name]
        return self.calib is not None if asked is None else bool(asked)

    def stages(self) -> list[str]:
        """The stages this run enters, in order (for the progress bar): ``measure`` twice,
        once before pruning and once joining the compressed sizes at the end."""
        return ["load", "measure", "calibrate", "prune", "measure pruned", "save"] + (
            ["validate"] if self.validate else []
        ) + ["measure"]


def default(name: str) -> object:
    """The default of a ``PruneOptions``/``ValidateOptions`` field: the CLI's defaults are
    these, so the command line and the API cannot drift apart."""
    for f in fields(PruneOptions):
        if f.name == name:
            return f.default
    raise KeyError(name)
