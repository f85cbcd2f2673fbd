"""Where a tile of a sequential kernel lives in memory: offsets and masks of batch tiles and weights.

A tensor of the call is ``[rows, *shape]`` (rows: ``[B, T, NH]`` for inputs and outputs, ``[B, NH]``
for states, ``[NH]`` for weights), contiguous; a tile is one gate of it, its dims tiled.

Example:
    >>> from rnnc.templates.sequential_tiles import Axis, Space
    >>> offsets(Space((Axis(4), Axis(1, "H"))), (2, 0), "row")
    'row[:, None] * (4 * dim_H) + 2 * dim_H + cols_H[None, :]'
"""

from __future__ import annotations

from rnnc.templates.sequential_tiles import Space, Tile, dim_var


def space_prologue(step, dims: tuple[str, ...]) -> list[str]:
    """The mask and the zeros of a ``[BLOCK_B, TILE_<d>...]`` tile space (``step`` names them).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.templates.sequential_step import SequentialStep
        >>> step = SequentialStep(analyse_source(open("examples/m2rnn.rnn").read()))
        >>> mask, shape = space_prologue(step, ("K", "V"))[0].split("  # ")
        >>> print(mask); print(shape)
        space0_mask = batch_mask[:, None, None] & in_K[None, :, None] & in_V[None, None, :]
        [BLOCK_B, TILE_K, TILE_V]
    """
    blocks = ", ".join(["BLOCK_B"] + [dim_var("TILE", d) for d in dims])
    return [space_mask(step, dims), f"{step.space_var('zero', dims)} = tl.zeros([{blocks}], dtype=COMPUTE)"]


def space_mask(step, dims: tuple[str, ...], rows: str = "batch_mask") -> str:
    """The mask of a tile space: batch rows ``rows`` (``live``: those whose sequence has a step) and lanes.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.templates.sequential_step import SequentialStep
        >>> space_mask(SequentialStep(analyse_source(open("examples/elman.rnn").read())), ("H",), "live")
        'mask_H = live[:, None] & in_H[None, :]'
    """
    rank = 1 + len(dims)
    mask = [f"{rows}{_slots(0, rank)}"] + [f"{dim_var('in', d)}{_slots(1 + p, rank)}" for p, d in enumerate(dims)]
    where = f"  # [{', '.join(['BLOCK_B'] + [dim_var('TILE', d) for d in dims])}]" if len(dims) > 1 else ""
    return f"{step.space_var('mask', dims)} = {' & '.join(mask)}{where}"


def rows_of(space: Space, value: str) -> str:
    """A ``[BLOCK_B]`` value placed over a tile of ``space`` (``later[:, None]``)."""
    return f"{value}{_slots(0, 1 + len(space.dims))}"


def _slots(position: int, rank: int) -> str:
    """``[None, :, None]``: a vector placed at ``position`` of a rank-``rank`` tile (nothing for rank 1)."""
    if rank == 1:
        return ""
    return "[" + ", ".join(":" if p == position else "None" for p in range(rank)) + "]"


def _extent(gates: int, dim: str | None) -> str:
    if dim is None:
        return str(gates)
    size = dim_var("dim", dim)
    return size if gates == 1 else f"{gates} * {size}"


def _product(factors: list[str]) -> str:
    factors = [f for f in factors if f != "1"]
    if not factors:
        return "1"
    return factors[0] if len(factors) == 1 else " * ".join(f"({f})" if " " in f else f for f in factors)


def offsets(space: Space, gate: tuple[int, ...], base: str, batched: bool = True) -> str:
    """Offsets of gate ``gate`` of a ``[rows, *space]`` tensor (row ``base``): a batch tile, or for a
    weight (``batched`` False, ``base`` its head) the tile without the batch axis.

    Example:
        >>> from rnnc.templates.sequential_tiles import Axis
        >>> offsets(Space((Axis(1, "K"), Axis(1, "V"))), (0, 0), "head", batched=False)
        'head * (dim_K * dim_V) + cols_K[:, None] * dim_V + cols_V[None, :]'
    """
    extents = [_extent(a.gates, a.dim) for a in space.axes]
    rank = len(space.dims) + (1 if batched else 0)
    lead = 1 if batched else 0
    size = _product(extents)
    row_size = f" * ({size})" if " " in size else ("" if size == "1" else f" * {size}")
    terms = [(f"{base}{_slots(0, rank)}" if batched else base) + row_size]
    for i, a in enumerate(space.axes):
        stride = _product(extents[i + 1 :])
        index = []
        if a.dim:
            index.append(f"{dim_var('cols', a.dim)}{_slots(lead + space.position(i), rank)}")
        if gate[i]:
            index.insert(0, f"{gate[i]} * {dim_var('dim', a.dim)}" if a.dim else str(gate[i]))
        if not index:
            continue
        value = " + ".join(index)
        if stride != "1":
            value = f"({value}) * {stride}" if len(index) > 1 else f"{value} * {stride}"
        terms.append(value)
    if not batched and not space.dims:
        terms.append("lane0")
    return " + ".join(terms)


def weight_mask(space: Space) -> str:
    """The lanes in range of a weight's tile without the batch axis ('' when it has no dims)."""
    dims = space.dims
    return " & ".join(f"{dim_var('in', d)}{_slots(p, len(dims))}" for p, d in enumerate(dims))


def load_tile(step, tile: Tile, gate: tuple[int, ...], pointer: str, row: str = "row") -> str:
    """Load gate ``gate`` of a batch tile (an input or a state) from row ``row`` of ``pointer``; ``step``
    (a ``SequentialStep``) records the mask's space."""
    mask = step.mask(tile.space)
    return f"tl.load({pointer} + {offsets(tile.space, gate, row)}, mask={mask}, other=0.0).to(COMPUTE)"


def store_tile(step, space: Space, gate: tuple[int, ...], pointer: str, row: str, value: str) -> str:
    """Store a batch tile to row ``row`` of ``pointer``."""
    return f"tl.store({pointer} + {offsets(space, gate, row)}, {value}, mask={step.mask(space)})"
