"""Axis variables and the walk that lowers a nested expression onto them (see :mod:`rnnc.templates.scan_layout`).

Each axis of a state, of an output and of a contraction is a variable; lowering an expression
ties variables together (union-find): a leaf read twice in the same place, a view, an outer
product, a matmul's batch and contracted axes. A leaf read in two different places that cannot
be one (``outer(x, x)`` fills both axes of ``S`` with ``x``) gets a second *placement*, a
second tile. A part of a leaf (``z, c = g`` splits ``g``) is a leaf of its own, read at an offset.

Example:
    >>> walk = AxisWalk({}, [], names=None)
    >>> a, b = walk.fresh(sympy.Symbol("D")), walk.fresh()
    >>> walk.unify(a, b); walk.find(b) == a, walk.dim[walk.find(b)]
    (True, D)
"""

from __future__ import annotations

import sympy

from rnnc.compiler.nested import show, varying_axes
from rnnc.compiler.shapes import same_dim
from rnnc.compiler.shapes import show as show_shape
from rnnc.compiler.symbols import REDUCTIONS, STRUCTURAL, Matmul, Outer, Part, Placed
from rnnc.errors import LocatedBackendError

REDUCTION_OPS = {cls: op for op, cls in REDUCTIONS.items()}  # ReduceSum -> "sum", ReduceMax -> "max"...


class _Conflict(Exception):
    """A tentative unification would put two axes of one tensor on one tile axis."""


class AxisWalk:
    """Union-find over axis variables, and the lowering of nested expressions to tile expressions."""

    def __init__(self, decls: dict, states: list[str], names, cell: str = "", dims=()):
        self.decls = decls
        self.source_decls = set(decls)  # the cell's own (hoisted reductions join decls later)
        self.states = states
        self.ranks = leaf_ranks(decls)
        self.names = names
        self.cell = cell
        self.dims = tuple(dims)
        self.parent: list[int] = []
        self.dim: list[sympy.Expr | None] = []
        self.state_vars = {s: [self.fresh(d) for d in decls[s].shape] for s in states}
        self.occurrences: list[tuple] = []  # (symbol, (source, part), kind, vars) per read of an input or weight
        self.placements: dict[tuple, list[list[int]]] = {}  # (source, part) -> var lists, one per placement
        self.tensors: list[list[int]] = list(self.state_vars.values())  # whose axes must stay distinct
        self.raw: list[tuple[sympy.Symbol, str, sympy.Expr, list[int], str]] = []  # reductions as walked
        self.dims_read: set[str] = set()
        self.where = None  # (what, span) of the piece being lowered, for errors

    # --- union-find -----------------------------------------------------------------------------
    def fresh(self, dim: sympy.Expr | None = None) -> int:
        """A new axis variable (of a known size, or not yet)."""
        self.parent.append(len(self.parent))
        self.dim.append(dim)
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        """The class of a variable (its root)."""
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def unify(self, v: int, w: int) -> None:
        """Tie two variables to one axis; their sizes must agree."""
        v, w = self.find(v), self.find(w)
        if v == w:
            return
        dv, dw = self.dim[v], self.dim[w]
        if dv is not None and dw is not None and not same_dim(dv, dw):
            raise self.refuse(f"it lines up an axis of size {dv} with one of size {dw}")
        self.parent[max(v, w)] = min(v, w)  # the older variable stays the root: axes keep their first order
        self.dim[min(v, w)] = dv if dv is not None else dw

    def conflicts(self) -> str | None:
        """A tensor that lies along one axis twice, or None."""
        for vars_ in self.tensors:
            roots = [self.find(v) for v in vars_]
            if len(set(roots)) < len(roots):
                return "a tensor"
        return None

    def _try_unify(self, pairs) -> bool:
        saved = list(self.parent), list(self.dim)
        try:
            for v, w in pairs:
                self.unify(v, w)
            if self.conflicts():
                raise _Conflict
        except (_Conflict, LocatedBackendError):
            self.parent, self.dim = saved
            return False
        return True

    # --- errors ---------------------------------------------------------------------------------
    def refuse(self, reason: str) -> LocatedBackendError:
        """The error for a piece this template cannot lower: located, naming the component and the piece."""
        what, span = self.where if self.where else ("", None)
        where = f" ({what})" if what else ""
        return LocatedBackendError(f"the Triton scan template cannot run cell {self.cell}{where}: {reason}", span)

    # --- walking --------------------------------------------------------------------------------
    def rank(self, expr: sympy.Expr) -> int:
        """The number of axes of a nested expression's own index space."""
        return varying_axes(expr, self.ranks)[0]

    def walk(self, expr: sympy.Expr, space: list[int]) -> sympy.Expr:
        """``expr`` as a tile expression; ``space`` holds the axis variables of its index space."""
        if isinstance(expr, sympy.Symbol):
            return self._symbol(expr, space)
        if isinstance(expr, Placed):
            rank = -min(int(a) for a in expr.args[1])
            own = space[len(space) - rank :]
            return self.walk(expr.args[0], [own[rank + int(a)] for a in expr.args[1]])
        if isinstance(expr, Outer):
            a, b = expr.args
            ra, rb = self.rank(a), self.rank(b)
            own = space[len(space) - ra - rb :]
            return self.walk(a, own[:ra]) * self.walk(b, own[ra:])
        if isinstance(expr, Matmul):
            return self._matmul(expr, space)
        if type(expr) in REDUCTION_OPS:
            x, axis = expr.args[0], int(expr.args[1])
            own = [self.fresh() for _ in range(self.rank(x))]
            reduced = own if axis < 0 else [own[axis]]
            kept = [] if axis < 0 else own[:axis] + own[axis + 1 :]
            for v, w in zip(kept, space[len(space) - len(kept) :]):
                self.unify(v, w)
            return self._reduction(REDUCTION_OPS[type(expr)], self.walk(x, own), reduced, show(expr))
        if isinstance(expr, Part):
            return self._part(expr, space)
        if isinstance(expr, STRUCTURAL):
            raise self.refuse(f"{show(expr)} has no tile form here")
        if not expr.args:
            return expr
        return expr.func(*[self.walk(a, space) for a in expr.args])

    def _matmul(self, expr: sympy.Expr, space: list[int]) -> sympy.Expr:
        a, b = expr.args
        ra, rb = self.rank(a), self.rank(b)
        c = self.fresh()  # the contracted axis
        rank = max(ra, rb, 2) - (ra == 1) - (rb == 1)
        own = space[len(space) - rank :]
        if ra == 1 and rb == 1:
            va, vb = [c], [c]
        elif ra == 1:
            va, vb = [c], own[:-1] + [c, own[-1]]
        elif rb == 1:
            va, vb = own + [c], [c]
        else:
            batch = own[:-2]
            va = batch[len(batch) - (ra - 2) :] + [own[-2], c]
            vb = batch[len(batch) - (rb - 2) :] + [c, own[-1]]
        product = self.walk(a, va) * self.walk(b, vb)
        return self._reduction("sum", product, [c], show(expr))

    def _reduction(self, op: str, expr: sympy.Expr, reduced: list[int], label: str) -> sympy.Symbol:
        symbol = sympy.Symbol(f"raw_{len(self.raw)}", real=True)
        self.raw.append((symbol, op, expr, reduced, label))
        return symbol

    def _symbol(self, symbol: sympy.Symbol, space: list[int]) -> sympy.Expr:
        name, new = (symbol.name[:-1], True) if symbol.name.endswith("'") else (symbol.name, False)
        decl = self.decls.get(name)
        if decl is None:
            if name in self.dims:
                self.dims_read.add(name)
                return sympy.Symbol(self.names.tensor("value", name), positive=True)
            raise self.refuse(f"it reads {name}, which is neither a tensor nor a dim")  # pragma: no cover
        if decl.kind == "state" and name not in self.states:
            raise self.refuse(f"it reads state {name}, which another stage runs")
        rank = len(decl.shape)
        if rank > len(space):  # pragma: no cover - the analysis checks shapes
            raise self.refuse(f"{name} {show_shape(decl.shape)} does not fit an index space of {len(space)} axes")
        own = space[len(space) - rank :]
        if decl.kind == "state":
            for v, w in zip(own, self.state_vars[name]):
                self.unify(v, w)
            return self.state_symbol(name, new)
        return self._occurrence((name, None), decl.kind, decl.shape, own)

    def _part(self, expr: sympy.Expr, space: list[int]) -> sympy.Expr:
        x = expr.args[0]
        axis, index, count, drop = (int(a) for a in expr.args[1:])
        if isinstance(x, Matmul):  # a part of W @ x along W's rows is (a part of W) @ x, and so on
            pushed = self._part_of_matmul(x, axis, index, count, drop)
            if pushed is not None:
                return self.walk(pushed, space)
        decl = self.decls.get(x.name) if isinstance(x, sympy.Symbol) else None
        if decl is None or decl.kind == "state":
            raise self.refuse(f"{show(expr)}: only parts of inputs and weights have a tile form here")
        shape = list(decl.shape)
        if drop:
            del shape[axis]
        else:
            shape[axis] = shape[axis] / count
        own = space[len(space) - len(shape) :]
        part = (axis, index, count, drop)
        return self._occurrence((x.name, part), decl.kind, shape, own)

    def _part_of_matmul(self, x: sympy.Expr, axis: int, index: int, count: int, drop: int):
        """``Part(a @ b)`` as ``Part(a) @ b`` or ``a @ Part(b)`` where the split axis is one operand's own."""
        a, b = x.args
        ra, rb = self.rank(a), self.rank(b)
        rank = max(ra, rb, 2) - (ra == 1) - (rb == 1)
        if drop and rank - 1 == 0:
            return None
        if rb == 1 and ra >= 2 and axis >= rank - (ra - 1):  # a's rows (or batch): W @ x split along W's rows
            return Matmul(Part(a, axis - (rank - (ra - 1)), index, count, drop), b)
        if ra == 1 and rb == 2 and axis == rank - 1 and not drop:  # x @ W split along W's columns
            return Matmul(a, Part(b, 1, index, count, drop))
        return None

    def _occurrence(self, key: tuple, kind: str, shape, own: list[int]) -> sympy.Symbol:
        """A read of a leaf at ``own``: its own variables for now, merged into placements at the end."""
        vars_ = [self.fresh(d) for d in shape]
        for v, w in zip(own, vars_):
            self.unify(v, w)
        symbol = sympy.Symbol(f"occurrence_{len(self.occurrences)}", real=True)
        self.occurrences.append((symbol, key, kind, vars_))
        return symbol

    def merge_occurrences(self) -> dict:
        """Each read of a leaf joins the first placement it can share without folding a tensor
        onto itself, or starts a new one; returns {occurrence symbol: placement symbol}."""
        self.names.hoisted |= {key[0] for _, key, _, _ in self.occurrences if key[0] not in self.source_decls}
        rename = {}
        for symbol, key, kind, vars_ in self.occurrences:
            placements = self.placements.setdefault(key, [])
            for i, known in enumerate(placements):
                if self._try_unify(list(zip(vars_, known))):
                    break
            else:
                placements.append(vars_)
                self.tensors.append(vars_)
                i = len(placements) - 1
            rename[symbol] = self.leaf_symbol(key[0], kind, key[1], i)
        return rename

    # --- symbols --------------------------------------------------------------------------------
    def state_symbol(self, state: str, new: bool) -> sympy.Symbol:
        """The tile symbol of a state's new (``new_S``) or previous (``old_S``) value."""
        return sympy.Symbol(self.names.tensor("new" if new else "old", state), real=True)

    def leaf_symbol(self, source: str, kind: str, part, placement: int) -> sympy.Symbol:
        """The tile symbol of an input (``x_u``) or weight (``wt_A``) leaf: a part's index as the gate
        (``x_g_1``), a later placement as one more role word (``x_p1_x``)."""
        role = {"input": "x", "weight": "wt"}[kind]
        gate = part[1] if part is not None else None
        return sympy.Symbol(self.names.tensor(role, source, gate=gate, placement=placement), real=True)


def leaf_ranks(decls: dict) -> dict[str, int]:
    """The rank of every declared tensor, and of each state's new value ``s'``.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> ir = lower_source(open("examples/mamba.rnn").read())
        >>> leaf_ranks({d.name: d for d in ir.decls})["S'"]
        2
    """
    ranks = {name: len(d.shape) for name, d in decls.items()}
    ranks.update({name + "'": len(d.shape) for name, d in decls.items() if d.kind == "state"})
    return ranks
