"""How each tensor of a sequential cell lives on chip: the tile layout the sequential template uses.

A program owns a block of batch rows of one head and walks time. Every value of
the step is a *vector* along one dim (a ``[BLOCK_B, TILE_<dim>]`` tile), a
*row scalar* (``[BLOCK_B, 1]``, a scalar input), a *weight vector*
(``[1, TILE_<dim>]``), a *weight scalar*, or a *matrix* kept on chip for
``tl.dot``. Leading axes of constant size (the gates of ``x: [4, H]``) are
unrolled: ``x`` becomes four tiles ``x_x_0 .. x_x_3``. Every variable that carries a
cell's name is made by :mod:`rnnc.templates.names` (an input ``x_0`` is ``x_x__0``).

Example:
    >>> from rnnc.compiler import analyse_source
    >>> layout = plan_layout(analyse_source(open("examples/lstm.rnn").read()))
    >>> layout.tiles["x"].names, layout.tiles["R"].kind, layout.dims
    (['x_x_0', 'x_x_1', 'x_x_2', 'x_x_3'], 'matrix', ['H'])
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.ir import IR, Atom
from rnnc.errors import BackendError
from rnnc.templates.names import derived


@dataclass
class Tile:
    """One atom on chip.

    ``kind``: ``vector``, ``row_scalar``, ``weight_vector``, ``weight_scalar`` or
    ``matrix``. ``dim`` is the last axis' dim (for a matrix, the result's dim),
    ``contracted`` a matrix's contracted dim, ``gates`` the unrolled leading
    sizes' product and ``names`` one variable per gate. A matrix tile is always
    ``[TILE_<contracted>, TILE_<dim>]``, so that ``tl.dot(v, tile)`` applies it.
    """

    kind: str
    dim: str | None
    gates: int
    names: list[str]
    contracted: str | None = None
    transposed: bool = False  # a matrix weight W[..., dim, contracted] used as W @ v


@dataclass
class Layout:
    """Every atom's tile and the dims the kernel masks."""

    tiles: dict[str, Tile]
    dims: list[str]


# what each dim's kernel variables hold (dim_var's roles)
DIM_ROLES = {
    "dim": "its size, a kernel argument",
    "TILE": "the tile width along it, a power of two (a constexpr)",
    "FULL": "a split head: the width of a tile that holds all of it (a constexpr)",
    "cols": "the indices of the program's tile",
    "in": "which of those exist (the tile is padded)",
    "mask": "[BLOCK_B, TILE] mask: batch row and index exist",
    "zero": "[BLOCK_B, TILE] zeros in COMPUTE",
    "size": "the dim read as a number in the cell's math, a [1, 1] tile in COMPUTE",
    "full": "a split head: all of its indices",
    "in_full": "a split head: which of all its indices exist",
    "mask_full": "a split head: [BLOCK_B, FULL] mask",
}


def dim_var(role: str, dim: str) -> str:
    """The kernel variable ``role`` (one of :data:`DIM_ROLES`) of dim ``dim``.

    Example:
        >>> dim_var("mask", "H"), dim_var("TILE", "B"), dim_var("in_full", "d_k")
        ('mask_H', 'TILE_B', 'in_full_d__k')
    """
    if role not in DIM_ROLES:
        raise ValueError(f"a dim variable's role is one of {sorted(DIM_ROLES)}, has {role!r}")
    return derived(role, user=dim)


def unsupported(plan: Plan, why: str) -> BackendError:
    """The error for a cell the sequential template does not cover."""
    return BackendError(f"the Triton sequential template does not cover cell {plan.ir.cell} yet: {why}")


def split_shape(plan: Plan, shape) -> tuple[int, str | None]:
    """(gates, dim) of a shape ``[*constants, dim]``; ``(1, None)`` for a scalar."""
    if not shape:
        return 1, None
    *lead, last = shape
    if not isinstance(last, sympy.Symbol) or any(not sympy.sympify(d).is_Integer for d in lead):
        raise unsupported(plan, f"a shape {list(shape)} is not [constant sizes..., dim]")
    gates = 1
    for d in lead:
        gates *= int(d)
    return gates, last.name


def matrix_weights(plan: Plan) -> dict[str, tuple[str, str, bool]]:
    """Weights used as the matrix of a matmul: name -> (result dim, contracted dim, transposed)."""
    ir = plan.ir
    found: dict[str, tuple[str, str, bool]] = {}
    for atom in ir.atoms:
        if atom.op != "matmul":
            continue
        ranks = [len(s) for s in atom.arg_shapes]
        for side, arg in enumerate(atom.args):
            if ranks[side] < 2:
                continue
            view = ir.view(arg) if isinstance(arg, sympy.Symbol) and arg.name in dict(ir.views) else None
            leaf = ir.atom(view.atom) if view is not None else None
            if leaf is None or leaf.op != "weight" or not view.is_plain():
                raise unsupported(plan, f"the matrix of {atom.name} is not a weight (needs weight @ vector)")
            other = ranks[1 - side]
            if other != 1 or (side == 1 and ranks[0] != 1) or (side == 1 and ranks[1] != 2):
                raise unsupported(plan, f"{atom.name} is not weight @ vector or vector @ weight")
            *lead, rows, cols = leaf.shape
            if not (isinstance(rows, sympy.Symbol) and isinstance(cols, sympy.Symbol)):
                raise unsupported(plan, f"weight {leaf.name} is {list(leaf.shape)}: needs [..., dim, dim]")
            entry = (rows.name, cols.name, True) if side == 0 else (cols.name, rows.name, False)
            if found.get(leaf.name, entry) != entry:
                raise unsupported(plan, f"weight {leaf.name} is used in two ways")
            found[leaf.name] = entry
    return found


def _leaf_tile(plan: Plan, atom: Atom, matrices: dict) -> Tile:
    name = atom.name
    if atom.op == "weight" and name in matrices:
        dim, contracted, transposed = matrices[name]
        gates = 1
        for d in atom.shape[:-2]:
            if not sympy.sympify(d).is_Integer:
                raise unsupported(plan, f"weight {name} is {list(atom.shape)}: needs [constants..., dim, dim]")
            gates *= int(d)
        return Tile("matrix", dim, gates, _gate_names("r", name, gates), contracted, transposed)
    gates, dim = split_shape(plan, atom.shape)
    if atom.op == "state":
        if dim is None or gates != 1:
            raise unsupported(plan, f"state {name} is {list(atom.shape)}: needs a vector [dim]")
        return Tile("vector", dim, 1, _gate_names("s", name, 1))
    if atom.op == "input":
        kind = "vector" if dim else "row_scalar"
        return Tile(kind, dim, gates, _gate_names("x", name, gates))
    kind = "weight_vector" if dim else "weight_scalar"
    return Tile(kind, dim, gates, _gate_names("w", name, gates))


def _gate_names(role: str, name: str, gates: int) -> list[str]:
    """One variable per gate of a leaf: ``<role>_<name>`` or ``<role>_<name>_<gate>``."""
    if gates == 1:
        return [derived(role, user=name)]
    return [derived(role, user=name, gate=g) for g in range(gates)]


def plan_layout(plan: Plan) -> Layout:
    """The tile of every atom, or a BackendError naming what does not fit the template."""
    ir: IR = plan.ir
    if plan.strategy != "sequential":
        raise unsupported(plan, f"its strategy is {plan.strategy}")
    for _, view in ir.views:
        if not view.is_plain():
            raise unsupported(plan, f"view {view.label()} inserts or permutes axes")
    matrices = matrix_weights(plan)
    tiles: dict[str, Tile] = {}
    for i, atom in enumerate(ir.atoms):
        if atom.is_leaf:
            tiles[atom.name] = _leaf_tile(plan, atom, matrices)
        elif atom.op in ("matmul", "part"):
            gates, dim = split_shape(plan, atom.shape)
            if dim is None:
                raise unsupported(plan, f"{atom.name} is a scalar per step")
            # a computed atom's variables are the template's own (a4, a4_0, ...): no user name in them
            variables = [f"a{i}"] if gates == 1 else [f"a{i}_{g}" for g in range(gates)]
            tiles[atom.name] = Tile("vector", dim, gates, variables)
        else:
            raise unsupported(plan, f"it uses {atom.op} ({atom.name}); the template has @ and splits")
        if atom.op == "part":
            axis, _, count, drop = atom.params
            arg_gates, _ = split_shape(plan, atom.arg_shapes[0])
            if axis != 0 or not drop or arg_gates != count:
                raise unsupported(plan, f"{atom.name} splits other than one gate per part along the first axis")
    for result in (*ir.updates, *ir.outputs):
        gates, dim = split_shape(plan, result.shape)
        if gates != 1 or dim is None:
            raise unsupported(plan, f"{result.name} is {list(result.shape)}: needs a vector [dim]")
    dims = sorted({t.dim for t in tiles.values() if t.dim} | {t.contracted for t in tiles.values() if t.contracted})
    return Layout(tiles, dims)


def gate_of(tile: Tile, expression_gates: int, gate: int) -> str:
    """The variable that holds ``tile`` at gate ``gate`` of an expression with ``expression_gates`` gates.

    Plain broadcasting: a tile without gates is the same at every gate.

    Example:
        >>> gates = Tile("vector", "H", 4, ["a_0", "a_1", "a_2", "a_3"])
        >>> gate_of(gates, 4, 2), gate_of(Tile("vector", "H", 1, ["h"]), 4, 2)
        ('a_2', 'h')
    """
    if tile.gates == 1:
        return tile.names[0]
    if tile.gates != expression_gates:
        raise BackendError(f"a tile with {tile.gates} gates read in an expression with {expression_gates}")
    return tile.names[gate]
