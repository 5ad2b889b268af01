"""From scores to a Plan: which slots of which group stay, and what that cuts where.

Pure data in, pure data out; no graph is touched. A ``Plan`` lists, per group, the kept
slots and, per tensor axis, the kept positions (``params`` for initializers, ``tensors`` for
activations), so it can be printed, saved as JSON, diffed, and re-applied with
``onnxprune.structured.rewrite.apply_plan`` without running the analysis again.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.options import (
    SCOPES,
    check_choice,
    check_fraction,
    check_int,
    check_open_fraction,
)
from onnxprune.structured.dependency import Group
from onnxprune.structured.importance import normalize

DEFAULT_ROUND_TO = 16
"""Kept channel counts are rounded up to a multiple of this by default. Measured with
``tools/bench_round_to.py`` on onnxruntime 1.32 CPU (AVX-512, see README): exact counts made
MobileNetV2 at 0.3 *slower* than the original (0.89x); multiples of 8 gave 1.43x for 41%
fewer MACs, multiples of 16 the same 1.43x for 34% fewer (latency efficiency 0.84 vs 0.94).
onnxruntime's blocked NCHWc convolutions use 16-channel blocks with AVX-512 and 8 with AVX2;
multiples of 16 suit both."""



@dataclass
class GroupPlan:
    """What happens to one prunable group."""

    id: str
    members: list[str]
    slots: int
    width: int
    kept: list[int]
    score_min: float
    score_mean: float
    score_max: float
    heads: int = 0
    """Attention heads before pruning (0 for neurons and channels); see ``Group.heads``."""
    nodes: list[str] = field(default_factory=list)
    """The nodes that create the group's channels (``out`` members), in member order: the
    names people know a layer by (``/layer1/0/conv1/Conv``), for reports."""
    note: str = ""
    """Why the group kept more than the ratio asked (rounding, the global cap, a Split that
    needs a channel on each side); empty when it kept what was asked."""

    @property
    def channels_before(self) -> int:
        return self.slots * self.width

    @property
    def channels_after(self) -> int:
        return len(self.kept) * self.width

    @property
    def heads_after(self) -> int:
        """Heads left: whole slots go, each with ``heads / slots`` query heads."""
        return len(self.kept) * self.heads // self.slots if self.heads else 0


@dataclass
class Cut:
    """Keep ``kept`` of the ``size`` positions on ``axis`` of tensor ``name``."""

    name: str
    axis: int
    size: int
    kept: list[int]
    role: str


@dataclass
class Plan:
    groups: list[GroupPlan]
    params: list[Cut]
    tensors: list[Cut]
    blocked: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping) -> Plan:
        return cls(
            groups=[GroupPlan(**g) for g in d["groups"]],
            params=[Cut(**c) for c in d["params"]],
            tensors=[Cut(**c) for c in d["tensors"]],
            blocked=list(d.get("blocked", [])),
            settings=dict(d.get("settings", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    @property
    def empty(self) -> bool:
        return not self.params and not self.tensors


def round_keep(keep: int, slots: int, width: int, round_to: int) -> int:
    """Round a kept slot count up so that kept *channels* are a multiple of ``round_to``.

    Up, so that no more is pruned than asked; never below ``round_to`` channels; never more
    than the group has.
    """
    if round_to <= 1:
        return keep
    step = round_to // math.gcd(round_to, width)
    return min(slots, max(step, -(-keep // step) * step))


def local_removals(g: Group, ratio: float) -> int:
    """Slots a local ``--structured ratio`` removes from ``g`` before rounding."""
    return int(ratio * g.slots + 1e-9)


def kept_count(g: Group, removals: int, round_to: int) -> int:
    """Slots ``g`` keeps after losing ``removals`` of them, rounded (``round_keep``)."""
    return round_keep(max(1, g.slots - removals), g.slots, g.width, round_to)


def rounded_counts(slots: int, width: int, round_to: int) -> list[int]:
    """Every kept slot count whose channels are a multiple of ``round_to``, and the whole
    group: what ``--round-to`` (or the default rounding) lets a target's solver choose."""
    step = max(1, round_to // math.gcd(round_to, width))
    return sorted({*range(step, slots + 1, step), slots})


def round_keep_nearest(keep: int, slots: int, width: int, round_to: int) -> int:
    """Round a kept slot count to the *nearest* multiple of ``round_to`` channels (ties up).

    For the few groups whose rounding decides a whole model's cut (the residual stream: one
    group per stage, touching every layer of it), where rounding each up by up to
    ``round_to - 1`` channels would undo much of the ratio (a 96-wide stream at 0.3 keeps 80,
    not about 67); nearest keeps the total closest to what was asked. Never below
    ``round_to`` channels; never more than the group has.
    """
    if round_to <= 1:
        return keep
    step = round_to // math.gcd(round_to, width)
    low = (keep // step) * step
    near = low if keep - low < low + step - keep else low + step
    return min(slots, max(step, near))


def check_plan_options(
    ratio: float, scope: str, round_to: int, max_group_ratio: float, heads: float | None = None
) -> None:
    """``make_plan``'s options, with the field checks (and messages) of ``onnxprune.options``."""
    check_fraction(ratio, "--structured")
    if heads is not None:
        check_fraction(heads, "--heads")
    check_choice(scope, "--scope", SCOPES)
    check_int(round_to, "--round-to", 1)
    check_open_fraction(max_group_ratio, "--max-group-ratio")


def check_keep(keep: Mapping[str, int] | None, groups: Sequence[Group]) -> dict[str, int]:
    """``make_plan``'s ``keep``, checked: whole counts of at least 1 for groups that exist."""
    if keep is None:
        return {}
    if not isinstance(keep, Mapping):
        raise UsageError(f"keep must map group ids to kept slot counts, got {keep!r}")
    known = {g.id for g in groups}
    out: dict[str, int] = {}
    for gid, count in keep.items():
        if gid not in known:
            raise UsageError(f"keep names group {gid!r}, which this model does not have")
        out[str(gid)] = check_int(count, f"keep[{gid!r}]", 1)
    return out


def kept_slots(g: Group, scores: np.ndarray, count: int) -> np.ndarray:
    """Which slots stay when ``count`` of them are kept: the best scored (ties by position),
    plus the best of any ``Group.subsets`` left empty, so the result can hold more than
    ``count`` slots; never fewer than one, never more than ``g.slots``."""
    count = max(1, min(int(count), g.slots))
    order = np.lexsort((np.arange(g.slots), -scores))  # best first, ties by position
    kept = np.zeros(g.slots, dtype=bool)
    kept[order[:count]] = True
    for subset in g.subsets:  # every tensor that sees part of the group keeps a channel
        if not kept[subset].any():
            kept[subset[np.argmax(scores[subset])]] = True
    return kept


def _excluded(g: Group, patterns: Sequence[str]) -> str | None:
    for pat in patterns:
        for name in sorted(g.names):
            if name and fnmatch.fnmatchcase(name, pat):
                return f"excluded by --exclude '{pat}' (matches '{name}')"
    return None


def prunable_groups(
    groups: Sequence[Group], exclude: Sequence[str]
) -> tuple[list[Group], list[dict[str, str]]]:
    """The groups a plan may cut (not blocked, not excluded), and why each other one that
    has filters stays (the plan's ``blocked`` entries)."""
    blocked: list[dict[str, str]] = []
    prunable: list[Group] = []
    for g in groups:
        if g.blocked_reason is not None:
            if any(m.role == "out" for m in g.members):
                for where, reason in g.reasons:
                    blocked.append({"where": f"{g.id} (at {where})", "reason": reason})
            continue
        why = _excluded(g, exclude)
        if why is not None:
            blocked.append({"where": g.id, "reason": why})
            continue
        prunable.append(g)
    return prunable, blocked


def _global_removals(
    groups: list[Group], scores: Mapping[str, np.ndarray], ratio: float, cap: float
) -> dict[str, int]:
    """Remove the lowest normalized scores of all groups together, until ``ratio`` of all
    prunable channels are gone; each group loses at most ``cap`` of its slots, never all."""
    if not groups:
        return {}
    total = sum(g.slots * g.width for g in groups)
    target = ratio * total
    keys, widths = [], []
    for gi, g in enumerate(groups):
        norm = normalize(scores[g.id])
        keys.append(np.stack([norm, np.full(g.slots, gi), np.arange(g.slots)], axis=1))
        widths.append(g.width)
    order = np.concatenate(keys)
    order = order[np.lexsort((order[:, 2], order[:, 1], order[:, 0]))]
    limit = [min(int(cap * g.slots + 1e-9), g.slots - 1) for g in groups]
    removed = [0] * len(groups)
    done = 0.0
    for gi in order[:, 1].astype(np.int64).tolist():
        w = widths[gi]
        if removed[gi] < limit[gi] and done + w <= target + 1e-9:
            removed[gi] += 1
            done += w
            if done >= target - 1e-9:
                break
    return {g.id: removed[i] for i, g in enumerate(groups)}


def make_plan(
    groups: Sequence[Group],
    scores: Mapping[str, np.ndarray],
    *,
    ratio: float,
    scope: str = "local",
    round_to: int = DEFAULT_ROUND_TO,
    max_group_ratio: float = 0.9,
    exclude: Sequence[str] = (),
    heads: float | None = None,
    keep: Mapping[str, int] | None = None,
) -> Plan:
    """Choose the kept slots of every prunable group and derive every cut (see module doc).

    ``ratio`` applies to neurons and channels; head groups (``Group.heads``) lose ``heads``
    of their slots instead, always per attention layer, and none when ``heads`` is None.
    ``keep`` (group id -> kept slots, from ``onnxprune.targets``) overrides both for the
    groups it lists: exactly that many slots stay, the best scored, with no rounding; a
    count of ``slots`` or more keeps the group whole, and at least one slot always stays.
    Blocked and excluded groups it lists stay intact; an id no group has is refused.
    """
    check_plan_options(ratio, scope, round_to, max_group_ratio, heads)
    keep = check_keep(keep, groups)
    round_to = int(round_to)
    prunable, blocked = prunable_groups(groups, exclude)

    channels = [g for g in prunable if not g.heads]
    if scope == "global":
        removals = _global_removals(channels, scores, ratio, max_group_ratio)
    else:
        removals = {g.id: local_removals(g, ratio) for g in channels}
    for g in prunable:
        if g.heads:
            removals[g.id] = int((heads or 0.0) * g.slots + 1e-9)

    plans: list[GroupPlan] = []
    removed_slots: dict[str, np.ndarray] = {}
    for g in prunable:
        s = scores[g.id]
        count = keep[g.id] if g.id in keep else kept_count(g, removals[g.id], round_to)
        kept = kept_slots(g, s, count)
        note = "" if g.id in keep else _kept_note(g, removals[g.id], count, int(kept.sum()),
                                                   scope, round_to, max_group_ratio)
        plans.append(
            GroupPlan(
                id=g.id,
                members=[m.label for m in g.params],
                slots=g.slots,
                width=g.width,
                kept=np.flatnonzero(kept).tolist(),
                score_min=float(s.min()),
                score_mean=float(s.mean()),
                score_max=float(s.max()),
                heads=g.heads,
                nodes=_producers(g),
                note=note,
            )
        )
        if not kept.all():
            removed_slots[g.id] = ~kept

    params, tensors = _cuts([g for g in prunable if g.id in removed_slots], removed_slots)
    settings = {
        "ratio": float(ratio),
        "scope": scope,
        "round_to": round_to,
        "max_group_ratio": float(max_group_ratio),
        "exclude": list(exclude),
        "heads": None if heads is None else float(heads),
    }
    if keep:
        settings["keep"] = dict(keep)
    return Plan(plans, params, tensors, blocked, settings)


def _producers(g: Group) -> list[str]:
    out: list[str] = []
    for m in g.members:
        if m.role == "out" and m.node and m.node not in out:
            out.append(m.node)
    return out


def _kept_note(
    g: Group, removed: int, count: int, kept: int, scope: str, round_to: int, cap: float
) -> str:
    """Why ``g`` keeps ``kept`` slots where the ratio asked for ``g.slots - removed``."""
    asked = max(1, g.slots - removed)
    if kept > count:
        return "a Split needs a channel on each side"
    if count > asked:
        return f"rounded up (round-to {round_to})"
    limit = min(int(cap * g.slots + 1e-9), g.slots - 1)
    if scope == "global" and removed >= limit and removed < g.slots - 1:
        return f"capped by --max-group-ratio {cap:g}"
    if removed == 0 and asked == g.slots and not g.heads:
        return "the ratio removes less than one slot" if scope == "local" else ""
    return ""


def _cuts(
    groups: list[Group], removed_slots: Mapping[str, np.ndarray]
) -> tuple[list[Cut], list[Cut]]:
    """Per tensor axis, the positions that survive every group's cut."""
    masks: dict[tuple[bool, str, int], np.ndarray] = {}
    roles: dict[tuple[bool, str, int], str] = {}
    for g in groups:
        gone = removed_slots[g.id]
        for m in g.members:
            key = (m.role == "act", m.target, m.axis)
            hit = np.zeros(m.size, dtype=bool)
            on = m.slot >= 0
            hit[on] = gone[m.slot[on]]
            if key in masks:
                masks[key] |= hit
            else:
                masks[key] = hit
                roles[key] = m.role
    params, tensors = [], []
    for key, mask in masks.items():
        if not mask.any():
            continue
        act, name, axis = key
        cut = Cut(name, axis, len(mask), np.flatnonzero(~mask).tolist(), roles[key])
        (tensors if act else params).append(cut)
    return params, tensors
