"""Where every tensor of a scan stage sits in a program's tiles, and the Plan's pieces lowered onto them.

A scan program owns, for one (sequence, head), ``BLOCK_T`` steps at a time, a block of one
*parallel* axis and all of every other axis. The axes are found by unification: each state
axis, each output axis and each contracted axis (``q @ k``, ``sum(k * k)``) starts as a
variable; a state read by a later component, a leaf read in several pieces, an outer product
placing its vectors, a view, all tie variables together, and each class left is one *tile
axis*. A tile is a Triton tensor ``[BLOCK_T, BLOCK_<axis>, ...]`` with size 1 along the axes
its tensor does not span (a weight also along time), so Triton's broadcasting does what the
views say. A reduction inside a step becomes a named tile (``r_0 = tl.sum(...)``) over the axes
it contracts, which the program owns whole. The parallel axis is one that every state and every
output spans and no reduction contracts: programs split it (Mamba's ``D``); a stage without
one (Aaren's scalar states) runs one program per (sequence, head).

This module only lowers pieces; what runs as a scan is the compiler's decision. What it
cannot lower raises a BackendError located at the component or output, naming the piece.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> space = TileSpace(analyse_source(open("examples/mamba.rnn").read()))
    >>> [a.name for a in space.axes], space.parallel, space.leaf("dt").axes
    (['ax0', 'ax1'], 0, (0,))
    >>> space.pieces[0]["a"], space.pieces[0]["b"]
    (exp(wt_A*x_dt), x_B*x_dt*x_u)
    >>> space.outputs[0].expr, space.reductions[0].expr
    (r_0 + wt_Dskip*x_u, new_S*x_C)
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.components import Stage
from rnnc.compiler.nested import show
from rnnc.templates.scan_hoist import Hoister
from rnnc.templates.scan_names import Identifiers
from rnnc.templates.scan_unify import AxisWalk


@dataclass(frozen=True)
class TileAxis:
    """One axis of the tile space: its dim and its kernel names (size argument, block, indices, mask)."""

    name: str
    dim: sympy.Expr
    size: str
    block: str
    index: str
    valid: str


@dataclass(frozen=True)
class Layout:
    """The tile axes a tensor spans (sorted) and whether it varies in time (a weight does not)."""

    axes: tuple[int, ...]
    time: bool = True

    def union(self, other: Layout) -> Layout:
        """The layout of a product of tensors in both layouts.

        Example:
            >>> Layout((0,), False).union(Layout((1,)))
            Layout(axes=(0, 1), time=True)
        """
        return Layout(tuple(sorted(set(self.axes) | set(other.axes))), self.time or other.time)


SCALAR = Layout((), False)


@dataclass(frozen=True)
class Leaf:
    """A tensor the kernel loads: an input, a weight (or a part of one), or a state's old or new value.

    ``name`` and ``source`` are the declared tensor it reads (its pointers); ``part`` is
    ``(axis, index, count, drop)`` for a part of ``source``, ``placement`` which of its places
    (``outer(x, x)`` reads ``x`` in two); ``shared`` says that other leaves read the same tensor
    (so gradients add, never overwrite).
    """

    name: str
    kind: str  # input, weight, old, new
    symbol: sympy.Symbol
    axes: tuple[int, ...]  # the tile axis of each of the tensor's own axes, in its order
    source: str = ""
    part: tuple[int, int, int, int] | None = None
    shared: bool = False
    placement: int = 0  # which placement of ``source`` (or of its part) this leaf is

    @property
    def gate(self) -> int | None:
        """The part's index (the gate of its identifiers), None for a whole tensor."""
        return self.part[1] if self.part is not None else None

    @property
    def layout(self) -> Layout:
        """The leaf's layout."""
        return Layout(tuple(sorted(self.axes)), self.kind != "weight")


@dataclass(frozen=True)
class Reduction:
    """``symbol = op(expr)`` over the tile ``axes``: a reduction inside a step (``q @ k``, ``sum(k * k)``)."""

    symbol: sympy.Symbol
    op: str
    expr: sympy.Expr
    axes: tuple[int, ...]
    label: str


@dataclass(frozen=True)
class OutputTile:
    """An output: its name, the tile axis of each of its own axes, its tile expression, how the cell writes it."""

    name: str
    axes: tuple[int, ...]
    expr: sympy.Expr
    label: str

    @property
    def layout(self) -> Layout:
        """The output's layout (it varies in time)."""
        return Layout(tuple(sorted(self.axes)))


class TileSpace(AxisWalk):
    """The tile axes of one scan stage, every leaf's place, and the stage's pieces as tile expressions.

    ``pieces[i]`` holds component ``stage.components[i]``'s pieces: ``a``, ``b`` (elementwise,
    max-plus) or ``m`` (n x n entries) and ``b`` (n entries) for a coupled component.
    """

    def __init__(self, plan: Plan, stage: Stage | None = None, names: Identifiers | None = None):
        self.plan = plan
        self.stage = stage if stage is not None else plan.stages[0]
        ir = plan.ir
        self.components = [plan.components[i] for i in self.stage.components]
        states = [s for c in self.components for s in c.states]
        super().__init__({d.name: d for d in ir.decls}, states, names or Identifiers(), ir.cell, ir.dims)
        self.hoister = Hoister(ir)  # state-free reductions become inputs (or weights) computed before the kernel
        raw_pieces = [self._component_pieces(c) for c in self.components]
        raw_outputs = [self._output(name, expr) for name, expr in self.stage.output_exprs]
        placed = self.merge_occurrences()
        raw_pieces = [_substitute(p, placed) for p in raw_pieces]
        raw_outputs = [(n, sp, e.xreplace(placed)) for n, sp, e in raw_outputs]
        self.raw = [(s, op, e.xreplace(placed), vs, label) for s, op, e, vs, label in self.raw]
        self._resolve(raw_pieces, raw_outputs)

    # --- the stage's pieces ---------------------------------------------------------------------
    def _component_pieces(self, c) -> dict:
        label = f"component {c.index + 1}, {', '.join(c.states)} ({c.kind})"
        if c.kind == "coupled":
            self.where = (label, c.span)
            first = self.state_vars[c.states[0]]
            for s in c.states[1:]:
                for v, w in zip(first, self.state_vars[s]):
                    self.unify(v, w)
            space = self.state_vars[c.states[0]]
            m = [[self._piece(f"{label}, M[{i}][{j}]", e, space, c.span) for j, e in enumerate(row)]
                 for i, row in enumerate(c.coupled.m)]  # fmt: skip
            b = [self._piece(f"{label}, b[{i}]", e, space, c.span) for i, e in enumerate(c.coupled.b)]
            return {"m": m, "b": b}
        if c.kind == "elementwise":
            (piece,) = c.affine
        elif c.kind == "maxplus":
            piece = c.maxplus
        else:
            self.where = (label, c.span)
            raise self.refuse(f"a {c.kind} component is no scan")
        space = self.state_vars[piece.state]
        return {"a": self._piece(f"{label}, a", piece.a, space, c.span),
                "b": self._piece(f"{label}, b", piece.b, space, c.span)}  # fmt: skip

    def _output(self, name: str, expr: sympy.Expr):
        decl = next(o for o in self.plan.ir.outputs if o.name == name)
        space = [self.fresh(d) for d in decl.shape]
        self.tensors.append(space)
        return name, space, self._piece(f"output {name}", expr, space, decl.span)

    def _piece(self, what: str, expr: sympy.Expr, space: list[int], span) -> sympy.Expr:
        self.where = (f"{what} = {show(expr)}", span)
        expr = self.hoister.rewrite(expr)
        for h in self.hoister.hoisted:
            if h.name not in self.decls:
                self.decls[h.name] = h.declared()
                self.ranks[h.name] = len(h.shape)
        lowered = self.walk(expr, space)
        if self.conflicts():
            raise self.refuse("it would put two axes of one tensor along one tile axis")
        self.where = None
        return lowered

    # --- resolution -----------------------------------------------------------------------------
    def _resolve(self, raw_pieces, raw_outputs) -> None:
        tensor_vars = [v for vs in self.tensors for v in vs] + [v for *_, vs, _ in self.raw for v in vs]
        used = {self.find(v) for v in tensor_vars}
        order = []  # axes in the order they appear: the states', then the outputs', then the rest
        for v in [v for s in self.states for v in self.state_vars[s]] + [v for _, sp, _ in raw_outputs for v in sp]:
            if self.find(v) not in order:
                order.append(self.find(v))
        order += [r for r in dict.fromkeys(self.find(v) for v in range(len(self.parent))) if r not in order]
        order = [r for r in order if r in used]
        index = {r: i for i, r in enumerate(order)}
        dims = [self.dim[r] for r in order]
        if any(d is None for d in dims):  # pragma: no cover - every axis ends at a leaf
            raise self.refuse("an axis has no size")
        # named by position (ax0, ax1): an axis's variables cannot meet anything the cell names
        self.axes = [
            TileAxis(f"ax{i}", d, f"dim_ax{i}", f"BLOCK_ax{i}", f"i_ax{i}", f"ok_ax{i}") for i, d in enumerate(dims)
        ]

        def place(vars_: list[int]) -> tuple[int, ...]:
            return tuple(index[self.find(v)] for v in vars_)

        self._leaves: dict[tuple, Leaf] = {}
        for s in self.states:
            for kind in ("old", "new"):
                symbol = self.state_symbol(s, kind == "new")
                self._leaves[(kind, s, None, 0)] = Leaf(s, kind, symbol, place(self.state_vars[s]), s)
        for (source, part), placements in self.placements.items():
            kind = self.decls[source].kind
            shared = len(placements) > 1 or sum(key[0] == source for key in self.placements) > 1
            for i, vars_ in enumerate(placements):
                symbol = self.leaf_symbol(source, kind, part, i)
                leaf = Leaf(source, kind, symbol, place(vars_), source, part, shared, i)
                self._leaves[(kind, source, part, i)] = leaf
        self.layouts = {leaf.symbol: leaf.layout for leaf in self._leaves.values()}
        for d in self.dims_read:
            self.layouts[sympy.Symbol(self.names.tensor("value", d), positive=True)] = SCALAR
        self.dims_read = sorted(self.dims_read)
        # reductions: named in order, the same reduction met twice (q @ k in three pieces) computed once
        self.reductions: list[Reduction] = []
        rename: dict[sympy.Symbol, sympy.Symbol] = {}
        seen: dict[tuple, sympy.Symbol] = {}
        for symbol, op, expr, vars_, label in self.raw:
            expr = expr.xreplace(rename)
            axes = tuple(sorted({index[self.find(v)] for v in vars_}))
            key = (op, expr, axes)
            if key not in seen:
                name = sympy.Symbol(self.names.own("reduction", "r"), real=True)
                seen[key] = name
                self.reductions.append(Reduction(name, op, expr, axes, label))
                full = self.layout_of(expr)
                self.layouts[name] = Layout(tuple(a for a in full.axes if a not in axes), full.time)
            rename[symbol] = seen[key]
        self.pieces = [_substitute(p, rename) for p in raw_pieces]
        labels = dict(self.stage.output_exprs)
        self.outputs = [OutputTile(n, place(sp), e.xreplace(rename), show(labels[n])) for n, sp, e in raw_outputs]
        self.parallel = self._parallel_axis()
        self.hoisted = list(self.hoister.hoisted)

    def _parallel_axis(self) -> int | None:
        """The axis programs split: spanned by every state and output, contracted by no reduction."""
        reduced = {a for r in self.reductions for a in r.axes}
        spans = [set(self.leaf(s).axes) for s in self.states] + [set(o.axes) for o in self.outputs]
        first = self.leaf(self.states[0]).axes if self.states else ()
        for a in first:
            if a not in reduced and all(a in axes for axes in spans):
                return a
        return None

    # --- queries --------------------------------------------------------------------------------
    def leaf(self, name: str, kind: str | None = None) -> Leaf:
        """The leaf of a declared tensor, whole, at its first placement (a state's ``old`` value
        unless ``kind`` says ``new``)."""
        decl_kind = self.decls[name].kind
        return self._leaves[(kind or ("old" if decl_kind == "state" else decl_kind), name, None, 0)]

    def leaves(self, kind: str) -> list[Leaf]:
        """The leaves of one kind (input, weight, old, new), in declaration order, then part, then placement."""
        order = {name: i for i, name in enumerate(self.decls)}  # the cell's declarations, then hoisted ones
        keys = sorted((k for k in self._leaves if k[0] == kind),
                      key=lambda k: (order[k[1]], k[2] is not None, k[2] or (), k[3]))  # fmt: skip
        return [self._leaves[k] for k in keys]

    def layout_of(self, expr: sympy.Expr) -> Layout:
        """The layout of a tile expression: the union of its symbols' layouts.

        Example:
            >>> from rnnc.compiler import analyse_source
            >>> space = TileSpace(analyse_source(open("examples/mamba.rnn").read()))
            >>> space.layout_of(space.pieces[0]["a"])
            Layout(axes=(0, 1), time=True)
        """
        layout = SCALAR
        for s in sympy.sympify(expr).free_symbols:
            layout = layout.union(self.layouts[s])
        return layout


def _substitute(pieces: dict, rename: dict) -> dict:
    out = {}
    for key, value in pieces.items():
        if isinstance(value, list):
            out[key] = [_substitute({"x": v}, rename)["x"] for v in value]
        else:
            out[key] = value.xreplace(rename)
    return out
