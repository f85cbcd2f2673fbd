"""The lines of one forward time step of a sequential cell, as Triton source.

The step computes the structural atoms in order, then the new states and the
outputs. A matmul of an on-chip weight matrix with a batch tile is a ``tl.dot``
(operands cast to ``DOT_DTYPE``, float32 or wider accumulation); any other
contraction (``e @ h`` to a scalar, ``q @ S`` of a matrix state, ``outer``) places
both operands in a joint tile, multiplies and sums over the contracted axis; a
``sum`` is ``tl.sum`` over its axes; a part of a split is one of the unrolled
gate tiles. Backward (``sequential_backward.py``) recomputes these lines.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> step = SequentialStep(analyse_source(open("examples/elman.rnn").read()))
    >>> step.atom_lines()[0]
    'a4 = tl.dot(s_h.to(DOT_DTYPE), r_R, input_precision=DOT_PRECISION)  # R @ h'
"""

from __future__ import annotations

import sympy

from rnnc.compiler import Plan
from rnnc.templates.names import comment, derived, internal, prefixed
from rnnc.templates.sequential_dots import DotGradients
from rnnc.templates.sequential_layout import plan_layout
from rnnc.templates.sequential_tiles import (
    REDUCTIONS,
    Contraction,
    Space,
    Tile,
    atom_gate,
    dim_var,
    gate_index,
    place,
    space_of,
)
from rnnc.templates.triton_printer import to_triton


class _Names(dict):
    """Printer table: a dim (read as a number) prints as its ``size_<dim>`` tile; every symbol the template
    made (a placed tile, a common subexpression) is named ``names.internal(code)`` and prints as ``code``,
    so that no dim's name can meet one."""

    def __missing__(self, key):
        return key[1:] if key.startswith("@") else key


class SequentialStep(DotGradients):
    """Everything the sequential template needs to know about one cell's step.

    ``split``: the step kernels, one launch per step, where each program owns a slice of every
    dim (all of it when the head is not split). The vector a matmul contracts must then be a
    state or an input, streamed from memory with the weights (``sequential_stream.py``), and the
    cotangent a matmul sends back to it is a partial sum over this program's slice, written for
    the other programs to add (``exchanged``).
    """

    def __init__(self, plan: Plan, split: bool = False):
        self.plan = plan
        self.split = split
        self.ir = plan.ir
        self.layout = plan_layout(plan)
        self.tiles = self.layout.tiles
        self.names = _Names({d: dim_var("size", d) for d in self.ir.dims})  # a dim read as a number
        self.spaces: dict[tuple[str, ...], int] = {}  # tile spaces whose mask and zeros the kernel uses, numbered
        self._temp = 0
        self.exchanged: dict[str, list[str]] = {}  # split: leaf -> its matmul cotangents (filled by backward)
        self.dot_cotangents: dict[int, dict] = {}  # dot atom -> {gate: its result's cotangent} (backward)
        self.sources: dict[str, str] = {}  # "dot i" / "weight w" -> where the launcher finds its dY (stores)
        if split:
            self._check_split()

    # --- spaces and expressions ---------------------------------------------------------------
    def arg_space(self, index: int, arg: int) -> Space:
        """The index space of argument ``arg`` of atom ``index``."""
        atom = self.ir.atoms[index]
        return space_of(self.plan, atom.arg_shapes[arg], atom.name)

    def result_space(self, result) -> Space:
        """The index space of an update or an output."""
        return space_of(self.plan, result.shape, result.name)

    def mask(self, space: Space) -> str:
        """The ``[BLOCK_B, ...]`` mask of a batch tile of ``space`` (rows and lanes in range)."""
        return self.space_var("mask", space.dims)

    def zero(self, space: Space) -> str:
        """A ``[BLOCK_B, ...]`` tile of zeros of ``space``."""
        return self.space_var("zero", space.dims)

    def space_var(self, role: str, dims: tuple[str, ...]) -> str:
        """The ``mask`` or ``zero`` variable of a tile space: ``row_mask`` (no dims), the dim's
        ``mask_H``, or for several dims ``space<n>_mask`` (numbered in first use: a name made of
        several dims' names could meet one dim's)."""
        number = self.spaces.setdefault(dims, sum(1 for d in self.spaces if len(d) > 1) if len(dims) > 1 else 0)
        if not dims:
            return f"row_{role}"
        if len(dims) == 1:
            return dim_var(role, dims[0])
        return f"space{number}_{role}"

    def at_gate(self, expr: sympy.Expr, space: Space, gate: tuple[int, ...]) -> tuple[sympy.Expr, bool]:
        """``expr`` with each view replaced by its atom's variable placed in ``space`` at ``gate``, and
        whether some view alone fills the whole batch tile (else the value needs broadcasting)."""
        table, full = {}, False
        for symbol in self.ir.view_symbols(expr):
            view = self.ir.view(symbol)
            tile = self.tiles[view.atom]
            code = place(tile.name(atom_gate(tile.space, view.axes, space, gate)), tile.space, view.axes, space)
            table[symbol] = sympy.Symbol(internal(code), real=True)
            covered = sum(1 for a in tile.space.axes if a.dim)
            full |= tile.batched and covered == len(space.dims)
        return expr.xreplace(table), full

    def code(self, expr: sympy.Expr) -> str:
        """Triton source of an expression already at a gate."""
        return to_triton(expr, self.names)

    def _cse(self, named: list[tuple[str, sympy.Expr]], prefix: str) -> tuple[list[str], list[sympy.Expr]]:
        """Common subexpressions of ``named`` as assignment lines, and the reduced expressions."""
        exprs = [e for _, e in named]
        start = self._temp
        symbols = sympy.numbered_symbols(internal(prefix), start=start, real=True)
        common, reduced = sympy.cse(exprs, symbols=symbols, order="none")
        self._temp += len(common)
        lines = [f"{self.names[sym.name]} = {self.code(value)}" for sym, value in common]
        return lines, reduced

    # --- forward ------------------------------------------------------------------------------
    def arg_variable(self, index: int, arg: int, gate: tuple[int, ...]) -> str:
        """The code of argument ``arg`` of atom ``index`` at ``gate`` (after atom_lines): a tile of its
        whole space, zero in padded lanes."""
        atom = self.ir.atoms[index]
        space = self.arg_space(index, arg)
        value, full = self.at_gate(atom.args[arg], space, gate)
        if isinstance(value, sympy.Symbol) and full:
            return self.names[value.name]
        return self._arg_name(index, arg, space, gate)

    def _arg_name(self, index: int, arg: int, space: Space, gate: tuple[int, ...]) -> str:
        return f"a{index}_arg{arg}" + "".join(f"_{g}" for g, a in zip(gate, space.axes) if a.gates > 1)

    def computed_args(self, index: int) -> list[tuple[int, tuple[int, ...], str]]:
        """(arg, gate, line) for the arguments of atom ``index`` that are computed, not read as they are."""
        atom = self.ir.atoms[index]
        contraction = self.layout.contractions.get(index)
        out = []
        if atom.op == "part":
            return out  # a part is one gate of its parent, read as it is
        for j, arg in enumerate(atom.args):
            if contraction is not None and contraction.kind == "dot" and j != contraction.operand:
                continue  # the on-chip weight
            space = self.arg_space(index, j)
            for gate in space.gates():
                value, full = self.at_gate(arg, space, gate)
                if isinstance(value, sympy.Symbol) and full:
                    continue
                line = (
                    f"{self._arg_name(index, j, space, gate)} = tl.where({self.mask(space)}, {self.code(value)}, 0.0)"
                )
                out.append((j, gate, line))
        return out

    def atom_lines(self) -> list[str]:
        """Compute every structural atom of the step, in order."""
        lines: list[str] = []
        if self.split:  # the step kernels stream every dot's weights and vector from memory, first
            from rnnc.templates.sequential_stream import stream_forward

            lines += stream_forward(self)
        for i, atom in enumerate(self.ir.atoms):
            if atom.is_leaf or (self.split and self.layout.contractions.get(i, Contraction("")).kind == "dot"):
                continue
            lines += [line for _, _, line in self.computed_args(i)]
            tile = self.tiles[atom.name]
            if atom.op == "part":
                lines += self._part_lines(i, tile)
            elif atom.op in REDUCTIONS:
                lines += self._reduce_lines(i, tile)
            elif self.layout.contractions[i].kind == "dot":
                lines += self._dot_lines(i, tile, self.layout.contractions[i])
            else:
                lines += self._generic_lines(i, tile, self.layout.contractions[i])
        return lines

    def part_gate(self, index: int, gate: tuple[int, ...]) -> tuple[int, ...]:
        """The parent's gate that gate ``gate`` of part atom ``index`` is."""
        axis, part, count, drop = self.ir.atoms[index].params
        parent = self.arg_space(index, 0)
        per_part = parent.axes[axis].gates // count
        if drop:
            return gate[:axis] + (part,) + gate[axis:]
        return gate[:axis] + (part * per_part + gate[axis],) + gate[axis + 1 :]

    def _part_lines(self, index: int, tile: Tile) -> list[str]:
        atom = self.ir.atoms[index]
        parent = self.tiles[self.ir.view(atom.args[0]).atom]
        return [
            f"{tile.name(g)} = {parent.name(self.part_gate(index, g))}  # {comment(atom.name)}"
            for g in tile.space.gates()
        ]

    def sum_axes(self, index: int) -> list[int]:
        """The argument axes that sum atom ``index`` reduces."""
        atom = self.ir.atoms[index]
        return [atom.params[0]] if atom.params else list(range(len(atom.arg_shapes[0])))

    def sum_gates(self, index: int, gate: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The argument gates that add into gate ``gate`` of sum atom ``index``."""
        axes = self.sum_axes(index)
        space = self.arg_space(index, 0)
        return [g for g in space.gates() if tuple(x for k, x in enumerate(g) if k not in axes) == gate]

    def _reduce_lines(self, index: int, tile: Tile) -> list[str]:
        """``sum``: tl.sum over the reduced lanes (zero in padded ones) and gates; ``max``/``min``: tl.max
        or tl.min over the lanes in range (padded ones set to -inf / +inf), then zero in padded lanes."""
        atom = self.ir.atoms[index]
        space = self.arg_space(index, 0)
        positions = [space.position(a) for a in self.sum_axes(index) if space.axes[a].dim]
        reduce, join, pad = {
            "sum": ("tl.sum", " + ", None),
            "max": ("tl.max", "tl.maximum", "-float('inf')"),
            "min": ("tl.min", "tl.minimum", "float('inf')"),
        }[atom.op]
        lines = []
        for gate in tile.space.gates():
            terms = []
            for g in self.sum_gates(index, gate):
                code = self.arg_variable(index, 0, g)
                if pad is not None and positions:
                    code = f"tl.where({self.mask(space)}, {code}, {pad})"
                for p in sorted(positions, reverse=True):
                    code = f"{reduce}({code}, axis={1 + p})"
                terms.append(code)
            value = terms[0]
            for term in terms[1:]:
                value = f"{value}{join}{term}" if pad is None else f"{join}({value}, {term})"
            if pad is not None:
                value = f"tl.where({self.mask(tile.space)}, {value}, 0.0)"
            lines.append(f"{tile.name(gate)} = {value}  # {comment(atom.name)}")
        return lines

    def joint_gates(self, index: int, gate: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The joint-space gates of contraction ``index`` whose product adds into result gate ``gate``."""
        c = self.layout.contractions[index]
        return [g for g in c.joint.gates() if self.result_gate(c, g) == gate]

    @staticmethod
    def result_gate(c: Contraction, joint_gate: tuple[int, ...]) -> tuple[int, ...]:
        """The result's gate of a joint-space gate (the contracted axis dropped)."""
        return tuple(g for k, g in enumerate(joint_gate) if k != c.k)

    def operand_gates(self, index: int, joint_gate: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The gates of both arguments that a joint-space gate multiplies."""
        c = self.layout.contractions[index]
        sa, sb = self.arg_space(index, 0), self.arg_space(index, 1)
        return atom_gate(sa, c.a_axes, c.joint, joint_gate), atom_gate(sb, c.b_axes, c.joint, joint_gate)

    def _generic_lines(self, index: int, tile: Tile, c: Contraction) -> list[str]:
        sa, sb = self.arg_space(index, 0), self.arg_space(index, 1)
        k = c.joint.position(c.k) if c.k is not None else None
        lines = []
        for gate in tile.space.gates():
            terms = []
            for jg in self.joint_gates(index, gate):
                ga, gb = self.operand_gates(index, jg)
                a = place(self.arg_variable(index, 0, ga), sa, c.a_axes, c.joint)
                b = place(self.arg_variable(index, 1, gb), sb, c.b_axes, c.joint)
                terms.append(f"{a} * {b}" if k is None else f"tl.sum({a} * {b}, axis={1 + k})")
            lines.append(f"{tile.name(gate)} = {' + '.join(terms)}  # {self.ir.atoms[index].name}")
        return lines

    def dot_shape(self, index: int) -> tuple[str | None, bool]:
        """(the dim besides the contracted one of a dot's operand, or None, and whether that operand holds
        its contracted dim first, so that it is permuted to put it last)."""
        c = self.layout.contractions[index]
        space = self.arg_space(index, c.operand)
        dims = space.dims
        if len(dims) == 1:
            return None, False
        k_first = dims[0] == c.weight.contracted and c.operand == 1  # W @ S: S is [K, X]
        return (dims[1] if k_first else dims[0]), k_first

    def _dot_lines(self, index: int, tile: Tile, c: Contraction) -> list[str]:
        atom = self.ir.atoms[index]
        other, k_first = self.dot_shape(index)
        w = c.weight
        lines = []
        for gate in tile.space.gates():
            (jg,) = self.joint_gates(index, gate)  # the contracted axis of a dot is one plain dim
            ga, gb = self.operand_gates(index, jg)
            operand_gate, weight_gate = (ga, gb) if c.operand == 0 else (gb, ga)
            weight = w.names[w.gates.gates().index(weight_gate[: len(w.gates.axes)])]
            v = self.matmul_vector(index, operand_gate)
            label = f"  # {comment(atom.name)}" + (
                f", gate {gate_index(tile.space, gate)}" if len(tile.space.gates()) > 1 else ""
            )
            if other is None:
                lines.append(f"{tile.name(gate)} = {dot(v, weight, weight=True)}{label}")
                continue
            rows = f"BLOCK_B * {dim_var('TILE', other)}"
            if k_first:
                v = f"tl.permute({v}, (0, 2, 1))"
            product = dot(f"tl.reshape({v}, [{rows}, {dim_var('TILE', w.contracted)}])", weight, weight=True)
            value = f"tl.reshape({product}, [BLOCK_B, {dim_var('TILE', other)}, {dim_var('TILE', w.result)}])"
            if c.operand == 1:  # W @ S: the product is [X, M], the result [M, X]
                value = f"tl.permute({value}, (0, 2, 1))"
            lines.append(f"{tile.name(gate)} = {value}{label}")
        return lines

    def matmul_vector(self, index: int, gate: tuple[int, ...]) -> str:
        """The code of the operand that dot atom ``index`` contracts, at ``gate``."""
        return self.arg_variable(index, self.layout.contractions[index].operand, gate)

    def new_state(self, name: str, gate: tuple[int, ...] = ()) -> str:
        """The variable of a state's new value (at ``gate``)."""
        return prefixed("new", self.tiles[name].name(gate or self.tiles[name].space.gates()[0]))

    def state_seed(self, name: str, gate: tuple[int, ...]) -> str:
        """The variable of a state's cotangent (``ds_<state>``) at ``gate``."""
        return derived("ds", user=name, gate=gate_index(self.tiles[name].space, gate))

    def output_variable(self, name: str, gate: tuple[int, ...] = ()) -> str:
        """The variable of an output's value (at ``gate``)."""
        space = self.result_space(next(r for r in self.ir.outputs if r.name == name))
        return derived("out", "value", user=name, gate=gate_index(space, gate) if gate else None)

    def result_lines(self) -> list[str]:
        """New states (zero in padded lanes, so that no NaN reaches a contraction) and outputs."""
        named, where = [], []
        for kind, results in (("update", self.ir.updates), ("output", self.ir.outputs)):
            for r in results:
                space = self.result_space(r)
                for gate in space.gates():
                    value, full = self.at_gate(r.expr, space, gate)
                    var = self.new_state(r.name, gate) if kind == "update" else self.output_variable(r.name, gate)
                    named.append((var, value))
                    where.append((kind, space, full))
        lines, reduced = self._cse(named, "f")
        done: dict[sympy.Expr, str] = {}
        for (var, _), value, (kind, space, full) in zip(named, reduced, where):
            if value in done:
                lines.append(f"{var} = {done[value]}")
                continue
            code = self.code(value)
            if kind == "update" or not full:  # padded lanes of a state stay zero; an output is a whole tile
                code = f"tl.where({self.mask(space)}, {code}, 0.0)"
            lines.append(f"{var} = {code}")
            done[value] = var
        return lines

    def states(self) -> list[tuple[str, Tile]]:
        """(name, tile) of every state."""
        return [(d.name, self.tiles[d.name]) for d in self.ir.states]


def dot(a: str, b: str, weight: bool = False) -> str:
    """``tl.dot`` with both operands in ``DOT_DTYPE``, accumulated in float32 or wider; ``weight``: ``b`` is
    an on-chip weight tile, loaded in ``DOT_DTYPE`` already.

    Example:
        >>> dot("s_h", "r_R", weight=True), dot("tl.trans(s_h)", "d")
        ('tl.dot(s_h.to(DOT_DTYPE), r_R, input_precision=DOT_PRECISION)', \
'tl.dot(tl.trans(s_h).to(DOT_DTYPE), d.to(DOT_DTYPE), input_precision=DOT_PRECISION)')
    """
    b = b if weight else f"{b}.to(DOT_DTYPE)"
    return f"tl.dot({a}.to(DOT_DTYPE), {b}, input_precision=DOT_PRECISION)"
