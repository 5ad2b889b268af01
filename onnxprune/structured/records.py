"""The records the dependency walk keeps: channels of a tensor, id sources, cut constants."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Chan:
    """The channel axis of one activation tensor and the channel id at each position."""

    axis: int
    ids: np.ndarray
    rank: int


@dataclass
class Source:
    """A run of fresh channel ids created at one node (pseudo: blocked from birth)."""

    start: int
    size: int
    label: str
    node: str
    reason: str | None  # set for pseudo sources: channels we cannot prune
    follower: bool = False
    """A constant's entries broadcast into an activation (ViT's class token): cut with the
    producer they are coupled to, never a group of their own."""


@dataclass
class Param:
    """A constant input cut along one axis: which ids its positions carry."""

    name: str
    axis: int
    role: str
    node: str
    ids: np.ndarray
    op: str
    input: int
