"""The sequential template's layout of a cell: every atom's tile and how every contraction runs.

The compiler's IR says what each atom is; this decides how it lives on chip
(``sequential_tiles.py``: dims tiled, constants unrolled) and which matmuls are a
``tl.dot`` against an on-chip weight (a weight matrix, plain or transposed, with a tile
whose contracted axis and at most one more are dims) and which a product and a sum in a
joint tile. What does not tile is a located BackendError.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> layout = plan_layout(analyse_source(open("examples/lmu.rnn").read()))
    >>> sorted({c.kind for c in layout.contractions.values()}), layout.row_dots
    (['dot', 'generic'], True)
"""

from __future__ import annotations

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.ir import IR, Atom
from rnnc.templates.names import derived
from rnnc.templates.sequential_tiles import (
    REDUCTIONS,
    Axis,
    Contraction,
    DotWeight,
    Layout,
    Space,
    Tile,
    gate_index,
    space_of,
    statement_of,
    unsupported,
)


def plan_layout(plan: Plan) -> Layout:
    """The tile of every atom and the way every contraction runs, or a located BackendError."""
    ir: IR = plan.ir
    if plan.strategy != "sequential":
        raise unsupported(plan, f"its strategy is {plan.strategy}")
    roles = {"state": "s", "input": "x", "weight": "w"}  # s_h, x_x_0, w_b (rnnc.templates.names)
    tiles: dict[str, Tile] = {}
    for i, atom in enumerate(ir.atoms):
        space = space_of(plan, atom.shape, atom.name)
        kind = atom.op if atom.is_leaf else "value"
        role = roles[kind] if atom.is_leaf else f"a{i}"
        tiles[atom.name] = Tile(atom.name, kind, space, role, kind != "weight")
        if atom.op == "part":
            _check_part(plan, atom, tiles)
            tiles[atom.name].batched = tiles[dict(ir.views)[atom.args[0].name].atom].batched
        elif atom.op not in ("matmul", "outer", *REDUCTIONS) and not atom.is_leaf:  # pragma: no cover - the IR's ops
            raise unsupported(plan, f"it uses {atom.op} ({atom.name})", statement_of(ir, atom.name))
        for j, shape in enumerate(atom.arg_shapes):
            space_of(plan, shape, atom.name)
    for result in (*ir.updates, *ir.outputs):
        space_of(plan, result.shape, result.name)
    contractions: dict[int, Contraction] = {}
    dot_weights: dict[tuple, DotWeight] = {}
    for i, atom in enumerate(ir.atoms):
        if atom.op in ("matmul", "outer"):
            contractions[i] = _contraction(plan, atom, tiles, dot_weights)
    pointwise = _pointwise_weights(ir, contractions)
    dims = set()
    for tile in tiles.values():
        dims |= set(tile.space.dims)
    row_dots = any(
        c.kind == "dot" and len(space_of(plan, ir.atoms[i].arg_shapes[c.operand], "").dims) == 1
        for i, c in contractions.items()
    )
    return Layout(tiles, contractions, list(dot_weights.values()), sorted(dims), pointwise, row_dots)


def _check_part(plan: Plan, atom: Atom, tiles: dict[str, Tile]) -> None:
    axis, _, count, drop = atom.params
    parent = tiles[dict(plan.ir.views)[atom.args[0].name].atom]
    parent_axis = parent.space.axes[axis]
    if parent_axis.gates % count or (drop and (parent_axis.gates != count or parent_axis.dim)):
        raise unsupported(
            plan,
            f"{atom.name} splits an axis of {parent.atom} that is not unrolled into {count} parts "
            f"(needs [{count}, ...] or [{count}*dim, ...] along the split axis)",
            statement_of(plan.ir, atom.name),
        )


def _weight_view(ir: IR, arg, rank: int):
    """(weight atom, transposed) when ``arg`` is a weight's plain or last-two-swapped view with >= 2 axes."""
    if not isinstance(arg, sympy.Symbol) or arg.name not in dict(ir.views):
        return None
    view = ir.view(arg)
    atom = ir.atom(view.atom)
    if atom.op != "weight" or len(atom.shape) < 2 or len(atom.shape) != rank:
        return None
    lead = tuple(range(-rank, -2))
    if view.axes == lead + (-2, -1):
        return atom, False
    if view.axes == lead + (-1, -2):
        return atom, True
    return None


def _contraction(plan: Plan, atom: Atom, tiles: dict[str, Tile], dot_weights: dict) -> Contraction:
    sa, sb = (space_of(plan, s, atom.name) for s in atom.arg_shapes)
    if atom.op == "outer":
        return Contraction("generic", joint=Space(sa.axes + sb.axes), a_axes=(-2,), b_axes=(-1,))
    ra, rb = len(sa.axes), len(sb.axes)
    batch = max(ra - 2, rb - 2, 0)
    a_batch, b_batch = sa.axes[:-2] if ra >= 2 else (), sb.axes[:-2] if rb >= 2 else ()
    lead = [_broadcast(a_batch, b_batch, batch, j) for j in range(batch)]
    m = [sa.axes[-2]] if ra >= 2 else []
    n = [sb.axes[-1]] if rb >= 2 else []
    joint = Space(tuple(lead + m + [sa.axes[-1]] + n))
    size, k = len(joint.axes), batch + len(m)
    a_axes = tuple(range(batch - len(a_batch), batch)) + ((batch,) if m else ()) + (k,)
    b_axes = tuple(range(batch - len(b_batch), batch)) + (k,) + ((k + 1,) if n else ())
    generic = Contraction(
        "generic", joint=joint, a_axes=tuple(a - size for a in a_axes), b_axes=tuple(b - size for b in b_axes), k=k
    )
    for side in (1, 0):
        weight = _dot_weight(plan, atom, side, (sa, sb), dot_weights)
        if weight is not None:
            return Contraction("dot", 1 - side, weight, joint, generic.a_axes, generic.b_axes, k)
    return generic


def _broadcast(a: tuple, b: tuple, batch: int, j: int) -> Axis:
    """Axis ``j`` of the broadcast of two right-aligned lists of batch axes."""
    found = Axis()
    for axes in (a, b):
        i = j - (batch - len(axes))
        if 0 <= i < len(axes) and (axes[i].gates > 1 or axes[i].dim):
            found = axes[i]
    return found


def _dot_weight(plan: Plan, atom: Atom, side: int, spaces: tuple[Space, Space], dot_weights: dict):
    """The on-chip weight of a ``tl.dot`` when argument ``side`` is a weight matrix (plain or ``.T``)
    and the other argument's contracted axis and at most one more are dims, its others constants."""
    ir = plan.ir
    found = _weight_view(ir, atom.args[side], len(atom.arg_shapes[side]))
    if found is None:
        return None
    weight, swapped = found
    *lead, rows, cols = spaces[side].axes
    if rows.gates != 1 or cols.gates != 1 or not rows.dim or not cols.dim or any(a.dim for a in lead):
        return None
    other = spaces[1 - side].axes
    k_axis = len(other) - 1 if side == 1 or len(other) == 1 else len(other) - 2  # v @ W: v[-1]; W @ v: v[-2]
    kept = [i for i, a in enumerate(other) if a.dim]
    if other[k_axis].dim is None or other[k_axis].gates != 1 or any(i < len(other) - 2 for i in kept):
        return None
    if any(other[i].gates != 1 for i in kept):
        return None
    # the tile is [contracted, result]: v @ W contracts the rows of W as its view sees them, W @ v the columns
    transposed = (side == 1) == swapped
    contracted, result = (cols.dim, rows.dim) if transposed else (rows.dim, cols.dim)
    key = (weight.name, transposed)
    if key not in dot_weights:
        role = "rt" if any(k[0] == weight.name for k in dot_weights) else "r"  # r_R_0; rt_ its second use
        gates = Space(tuple(lead))
        names = [derived(role, user=weight.name, gate=gate_index(gates, g)) for g in gates.gates()]
        dot_weights[key] = DotWeight(weight.name, contracted, result, transposed, gates, names)
    return dot_weights[key]


def _pointwise_weights(ir: IR, contractions: dict[int, Contraction]) -> set[str]:
    """Weights read anywhere but as a tl.dot's on-chip matrix."""
    found = set()
    views = dict(ir.views)
    exprs = [r.expr for r in (*ir.updates, *ir.outputs)]
    for i, atom in enumerate(ir.atoms):
        c = contractions.get(i)
        exprs += [arg for j, arg in enumerate(atom.args) if not (c and c.kind == "dot" and j != c.operand)]
    for expr in exprs:
        for symbol in ir.view_symbols(expr):
            atom = ir.atom(views[symbol.name].atom)
            if atom.op == "weight":
                found.add(atom.name)
    return found
