"""The reference loop's writer (:mod:`rnnc.runtime.loop_codegen`): it sorts the step's values into
phases (weight-only ``CONST``, state-free ``SEQ``, per-step ``LOOP``), names their variables and
collects each phase's lines; the fused writer (:mod:`rnnc.runtime.fused_codegen`) extends it.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> writer = _Writer(analyse_source(open("examples/lstm.rnn").read()))
    >>> len(writer.lines), [writer.atom_var[d.name] for d in writer.ir.states]
    (3, ['st_h', 'st_c'])
"""

from __future__ import annotations

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.shapes import broadcast_shapes
from rnnc.runtime.torch_printer import to_torch
from rnnc.templates.names import comment, derived, internal, prefixed

CONST, SEQ, LOOP = 0, 1, 2
LEAF_PHASE = {"weight": CONST, "input": SEQ, "state": LOOP}


def view_code(var: str, axes: tuple[int, ...], rank: int) -> str:
    """Source placing an atom ``[B, NH, *own]`` into a ``rank``-axis index space (one view op).

    Example:
        >>> view_code("g", (-2,), 2), view_code("S", (-1, -2), 2), view_code("h", (-1,), 1)
        ('g[:, :, :, None]', 'S.transpose(2, 3)', 'h')
    """
    order = sorted(range(len(axes)), key=lambda i: axes[i])
    code = var
    if order != list(range(len(axes))):
        if len(axes) == 2:
            code = f"{var}.transpose(2, 3)"
        else:
            code = f"{var}.permute(0, 1, {', '.join(str(2 + i) for i in order)})"
    placed = sorted(axes)
    slots = [":" if j in placed else "None" for j in range(-rank, 0)]
    if "None" in slots:
        code += "[:, :, " + ", ".join(slots) + "]"
    return code


class _Writer:
    """Assigns phases and variables and collects the lines of the three functions."""

    def __init__(self, plan: Plan):
        self.plan = plan
        # the marked IR: a state read after its update is the atom s' (op "new"), whose variable is the
        # update's own, so a new value is computed once however many later expressions read it
        self.ir = ir = plan.ir.marked if plan.ir.marked is not None else plan.ir
        self.views = dict(ir.views)
        self.atom_phase: dict[str, int] = {}
        self.atom_var: dict[str, str] = {}
        roles = {"input": "in", "weight": "w", "state": "st"}
        for i, atom in enumerate(ir.atoms):
            if atom.op == "new":
                self.atom_var[atom.name] = derived("u", user=atom.name[:-1])
            else:
                self.atom_var[atom.name] = derived(roles[atom.op], user=atom.name) if atom.is_leaf else f"t{i}"
        self.lines: list[list[str]] = [[], [], []]
        self.var_phase: dict[str, int] = {}
        self.defined: set[str] = set()
        self.exports: list[list[str]] = [[], [], []]  # variables a later phase reads
        self.symbol_defs: dict[str, tuple[sympy.Expr, int]] = {}  # cse and hoisted symbols
        self.symbol_phase: dict[str, int] = {}
        self.dims = set(ir.dims)
        self.counter = 0
        self.parts: dict = {}
        self.gemms: dict[str, tuple[int, str]] = {}  # matmul atom -> (its vector's argument, the prepared weight)
        self.gemm_bias: dict[str, str] = {}  # matmul atom -> a variable added to its result (addmm)

    # ---------------------------------------------------------------- phases

    def phase(self, expr) -> int:
        best = CONST
        for s in expr.free_symbols:
            name = s.name
            if name in self.views:
                best = max(best, self.atom_phase[self.views[name].atom])
            elif name in self.symbol_phase:
                best = max(best, self.symbol_phase[name])
        return best

    def hoist(self, expr, rank: int):
        """Replace the state-free subtrees of a loop expression by symbols computed earlier."""
        if not isinstance(expr, sympy.Basic) or expr.is_Atom:
            return expr
        if isinstance(expr, (sympy.logic.boolalg.Boolean, sympy.core.relational.Relational)):
            return expr.func(*(self.hoist(a, rank) for a in expr.args))
        phase = self.phase(expr)
        if phase < LOOP and not self.expands(expr, rank):
            return self.new_symbol(expr, rank, phase)
        if phase == LOOP and isinstance(expr, (sympy.Add, sympy.Mul)):
            low = [a for a in expr.args if self.phase(a) < LOOP]
            high = [a for a in expr.args if self.phase(a) == LOOP]
            group = expr.func(*low) if low else None
            if (len(low) >= 2 or (len(low) == 1 and not (low[0].is_Symbol or low[0].is_number))) and not self.expands(
                group, rank
            ):
                grouped = self.new_symbol(group, rank, self.phase(group))
                return expr.func(grouped, *(self.hoist(a, rank) for a in high))
        if isinstance(expr, sympy.Piecewise):
            pairs = [(self.hoist(e, rank), self.hoist(c, rank)) for e, c in expr.args]
            return sympy.Piecewise(*pairs)
        return expr.func(*(self.hoist(a, rank) for a in expr.args))

    def placed(self, symbol_name: str, rank: int) -> tuple:
        """The shape a view occupies in a ``rank``-axis index space (1 on the axes it lacks)."""
        view = self.views[symbol_name]
        slots = [sympy.Integer(1)] * rank
        for axis, dim in zip(view.axes, self.ir.atom(view.atom).shape):
            slots[rank + axis] = dim
        return tuple(slots)

    def expands(self, expr, rank: int) -> bool:
        """Whether a state-free value has more (non-unit) axes than every per-step input it reads:
        ``dt[:, None] * A`` is [D, N] from dt [D]. Computed for all steps at once it would hold T
        times the state's size, so it stays in the loop (the plain loop's memory traffic)."""
        views = [s.name for s in expr.free_symbols if s.name in self.views]
        seq = [v for v in views if self.atom_phase[self.views[v].atom] == SEQ]
        if not seq:
            return False
        full = broadcast_shapes(*(self.placed(v, rank) for v in views))
        widest = max(_axes(self.placed(v, rank)) for v in seq)
        return full is not None and _axes(full) > widest

    def new_symbol(self, expr, rank: int, phase: int) -> sympy.Symbol:
        for name, (known, known_rank) in self.symbol_defs.items():
            if known_rank == rank and known == expr and name.startswith(internal("h")):
                return sympy.Symbol(name, real=True)
        name = internal(f"h{len(self.symbol_defs)}_{rank}")
        self.symbol_defs[name] = (expr, rank)
        self.symbol_phase[name] = phase
        return sympy.Symbol(name, real=True)

    # ---------------------------------------------------------------- emission

    def emit(self, phase: int, var: str, code: str, note: str = "") -> None:
        self.lines[phase].append(f"    {var} = {code}" + (f"  # {comment(note)}" if note else ""))
        self.var_phase[var] = phase
        self.defined.add(var)

    def use(self, var: str, phase: int) -> str:
        """Record that ``phase`` reads ``var`` (exported from an earlier phase if needed)."""
        source = self.var_phase.get(var)
        if source is not None and source < phase and var not in self.exports[source]:
            self.exports[source].append(var)
        return var

    def ensure_atom(self, name: str) -> str:
        var = self.atom_var[name]
        if var in self.defined:
            return var
        atom = self.ir.atom(name)
        if atom.op == "new":  # pragma: no cover - emitted before any reader by loop_source's order
            raise KeyError(f"{name} is read before its update is written")
        if atom.is_leaf:
            phase = LEAF_PHASE[atom.op]
            source = {"input": "inputs", "weight": "weights", "state": None}[atom.op]
            if source is not None:
                self.emit(phase, var, f"{source}[{atom.name!r}]")
            else:  # a state arrives as an argument of step()
                self.var_phase[var] = phase
                self.defined.add(var)
            return var
        raise KeyError(name)  # non-leaf atoms are emitted in order by write()

    def symbol_var(self, name: str, rank: int, phase: int) -> str:
        """The variable of a symbol (view, dim, cse or hoisted) at ``rank``, emitted on first use."""
        if name in self.views:
            view = self.views[name]
            atom_var = self.ensure_atom(view.atom)
            source = self.atom_phase[view.atom]
            code = view_code(self.use(atom_var, source), view.axes, rank)
            if code == atom_var:
                return self.use(atom_var, phase)
            axes = "".join(str(-a) for a in view.axes)  # a view's role words: v, its axes, its rank
            var = prefixed("v", prefixed(f"a{axes}", prefixed(f"r{rank}", self.atom_var[view.atom])))
            if var not in self.defined:
                self.emit(source, var, code, name)
            return self.use(var, phase)
        if name in self.dims:
            var = derived("dim", user=name)
            if var not in self.defined:
                self.emit(CONST, var, f"like.new_tensor(sizes[{name!r}])")
            return self.use(var, phase)
        expr, def_rank = self.symbol_defs[name]
        var = name.removeprefix(internal(""))  # c2_0, h3_1: variables of this module's own
        if var not in self.defined:
            own = self.symbol_phase[name]
            code = self.code(expr, def_rank, own)
            self.emit(own, var, code)
        return self.use(var, phase)

    def code(self, expr, rank: int, phase: int) -> str:
        mapping = {s.name: self.symbol_var(s.name, rank, phase) for s in sorted(expr.free_symbols, key=str)}
        return to_torch(expr, mapping)

    def value(self, expr, rank: int, phase: int, stem: str) -> str:
        """A variable holding ``expr`` (a symbol's own variable when it is one)."""
        if isinstance(expr, sympy.Symbol):
            return self.symbol_var(expr.name, rank, phase)
        var = f"{stem}"
        self.emit(phase, var, self.code(expr, rank, phase))
        return var


def _axes(shape) -> int:
    return sum(1 for d in shape if d != 1)
