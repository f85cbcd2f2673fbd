"""How each tensor of a sequential cell lives on chip: the tile layout the sequential template uses.

A program owns a block of batch rows of one head and walks time. Each axis of a
value is either a *dim* (``H``: a tile axis of ``TILE_H`` lanes, masked), a
*constant* (``4``: unrolled into one variable per entry, the gates of
``x: [4, H]``), or both (``2*H``: two unrolled halves of ``TILE_H`` lanes). A value is
then one Triton tensor per gate, ``[BLOCK_B, TILE_<dim>...]`` with its dims in
order (``[BLOCK_B]`` for a scalar per row); a weight has no batch rows, so its
leading axis is 1. A view places a value into an expression's index space by
``tl.permute`` and ``None`` axes, as NumPy broadcasting would. Every variable that
carries a cell's name is made by :mod:`rnnc.templates.names` (an input ``x_0`` is
``x_x__0``, gate 0 of ``x`` is ``x_x_0``); the template's own are :func:`own_name`.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.sequential_layout import plan_layout
    >>> layout = plan_layout(analyse_source(open("examples/lstm.rnn").read()))
    >>> layout.tiles["x"].variables(), layout.dims
    (['x_x_0', 'x_x_1', 'x_x_2', 'x_x_3'], ['H'])
    >>> layout.contractions[5].kind, layout.contractions[5].weight.names[0]
    ('dot', 'r_R_0')
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.ir import IR
from rnnc.errors import BackendError, LocatedBackendError, Span
from rnnc.templates.names import derived

REDUCTIONS = ("sum", "max", "min")  # reductions over an axis of a value, or all of them


@dataclass(frozen=True)
class Axis:
    """One axis of a value on chip: ``gates`` unrolled entries of ``dim`` lanes each (no dim: one lane)."""

    gates: int = 1
    dim: str | None = None


@dataclass(frozen=True)
class Space:
    """An index space as laid out on chip.

    Example:
        >>> space = Space((Axis(4), Axis(1, "H")))
        >>> space.dims, space.gates(), Space((Axis(2, "K"),)).gates()
        (('H',), [(0, 0), (1, 0), (2, 0), (3, 0)], [(0,), (1,)])
    """

    axes: tuple[Axis, ...]

    @property
    def dims(self) -> tuple[str, ...]:
        """The tiled dims in axis order: the tile is ``[BLOCK_B, *(BLOCK_d for d in dims)]``."""
        return tuple(a.dim for a in self.axes if a.dim)

    def gates(self) -> list[tuple[int, ...]]:
        """Every combination of the unrolled entries, one index per axis (0 where an axis has none)."""
        return list(itertools.product(*(range(a.gates) for a in self.axes)))

    def position(self, axis: int) -> int | None:
        """The tile axis (after the batch axis) of axis ``axis``, or None for a constant axis."""
        if self.axes[axis].dim is None:
            return None
        return sum(1 for a in self.axes[:axis] if a.dim)


def gate_index(space: Space, gate: tuple[int, ...]) -> int | None:
    """The row-major index of gate ``gate`` among the unrolled entries, None when nothing is unrolled.

    Example:
        >>> gate_index(Space((Axis(2), Axis(3, "H"))), (1, 2)), gate_index(Space((Axis(1, "H"),)), (0,))
        (5, None)
    """
    if all(a.gates == 1 for a in space.axes):
        return None
    index = 0
    for g, a in zip(gate, space.axes):
        index = index * a.gates + g
    return index


def own_name(stem: str, space: Space, gate: tuple[int, ...]) -> str:
    """A template variable of its own (``a5``, ``d_a5_arg0``) at gate ``gate``: ``stem`` or ``stem_INDEX``.

    Such names carry no cell name, so they cannot meet one (``rnnc.templates.names``).
    """
    index = gate_index(space, gate)
    return stem if index is None else f"{stem}_{index}"


# what each dim's kernel variables hold (dim_var's roles)
DIM_ROLES = {
    "dim": "its size, a kernel argument",
    "TILE": "the tile width along it, a power of two (a constexpr)",
    "cols": "the indices of the program's tile",
    "in": "which of those exist (the tile is padded)",
    "mask": "[BLOCK_B, TILE] mask: batch row and index exist",
    "zero": "[BLOCK_B, TILE] zeros in COMPUTE",
    "size": "the dim read as a number in the cell's math, a [1] tile in COMPUTE",
    "piece": "a streamed matmul: the indices of one BLOCK_K piece of the contracted dim",
    "in_piece": "a streamed matmul: which of those exist",
    "mask_piece": "a streamed matmul: [BLOCK_B, BLOCK_K] mask",
}


def dim_var(role: str, dim: str) -> str:
    """The kernel variable ``role`` (one of :data:`DIM_ROLES`) of dim ``dim``.

    Example:
        >>> dim_var("mask", "H"), dim_var("TILE", "B"), dim_var("in_piece", "d_k")
        ('mask_H', 'TILE_B', 'in_piece_d__k')
    """
    if role not in DIM_ROLES:
        raise ValueError(f"a dim variable's role is one of {sorted(DIM_ROLES)}, has {role!r}")
    return derived(role, user=dim)


@dataclass
class Tile:
    """One atom on chip: its kind (``state``, ``input``, ``weight`` or ``value``), space and variables.

    ``role``: for a state, input or weight the role word of its variables (``s``, ``x``, ``w``:
    ``s_h``, ``x_x_0``, made by ``rnnc.templates.names``); for a computed value its own stem (``a5``).
    """

    atom: str
    kind: str
    space: Space
    role: str
    batched: bool = True  # batch rows; a weight is the same for every row (a leading axis of 1), as its parts

    def name(self, gate: tuple[int, ...]) -> str:
        """The variable holding gate ``gate``."""
        if self.kind == "value":
            return own_name(self.role, self.space, gate)
        return derived(self.role, user=self.atom, gate=gate_index(self.space, gate))

    def variables(self) -> list[str]:
        """Every gate's variable, in gate order."""
        return [self.name(g) for g in self.space.gates()]


@dataclass
class DotWeight:
    """A weight matrix kept on chip for ``tl.dot``, one ``[BLOCK_<contracted>, BLOCK_<result>]`` tile per gate.

    ``transposed``: the tile is the transpose of the weight's last two axes as stored.
    """

    weight: str
    contracted: str
    result: str
    transposed: bool
    gates: Space  # the weight's leading constant axes
    names: list[str]


@dataclass
class Contraction:
    """How one ``@`` (or ``outer``) is computed.

    ``dot``: ``tl.dot`` of the batch-side operand (argument ``operand``) with an on-chip weight;
    ``generic``: both operands placed in a joint space (``joint``; ``a_axes`` and ``b_axes`` place
    them there) multiplied, and summed over the contracted axis ``k`` (None for ``outer``).
    """

    kind: str
    operand: int = 0
    weight: DotWeight | None = None
    joint: Space | None = None
    a_axes: tuple[int, ...] = ()
    b_axes: tuple[int, ...] = ()
    k: int | None = None


@dataclass
class Layout:
    """Every atom's tile, how every contraction runs, and the dims the kernel masks."""

    tiles: dict[str, Tile]
    contractions: dict[int, Contraction]
    dot_weights: list[DotWeight]
    dims: list[str]
    pointwise_weights: set[str] = field(default_factory=set)  # weights read outside a tl.dot
    row_dots: bool = False  # some tl.dot has the batch rows as its M side (BLOCK_B >= 16)


def unsupported(plan: Plan, why: str, span: Span | None = None) -> BackendError:
    """The error for a cell the sequential template does not cover: located (FILE:LINE:COL, the line and a
    caret) at ``span``, the statement that needs what is missing, when one is known."""
    message = f"the Triton sequential template does not cover cell {plan.ir.cell} yet: {why}"
    return LocatedBackendError(message, span) if span is not None else BackendError(message)


def statement_of(ir: IR, atom: str) -> Span | None:
    """The span of the first update or output that reads ``atom`` (through any chain of atoms)."""
    views = dict(ir.views)
    atoms = {a.name: a for a in ir.atoms}

    def reads(expr, seen) -> bool:
        for symbol in ir.view_symbols(expr):
            name = views[symbol.name].atom
            if name == atom:
                return True
            if name not in seen:
                seen.add(name)
                if any(reads(arg, seen) for arg in atoms[name].args):
                    return True
        return False

    for result in (*ir.updates, *ir.outputs):
        if reads(result.expr, set()):
            return result.span
    decl = next((d for d in ir.decls if d.name == atom), None)
    return decl.span if decl is not None else None


def space_of(plan: Plan, shape, atom: str) -> Space:
    """The on-chip space of a shape, or a located BackendError for an axis that is not a dim, a
    constant or a constant times a dim."""
    axes = []
    for extent in shape:
        e = sympy.sympify(extent)
        coeff, rest = e.as_coeff_Mul()
        if e.is_Integer:
            axes.append(Axis(int(e)))
        elif isinstance(e, sympy.Symbol):
            axes.append(Axis(1, e.name))
        elif coeff.is_Integer and coeff > 1 and isinstance(rest, sympy.Symbol):
            axes.append(Axis(int(coeff), rest.name))
        else:
            raise unsupported(
                plan,
                f"an axis of size {e} (in {atom}) needs to be a dim, a constant or a constant times a dim",
                statement_of(plan.ir, atom),
            )
    return Space(tuple(axes))


def atom_gate(atom: Space, view_axes: tuple[int, ...], expr: Space, gate: tuple[int, ...]) -> tuple[int, ...]:
    """The gate of an atom that a view reads at gate ``gate`` of the expression (broadcast axes: 0)."""
    n = len(expr.axes)
    return tuple(gate[n + v] if a.gates > 1 else 0 for a, v in zip(atom.axes, view_axes))


def _targets(atom: Space, view_axes: tuple[int, ...], expr: Space) -> list[int]:
    n = len(expr.axes)
    return [expr.position(n + v) for a, v in zip(atom.axes, view_axes) if a.dim]


def place(code: str, atom: Space, view_axes: tuple[int, ...], expr: Space) -> str:
    """``code`` (a tile of ``atom``) placed in ``expr``'s tile: its dims permuted into order, ``None`` elsewhere.

    Example:
        >>> K, V = Axis(1, "K"), Axis(1, "V")
        >>> place("s_S", Space((K, V)), (-1, -2), Space((V, K))), place("g", Space((K,)), (-2,), Space((K, V)))
        ('tl.permute(s_S, (0, 2, 1))', 'g[:, :, None]')
    """
    targets = _targets(atom, view_axes, expr)
    order = sorted(range(len(targets)), key=lambda k: targets[k])
    if order != list(range(len(targets))):
        code = f"tl.permute({code}, (0, {', '.join(str(1 + k) for k in order)}))"
    rank = len(expr.dims)
    if len(targets) == rank:
        return code
    slots = [":"] + [":" if p in targets else "None" for p in range(rank)]
    return f"{code}[{', '.join(slots)}]"


def unplace(code: str, atom: Space, view_axes: tuple[int, ...], expr: Space) -> str:
    """The adjoint of :func:`place`: ``code`` (a tile of ``expr``) summed and permuted back onto ``atom``'s dims.

    Example:
        >>> K, V = Axis(1, "K"), Axis(1, "V")
        >>> unplace("d", Space((K,)), (-2,), Space((K, V))), unplace("d", Space(()), (), Space((K,)))
        ('tl.sum(d, axis=2)', 'tl.sum(d, axis=1)')
    """
    targets = _targets(atom, view_axes, expr)
    for p in reversed(range(len(expr.dims))):
        if p not in targets:
            code = f"tl.sum({code}, axis={1 + p})"
    ranks = [sorted(targets).index(t) for t in targets]
    if ranks != list(range(len(ranks))):
        code = f"tl.permute({code}, (0, {', '.join(str(1 + r) for r in ranks)}))"
    return code
