"""Check a pruning rule the way onnxprune checks its own: exactness and planted-dead oracles.

Why this is public: a rule says how channels pass through an op and how the op is rewritten
when some are removed. A wrong rule still produces a valid model, so the only real test is
to compare outputs. The oracles here do that without reading any rewrite code:

* **exactness** (``prune_exact``, ``assert_exact``): the pruned model must give the same
  outputs as the *original* model with the removed channels' input slices zeroed at every
  consumer (``zeroed``), on random inputs in onnxruntime;
* **planted dead** (``assert_planted_dead``, ``plant_dead``): channels zeroed on purpose are
  provably useless; pruning fewer than were planted must remove only planted ones and leave
  the outputs unchanged;
* **refusal** (``blocked_reason``): a graph the rule cannot cut must be blocked, with a
  reason that names what stops it.

How to check a rule: build a tiny graph with the op between a producer whose filters are
pruned and a consumer that reads them, then run both oracles on it. With your rule
registered (the op registry's public API), the same three lines check it::

    from onnxprune.testing import Builder, assert_planted_dead, prune_exact

    b = Builder(seed=0)
    x = b.input([1, 3, 8, 8])
    h = b.op("Elu", [b.conv(x, 3, 16, name="producer")], alpha=0.5)  # the op under test
    model = b.build([b.conv(h, 16, 8, name="consumer")])

    pruned, plan = prune_exact(model, 0.5)  # pruned == zeroed original, on 2 seeds
    assert_planted_dead(model)              # only planted channels go, outputs unchanged

For a graph the rule must refuse, check the reason instead:
``assert "DepthToSpace" in blocked_reason(model)`` (a group's id is its producing node's
name, here ``producer``).

Failures raise ``AssertionError`` with a message, so the checks work under pytest, unittest
or a plain script. Importing this package needs onnx, onnxruntime and numpy only (no pytest,
no hypothesis); the rest of onnxprune never imports it.
"""

from __future__ import annotations

from onnxprune.testing.graphs import OPSET, Builder, small_cnn
from onnxprune.testing.oracles import (
    assert_close,
    assert_exact,
    assert_planted_dead,
    blocked_reason,
    onnx_sort,
    plant_dead,
    prune_exact,
    random_feeds,
    run,
    session,
    set_constant,
    zeroed,
)

__all__ = [
    "OPSET",
    "Builder",
    "assert_close",
    "assert_exact",
    "assert_planted_dead",
    "blocked_reason",
    "onnx_sort",
    "plant_dead",
    "prune_exact",
    "random_feeds",
    "run",
    "session",
    "set_constant",
    "small_cnn",
    "zeroed",
]
