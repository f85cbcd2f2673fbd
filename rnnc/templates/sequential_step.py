"""The lines of one time step of a sequential cell, forward and backward, as Triton source.

The forward step computes the structural atoms in order (``tl.dot`` against the
on-chip weights; a split part is one of the unrolled gate tiles), then the new
states and the outputs. The backward step recomputes the atoms, evaluates every
sympy partial derivative of the Plan once (common subexpressions shared), and
propagates the cotangents of the new states and outputs back through the
pointwise expressions and the structural atoms to the step's inputs, the weight
accumulators and the previous states.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> step = SequentialStep(analyse_source(open("examples/elman.rnn").read()))
    >>> step.atom_lines()[0]
    'a4 = tl.dot(s_h, r_R, input_precision=DOT_PRECISION)  # R @ h'
"""

from __future__ import annotations

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.shapes import dim_symbol
from rnnc.templates.names import comment, derived, prefixed
from rnnc.templates.sequential_tiles import Tile, dim_var, gate_of, plan_layout, split_shape, unsupported
from rnnc.templates.triton_printer import to_triton


class _Names(dict):
    """Printer table: every symbol left in a step's expressions is a kernel variable; it prints as itself."""

    def __missing__(self, key):
        return key


class SequentialStep:
    """Everything the sequential template needs to know about one cell's step.

    ``split``: each program owns a slice of every dim (a head split over programs). The
    vector a matmul contracts must then be a state or an input, read whole from memory
    (``full_<tile>``), and the cotangent a matmul sends back to it is a partial sum over
    this program's slice, kept apart in ``exchanged`` for the other programs to add.
    """

    def __init__(self, plan: Plan, split: bool = False):
        self.plan = plan
        self.split = split
        self.ir = plan.ir
        self.layout = plan_layout(plan)
        self.tiles = self.layout.tiles
        self.names = _Names()
        # a dim read as a number is its size_<dim> tile: replaced like the views, so that no user name is left
        self._dims = {
            dim_symbol(d): sympy.Symbol(dim_var("size", d), positive=True, integer=True) for d in self.ir.dims
        }
        self._temp = 0
        self.exchanged: dict[str, list[str]] = {}  # split: leaf -> its matmul cotangents (filled by backward_lines)

    # --- expressions --------------------------------------------------------------------------
    def _at_gate(self, expr: sympy.Expr, gates: int, gate: int) -> sympy.Expr:
        """``expr`` with each view symbol replaced by the variable holding its atom at ``gate``, and each
        dim by its ``size_<dim>`` tile."""
        table = dict(self._dims)
        for symbol in self.ir.view_symbols(expr):
            tile = self.tiles[self.ir.view(symbol).atom]
            if tile.kind == "matrix":
                raise unsupported(self.plan, f"weight {self.ir.view(symbol).atom} is used pointwise and as a matrix")
            table[symbol] = sympy.Symbol(gate_of(tile, gates, gate), real=True)
        return expr.xreplace(table)

    def _is_tile(self, expr: sympy.Expr, dim: str | None) -> bool:
        """True when ``expr`` reads a batch tile of its own shape ([BLOCK_B, BLOCK_dim] or [BLOCK_B, 1])."""
        kind = "vector" if dim else "row_scalar"
        free = {s.name for s in expr.free_symbols}
        return any(t.kind == kind and t.dim == dim and free & set(t.names) for t in self.tiles.values())

    def _fill(self, code: str, expr: sympy.Expr, dim: str | None) -> str:
        """``code`` broadcast to a full tile when the expression alone would not be one."""
        if self._is_tile(expr, dim):
            return code
        return f"{dim_var('zero', dim) if dim else 'row_zero'} + ({code})"

    def _cse(self, named: list[tuple[str, sympy.Expr]], prefix: str) -> tuple[list[str], list[sympy.Expr]]:
        """Common subexpressions of ``named`` as assignment lines, and the reduced expressions."""
        exprs = [e for _, e in named]
        start = self._temp
        common, reduced = sympy.cse(exprs, symbols=sympy.numbered_symbols(prefix, start=start), order="none")
        self._temp += len(common)
        lines = [f"{sym.name} = {to_triton(value, self.names)}" for sym, value in common]
        return lines, reduced

    def mask(self, dim: str | None) -> str:
        """The [BLOCK_B, ...] mask of a tile along ``dim`` (batch rows only for a row scalar)."""
        return dim_var("mask", dim) if dim else "row_mask"

    # --- forward ------------------------------------------------------------------------------
    def arg_variable(self, index: int, arg_index: int, gate: int) -> str:
        """The variable of argument ``arg_index`` of atom ``index`` at ``gate`` (after atom_lines)."""
        atom = self.ir.atoms[index]
        arg = atom.args[arg_index]
        gates, _ = split_shape(self.plan, atom.arg_shapes[arg_index])
        direct = self._at_gate(arg, gates, gate)
        if isinstance(direct, sympy.Symbol):
            return direct.name
        return f"a{index}_arg{arg_index}" + (f"_{gate}" if gates > 1 else "")

    def matmul_vector(self, index: int, side: int) -> str:
        """The variable of the vector that matmul atom ``index`` contracts (its argument ``side``)."""
        if not self.split:
            return self.arg_variable(index, side, 0)
        atom = self.ir.atoms[index]
        value = self._at_gate(atom.args[side], 1, 0)
        whole = {self.tiles[d.name].names[0] for d in (*self.ir.states, *self.ir.inputs)}
        if not isinstance(value, sympy.Symbol) or value.name not in whole:
            raise unsupported(
                self.plan,
                f"a split head needs each matmul to contract a state or an input, and {atom.name} "
                f"contracts {atom.args[side]}",
            )
        return prefixed("full", value.name)

    def contracted_leaves(self) -> list[str]:
        """Names of the states and inputs the matmuls contract (a split head reads these whole)."""
        found = set()
        for i, atom in enumerate(self.ir.atoms):
            if atom.op == "matmul":
                side = 1 if len(atom.arg_shapes[0]) >= 2 else 0
                self.matmul_vector(i, side)  # a split head checks that it is a state or an input
                found.add(self.ir.view(atom.args[side]).atom)
        return sorted(found)

    def atom_lines(self) -> list[str]:
        """Compute every structural atom of the step, in order."""
        lines: list[str] = []
        for i, atom in enumerate(self.ir.atoms):
            if atom.is_leaf:
                continue
            tile = self.tiles[atom.name]
            for j, (arg, shape) in enumerate(zip(atom.args, atom.arg_shapes)):
                if atom.op == "matmul" and len(shape) >= 2:
                    continue  # the on-chip weight
                gates, dim = split_shape(self.plan, shape)
                for g in range(gates):
                    value = self._at_gate(arg, gates, g)
                    if not isinstance(value, sympy.Symbol):
                        code = self._fill(to_triton(value, self.names), value, dim)
                        lines.append(f"{self.arg_variable(i, j, g)} = {code}")
            if atom.op == "matmul":
                side = 1 if len(atom.arg_shapes[0]) >= 2 else 0
                matrix = self.tiles[self.ir.view(atom.args[1 - side]).atom]
                for g in range(tile.gates):
                    v = self.matmul_vector(i, side)
                    lines.append(
                        f"{tile.names[g]} = tl.dot({v}, {gate_of(matrix, tile.gates, g)}, "
                        f"input_precision=DOT_PRECISION)  # {comment(atom.name)}"
                        + (f", gate {g}" if tile.gates > 1 else "")
                    )
            else:  # part: one gate of its argument
                lines.append(f"{tile.names[0]} = {self.arg_variable(i, 0, atom.params[1])}  # {comment(atom.name)}")
        return lines

    def new_state(self, name: str) -> str:
        """The variable of a state's new value."""
        return derived("new", user=name)

    def output_variable(self, name: str) -> str:
        """The variable of an output's value."""
        return derived("out_value", user=name)

    def state_seed(self, name: str) -> str:
        """The variable of the cotangent of a state after the step (the backward pass's carry)."""
        return derived("ds", user=name)

    def output_seed(self, name: str) -> str:
        """The variable of an output's cotangent at the step."""
        return derived("do", user=name)

    def result_lines(self) -> list[str]:
        """New states (zero in padded lanes, so that no NaN reaches a tl.dot) and outputs."""
        named = [(self.new_state(r.name), self._at_gate(r.expr, 1, 0)) for r in self.ir.updates]
        named += [(self.output_variable(r.name), self._at_gate(r.expr, 1, 0)) for r in self.ir.outputs]
        lines, reduced = self._cse(named, "f")
        done: dict[sympy.Expr, str] = {}
        results = (*self.ir.updates, *self.ir.outputs)
        new_states = {self.new_state(r.name) for r in self.ir.updates}
        for (var, _), value, result in zip(named, reduced, results):
            _, dim = split_shape(self.plan, result.shape)
            if value in done:
                lines.append(f"{var} = {done[value]}")
                continue
            code = self._fill(to_triton(value, self.names), value, dim)
            if var in new_states:
                code = f"tl.where({self.mask(dim)}, {code}, 0.0)"
            lines.append(f"{var} = {code}")
            done[value] = var
        return lines

    def states(self) -> list[tuple[str, Tile]]:
        """(name, tile) of every state."""
        return [(d.name, self.tiles[d.name]) for d in self.ir.states]

    # --- backward -----------------------------------------------------------------------------
    def _derivative_entries(self) -> list[tuple[tuple, str, sympy.Expr]]:
        """(key, view label, derivative at the key's gate) for every pointwise expression of the step.

        Keys: ("update", state) and ("output", name) for the results, ("arg", atom index, arg index, gate).
        """
        derivatives = self.plan.derivatives
        entries = []
        for kind, results in (("update", self.ir.updates), ("output", self.ir.outputs)):
            for r in results:
                for label, d in derivatives.of(kind, r.name).wrt:
                    entries.append(((kind, r.name), label, self._at_gate(d, 1, 0)))
        for i, atom in enumerate(self.ir.atoms):
            for j, shape in enumerate(atom.arg_shapes):
                if atom.op == "matmul" and len(shape) >= 2:
                    continue
                gates, _ = split_shape(self.plan, shape)
                used = [atom.params[1]] if atom.op == "part" else range(gates)
                for g in used:
                    for label, d in derivatives.of("arg", atom.name, j).wrt:
                        entries.append((("arg", i, j, g), label, self._at_gate(d, gates, g)))
        return [e for e in entries if e[2] != 0]

    def backward_lines(self) -> tuple[list[str], dict[tuple[str, int], str | None]]:
        """Lines that turn the seeds (``ds_<state>``, ``do_<output>``) into cotangents.

        Returns the lines and, per (leaf, gate), the variable holding that leaf's cotangent
        (reduced to the leaf's tile shape), or None where it is zero. Structural atoms are
        consumed here; weight matrices get ``acc_r_<weight>[_gate] += ...`` lines.
        """
        entries = self._derivative_entries()
        self.exchanged = {}
        lines, reduced = self._cse([(str(k), e) for k, _, e in entries], "q")
        # per key: (view label, derivative code, whether the derivative is a constant)
        derivative_code: dict[tuple, list[tuple[str, str, bool]]] = {}
        named: dict[str, str] = {}  # printed derivative -> its variable
        for (key, label, _), value in zip(entries, reduced):
            code = "1" if value == 1 else to_triton(value, self.names)
            if not (value.is_number or isinstance(value, sympy.Symbol)):
                if code not in named:
                    named[code] = f"q_{len(named)}"
                    lines.append(f"{named[code]} = {code}")
                code = named[code]
            derivative_code.setdefault(key, []).append((label, code, bool(value.is_number)))
        # pending cotangent terms per (atom, gate): (seed, derivative code, constant?, expression dim, target kind)
        grads: dict[tuple[str, int], list[tuple[str, str, bool, str | None, str]]] = {}

        def propagate(key, seed: str, gate: int, dim: str | None) -> None:
            for label, code, constant in derivative_code.get(key, []):
                atom = self.ir.view(label).atom
                tile = self.tiles[atom]
                target = (atom, gate if tile.gates > 1 else 0)
                grads.setdefault(target, []).append((seed, code, constant, dim, tile.kind))

        rendered: dict[str, str] = {}

        def cotangent(atom: str, gate: int, var: str) -> str | None:
            """Assign the sum of an atom's pending terms to ``var`` (or reuse an equal sum); None if zero."""
            terms = grads.pop((atom, gate), [])
            if not terms:
                return None
            text = " + ".join(_render_terms(terms, self.mask))
            if text not in rendered:
                gates = f", gate {gate}" if self.tiles[atom].gates > 1 else ""
                lines.append(f"{var} = {text}  # d {comment(atom)}{gates}")
                rendered[text] = var
            return rendered[text]

        seeds = (("update", self.ir.updates, self.state_seed), ("output", self.ir.outputs, self.output_seed))
        for kind, results, seed in seeds:
            for r in results:
                _, dim = split_shape(self.plan, r.shape)
                propagate((kind, r.name), seed(r.name), 0, dim)
        for i in reversed(range(len(self.ir.atoms))):
            atom = self.ir.atoms[i]
            if atom.is_leaf:
                continue
            tile = self.tiles[atom.name]
            cotangents = [cotangent(atom.name, g, prefixed("d", var)) for g, var in enumerate(tile.names)]
            if not any(cotangents):
                continue
            if atom.op == "part":
                _, dim = split_shape(self.plan, atom.arg_shapes[0])
                propagate(("arg", i, 0, atom.params[1]), cotangents[0], atom.params[1], dim)
                continue
            side = 1 if len(atom.arg_shapes[0]) >= 2 else 0
            matrix = self.tiles[self.ir.view(atom.args[1 - side]).atom]
            v = self.matmul_vector(i, side)
            _, v_dim = split_shape(self.plan, atom.arg_shapes[side])
            dots = []
            for g, d in enumerate(cotangents):
                if d is None:
                    continue
                weight = gate_of(matrix, tile.gates, g)
                dots.append(f"tl.dot({d}, tl.trans({weight}), input_precision=DOT_PRECISION)")
                lines.append(f"{prefixed('acc', weight)} += tl.dot(tl.trans({v}), {d}, input_precision=DOT_PRECISION)")
            lines.append(f"d_a{i}_v = {' + '.join(dots)}  # d of the vector in {comment(atom.name)}")
            if self.split:  # a partial sum over this program's slice: the exchange adds the others'
                self.exchanged.setdefault(self.ir.view(atom.args[side]).atom, []).append(f"d_a{i}_v")
            else:
                propagate(("arg", i, side, 0), f"d_a{i}_v", 0, v_dim)
        leaves = {}
        for atom in self.ir.atoms:
            if atom.is_leaf and self.tiles[atom.name].kind != "matrix":
                for g, var in enumerate(self.tiles[atom.name].names):
                    leaves[(atom.name, g)] = cotangent(atom.name, g, prefixed("d", var))
        return lines, leaves


def _render_terms(terms, mask) -> list[str]:
    """Sum the seeds that share a derivative, mask, and reduce to the target's shape."""
    groups: dict[tuple, list[str]] = {}
    for seed, code, constant, dim, kind in terms:
        groups.setdefault((code, constant, dim, kind), []).append(seed)
    out = []
    for (code, constant, dim, kind), seeds in groups.items():
        seed = seeds[0] if len(seeds) == 1 else f"({' + '.join(seeds)})"
        if code == "1":
            term = seed
        elif constant:  # seeds are zero in padded lanes already
            term = f"{seed} * {code}"
        else:  # a derivative may be inf or NaN in padded lanes, where the seed is zero
            term = f"tl.where({mask(dim)}, {seed} * {code}, 0.0)"
        if kind == "row_scalar" and dim:
            term = f"tl.sum({term}, axis=1, keep_dims=True)"
        elif kind == "weight_scalar":
            term = f"tl.sum(tl.sum({term}, axis=1, keep_dims=True), axis=0, keep_dims=True)"
        out.append(term)
    return out
