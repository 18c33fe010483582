"""The channel dependency graph: which channels of a network must be removed together, on FX and ONNX graphs.

Removing output channel 5 of a convolution is only correct when everything that carries channel 5 goes too: the
batch norm after it, the activation, the input column 5 of the next convolution, the other branch of a residual
add, the right slice of a concat, the 16 features channel 5 becomes after a flatten. This module works that out
once per model.

Model
-----
A **space** is one axis of one tensor (``conv2d_1`` axis 1) or one dimension of one constant
(``features.3.weight`` dim 0): a row of numbered channels. A **coupling** joins two spaces and says which
element of one goes with which element of the other (an index mapping: ``same index``, ``index + 16`` after a
concat, ``16·i … 16·i+15`` after a flatten, ``i mod 4`` for the input of a grouped convolution). The spaces and
couplings form an undirected ``networkx.MultiGraph`` (``ChannelGraph.graph``; nodes are space ids, edges carry the
:class:`Coupling`).

A **group** is a connected set of spaces. Its elements fall into **units**: the classes of elements joined by
couplings (a union-find over all elements). A unit is what pruning removes: one unit of a plain conv → BN → ReLU →
conv chain is one output channel of the first conv with its BN entries and the matching input column of the
second conv; one unit of a depthwise block is an input channel with the depthwise filters it feeds.

A unit is **frozen** (never removed) when one of its elements sits on a model input or output (so a classifier
keeps its output classes), on a tensor that an op without a coupling rule reads or writes, when no conv/linear
produces it (nothing to remove), or when a conv/linear producing it is outside the step's selector.

Example: ``head(relu(torch.cat([a(x), b(x)], 1)))`` with 16 and 8 channels gives one group of 24 units::

    group 'a': 24 channels in 24 units, 24 prunable
      space              role    size  unit i (of 24) → elements
      conv2d axis 1      tensor    16  units 0-15: i
      a.weight dim 0     out       16  units 0-15: i
      a.bias dim 0       out       16  units 0-15: i
      conv2d_1 axis 1    tensor     8  units 16-23: i-16
      b.weight dim 0     out        8  units 16-23: i-16
      b.bias dim 0       out        8  units 16-23: i-16
      cat axis 1         tensor    24  i
      relu axis 1        feeds     24  i
      head.weight dim 1  in        24  i
      sources: a (aten.conv2d), b (aten.conv2d)

``group.indices([3, 17])`` gives the elements each space loses (``a.weight dim 0``: [3], ``b.weight dim 0``:
[1], ``cat axis 1``: [3, 17], ...).

Coupling rules
--------------
Built-in rules cover convolutions (plain, grouped, depthwise), linear / matmul by a constant, batch and layer
norm, elementwise ops with broadcasting (residual adds, squeeze-excite gates), activations, pooling and
reductions over other axes, pad, concat, reshape / view / flatten / (un)squeeze, permute / transpose.

- A **depthwise** convolution (one input channel per group) ties input channel ``c`` to its output channels
  ``c·m … c·m+m-1``; pruning removes whole groups and the ``groups`` argument shrinks with them.
- A **grouped** convolution with several input channels per group keeps its number of groups: input channel
  ``g·k+i`` is removed together with the same local index ``i`` of every other group (the weight's column ``i``),
  and output channels likewise, so every group keeps the same width.
- A **flatten before a Linear** maps channel ``c`` to features ``c·HW … c·HW+HW-1``; any reshape whose
  channel axis is merged with, split into or identical to an output axis is handled the same way, and views with
  literal sizes are rewritten.

Custom ops plug in with :func:`register_coupling`: the rule receives a :class:`CouplingBuilder` and the op's
node and declares which axes it carries and how::

    from aglmc.passes.channel_graph import register_coupling, identity

    @register_coupling("fx", "mylib.channel_scale")          # torch.ops.mylib.channel_scale(x, scale)
    def _channel_scale(b, node):
        x, scale = node.args
        out = b.space(node, 1)                               # output channels (axis 1)
        b.couple(b.space(x, 1), out)                         # same index as the input's channels
        b.couple(b.space(scale, 0, role="param"), out)       # the constant `scale` is sliced with them

Register ONNX ops the same way with ``register_coupling("onnx", "MyOp")`` (``node.inputs``/``node.outputs`` are
graphsurgeon tensors). An axis an op touches but its rule does not claim freezes the channels on it, so an
incomplete rule is safe: it prunes less, never wrongly. A rule whose op has literal sizes (a view) registers a
fix-up with :meth:`CouplingBuilder.on_rewrite`. Modules reach the FX graph as the ATen ops they are made of; a
module that should be seen as one op is wrapped as a ``torch.library`` custom op and registered by that name.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np

from aglmc.errors import PassError

# ---- couplings ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Coupling:
    """An index mapping between two spaces: element ``a[k]`` of the first goes with element ``b[k]`` of the second."""

    name: str
    a: np.ndarray
    b: np.ndarray


def identity(n: int) -> Coupling:
    idx = np.arange(n)
    return Coupling("same index", idx, idx)


def offset(n: int, k: int) -> Coupling:
    """Element ``i`` of an ``n``-wide space is element ``i + k`` of the other (a concat input)."""
    idx = np.arange(n)
    return Coupling(f"index + {k}", idx, idx + k)


def expand(n: int, f: int) -> Coupling:
    """Element ``i`` is elements ``f·i … f·i+f-1`` of the other (flatten, depthwise channel multiplier)."""
    return Coupling(f"{f}·i … {f}·i+{f - 1}", np.repeat(np.arange(n), f), np.arange(n * f))


def modulo(n: int, k: int) -> Coupling:
    """Element ``i`` of an ``n``-wide space is element ``i mod k`` of the other (grouped conv input → weight)."""
    idx = np.arange(n)
    return Coupling(f"i mod {k}", idx, idx % k)


def pairs(name: str, a: Sequence[int], b: Sequence[int]) -> Coupling:
    return Coupling(name, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))


# ---- spaces and groups --------------------------------------------------------------------------------------

#: roles a space can play: ``out`` weight rows / bias of a producer (a *source*: removing them removes the
#: channel), ``in`` weight columns of a consumer, ``scale``/``shift``/``stat`` batch-norm parameters, ``param``
#: another constant sliced with the channels, ``tensor`` an activation, ``feeds`` an activation a conv/linear reads.
ROLES = ("out", "in", "scale", "shift", "stat", "param", "tensor", "feeds")


@dataclass(eq=False)
class Space:
    """One channel-carrying axis: of a tensor (``kind == "tensor"``) or of a constant (``kind == "param"``)."""

    id: int
    key: Tuple
    kind: str
    axis: int
    size: int
    label: str
    path: str = ""
    roles: List[Tuple[str, Hashable, str, str]] = field(default_factory=list)  # (role, node key, op, path)
    fixed: Optional[str] = None
    start: int = 0  # first element in the graph-wide element numbering

    def has_role(self, role: str) -> bool:
        return any(r[0] == role for r in self.roles)

    @property
    def role(self) -> str:
        order = ("out", "in", "scale", "shift", "stat", "param", "feeds", "tensor")
        mine = {r[0] for r in self.roles} or {"tensor" if self.kind == "tensor" else "param"}
        return next(r for r in order if r in mine)

    @property
    def name(self) -> str:
        return f"{self.label} {'axis' if self.kind == 'tensor' else 'dim'} {self.axis}"

    def __repr__(self) -> str:
        return f"Space({self.name}, {self.size})"


@dataclass(frozen=True)
class Source:
    """A conv/linear whose output channels (weight rows) belong to a group."""

    key: Hashable
    op: str
    path: str
    selected: bool


class Group:
    """Spaces whose channels must be pruned together, split into removable units.

    ``units[s.id]`` gives, for each element of space ``s``, the unit it belongs to (0 … ``n_units``-1);
    ``free[u]`` says whether unit ``u`` may be removed and ``frozen[u]`` why not. ``unit_channels[u]`` is the
    number of channels unit ``u`` removes from the first source layer that carries it (1 except for grouped
    convolutions); ``width`` is the smallest of them.
    """

    def __init__(self, name: str, spaces: List[Space], units: Dict[int, np.ndarray], n_units: int,
                 frozen: List[Optional[str]], sources: List[Source], edges: List[Tuple[Space, Space, Coupling]]):
        self.name = name
        self.spaces = spaces
        self.units = units
        self.n_units = n_units
        self.frozen = frozen
        self.free = np.array([f is None for f in frozen], dtype=bool)
        self.sources = sources
        self.edges = edges
        # channels each unit removes from the first source layer that carries it
        self.unit_channels = np.zeros(n_units, dtype=np.int64)
        for s in spaces:
            if s.has_role("out"):
                counts = np.bincount(units[s.id], minlength=n_units)
                todo = (self.unit_channels == 0) & (counts > 0)
                self.unit_channels[todo] = counts[todo]
        self.unit_channels[self.unit_channels == 0] = 1
        self.width = int(self.unit_channels.min()) if n_units else 1

    @property
    def root(self) -> Optional[Space]:
        return next((s for s in self.spaces if s.has_role("out")), None)

    @property
    def channels(self) -> int:
        """Channels of the group: what its units remove from the source layers that carry them."""
        return int(self.unit_channels.sum())

    def kept_channels(self, removed_units: Iterable[int]) -> int:
        keep = np.ones(self.n_units, dtype=bool)
        keep[np.asarray(list(removed_units), dtype=np.int64)] = False
        return int(self.unit_channels[keep].sum())

    @property
    def prunable(self) -> bool:
        return bool(self.free.any())

    def space(self, label: str) -> Space:
        """The space whose ``label`` or ``name`` (``"conv2d_1 axis 1"``) is given."""
        for s in self.spaces:
            if label in (s.name, s.label):
                return s
        raise KeyError(f"group '{self.name}' has no space {label!r} (it has: {', '.join(s.name for s in self.spaces)})")

    def indices(self, units: Iterable[int]) -> Dict[str, np.ndarray]:
        """The elements of every space that removing ``units`` removes, by space name (empty spaces left out)."""
        units = np.asarray(sorted(set(int(u) for u in units)), dtype=np.int64)
        out = {}
        for s in self.spaces:
            idx = np.nonzero(np.isin(self.units[s.id], units))[0]
            if len(idx):
                out[s.name] = idx
        return out

    def keep(self, removed_units: Iterable[int]) -> Dict[int, np.ndarray]:
        """Kept element indices of every space (by space id) when ``removed_units`` go."""
        removed = np.asarray(sorted(set(int(u) for u in removed_units)), dtype=np.int64)
        return {s.id: np.nonzero(~np.isin(self.units[s.id], removed))[0] for s in self.spaces}

    def table(self) -> str:
        n_free = int(self.free.sum())
        head = f"group '{self.name}': {self.channels} channels in {self.n_units} units, {n_free} prunable"
        reasons = sorted({f for f in self.frozen if f})
        if reasons:
            head += f" (frozen: {'; '.join(reasons)})"
        rows = [("space", "role", "size", f"unit i (of {self.n_units}) → elements")]
        for s in self.spaces:
            rows.append((s.name, s.role, str(s.size), _describe_mapping(self.units[s.id], self.n_units)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [head]
        for r in rows:
            lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
        if self.sources:
            lines.append("  sources: " + ", ".join(f"{s.path or s.key} ({s.op}{'' if s.selected else ', not selected'})"
                                                   for s in self.sources))
        return "\n".join(lines)

    __str__ = table

    def __repr__(self) -> str:
        return f"Group({self.name!r}, units={self.n_units}, spaces={len(self.spaces)})"


def _describe_mapping(unit_of: np.ndarray, n_units: int) -> str:
    """``i``, ``i+16``, ``16i … 16i+15``, ``i + {0, 4, 8}`` … for the elements of each unit in one space, one
    phrase per run of units that map alike (``units 0-3: i + {0, 4, 8, 12}; units 4-11: i+12``)."""
    order = np.argsort(unit_of, kind="stable")
    units_sorted = unit_of[order]
    present, starts = np.unique(units_sorted, return_index=True)
    if len(present) == 0:
        return "-"
    counts = np.diff(np.append(starts, len(units_sorted)))
    segments = []  # runs of consecutive units with the same element count
    begin = 0
    for k in range(1, len(present) + 1):
        if k == len(present) or present[k] != present[k - 1] + 1 or counts[k] != counts[begin]:
            segments.append((begin, k))
            begin = k
    phrases = []
    for lo, hi in segments:
        f = int(counts[lo])
        elems = np.stack([order[starts[k]:starts[k] + f] for k in range(lo, hi)])
        phrase = _describe_run(present[lo:hi], elems)
        if len(segments) > 1 or hi - lo != n_units:
            u0, u1 = int(present[lo]), int(present[hi - 1])
            phrase = f"units {u0}-{u1}: {phrase}" if u1 > u0 else f"unit {u0}: {phrase}"
        phrases.append(phrase)
    if len(phrases) > 4:
        return "; ".join(phrases[:3]) + f"; … ({len(phrases)} runs)"
    return "; ".join(phrases)


def _describe_run(units: np.ndarray, elems: np.ndarray) -> str:
    f = elems.shape[1]
    base = elems[:, 0]
    pattern = elems[0] - base[0]
    if not np.array_equal(elems - base[:, None], np.broadcast_to(pattern, elems.shape)):
        return "irregular"
    step = int(base[1] - base[0]) if len(units) > 1 else max(f, 1)
    if len(units) > 1 and not np.array_equal(base, base[0] + step * (units - units[0])):
        return "irregular"
    shift = int(base[0]) - step * int(units[0])
    i = "i" if step == 1 else f"{step}i"
    head = i if shift == 0 else (f"{i}+{shift}" if shift > 0 else f"{i}-{-shift}")
    if f == 1:
        return head
    if np.array_equal(pattern, np.arange(f)):
        return f"{head} … {head}+{f - 1}"
    shown = ", ".join(str(int(p)) for p in pattern[:6]) + (", …" if f > 6 else "")
    return f"{head} + {{{shown}}}"


# ---- registry of coupling rules -----------------------------------------------------------------------------

Rule = Callable[["CouplingBuilder", Any], None]
_RULES: Dict[str, Dict[str, Rule]] = {"fx": {}, "onnx": {}}
_CUSTOM: Dict[str, Dict[str, Rule]] = {"fx": {}, "onnx": {}}


def register_coupling(kind: str, *ops: str, _builtin: bool = False):
    """Decorator: ``fn(builder, node)`` describes how op(s) ``ops`` of graph form ``kind`` carry channels.

    FX ops are named as :func:`aglmc.passes.select.fx_op_name` names them (``aten.conv2d``, ``mylib.my_op``);
    ONNX ops by ``op_type``. A registered rule replaces the built-in one for that op.
    """
    if kind not in _RULES:
        raise ValueError(f"register_coupling: kind must be 'fx' or 'onnx', got {kind!r}")

    def deco(fn: Rule) -> Rule:
        for op in ops:
            (_RULES if _builtin else _CUSTOM)[kind][op] = fn
        return fn

    return deco


def _rule(kind: str, op: str) -> Optional[Rule]:
    return _CUSTOM[kind].get(op) or _RULES[kind].get(op)


# ---- the graph ----------------------------------------------------------------------------------------------


class ChannelGraph:
    """Spaces, couplings and groups of one model (FX GraphModule or graphsurgeon Graph).

    Build it with :func:`build_channel_graph`; ``groups`` lists the groups that have a conv/linear source (the
    candidates for pruning), each printable as a table; ``graph`` is the networkx graph of spaces.
    """

    def __init__(self, kind: str, model: Any):
        self.kind = kind
        self.model = model
        self.spaces: List[Space] = []
        self.by_key: Dict[Tuple, Space] = {}
        self.graph = nx.MultiGraph()
        self.edges: List[Tuple[Space, Space, Coupling]] = []
        self.rewrites: List[Tuple[Hashable, Callable]] = []
        self.groups: List[Group] = []
        self.shapes: Dict[Hashable, Tuple[int, ...]] = {}
        self.params: Dict[Tuple, Any] = {}  # param space key prefix -> how to read the constant
        self.claims: Dict[int, set] = {}  # space id -> node keys that claimed it
        self.touch: Dict[Hashable, Tuple[str, List[Hashable], List[Hashable], bool]] = {}
        self.onnx_types: Dict[str, int] = {}
        self.values: Dict[str, np.ndarray] = {}  # ONNX: values of small shape-derived integer tensors
        self.on_value: Dict[Tuple, Dict[int, Space]] = {}  # value key -> axis -> space

    # -- queries
    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        from aglmc.errors import did_you_mean

        raise PassError(f"no channel group named '{name}'", hint=did_you_mean(name, [g.name for g in self.groups]))

    def group_of(self, label: str) -> Group:
        """The group holding a space whose label or name is ``label`` (``"conv2d_1"``, ``"fc.weight dim 1"``)."""
        for g in self.groups:
            if any(label in (s.name, s.label) for s in g.spaces):
                return g
        raise KeyError(f"no group holds a space {label!r}")

    @property
    def prunable_groups(self) -> List[Group]:
        return [g for g in self.groups if g.prunable]

    def summary(self) -> str:
        rows = [("group", "channels", "units", "prunable", "sources")]
        for g in self.groups:
            rows.append((g.name, str(g.channels), str(g.n_units), str(int(g.free.sum())),
                         ", ".join(s.path or str(s.key) for s in g.sources)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}"
                         for r in rows)

    def __str__(self) -> str:
        return "\n\n".join(g.table() for g in self.groups)

    # -- construction (used by the builders)
    def _space(self, key: Tuple, kind: str, axis: int, size: int, label: str, path: str) -> Space:
        s = self.by_key.get(key)
        if s is None:
            s = Space(len(self.spaces), key, kind, axis, int(size), label, path)
            self.spaces.append(s)
            self.by_key[key] = s
            self.on_value.setdefault(key[:-1], {})[axis] = s
            self.graph.add_node(s.id, space=s)
        return s

    def _couple(self, a: Space, b: Space, c: Coupling) -> None:
        if len(c.a) and (c.a.max() >= a.size or c.b.max() >= b.size or c.a.min() < 0 or c.b.min() < 0):
            raise PassError(f"coupling '{c.name}' between {a.name} ({a.size}) and {b.name} ({b.size}) is out of range")
        self.graph.add_edge(a.id, b.id, coupling=c)
        self.edges.append((a, b, c))

    def _finish(self, selects: Callable[[Any], bool], node_of: Callable[[Hashable], Any]) -> None:
        # 1. freeze spaces a touching op did not claim
        for node_key, (op, reads, writes, has_rule) in self.touch.items():
            for value_key in list(reads) + list(writes):
                for s in self.on_value.get(value_key, {}).values():
                    if s.fixed is None and node_key not in self.claims.get(s.id, ()):
                        if op == "placeholder":
                            s.fixed = "model input"
                        elif op == "output":
                            s.fixed = "model output"
                        elif not has_rule:
                            s.fixed = f"{op} has no coupling rule"
                        else:
                            s.fixed = f"{op} does not carry axis {s.axis} of {s.label}"
        # 2. units: connected elements
        total = 0
        for s in self.spaces:
            s.start = total
            total += s.size
        if self.edges:
            a = np.concatenate([x.start + c.a for x, _, c in self.edges]).astype(np.int64)
            b = np.concatenate([y.start + c.b for _, y, c in self.edges]).astype(np.int64)
        else:
            a = b = np.zeros(0, np.int64)
        root = _components(total, a, b)
        # 3. groups: connected spaces
        names: Dict[str, int] = {}
        for comp in nx.connected_components(self.graph):
            spaces = sorted((self.spaces[i] for i in comp), key=lambda s: s.id)
            out_spaces = [s for s in spaces if s.has_role("out")]
            if not out_spaces:
                continue
            first = out_spaces[0]
            ordered = [first] + [s for s in spaces if s is not first]
            roots = np.concatenate([root[s.start:s.start + s.size] for s in ordered])
            uniq, first_at = np.unique(roots, return_index=True)
            uniq = uniq[np.argsort(first_at)]
            relabel = {int(r): i for i, r in enumerate(uniq)}
            lut_keys = np.array(list(relabel.keys()), dtype=np.int64)
            lut_vals = np.array(list(relabel.values()), dtype=np.int64)
            sorter = np.argsort(lut_keys)
            units = {}
            for s in spaces:
                r = root[s.start:s.start + s.size]
                units[s.id] = lut_vals[sorter[np.searchsorted(lut_keys, r, sorter=sorter)]]
            n_units = len(uniq)
            frozen: List[Optional[str]] = [None] * n_units
            has_source = np.zeros(n_units, dtype=bool)
            sources: Dict[Hashable, Source] = {}
            for s in spaces:
                for role, node_key, op, path in s.roles:
                    if role == "out" and node_key not in sources:
                        node = node_of(node_key)
                        selected = bool(selects(node)) if node is not None else True
                        sources[node_key] = Source(node_key, op, path, selected)
            for s in spaces:
                u = units[s.id]
                if s.fixed:
                    for k in np.unique(u):
                        frozen[k] = frozen[k] or s.fixed
                for role, node_key, op, path in s.roles:
                    if role == "out":
                        has_source[np.unique(u)] = True
                        if not sources[node_key].selected:
                            for k in np.unique(u):
                                frozen[k] = frozen[k] or f"{path or node_key} is not selected"
            for k in range(n_units):
                if not has_source[k] and frozen[k] is None:
                    frozen[k] = "no conv/linear produces these channels"
            name = first.roles[0][3] if first.roles and first.roles[0][3] else first.label
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name = f"{name}#{names[name]}"
            comp_edges = [(x, y, c) for x, y, c in self.edges if x.id in comp]
            self.groups.append(Group(name, spaces, units, n_units, frozen, list(sources.values()), comp_edges))
        self.groups.sort(key=lambda g: g.root.id)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find over ``n`` elements joined pairwise by ``a[k] — b[k]``: the smallest element of each class."""
    parent = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return parent
    while True:
        pa, pb = parent[a], parent[b]
        diff = pa != pb
        if not diff.any():
            return parent
        lo = np.minimum(pa[diff], pb[diff])
        hi = np.maximum(pa[diff], pb[diff])
        np.minimum.at(parent, hi, lo)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt


# ---- the builder rules talk to ------------------------------------------------------------------------------


class CouplingBuilder:
    """What a coupling rule uses to describe one op (``node``).

    ``space(value, axis, role)`` returns the space of a tensor's axis (or of a constant's dimension; constants are
    sliced when their elements go) and *claims* it for this op; ``couple(a, b, coupling)`` joins two spaces
    (default: same index); ``existing(value)`` lists the spaces other ops already put on a value (by axis);
    ``shape(value)`` is a value's static shape (None for non-tensors); ``on_rewrite(fn)`` registers
    ``fn(node, new_shape)`` to fix literal sizes after pruning, where ``new_shape(value)`` is a value's shape
    after pruning.
    """

    kind = ""

    def __init__(self, cg: ChannelGraph):
        self.cg = cg
        self.node = None
        self.node_key: Hashable = None
        self.op = ""

    # implemented per graph form
    def shape(self, value) -> Optional[Tuple[int, ...]]:
        raise NotImplementedError

    def is_const(self, value) -> bool:
        raise NotImplementedError

    def _value_key(self, value) -> Tuple:
        raise NotImplementedError

    def _label(self, value) -> Tuple[str, str]:
        raise NotImplementedError

    def _also_claim(self, value) -> List[Hashable]:
        return []

    # shared
    def space(self, value, axis: int, role: Optional[str] = None) -> Optional[Space]:
        shape = self.shape(value)
        if shape is None or not shape:
            return None
        axis = axis % len(shape)
        const = self.is_const(value)
        key = self._value_key(value) + (axis,)
        label, path = self._label(value)
        s = self.cg._space(key, "param" if const else "tensor", axis, shape[axis], label, path)
        self.claim(s)
        for extra in self._also_claim(value):
            self.cg.claims.setdefault(s.id, set()).add(extra)
        if role is not None or const:
            role = role or "param"
            entry = (role, self.node_key, self.op, self.path)
            if entry not in s.roles:
                s.roles.append(entry)
        return s

    def claim(self, s: Space) -> None:
        self.cg.claims.setdefault(s.id, set()).add(self.node_key)

    def existing(self, value) -> Dict[int, Space]:
        if self.shape(value) is None:
            return {}
        return dict(self.cg.on_value.get(self._value_key(value), {}))

    def couple(self, a: Optional[Space], b: Optional[Space], coupling: Optional[Coupling] = None) -> None:
        if a is None or b is None:
            return
        if coupling is None:
            if a.size != b.size:
                raise PassError(f"{self.op}: cannot couple {a.name} ({a.size}) and {b.name} ({b.size}) index by index")
            coupling = identity(a.size)
        self.cg._couple(a, b, coupling)

    def on_rewrite(self, fn: Callable) -> None:
        self.cg.rewrites.append((self.node_key, fn))

    @property
    def path(self) -> str:
        return ""


# ---- rules shared by both forms -----------------------------------------------------------------------------


def couple_elementwise(b: CouplingBuilder, operands: Sequence[Any], out) -> None:
    """Broadcasting elementwise op: each output axis that some operand carries channels on is coupled, index by
    index, to every operand that is full-size there (constants included); size-1 (broadcast) operands are not."""
    out_shape = b.shape(out)
    if out_shape is None:
        return
    nd = len(out_shape)
    shaped = [(v, b.shape(v)) for v in operands if b.shape(v) is not None]
    axes = set()
    for v, shape in shaped:
        for axis in b.existing(v):
            o = axis + nd - len(shape)
            if 0 <= o < nd and shape[axis] == out_shape[o]:
                axes.add(o)
    for o in sorted(axes):
        target = b.space(out, o)
        for v, shape in shaped:
            a = o - (nd - len(shape))
            if a >= 0 and shape[a] == out_shape[o] and out_shape[o] > 1:
                b.couple(b.space(v, a), target)


def couple_unary(b: CouplingBuilder, x, out) -> None:
    couple_elementwise(b, [x], out)


def couple_reduce(b: CouplingBuilder, x, out, reduced: Sequence[int], keepdim: bool) -> None:
    """Reduction over axes ``reduced`` (pooling, mean): the other axes keep their channels."""
    shape = b.shape(x)
    if shape is None:
        return
    nd = len(shape)
    reduced = {r % nd for r in reduced}
    for axis, s in b.existing(x).items():
        if axis in reduced:
            continue
        o = axis if keepdim else axis - sum(1 for r in reduced if r < axis)
        b.couple(b.space(x, axis), b.space(out, o))


def couple_reshape(b: CouplingBuilder, x, out) -> List[int]:
    """A reshape from ``x``'s shape to ``out``'s: each channel axis of ``x`` maps to the output axis that contains
    it (flatten: channel ``c`` → features ``c·HW …``), that it contains (unflatten), or equals. Returns the output
    axes that carry channels."""
    in_shape, out_shape = b.shape(x), b.shape(out)
    if in_shape is None or out_shape is None or math.prod(in_shape) != math.prod(out_shape):
        return []
    carried = []
    for axis in sorted(b.existing(x)):
        m = _reshape_map(in_shape, out_shape, axis)
        if m is None:
            continue
        o, coupling = m
        b.couple(b.space(x, axis), b.space(out, o), coupling)
        carried.append(o)
    return carried


def _reshape_map(in_shape, out_shape, axis) -> Optional[Tuple[int, Coupling]]:
    c = in_shape[axis]
    if c <= 1:
        return None
    inner = math.prod(in_shape[axis + 1:])
    for o, size in enumerate(out_shape):
        if size <= 1:
            continue
        o_inner = math.prod(out_shape[o + 1:])
        # the output axis contains the channel digit (identity or a merge such as flatten)
        if o_inner <= inner and inner * c <= o_inner * size:
            if inner % o_inner or (o_inner * size) % (inner * c):
                return None
            j = np.arange(size)
            ch = (j * o_inner // inner) % c
            if size == c:
                return o, identity(c)
            f = inner // o_inner
            if (o_inner * size) == inner * c:
                return o, expand(c, f)
            return o, Coupling(f"({f}·i … ) mod {c}", ch, j)
        # the channel axis contains this output axis (an unflatten): take the most significant one
        if inner <= o_inner and o_inner * size <= inner * c:
            if o_inner % inner or (inner * c) % (o_inner * size):
                return None
            i = np.arange(c)
            j = (i * inner // o_inner) % size
            f = o_inner // inner
            if inner * c == o_inner * size:
                return o, Coupling(f"i // {f}", i, j)
            return o, Coupling(f"(i // {f}) mod {size}", i, j)
    return None


def couple_concat(b: CouplingBuilder, inputs: Sequence[Any], out, dim: int) -> None:
    out_shape = b.shape(out)
    if out_shape is None:
        return
    nd = len(out_shape)
    dim = dim % nd
    shaped = [(v, b.shape(v)) for v in inputs if b.shape(v) is not None and len(b.shape(v)) == nd]
    if len(shaped) != len(inputs):
        return
    others = set()
    along = False
    for v, _ in shaped:
        for axis in b.existing(v):
            (others.add(axis) if axis != dim else None)
            along = along or axis == dim
    if along:
        target = b.space(out, dim)
        k = 0
        for v, shape in shaped:
            if shape[dim]:
                b.couple(b.space(v, dim), target, offset(shape[dim], k))
            k += shape[dim]
    for axis in sorted(others):
        target = b.space(out, axis)
        for v, _ in shaped:
            b.couple(b.space(v, axis), target)


def couple_conv(b: CouplingBuilder, x, weight, bias, out, groups: int, transposed: bool = False) -> None:
    """Convolution, NC… layout, weight (O, I/groups, …) (transposed: (I, O/groups, …), groups 1 only)."""
    xs, ws = b.shape(x), b.shape(weight)
    if xs is None or ws is None or b.shape(out) is None:
        return
    if transposed:
        if groups != 1:
            return
        b.couple(b.space(x, 1, role="feeds"), b.space(weight, 0, role="in"))
        o = b.space(out, 1)
        b.couple(b.space(weight, 1, role="out"), o)
        if bias is not None:
            b.couple(b.space(bias, 0, role="out"), o)
        return
    cin, cout = xs[1], ws[0]
    k_in, k_out = cin // groups, cout // groups
    o = b.space(out, 1)
    w0 = b.space(weight, 0, role="out")
    b.couple(w0, o)
    if bias is not None:
        b.couple(b.space(bias, 0, role="out"), o)
    xin = b.space(x, 1, role="feeds")
    if groups == 1:
        b.couple(xin, b.space(weight, 1, role="in"))
    elif k_in == 1:  # depthwise (channel multiplier k_out): input c feeds outputs c·k_out … c·k_out+k_out-1
        b.couple(xin, w0, expand(cin, k_out))
        b.on_rewrite(_depthwise_groups_rewriter(b.kind, x))
    else:  # grouped: same local index in every group, so each group keeps the same width
        b.couple(xin, b.space(weight, 1, role="in"), modulo(cin, k_in))
        b.couple(w0, w0, modulo(cout, k_out))


def _depthwise_groups_rewriter(kind: str, x):
    def rewrite(node, new_shape):
        groups = new_shape(x)[1]
        if kind == "fx":
            args = list(node.args)
            if len(args) > 8 and _fx_name(node) == "aten.convolution":
                args[8] = groups
            elif len(args) > 6:
                args[6] = groups
            else:
                node.kwargs = {**node.kwargs, "groups": groups}
                return
            node.args = tuple(args)
        else:
            node.attrs["group"] = int(groups)
    return rewrite


def couple_linear(b: CouplingBuilder, x, weight, bias, out, weight_layout: str = "oi") -> None:
    """``out = x @ W^T + bias`` on the last axis (``weight_layout="io"``: ``x @ W``)."""
    if b.shape(x) is None or b.shape(weight) is None or b.shape(out) is None:
        return
    w_in, w_out = (1, 0) if weight_layout == "oi" else (0, 1)
    b.couple(b.space(x, -1, role="feeds"), b.space(weight, w_in, role="in"))
    o = b.space(out, -1)
    b.couple(b.space(weight, w_out, role="out"), o)
    if bias is not None and b.shape(bias) is not None and len(b.shape(bias)) == 1 and b.shape(bias)[0] > 1:
        b.couple(b.space(bias, 0, role="out"), o)


def couple_norm(b: CouplingBuilder, x, out, params: Sequence[Tuple[Any, str]], axis: int) -> None:
    xs = b.existing(x)
    shape = b.shape(x)
    if shape is None:
        return
    axis = axis % len(shape)
    o = b.space(out, axis)
    b.couple(b.space(x, axis), o)
    for p, role in params:
        if p is not None and b.shape(p) is not None and len(b.shape(p)) >= 1:
            b.couple(b.space(p, 0, role=role), o)
    for other in xs:
        if other != axis:
            b.couple(b.space(x, other), b.space(out, other))


def _fx_name(node) -> str:
    from aglmc.passes.select import fx_op_name

    return fx_op_name(node)


# ---- FX ------------------------------------------------------------------------------------------------------


class FxBuilder(CouplingBuilder):
    kind = "fx"

    def __init__(self, cg: ChannelGraph, gm):
        super().__init__(cg)
        self.gm = gm

    def shape(self, value):
        import torch
        import torch.fx as fx

        if not isinstance(value, fx.Node):
            return None
        if value.op == "get_attr":
            t = _fx_attr(self.gm, value.target)
            return tuple(t.shape) if isinstance(t, torch.Tensor) else None
        return self.cg.shapes.get(value.name)

    def is_const(self, value) -> bool:
        return getattr(value, "op", None) == "get_attr"

    def _value_key(self, value):
        if value.op == "get_attr":
            return ("p", str(value.target))
        return ("t", value.name)

    def _label(self, value):
        from aglmc.passes.select import fx_path

        if value.op == "get_attr":
            return str(value.target), str(value.target).rsplit(".", 1)[0]
        return value.name, fx_path(value)

    def _also_claim(self, value):
        # a tuple-producing op claims the spaces of its getitem outputs for them
        if (value.op == "call_function" and value.target is operator.getitem and value.args[0] is self.node):
            return [value.name]
        return []

    @property
    def path(self) -> str:
        from aglmc.passes.select import fx_path

        return fx_path(self.node) if self.node is not None else ""


def _fx_attr(gm, target: str):
    obj = gm
    for part in str(target).split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _fx_shapes(gm, example_inputs) -> Dict[str, Tuple[int, ...]]:
    import torch

    shapes: Dict[str, Tuple[int, ...]] = {}
    missing = False
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "call_function", "call_method"):
            val = n.meta.get("val")
            tm = n.meta.get("tensor_meta")
            if isinstance(val, torch.Tensor):
                shapes[n.name] = tuple(int(d) for d in val.shape)
            elif tm is not None and hasattr(tm, "shape"):
                shapes[n.name] = tuple(int(d) for d in tm.shape)
            elif isinstance(val, (tuple, list)) or (n.op == "call_function" and n.target is operator.getitem):
                continue
            elif n.op != "placeholder" and val is None and tm is None:
                missing = True
    if missing:
        from torch.fx.passes.shape_prop import ShapeProp

        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if example_inputs:
            args = [torch.as_tensor(np.ascontiguousarray(a)) for a in example_inputs]
        else:
            args = [torch.zeros(shapes[p.name]) for p in placeholders]
        ShapeProp(gm).propagate(*args)
        for n in gm.graph.nodes:
            tm = n.meta.get("tensor_meta")
            if tm is not None and hasattr(tm, "shape"):
                shapes[n.name] = tuple(int(d) for d in tm.shape)
    # getitem of tuple outputs
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is operator.getitem and n.name not in shapes:
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor):
                shapes[n.name] = tuple(int(d) for d in val.shape)
    return shapes


def build_fx(gm, selects: Optional[Callable] = None, example_inputs: Optional[Sequence] = None) -> ChannelGraph:

    from aglmc.passes.select import fx_op_name

    selects = selects or (lambda node: True)
    cg = ChannelGraph("fx", gm)
    cg.shapes = _fx_shapes(gm, example_inputs)
    b = FxBuilder(cg, gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    for n in gm.graph.nodes:
        reads = []
        for inp in n.all_input_nodes:
            reads.append(("p", str(inp.target)) if inp.op == "get_attr" else ("t", inp.name))
        writes = [("t", n.name)]
        if n.op == "get_attr":
            continue
        if n.op in ("placeholder", "output"):
            cg.touch[n.name] = (n.op, reads, writes, False)
            continue
        if n.op == "call_module":  # export's guard function: reads inputs, carries nothing
            if str(n.target) == "_guards_fn":
                continue
            cg.touch[n.name] = (f"module {n.target}", reads, writes, False)
            continue
        if n.op == "call_function" and n.target is operator.getitem:
            cg.touch[n.name] = ("getitem", [], writes, True)  # the tuple producer claims for it
            continue
        op = fx_op_name(n) if n.op == "call_function" else str(n.target)
        rule = _rule("fx", op) or _rule("fx", op.rsplit(".", 1)[0])
        cg.touch[n.name] = (op, reads, writes, rule is not None)
        if rule is None:
            continue
        b.node, b.node_key, b.op = n, n.name, op
        rule(b, n)
    b.node = None
    cg._finish(selects, lambda key: nodes.get(key))
    return cg


def _fx_arg(node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _fx_view_rewriter(arg_index: int):
    def rewrite(node, new_shape):
        args = list(node.args)
        args[arg_index] = list(new_shape(node))
        node.args = tuple(args)
    return rewrite


def _register_fx_rules() -> None:
    reg = lambda *ops: register_coupling("fx", *ops, _builtin=True)  # noqa: E731

    @reg("aten.conv2d", "aten.conv1d", "aten.conv3d")
    def _conv(b, n):
        couple_conv(b, n.args[0], n.args[1], _fx_arg(n, 2, "bias"), n, _fx_arg(n, 6, "groups", 1))

    @reg("aten.convolution")
    def _convolution(b, n):
        transposed = _fx_arg(n, 6, "transposed", False)
        couple_conv(b, n.args[0], n.args[1], _fx_arg(n, 2, "bias"), n, _fx_arg(n, 8, "groups", 1), transposed)

    @reg("aten.linear")
    def _linear(b, n):
        couple_linear(b, n.args[0], n.args[1], _fx_arg(n, 2, "bias"), n)

    @reg("aten.matmul", "aten.mm", "aten.bmm")
    def _matmul(b, n):
        x, w = n.args[:2]
        if b.is_const(w) and b.shape(w) is not None and len(b.shape(w)) == 2 and not b.is_const(x):
            couple_linear(b, x, w, None, n, weight_layout="io")
            return
        xs, ws, out = b.shape(x), b.shape(w), b.shape(n)
        if b.is_const(x) or b.is_const(w) or xs is None or ws is None or out is None:
            return
        if len(xs) >= 3 and len(xs) == len(ws) == len(out) and xs[:-2] == ws[:-2] == out[:-2]:
            # activation x activation (attention's q·kᵀ and p·v): the batch axes (heads) go through, index by index
            for axis in sorted(set(b.existing(x)) | set(b.existing(w))):
                if axis < len(xs) - 2:
                    target = b.space(n, axis)
                    b.couple(b.space(x, axis), target)
                    b.couple(b.space(w, axis), target)

    @reg("aten.addmm")
    def _addmm(b, n):  # bias + x @ w
        bias, x, w = n.args[:3]
        if b.is_const(w) and not b.is_const(x):
            couple_linear(b, x, w, bias if b.is_const(bias) else None, n, weight_layout="io")

    @reg("aten.batch_norm", "aten._native_batch_norm_legit_no_training", "aten.instance_norm")
    def _batch_norm(b, n):
        x, w, bias, mean, var = (list(n.args) + [None] * 5)[:5]
        out = n
        if _fx_name(n) == "aten._native_batch_norm_legit_no_training":
            outs = [u for u in n.users if u.target is operator.getitem and u.args[1] == 0]
            if len(outs) != 1 or len(n.users) != 1:
                return
            out = outs[0]
        couple_norm(b, x, out, [(w, "scale"), (bias, "shift"), (mean, "stat"), (var, "stat")], 1)

    @reg("aten.layer_norm")
    def _layer_norm(b, n):
        x, normalized = n.args[0], n.args[1]
        w, bias = _fx_arg(n, 2, "weight"), _fx_arg(n, 3, "bias")
        if len(normalized) != 1 or b.shape(x) is None:
            return
        last = len(b.shape(x)) - 1
        if last not in b.existing(x):
            couple_unary(b, x, n)
            return
        couple_norm(b, x, n, [(w, "scale"), (bias, "shift")], last)

        def rewrite(node, new_shape):
            args = list(node.args)
            args[1] = [new_shape(node)[-1]]
            node.args = tuple(args)
        b.on_rewrite(rewrite)

    unary = ["relu", "relu_", "relu6", "hardtanh", "hardtanh_", "clamp", "clamp_min", "clamp_max", "gelu", "silu",
             "silu_", "sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "hardswish", "hardswish_", "tanh",
             "leaky_relu", "leaky_relu_", "elu", "selu", "mish", "softplus", "abs", "neg", "exp", "log", "sqrt",
             "rsqrt", "reciprocal", "square", "dropout", "dropout_", "feature_dropout", "alpha_dropout", "clone",
             "contiguous", "alias", "detach", "_to_copy", "to", "type_as", "erf", "pow"]

    @reg(*[f"aten.{u}" for u in unary])
    def _unary(b, n):
        couple_unary(b, n.args[0], n)

    @reg("aten.add", "aten.add_", "aten.sub", "aten.sub_", "aten.mul", "aten.mul_", "aten.div", "aten.div_",
         "aten.maximum", "aten.minimum", "aten.rsub")
    def _binary(b, n):
        couple_elementwise(b, [a for a in n.args[:2]], n)

    @reg("aten.where")
    def _where(b, n):
        couple_elementwise(b, list(n.args[:3]), n)

    @reg("aten.masked_fill", "aten.masked_fill_")
    def _masked_fill(b, n):  # x, mask (broadcast), a scalar or 0-d value
        couple_elementwise(b, list(n.args[:2]), n)

    @reg("aten.softmax", "aten._softmax", "aten.log_softmax", "aten._log_softmax")
    def _softmax(b, n):
        x, dim = n.args[0], n.args[1]
        shape = b.shape(x)
        if shape is None:
            return
        for axis in b.existing(x):
            if axis != dim % len(shape):
                b.couple(b.space(x, axis), b.space(n, axis))

    @reg("aten.max_pool2d", "aten.avg_pool2d", "aten.max_pool1d", "aten.avg_pool1d", "aten.adaptive_avg_pool2d",
         "aten.adaptive_avg_pool1d", "aten.adaptive_max_pool2d", "aten.upsample_nearest2d",
         "aten.upsample_bilinear2d", "aten._adaptive_avg_pool2d")
    def _pool(b, n):
        x = n.args[0]
        shape = b.shape(x)
        out = n
        if shape is None:
            return
        if isinstance(n.meta.get("val"), (tuple, list)):  # (values, indices)
            outs = [u for u in n.users if u.target is operator.getitem and u.args[1] == 0]
            if len(outs) != 1 or any(u.args[1] != 0 for u in n.users):
                return
            out = outs[0]
        spatial = 1 if "1d" in _fx_name(n) else 2
        couple_reduce(b, x, out, list(range(len(shape) - spatial, len(shape))), keepdim=True)

    @reg("aten.mean", "aten.sum", "aten.amax", "aten.amin")
    def _reduce(b, n):
        x = n.args[0]
        shape = b.shape(x)
        if shape is None:
            return
        dims = _fx_arg(n, 1, "dim")
        if dims is None:
            return
        dims = [dims] if isinstance(dims, int) else list(dims)
        keepdim = bool(_fx_arg(n, 2, "keepdim", False))
        couple_reduce(b, x, n, dims, keepdim)

    @reg("aten.pad", "aten.constant_pad_nd", "aten.reflection_pad2d", "aten.replication_pad2d")
    def _pad(b, n):
        x, pads = n.args[0], n.args[1]
        shape = b.shape(x)
        if shape is None:
            return
        padded = {len(shape) - 1 - i // 2 for i, p in enumerate(pads) if p}
        for axis in b.existing(x):
            if axis not in padded:
                b.couple(b.space(x, axis), b.space(n, axis))

    @reg("aten.cat", "aten.concat")
    def _cat(b, n):
        couple_concat(b, list(n.args[0]), n, _fx_arg(n, 1, "dim", 0))

    @reg("aten.split", "aten.split_with_sizes", "aten.chunk")
    def _split(b, n):
        """``split``/``chunk`` into pieces read by getitem: piece i is the input's slice [k_i, k_i + size_i) along
        ``dim`` (the inverse of a concat), e.g. the gate and up halves of a fused SwiGLU projection. After pruning,
        the op becomes ``split_with_sizes`` with the pieces' new sizes."""
        x = n.args[0]
        xs = b.shape(x)
        pieces = n.meta.get("val")
        outs = [u for u in n.users if u.op == "call_function" and u.target is operator.getitem]
        if xs is None or not isinstance(pieces, (list, tuple)) or len(outs) != len(n.users):
            return
        dim = _fx_arg(n, 2, "dim", 0) % len(xs)
        sizes = [int(t.shape[dim]) for t in pieces]
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int)
        existing = b.existing(x)
        for u in outs:
            i = int(u.args[1])
            for axis in existing:
                if axis == dim:
                    b.couple(b.space(u, dim), b.space(x, dim), offset(sizes[i], int(starts[i])))
                else:
                    b.couple(b.space(u, axis), b.space(x, axis))
        if dim in existing:
            def rewrite(node, new_shape):
                import torch

                by_index = {int(u.args[1]): u for u in node.users}
                new_sizes = [int(new_shape(by_index[i])[dim]) if i in by_index else sizes[i]
                             for i in range(len(sizes))]
                node.target = torch.ops.aten.split_with_sizes.default
                node.args, node.kwargs = (node.args[0], new_sizes, dim), {}
            b.on_rewrite(rewrite)

    @reg("aten.view", "aten.reshape", "aten._unsafe_view")
    def _view(b, n):
        if couple_reshape(b, n.args[0], n):
            b.on_rewrite(_fx_view_rewriter(1))

    @reg("aten.flatten", "aten.unsqueeze", "aten.squeeze", "aten.unflatten")
    def _reshape_like(b, n):
        if _fx_name(n) == "aten.unflatten":
            if couple_reshape(b, n.args[0], n):
                def rewrite(node, new_shape):
                    args = list(node.args)
                    d = args[1] % len(new_shape(node))
                    args[2] = list(new_shape(node))[d:d + len(args[2])]
                    node.args = tuple(args)
                b.on_rewrite(rewrite)
            return
        couple_reshape(b, n.args[0], n)

    @reg("aten.permute")
    def _permute(b, n):
        x, dims = n.args[0], n.args[1]
        shape = b.shape(x)
        if shape is None:
            return
        dims = [d % len(shape) for d in dims]
        for axis in b.existing(x):
            b.couple(b.space(x, axis), b.space(n, dims.index(axis)))

    @reg("aten.transpose", "aten.t")
    def _transpose(b, n):
        x = n.args[0]
        shape = b.shape(x)
        if shape is None:
            return
        nd = len(shape)
        d0, d1 = (n.args[1] % nd, n.args[2] % nd) if len(n.args) > 2 else (0, 1)
        for axis in b.existing(x):
            o = d1 if axis == d0 else d0 if axis == d1 else axis
            b.couple(b.space(x, axis), b.space(n, o))

    @reg("aten.scaled_dot_product_attention")
    def _sdpa(b, n):
        """Attention over heads (axis 1 of q, k, v [B, H, S, D] and of the output): each head attends alone, so the
        heads axis goes through; with fewer key/value heads (``enable_gqa``) kv head i serves query heads
        r·i … r·i+r-1. A mask broadcast over heads is not coupled; a mask per head is."""
        q, k, v = n.args[:3]
        mask = _fx_arg(n, 3, "attn_mask")
        qs, ks, vs, out = b.shape(q), b.shape(k), b.shape(v), b.shape(n)
        if any(s is None or len(s) != 4 for s in (qs, ks, vs, out)) or ks[1] != vs[1] or qs[1] % ks[1]:
            return
        axes = {a for x in (q, k, v) for a in b.existing(x)}
        if 1 not in axes:
            return
        target = b.space(n, 1)
        b.couple(b.space(q, 1), target)
        r = qs[1] // ks[1]
        for x in (k, v):
            b.couple(b.space(x, 1), target, expand(ks[1], r) if r > 1 else None)
        if mask is not None and b.shape(mask) is not None and len(b.shape(mask)) == 4 and b.shape(mask)[1] == qs[1] > 1:
            b.couple(b.space(mask, 1), target)

    @reg("aten.stack")
    def _stack(b, n):
        """``stack(tensors, dim)``: axis a of every input is axis a (a < dim) or a + 1 of the output."""
        inputs, out = list(n.args[0]), b.shape(n)
        shapes = [b.shape(v) for v in inputs]
        if out is None or any(s is None or s != shapes[0] for s in shapes):
            return
        dim = _fx_arg(n, 1, "dim", 0) % len(out)
        for axis in sorted({a for v in inputs for a in b.existing(v)}):
            target = b.space(n, axis if axis < dim else axis + 1)
            for v in inputs:
                b.couple(b.space(v, axis), target)

    @reg("aten.slice")
    def _slice(b, n):
        """A slice along ``dim`` carries every other axis through unchanged (the rotary embedding's
        ``x[..., :rotary_dim]`` keeps the heads axis); channels on the sliced axis itself stay frozen."""
        x = n.args[0]
        shape = b.shape(x)
        if shape is None or b.shape(n) is None:
            return
        dim = _fx_arg(n, 1, "dim", 0) % len(shape)
        for axis in b.existing(x):
            if axis != dim:
                b.couple(b.space(x, axis), b.space(n, axis))

    @reg("aten.repeat_interleave")
    def _repeat_interleave(b, n):
        """``repeat_interleave(x, repeats: int, dim)``: element i of ``dim`` becomes elements r·i … r·i+r-1 (grouped-
        query attention: key/value head i serves query heads r·i … r·i+r-1, which are pruned with it)."""
        x = n.args[0]
        shape, out_shape = b.shape(x), b.shape(n)
        repeats, dim = _fx_arg(n, 1, "repeats"), _fx_arg(n, 2, "dim")
        if shape is None or out_shape is None or not isinstance(repeats, int) or dim is None:
            return
        dim = dim % len(shape)
        for axis in b.existing(x):
            coupling = expand(shape[axis], repeats) if axis == dim else None
            b.couple(b.space(x, axis), b.space(n, axis), coupling)

    @reg("aten.expand")
    def _expand(b, n):
        x = n.args[0]
        in_shape, out_shape = b.shape(x), b.shape(n)
        if in_shape is None or out_shape is None:
            return
        lead = len(out_shape) - len(in_shape)
        carried = False
        for axis in b.existing(x):
            if in_shape[axis] == out_shape[axis + lead]:
                b.couple(b.space(x, axis), b.space(n, axis + lead))
                carried = True
        if carried:
            b.on_rewrite(_fx_view_rewriter(1))


_register_fx_rules()


# ---- ONNX ----------------------------------------------------------------------------------------------------


class OnnxBuilder(CouplingBuilder):
    kind = "onnx"

    def __init__(self, cg: ChannelGraph, graph):
        super().__init__(cg)
        self.graph = graph
        self.index: int = -1

    def shape(self, value):
        from aglmc.passes.onnx_utils import constant_value

        if value is None:
            return None
        if self.is_const(value):
            return tuple(constant_value(value).shape)
        return self.cg.shapes.get(value.name)

    def is_const(self, value) -> bool:
        from aglmc.passes.onnx_utils import constant_value

        return value is not None and constant_value(value) is not None

    def _value_key(self, value):
        if self.is_const(value):  # constants are keyed by the slot that reads them (exporters share equal arrays)
            slot = next(i for i, t in enumerate(self.node.inputs) if t is value)
            return ("p", self.index, slot)
        return ("t", value.name)

    def _label(self, value):
        if self.is_const(value):
            return value.name, self.node.name
        producer = value.inputs[0].name if value.inputs else ""
        return value.name, producer

    @property
    def path(self) -> str:
        return (self.node.name or f"node{self.index}") if self.node is not None else ""

    def existing(self, value):
        if value is None or self.is_const(value):
            return {}
        return super().existing(value)


def _onnx_shapes(graph) -> Tuple[Dict[str, Tuple[int, ...]], Dict[str, int], Dict[str, np.ndarray]]:
    """Static shapes and element types of the graph's tensors, and the values of small shape-derived integer
    tensors (pads or shapes computed from ``Shape``). ONNX shape inference answers most; where it cannot (a
    ``Pad`` whose pads are computed, as torch exports TF-style padding) one onnxruntime run on zeros does."""
    import onnx
    import onnx_graphsurgeon as gs

    model = gs.export_onnx(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # a model shape inference cannot read: fall back to what the file declares
        inferred = model
    shapes, types = {}, {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.elem_type:
            types[vi.name] = tt.elem_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if tt.HasField("shape") and all(d is not None for d in dims):
            shapes[vi.name] = tuple(int(d) for d in dims)
    values: Dict[str, np.ndarray] = {}
    variables = [t for t in graph.tensors().values() if isinstance(t, gs.Variable)]
    if all(t.name in shapes for t in variables) or any(t.name not in shapes for t in graph.inputs):
        return shapes, types, values
    static = _onnx_static_tensors(graph)
    outputs = {o.name for o in model.graph.output}
    for t in variables:
        if t.name not in outputs and t.name in types and t.inputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(t.name, types[t.name], None))
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros(shapes[i.name], dtype=onnx.helper.tensor_dtype_to_np_dtype(types[i.name]))
                 for i in graph.inputs}
        names = [o.name for o in sess.get_outputs()]
        for name, value in zip(names, sess.run(names, feeds)):
            value = np.asarray(value)
            shapes[name] = tuple(int(d) for d in value.shape)
            if name in static and value.dtype.kind in "iu" and value.size <= 64:
                values[name] = value
    except Exception:  # shapes stay unknown: the channels there are frozen, never pruned wrongly
        pass
    return shapes, types, values


def _onnx_static_tensors(graph) -> set:
    """Tensors computed from constants and ``Shape``/``Size`` alone: fixed, since input shapes are static."""
    import onnx_graphsurgeon as gs

    static = {name for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    for node in graph.nodes:
        if node.op in ("Shape", "Size") or all(t is None or t.name in static for t in node.inputs):
            static.update(o.name for o in node.outputs)
    return static


def build_onnx(graph, selects: Optional[Callable] = None) -> ChannelGraph:
    selects = selects or (lambda node: True)
    cg = ChannelGraph("onnx", graph)
    cg.shapes, cg.onnx_types, cg.values = _onnx_shapes(graph)
    b = OnnxBuilder(cg, graph)
    nodes = list(graph.nodes)
    graph_inputs = {t.name for t in graph.inputs}
    cg.touch["<inputs>"] = ("placeholder", [], [("t", n) for n in graph_inputs], False)
    cg.touch["<outputs>"] = ("output", [("t", t.name) for t in graph.outputs], [], False)
    for i, n in enumerate(nodes):
        reads = [("t", t.name) for t in n.inputs if t is not None and not b.is_const(t)]
        writes = [("t", t.name) for t in n.outputs]
        rule = _rule("onnx", n.op)
        cg.touch[i] = (n.op, reads, writes, rule is not None)
        if rule is None:
            continue
        b.node, b.node_key, b.op, b.index = n, i, n.op, i
        rule(b, n)
    b.node = None
    cg._finish(selects, lambda key: nodes[key] if isinstance(key, int) else None)
    return cg


def _onnx_ints(b: OnnxBuilder, node, input_index: int, attr: str) -> Optional[List[int]]:
    """An int list given as attribute ``attr`` (older opsets) or as constant input ``input_index``."""
    from aglmc.passes.onnx_utils import constant_value

    if attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        t = node.inputs[input_index]
        v = constant_value(t)
        if v is None:
            v = b.cg.values.get(t.name)
        if v is None:
            return None
        return [int(x) for x in np.asarray(v).reshape(-1)]
    return []


def _onnx_reshape_rewriter(node, new_shape):
    import onnx_graphsurgeon as gs

    shape = np.asarray(new_shape(node.outputs[0]), dtype=np.int64)
    node.inputs[1] = gs.Constant(f"{node.name or node.outputs[0].name}_pruned_shape", shape)


def _register_onnx_rules() -> None:
    reg = lambda *ops: register_coupling("onnx", *ops, _builtin=True)  # noqa: E731

    @reg("Conv")
    def _conv(b, n):
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        couple_conv(b, n.inputs[0], n.inputs[1], bias, n.outputs[0], int(n.attrs.get("group", 1)))

    @reg("ConvTranspose")
    def _conv_t(b, n):
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        couple_conv(b, n.inputs[0], n.inputs[1], bias, n.outputs[0], int(n.attrs.get("group", 1)), True)

    @reg("Gemm")
    def _gemm(b, n):
        if n.attrs.get("transA", 0) or not b.is_const(n.inputs[1]):
            return
        layout = "oi" if n.attrs.get("transB", 0) else "io"
        bias = n.inputs[2] if len(n.inputs) > 2 and b.is_const(n.inputs[2]) else None
        couple_linear(b, n.inputs[0], n.inputs[1], bias, n.outputs[0], weight_layout=layout)

    @reg("MatMul")
    def _matmul(b, n):
        x, w = n.inputs[:2]
        if b.is_const(w) and b.shape(w) is not None and len(b.shape(w)) == 2 and not b.is_const(x):
            couple_linear(b, x, w, None, n.outputs[0], weight_layout="io")

    @reg("BatchNormalization", "InstanceNormalization")
    def _bn(b, n):
        if len(n.outputs) > 1 and any(o.outputs for o in n.outputs[1:]):
            return
        names = ["scale", "shift", "stat", "stat"]
        params = [(t, names[i]) for i, t in enumerate(n.inputs[1:5])]
        couple_norm(b, n.inputs[0], n.outputs[0], params, 1)

    @reg("LayerNormalization")
    def _ln(b, n):
        x = n.inputs[0]
        shape = b.shape(x)
        if shape is None or n.attrs.get("axis", -1) % len(shape) != len(shape) - 1:
            return
        if len(shape) - 1 not in b.existing(x):
            couple_unary(b, x, n.outputs[0])
            return
        params = [(n.inputs[1], "scale")] + ([(n.inputs[2], "shift")] if len(n.inputs) > 2 else [])
        couple_norm(b, x, n.outputs[0], params, len(shape) - 1)

    @reg("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Erf", "Exp", "Log",
         "Sqrt", "Abs", "Neg", "Softplus", "Mish", "Gelu", "Identity", "Dropout", "Cast", "Reciprocal", "Clip",
         "PRelu")
    def _unary(b, n):
        if n.op == "Dropout" and len(n.outputs) > 1 and n.outputs[1].outputs:
            return
        operands = [n.inputs[0]] + ([n.inputs[1]] if n.op == "PRelu" else [])
        couple_elementwise(b, operands, n.outputs[0])

    @reg("Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean", "Where")
    def _binary(b, n):
        couple_elementwise(b, [t for t in n.inputs if t is not None], n.outputs[0])

    @reg("Softmax", "LogSoftmax")
    def _softmax(b, n):
        x = n.inputs[0]
        shape = b.shape(x)
        if shape is None:
            return
        axis = int(n.attrs.get("axis", -1)) % len(shape)
        for a in b.existing(x):
            if a != axis:
                b.couple(b.space(x, a), b.space(n.outputs[0], a))

    # not Resize: its `sizes` input names the channel count
    @reg("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool")
    def _pool(b, n):
        if len(n.outputs) > 1 and n.outputs[1].outputs:
            return
        shape = b.shape(n.inputs[0])
        if shape is None:
            return
        couple_reduce(b, n.inputs[0], n.outputs[0], list(range(2, len(shape))), keepdim=True)

    @reg("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
    def _reduce(b, n):
        shape = b.shape(n.inputs[0])
        axes = _onnx_ints(b, n, 1, "axes")
        if shape is None or axes is None:
            return
        if not axes:
            if n.attrs.get("noop_with_empty_axes", 0):
                couple_unary(b, n.inputs[0], n.outputs[0])
                return
            axes = list(range(len(shape)))
        couple_reduce(b, n.inputs[0], n.outputs[0], axes, bool(n.attrs.get("keepdims", 1)))

    @reg("Pad")
    def _pad(b, n):
        shape = b.shape(n.inputs[0])
        pads = _onnx_ints(b, n, 1, "pads")
        if shape is None or pads is None:
            return
        nd = len(shape)
        axes = _onnx_ints(b, n, 3, "axes") if len(n.inputs) > 3 else None
        axes = [a % nd for a in axes] if axes else list(range(nd))
        k = len(axes)
        padded = {axes[i % k] for i, p in enumerate(pads) if p}
        for axis in b.existing(n.inputs[0]):
            if axis not in padded:
                b.couple(b.space(n.inputs[0], axis), b.space(n.outputs[0], axis))

    @reg("Concat")
    def _concat(b, n):
        couple_concat(b, list(n.inputs), n.outputs[0], int(n.attrs["axis"]))

    @reg("Reshape")
    def _reshape(b, n):
        if couple_reshape(b, n.inputs[0], n.outputs[0]):
            b.on_rewrite(_onnx_reshape_rewriter)

    @reg("Flatten", "Squeeze", "Unsqueeze")
    def _flatten(b, n):
        couple_reshape(b, n.inputs[0], n.outputs[0])

    @reg("Transpose")
    def _transpose(b, n):
        shape = b.shape(n.inputs[0])
        if shape is None:
            return
        perm = [int(p) for p in n.attrs.get("perm", list(range(len(shape)))[::-1])]
        for axis in b.existing(n.inputs[0]):
            b.couple(b.space(n.inputs[0], axis), b.space(n.outputs[0], perm.index(axis)))


_register_onnx_rules()


def build_channel_graph(kind: str, graph, selects: Optional[Callable] = None,
                        example_inputs: Optional[Sequence] = None) -> ChannelGraph:
    """The :class:`ChannelGraph` of an FX GraphModule (``kind="fx"``) or a graphsurgeon Graph (``"onnx"``).

    ``selects(node)`` decides which conv/linear ops may lose output channels (default: all); FX shapes come from
    the nodes' metadata (``example_inputs``, arrays in placeholder order, fill it in where it is missing).
    """
    if kind == "fx":
        return build_fx(graph, selects, example_inputs)
    if kind == "onnx":
        return build_onnx(graph, selects)
    raise PassError(f"channel graphs are built for fx and onnx graphs, not {kind!r}")
