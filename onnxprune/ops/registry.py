"""The op registry: every :class:`OpSpec` onnxprune knows, listed explicitly in one table.

``default_registry()`` builds a fresh registry from ``default_specs()``; lookups go to the
*active* registry, the default one unless a block runs under :func:`using` or
:func:`registered`. A user adds or overrides an op with :func:`register` (for the rest of the
process) or :func:`registered` (for a ``with`` block, nothing leaks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import onnx

from onnxprune.ops import (
    attention,
    control,
    conv,
    elementwise,
    embedding,
    fused,
    layout,
    linear,
    norm,
    pool,
    quantized,
    recurrent,
    routing,
    shape,
)
from onnxprune.ops.base import Rule
from onnxprune.ops.spec import OpSpec, normalize_domain, specs

Opsets = Mapping[str, int]


def default_specs() -> list[OpSpec]:
    """The table: every op type onnxprune knows, by family."""
    return [
        *conv.SPECS,
        *linear.SPECS,
        *specs(elementwise.UNARY, rule=elementwise.Unary()),
        *specs(elementwise.BROADCAST, rule=elementwise.Broadcast()),
        *specs(("BatchNormalization", "InstanceNormalization"), rule=norm.PerChannelNorm()),
        *specs(("LayerNormalization", "MeanVarianceNormalization"), rule=norm.SpanNorm()),
        OpSpec("RMSNormalization", rule=norm.SpanNorm(), since=23),
        *specs(("LRN", "GroupNormalization"), rule=norm.CrossChannelNorm()),
        *specs(pool.POOL, rule=pool.Pool()),
        *specs((*pool.REDUCE, "ArgMax", "ArgMin"), rule=pool.Reduce()),
        *specs(("Softmax", "LogSoftmax", "Hardmax", "CumSum"), rule=pool.AlongAxis()),
        OpSpec("Pad", rule=pool.PadRule()),
        *specs(("Resize", "Upsample"), rule=pool.ResizeRule()),
        OpSpec("Concat", rule=routing.ConcatRule()),
        OpSpec("Split", rule=routing.SplitRule()),
        OpSpec("Slice", rule=routing.SliceRule()),
        OpSpec("Gather", rule=embedding.EmbeddingGather()),
        OpSpec("Transpose", rule=layout.TransposeRule()),
        OpSpec("Squeeze", rule=layout.SqueezeRule()),
        OpSpec("Unsqueeze", rule=layout.UnsqueezeRule()),
        OpSpec("Flatten", rule=layout.FlattenRule()),
        OpSpec("Reshape", rule=layout.ReshapeRule()),
        *specs(("Expand", "Tile"), rule=layout.RepeatRule()),
        OpSpec("Shape", rule=shape.ShapeRule()),
        OpSpec("Size", rule=shape.SizeRule()),
        *specs(attention.FUSED, rule=attention.FusedAttentionRule()),
        *fused.SPECS,
        *quantized.SPECS,
        *recurrent.SPECS,
        *specs(control.CONTROL, rule=control.ControlRule()),
    ]


class Registry:
    """Specs keyed by (domain, op type); several per key when their opset ranges differ."""

    def __init__(self, entries: list[OpSpec] | None = None) -> None:
        self._specs: dict[tuple[str, str], list[OpSpec]] = {}
        for spec in entries or ():
            self.register(spec)

    def copy(self) -> Registry:
        new = Registry()
        new._specs = {k: list(v) for k, v in self._specs.items()}
        return new

    def register(self, spec: OpSpec, *, override: bool = False) -> OpSpec:
        """Add ``spec``. A spec whose opset range overlaps one of the same key replaces it
        with ``override=True`` and is refused otherwise (``ValueError``)."""
        have = self._specs.setdefault(spec.key, [])
        clash = [s for s in have if _overlap(s, spec)]
        if clash and not override:
            raise ValueError(f"two specs for {spec.name} (pass override=True to replace it)")
        have[:] = [s for s in have if not any(s is c for c in clash)] + [spec]
        return spec

    def lookup(self, domain: str, op_type: str, opset: int | None = None) -> OpSpec | None:
        """The spec of ``domain``/``op_type`` that covers ``opset`` (None: the latest one)."""
        found = [
            s for s in self._specs.get((normalize_domain(domain), op_type), ()) if s.applies(opset)
        ]
        if not found:
            return None
        return max(found, key=lambda s: -1 if s.since is None else s.since)

    def spec_for(self, node: onnx.NodeProto, opsets: Opsets | None = None) -> OpSpec | None:
        domain = normalize_domain(node.domain)
        return self.lookup(domain, node.op_type, (opsets or {}).get(domain))

    def specs(self) -> list[OpSpec]:
        return [s for group in self._specs.values() for s in group]

    def supported_ops(self) -> list[str]:
        """Names of the op types with a channel rule (``domain.op`` outside ONNX)."""
        return sorted({s.name for s in self.specs() if s.rule is not None})


def _overlap(a: OpSpec, b: OpSpec) -> bool:
    lo = max(a.since or 0, b.since or 0)
    hi = min(
        a.until if a.until is not None else 1 << 30, b.until if b.until is not None else 1 << 30
    )
    return lo <= hi


def default_registry() -> Registry:
    return Registry(default_specs())


_DEFAULT = default_registry()
_ACTIVE: ContextVar[Registry | None] = ContextVar("onnxprune_ops_registry", default=None)


def active() -> Registry:
    """The registry lookups go to now: the process-wide default one, or the one of the
    :func:`using`/:func:`registered` block that is running in this thread."""
    reg = _ACTIVE.get()
    return reg if reg is not None else _DEFAULT


def register(spec: OpSpec, *, override: bool = False) -> OpSpec:
    """Add ``spec`` to the active registry (for the rest of the process, or of the block
    of :func:`using`/:func:`registered` that is running)."""
    return active().register(spec, override=override)


@contextmanager
def using(registry: Registry) -> Iterator[Registry]:
    """Run a block with ``registry`` active."""
    token = _ACTIVE.set(registry)
    try:
        yield registry
    finally:
        _ACTIVE.reset(token)


@contextmanager
def registered(*new: OpSpec, override: bool = False) -> Iterator[Registry]:
    """Run a block with a copy of the active registry plus ``new``; nothing leaks out."""
    reg = active().copy()
    for spec in new:
        reg.register(spec, override=override)
    with using(reg):
        yield reg


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    """The model's opset per domain (``ai.onnx`` as ``""``)."""
    return {normalize_domain(o.domain): int(o.version) for o in model.opset_import}


def spec_for(node: onnx.NodeProto, opsets: Opsets | None = None) -> OpSpec | None:
    """The active registry's spec for ``node`` at the model's ``opsets``, or None."""
    return active().spec_for(node, opsets)


def rule_for(node: onnx.NodeProto, opsets: Opsets | None = None) -> Rule | None:
    """The channel rule for ``node``, or None (the node then blocks its channels)."""
    spec = spec_for(node, opsets)
    return spec.rule if spec is not None else None


def supported_ops() -> list[str]:
    return active().supported_ops()
