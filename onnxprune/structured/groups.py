"""What the dependency analysis finds: groups of channels that must disappear together.

``onnxprune.structured.dependency`` builds them; the plan, the importance criteria, the
head marking and the oracles read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROLES = ("out", "in", "chan", "stat", "act")
"""How a member holds its channels. ``out``: a producer's filters (Conv weight axis 0);
``in``: a consumer's input slices (Conv weight axis 1, MatMul rows) — zeroing those removes a
channel's contribution, which is what the exactness oracle does; ``chan``: a per-channel
parameter (BatchNorm scale and bias, a bias, a PRelu slope); ``stat``: running statistics,
not scored; ``act``: an activation tensor, reshaped but never stored."""


@dataclass
class Slice:
    """One member of a group: where each slot of the group lies on one axis of one tensor.

    ``slot[p]`` is the slot (0..slots-1) that owns position ``p`` of the axis, or -1 when the
    position belongs to another group (a Concat input of another producer) or to none.
    """

    target: str
    axis: int
    role: str
    node: str
    slot: np.ndarray
    size: int
    op: str = ""
    """The op type of ``node`` (``BatchNormalization`` for its scale, ...)."""
    input: int = -1
    """Which input of ``node`` the parameter is (1 for a BatchNormalization scale)."""

    @property
    def label(self) -> str:
        """As in reports: ``conv1.weight[out]``, ``bn1.scale``, ``conv2.weight[in]``."""
        if self.role in ("out", "in"):
            return f"{self.target}[{self.role}]"
        if self.role == "act":
            return f"{self.target}(axis {self.axis})"
        return self.target

    def positions(self, slot: int) -> np.ndarray:
        """Where ``slot`` lies on this axis (for stages after the rewrite: reconstruction)."""
        return np.flatnonzero(self.slot == slot)


@dataclass
class Group:
    """Channels that must lose the same slots; ``blocked_reason`` set means: keep intact."""

    id: str
    slots: int
    members: list[Slice]
    width: int = 1
    """Positions each slot owns in the group's first producer (4 for whole groups of a
    grouped Conv with 4 channels per group); channel counts are ``slots * width``."""
    blocked_reason: str | None = None
    reasons: list[tuple[str, str]] = field(default_factory=list)
    """Every (where, reason) that blocks the group; ``blocked_reason`` is the first one."""
    subsets: list[np.ndarray] = field(default_factory=list)
    """Slot sets a member sees only part of (each side of a Split): at least one slot of
    each must stay, or that tensor would have no channels."""
    heads: int = 0
    """Attention heads the group holds (``onnxprune.structured.heads``); 0 for neurons and channels.
    Its slots are heads, or key/value groups of query heads in grouped-query attention."""
    stream: list[str] = field(default_factory=list)
    """The normalizations (node labels) whose statistics span the group's channels: a
    hidden stream, found only with ``--hidden`` and cut only by it. Not exact: each one
    then normalizes over the kept channels (``onnxprune.structured.stream``)."""

    @property
    def params(self) -> list[Slice]:
        return [m for m in self.members if m.role != "act"]

    @property
    def names(self) -> set[str]:
        """Every tensor, initializer and node name the group touches (for ``--exclude``)."""
        out: set[str] = set()
        for m in self.members:
            out.add(m.target)
            out.add(m.node)
        return out
