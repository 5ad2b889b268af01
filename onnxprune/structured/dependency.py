"""Channel dependency analysis: which channels of which tensors must disappear together.

The model: every channel *position* that a prunable producer creates gets an integer id (a
filter of a Conv, a column of a MatMul weight). Rules in ``onnxprune.ops`` carry those ids
through the graph as arrays, one id per position of a tensor's channel axis: a passthrough op
hands the same array on, a Concat concatenates arrays, a Split slices them, a Flatten repeats
each id over the spatial block it owns. Where an op says "these positions are one channel" (a
residual Add, the gate of a squeeze-and-excitation Mul, a shared weight) the ids are unified
in a union-find. After the walk, a *class* (a union-find root) is one removable channel and a
*group* is the set of classes that share producers; its slots are the classes.

Because the bookkeeping is per position, any composition of rules stays exact: a tensor that
mixes several groups (a Concat) is cut where each group says, a slot may own many positions
(the HW rows after a Flatten, a whole group of a grouped Conv), and nothing is guessed.

A rule that does not understand a node *blocks* the ids it sees with a reason; a group that
contains a blocked id is kept intact and reported. Channels of tensors that come from
somewhere we do not follow (graph inputs, unknown ops) get fresh ids that are blocked from
birth, so coupling them to a prunable channel blocks that channel too.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.view import GraphView
from onnxprune.ops import opsets_of, rule_for
from onnxprune.ops.control import guard, has_subgraphs
from onnxprune.structured.groups import ROLES, Group, Slice
from onnxprune.structured.heads import mark_heads
from onnxprune.structured.records import Chan, Param, Source
from onnxprune.structured.subgraphs import flatten, subgraph_free

__all__ = ["ROLES", "Chan", "Context", "Group", "Slice", "analyze"]


class Context:
    """What a rule sees while the walker visits one node; the only way rules change state.

    Rules read inputs with :meth:`inp` (which marks the input handled), write outputs with
    :meth:`set_out`, create producer channels with :meth:`source`, attach parameters with
    :meth:`bind`, tie channels with :meth:`unify`, and refuse with :meth:`block`.
    """

    def __init__(self, view: GraphView, hidden: bool = False) -> None:
        self.view = view
        self.opset = view.opset
        self.hidden = hidden
        """Whether a normalization over the channel axis may join its stream (``--hidden``)
        instead of blocking it: see :meth:`approximate`."""
        self._approx: list[tuple[np.ndarray, str, str]] = []
        self._parent: list[int] = []
        self._sources: list[Source] = []
        self._chans: dict[str, Chan] = {}
        self._params: dict[tuple[str, int], Param] = {}
        self._claimed: set[tuple[int, int]] = set()
        self._blocks: list[tuple[np.ndarray, str, str]] = []
        self._source_of: dict[tuple[str, int], np.ndarray] = {}
        self._node_index = -1
        self._read: set[int] = set()
        self._outside: dict[str, tuple[str, str]] = {}
        self.node: onnx.NodeProto = onnx.NodeProto()

    # ------------------------------------------------------------------ ids
    def _new_ids(
        self, size: int, label: str, reason: str | None, follower: bool = False
    ) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + size))
        self._sources.append(Source(start, size, label, self.where, reason, follower))
        return np.arange(start, start + size, dtype=np.int64)

    def _find(self, x: int) -> int:
        parent = self._parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        """Position ``p`` of ``a`` and of ``b`` are the same channel, for every ``p``."""
        if a is b:
            return
        if a.shape != b.shape:
            raise OnnxPruneError(f"internal: unify of {a.shape} and {b.shape} at {self.where}")
        if np.array_equal(a, b):
            return
        find = self._find
        parent = self._parent
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = find(x), find(y)
            if rx != ry:
                if rx < ry:
                    parent[ry] = rx
                else:
                    parent[rx] = ry

    # ------------------------------------------------------------------ node scope
    @property
    def where(self) -> str:
        return self.view.label(self._node_index) if self._node_index >= 0 else "graph"

    def inp(self, k: int) -> Chan | None:
        """The tracked channels of input ``k``, or None (constant, absent, not tracked)."""
        if k >= len(self.node.input) or not self.node.input[k]:
            return None
        self._read.add(k)
        return self._chans.get(self.node.input[k])

    def tracked(self, name: str) -> Chan | None:
        """The tracked channels of any tensor seen so far, without marking anything read."""
        return self._chans.get(name)

    def n_inputs(self) -> int:
        return len(self.node.input)

    def input_name(self, k: int) -> str:
        return self.node.input[k] if k < len(self.node.input) else ""

    def is_const(self, k: int) -> bool:
        name = self.input_name(k)
        return bool(name) and self.view.is_constant(name)

    def in_shape(self, k: int) -> tuple | None:
        return self.view.shape(self.input_name(k))

    def out_shape(self, k: int = 0) -> tuple | None:
        if k >= len(self.node.output) or not self.node.output[k]:
            return None
        return self.view.shape(self.node.output[k])

    def out_used(self, k: int) -> bool:
        """Whether output ``k`` exists and is consumed or is a graph output."""
        if k >= len(self.node.output) or not self.node.output[k]:
            return False
        name = self.node.output[k]
        return bool(self.view.uses(name)) or name in self.view.graph_outputs

    def set_out(self, k: int, axis: int, ids: np.ndarray, rank: int | None = None) -> None:
        """Output ``k`` carries channels ``ids`` on ``axis``."""
        if k >= len(self.node.output) or not self.node.output[k]:
            return
        name = self.node.output[k]
        if rank is None:
            rank = self.view.rank(name)
        if rank is None:
            self.block(ids, f"the rank of '{name}' is unknown after shape inference")
            return
        if axis < 0:
            axis += rank
        size = self.view.dim(name, axis)
        if size is not None and size != len(ids):
            self.block(ids, f"'{name}' has {size} channels where {len(ids)} were expected")
            return
        self._chans[name] = Chan(axis, ids, rank)

    def source(self, k: int, axis: int, size: int | None = None) -> np.ndarray:
        """Fresh producer channels along ``axis`` of constant input ``k`` (a weight's filters).

        A weight shared by several nodes yields the same channels at each use.
        """
        name = self.input_name(k)
        key = (name, axis)
        ids = self._source_of.get(key)
        if ids is None:
            if size is None:
                size = int(self.view.shape(name)[axis])
            ids = self._new_ids(size, f"{name}[out]", None)
            self._source_of[key] = ids
        self.bind(k, axis, ids, "out")
        return ids

    def fresh(self, size: int) -> np.ndarray:
        """Fresh producer channels of the current node that no single weight axis holds
        (an LSTM's hidden units, tiled over the gate blocks of W, R and B): the rule binds
        them to each parameter itself."""
        return self._new_ids(size, f"{self.where}[units]", None)

    def follower(self, size: int, label: str) -> np.ndarray:
        """Channels of a constant broadcast into an activation (see ``Source.follower``)."""
        return self._new_ids(size, label, None, follower=True)

    def pseudo(self, size: int, reason: str) -> np.ndarray:
        """Channels we cannot prune (from a graph input, an op we do not follow)."""
        return self._new_ids(size, reason, reason)

    def inp_or_pseudo(self, k: int, axis: int) -> np.ndarray | None:
        """Channels of computed input ``k`` along ``axis``: tracked ones, or blocked fresh ones.

        Returns None when the input is tracked on another axis or its size is unknown; the
        caller must block then.
        """
        ch = self.inp(k)
        name = self.input_name(k)
        rank = self.view.rank(name)
        if rank is not None and axis < 0:
            axis += rank
        if ch is not None:
            return ch.ids if ch.axis == axis else None
        size = self.view.dim(name, axis)
        if size is None:
            return None
        p = self.view.producer.get(name)
        origin = (
            "a graph input"
            if name in self.view.graph_inputs
            else "a constant"
            if self.view.is_constant(name)
            else f"'{self.view.label(p[0])}' ({self.view.nodes[p[0]].op_type}), whose channels onnxprune does not follow"
            if p
            else "nowhere"
        )
        return self.pseudo(size, f"coupled at {self.where} with channels of '{name}' from {origin}")

    def bind(self, k: int, axis: int, ids: np.ndarray, role: str) -> None:
        """Constant input ``k`` loses the positions of ``ids`` along ``axis`` (a parameter)."""
        name = self.input_name(k)
        if not self.view.is_constant(name):
            raise OnnxPruneError(f"internal: bind of computed '{name}' at {self.where}")
        dims = self.view.shape(name)
        if axis < 0:
            axis += len(dims)
        if dims[axis] != len(ids):
            self.block(ids, f"'{name}' has {dims[axis]} entries on axis {axis}, not {len(ids)}")
            return
        self._tie_quant_blocks(name, axis, ids)
        self._claimed.add((self._node_index, k))
        self._read.add(k)
        key = (name, axis)
        prev = self._params.get(key)
        if prev is None:
            self._params[key] = Param(name, axis, role, self.where, ids, self.node.op_type, k)
        else:
            self.unify(prev.ids, ids)

    def _tie_quant_blocks(self, name: str, axis: int, ids: np.ndarray) -> None:
        """Per-block scales: a block's entries go together, or not at all."""
        qw = self.view.quantized.get(name)
        together, reason = qw.unsliceable(axis, len(ids)) if qw is not None else (1, None)
        if reason is not None:
            self.block(ids, reason)
        elif together > 1:
            blocks = ids.reshape(-1, together)
            self.unify(blocks[:, 1:].ravel(), np.repeat(blocks[:, 0], together - 1))

    def claim(self, k: int) -> None:
        """Constant input ``k`` is read but never sliced (a scalar, a kept axis). If the same
        constant is sliced for another node, ``finish`` blocks: this reader would see it cut."""
        self._read.add(k)

    def block(self, ids: np.ndarray | None, reason: str) -> None:
        if ids is not None and len(ids):
            self._blocks.append((ids, reason, self.where))

    def approximate(self, ids: np.ndarray, reason: str) -> bool:
        """A normalization whose statistics span these channels: with ``hidden`` the group
        becomes a hidden stream (cut only by ``--hidden``, not exact) and True is returned;
        otherwise the channels are blocked with ``reason`` and False is returned."""
        if not self.hidden:
            self.block(ids, reason)
            return False
        if len(ids):
            self._approx.append((ids, reason, self.where))
        return True

    def read_outside(self, name: str, reason: str) -> None:
        """Tensor ``name`` is read where no rule sees it (inside an If/Loop body): its
        channels and, if it is a weight, its cuts are blocked by ``finish`` with ``reason``,
        whichever node is visited first."""
        self._outside.setdefault(name, (self.where, reason))

    def block_inputs(self, reason: str) -> None:
        """Refuse the whole node: every tracked input keeps all of its channels."""
        for k in range(len(self.node.input)):
            ch = self.inp(k)
            if ch is not None:
                self.block(ch.ids, reason)

    # ------------------------------------------------------------------ walk
    def visit(self, index: int, rule: object | None) -> None:
        self._node_index = index
        self.node = self.view.nodes[index]
        self._read = set()
        if rule is None:
            op = (
                self.node.op_type
                if not self.node.domain
                else f"{self.node.domain}.{self.node.op_type}"
            )
            self.block_inputs(f"{op} is not supported by onnxprune's structured rules")
        else:
            rule.propagate(self.node, self)  # type: ignore[attr-defined]
        if rule is None and has_subgraphs(self.node):
            guard(self.node, self)
        for k, name in enumerate(self.node.input):
            if k not in self._read and name in self._chans:
                self.block(
                    self._chans[name].ids,
                    f"internal: the {self.node.op_type} rule left input {k} unhandled",
                )

    def finish(self) -> None:
        """Block what no rule may touch: graph outputs, weights used by something else."""
        self._node_index = -1
        for name in self.view.graph_outputs:
            ch = self._chans.get(name)
            if ch is not None:
                self.block(ch.ids, f"channels reach the graph output '{name}'")
        by_name: dict[str, list[Param]] = {}
        for p in self._params.values():
            by_name.setdefault(p.name, []).append(p)
        for name, params in by_name.items():
            for use in self.view.uses(name):
                if (
                    use.node,
                    use.index,
                ) not in self._claimed and use.node not in self.view.alias_nodes:
                    for p in params:
                        self.block(
                            p.ids,
                            f"'{name}' is also used by '{self.view.label(use.node)}' "
                            f"({self.view.nodes[use.node].op_type}), which would not be rewritten",
                        )
        self._block_outside(by_name)

    def _block_outside(self, by_name: dict[str, list[Param]]) -> None:
        """What subgraph bodies read by name keeps its channels (``read_outside``)."""
        for name, (where, reason) in self._outside.items():
            ch = self._chans.get(name)
            if ch is not None:
                self._blocks.append((ch.ids, reason, where))
            for p in by_name.get(name, ()):
                self._blocks.append((p.ids, reason, where))

    # ------------------------------------------------------------------ groups
    def groups(self) -> list[Group]:
        """Turn the union-find into groups; see the module docstring."""
        if len(self._parent) == 0:
            return []
        roots = self._roots()
        comp_of_src, group_of_class = self._components(roots)
        groups, slot_of_class = self._make_groups(roots, comp_of_src)

        def add_member(
            target: str,
            axis: int,
            role: str,
            node: str,
            ids: np.ndarray,
            op: str = "",
            inp: int = -1,
        ) -> None:
            r = roots[ids]
            g = group_of_class[r]
            s = slot_of_class[r]
            for c in np.unique(g).tolist():
                slot = np.where(g == c, s, -1)
                grp = groups[c]
                grp.members.append(Slice(target, axis, role, node, slot, len(ids), op, inp))
                present = np.unique(s[g == c])
                if len(present) < grp.slots:
                    grp.subsets.append(present)

        for p in self._params.values():
            add_member(p.name, p.axis, p.role, p.node, p.ids, p.op, p.input)
        for name, ch in self._chans.items():
            prod = self.view.producer.get(name)
            add_member(name, ch.axis, "act", self.view.label(prod[0]) if prod else "", ch.ids)
        for ids, reason, where in self._blocks:
            for c in np.unique(group_of_class[roots[ids]]).tolist():
                if (where, reason) not in groups[c].reasons:
                    groups[c].reasons.append((where, reason))
        for ids, _reason, where in self._approx:
            for c in np.unique(group_of_class[roots[ids]]).tolist():
                if where not in groups[c].stream:
                    groups[c].stream.append(where)
        out = []
        for g in groups.values():
            if g.reasons:
                g.blocked_reason = f"{g.reasons[0][1]} (at {g.reasons[0][0]})"
            elif g.slots < 2:
                g.blocked_reason = "the group has a single channel"
                g.reasons.append((g.id, g.blocked_reason))
            out.append(g)
        return out

    def _roots(self) -> np.ndarray:
        """The class (union-find root) of every channel id."""
        roots = np.asarray(self._parent, dtype=np.int64)
        while True:
            nxt = roots[roots]
            if np.array_equal(nxt, roots):
                return roots
            roots = nxt

    def _components(self, roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sources that share a class form one group: (group of each source, group of each
        class), a group named by its first source."""
        n = len(self._parent)
        sizes = np.array([s.size for s in self._sources], dtype=np.int64)
        n_src = len(self._sources)
        src_of_id = np.repeat(np.arange(n_src), sizes)
        first = np.full(n, n_src, dtype=np.int64)
        np.minimum.at(first, roots, src_of_id)
        comp = list(range(n_src))

        def cfind(x: int) -> int:
            while comp[x] != x:
                comp[x] = comp[comp[x]]
                x = comp[x]
            return x

        pairs = np.unique(np.stack([src_of_id, first[roots]], axis=1), axis=0)
        for a, b in pairs.tolist():
            ra, rb = cfind(a), cfind(b)
            if ra != rb:
                comp[max(ra, rb)] = min(ra, rb)
        comp_of_src = np.array([cfind(i) for i in range(n_src)], dtype=np.int64)
        group_of_class = np.full(n, -1, dtype=np.int64)
        group_of_class[roots] = comp_of_src[first[roots]]
        return comp_of_src, group_of_class

    def _make_groups(
        self, roots: np.ndarray, comp_of_src: np.ndarray
    ) -> tuple[dict[int, Group], np.ndarray]:
        """One empty ``Group`` per component and the slot of every class: classes in the
        order their first source lists them."""
        comps: dict[int, list[int]] = {}
        for s in range(len(self._sources)):
            comps.setdefault(int(comp_of_src[s]), []).append(s)
        slot_of_class = np.full(len(self._parent), -1, dtype=np.int64)
        groups: dict[int, Group] = {}
        used_ids: set[str] = set()
        for c, srcs in comps.items():
            ordered = sorted(srcs, key=lambda s: (self._sources[s].reason is not None,
                                                  self._sources[s].follower, s))  # fmt: skip
            seq = np.concatenate(
                [
                    roots[self._sources[s].start : self._sources[s].start + self._sources[s].size]
                    for s in ordered
                ]
            )
            uniq, first_pos = np.unique(seq, return_index=True)
            classes = uniq[np.argsort(first_pos)]
            slot_of_class[classes] = np.arange(len(classes))
            prim = self._sources[ordered[0]]
            prim_slots = slot_of_class[roots[prim.start : prim.start + prim.size]]
            counts = np.bincount(prim_slots, minlength=len(classes))
            width = int(counts[0]) if len(counts) and (counts == counts[0]).all() else 1
            gid = prim.node if prim.reason is None else prim.label
            base, k = gid, 2
            while gid in used_ids:
                gid, k = f"{base}#{k}", k + 1
            used_ids.add(gid)
            groups[c] = Group(id=gid, slots=len(classes), members=[], width=width)
            for s in srcs:
                src = self._sources[s]
                if src.reason is not None:
                    groups[c].reasons.append((src.node, src.reason))
            if all(self._sources[s].follower for s in srcs):
                groups[c].reasons.append((prim.node, "only a constant's entries: no producer"))
        return groups, slot_of_class


def analyze(
    model: onnx.ModelProto, *, view: GraphView | None = None, hidden: bool = False
) -> list[Group]:
    """Every coupling group of ``model``, prunable or blocked (with reasons). ``hidden``:
    normalizations over channels join their stream into a group (``Group.stream``) instead
    of blocking it (``--hidden``; pruning such a group is approximate)."""
    flat = None if subgraph_free(model) else flatten(model)
    if flat is not None:  # understood If branches and Loop bodies, in the main graph
        with flat.rules():
            return analyze(flat.model, hidden=hidden)
    view = view if view is not None else GraphView(model)
    ctx = Context(view, hidden)
    opsets = opsets_of(model)
    for i, node in enumerate(view.nodes):
        ctx.visit(i, rule_for(node, opsets))
    ctx.finish()
    groups = ctx.groups()
    mark_heads(view, groups)
    return groups
