"""Lines of the sequential kernels that every variant shares: offsets, loads, and a step's pieces.

A step's pieces (weights on chip, inputs, outputs, the recomputed atoms and the
backward pass) do not depend on where the states live between steps; the
whole-head kernels keep them in registers, the split-head step kernels in
global memory. Each renderer adds its own state lines around these.

Example:
    >>> vector_offsets("row", Tile("vector", "H", 4, ["a", "b", "c", "d"]), 2)
    'row[:, None] * 4 * dim_H + 2 * dim_H + cols_H[None, :]'

Every variable that carries a cell's name comes from :mod:`rnnc.templates.names` (pointers
``ptr_x``, per-dim ``mask_H``); the kernels' own variables (``rows``, ``batch_mask``) have
names that no such variable can take.
"""

from __future__ import annotations

from rnnc.templates.names import derived, prefixed
from rnnc.templates.sequential_step import SequentialStep
from rnnc.templates.sequential_tiles import Tile, dim_var, split_shape

PROLOGUE = """pid_b = tl.program_id(0)
head = tl.program_id(1)
rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
batch_mask = rows < B
row_mask = batch_mask[:, None]
row_zero = tl.zeros([BLOCK_B, 1], dtype=COMPUTE)
state_row = rows.to(tl.int64) * NH + head  # [B, NH] row of this program's states"""


def dim_prologue(d: str, sliced: bool = False) -> str:
    """The lines that set up dim ``d``'s variables (``sliced``: a split head's slice of it).

    ``size_<d>`` is the dim read as a number in the cell's math, a [1, 1] tile in COMPUTE (sqrt(H)
    exact in fp64).

    Example:
        >>> print(dim_prologue("H"))
        cols_H = tl.arange(0, TILE_H)
        in_H = cols_H < dim_H
        mask_H = batch_mask[:, None] & in_H[None, :]
        zero_H = tl.zeros([BLOCK_B, TILE_H], dtype=COMPUTE)
        size_H = tl.zeros([1, 1], dtype=COMPUTE) + dim_H
    """
    v = {role: dim_var(role, d) for role in ("dim", "TILE", "cols", "in", "mask", "zero", "size")}
    cols = f"tl.arange(0, {v['TILE']})"
    if sliced:
        cols = f"part * {v['TILE']} + {cols}  # this program's slice of {d}"
    return "\n".join(
        [
            f"{v['cols']} = {cols}",
            f"{v['in']} = {v['cols']} < {v['dim']}",
            f"{v['mask']} = batch_mask[:, None] & {v['in']}[None, :]",
            f"{v['zero']} = tl.zeros([BLOCK_B, {v['TILE']}], dtype=COMPUTE)",
            f"{v['size']} = tl.zeros([1, 1], dtype=COMPUTE) + {v['dim']}",
        ]
    )


# the forward kernels' pointers, whole head or split: (kind, role) for pointer_names
FORWARD_POINTERS = (
    ("inputs", "ptr"),
    ("weights", "ptr"),
    ("states", "init_ptr"),
    ("outputs", "out_ptr"),
    ("states", "final_ptr"),
    ("states", "saved_ptr"),
)

# what every backward kernel reads first: the step's operands, the saved states, the outputs' cotangents
BACKWARD_READS = (
    ("inputs", "ptr"),
    ("weights", "ptr"),
    ("states", "init_ptr"),
    ("states", "saved_ptr"),
    ("outputs", "out_grad_ptr"),
)


def pointer(role: str, name: str) -> str:
    """The kernel argument ``role`` (``ptr``, ``init_ptr``, ``grad_ptr``...) of tensor ``name``.

    Example:
        >>> pointer("ptr", "x"), pointer("init_grad_ptr", "h")
        ('ptr_x', 'init_grad_ptr_h')
    """
    return derived(role, user=name)


def _size(gates: int, dim: str | None) -> str:
    """Elements per row of a ``[gates, dim]`` tensor, as source."""
    if dim is None:
        return str(gates)
    size = dim_var("dim", dim)
    return size if gates == 1 else f"{gates} * {size}"


def vector_offsets(row: str, tile: Tile, gate: int) -> str:
    """Offsets of gate ``gate`` of a [rows, gates, dim] tensor, as a [BLOCK_B, TILE_dim] tile."""
    gate_offset = f" + {gate} * {dim_var('dim', tile.dim)}" if gate else ""
    return f"{row}[:, None] * {_size(tile.gates, tile.dim)}{gate_offset} + {dim_var('cols', tile.dim)}[None, :]"


def load_tile(tile: Tile, gate: int, pointer: str, row: str = "row") -> str:
    if tile.kind == "row_scalar":
        return f"tl.load({pointer} + {row}[:, None], mask=row_mask, other=0.0).to(COMPUTE)"
    offsets = vector_offsets(row, tile, gate)
    return f"tl.load({pointer} + {offsets}, mask={dim_var('mask', tile.dim)}, other=0.0).to(COMPUTE)"


def whole_offsets(row: str, dim: str) -> str:
    """Offsets of all of a [rows, dim] vector along its dim (a split head's ``full_<dim>`` indices)."""
    return f"{row}[:, None] * {dim_var('dim', dim)} + {dim_var('full', dim)}[None, :]"


def whole_vector(tile: Tile, pointer: str, row: str) -> str:
    """Load all of a vector along its dim (one a split head's matmul contracts) as ``full_<tile>``."""
    var = prefixed("full", tile.names[0])
    mask = dim_var("mask_full", tile.dim)
    return f"{var} = tl.load({pointer} + {whole_offsets(row, tile.dim)}, mask={mask}, other=0.0).to(COMPUTE)"


def weight_offsets(tile: Tile, gate: int, whole_rows: bool = False) -> tuple[str, str]:
    """(offsets, mask) of one gate of an on-chip weight.

    ``whole_rows``: a matrix's contracted dim is read whole (``full_<dim>``), as a split head needs.
    """
    if tile.kind == "weight_scalar":
        return "head", ""
    if tile.kind == "weight_vector":
        gate_offset = f" + {gate} * {dim_var('dim', tile.dim)}" if gate else ""
        offsets = f"head * ({_size(tile.gates, tile.dim)}){gate_offset} + {dim_var('cols', tile.dim)}"
        return offsets, dim_var("in", tile.dim)
    x, y = tile.dim, tile.contracted  # a matrix tile is [TILE_y, TILE_x]; entry [k, j] multiplies v[k] into [j]
    k = dim_var("full" if whole_rows else "cols", y)
    size_x, size_y, cols_x = dim_var("dim", x), dim_var("dim", y), dim_var("cols", x)
    per_gate = f"{size_x} * {size_y}"
    gate_offset = f" + {gate} * {per_gate}" if gate else ""
    if tile.transposed:  # W[..., x, y] used as W @ v: entry [k, j] is W[j, k]
        inner = f"{k}[:, None] + {cols_x}[None, :] * {size_y}"
    else:  # W[y, x] used as v @ W
        inner = f"{k}[:, None] * {size_x} + {cols_x}[None, :]"
    head_size = per_gate if tile.gates == 1 else f"{tile.gates} * {per_gate}"
    k_mask = dim_var("in_full" if whole_rows else "in", y)
    return f"head * ({head_size}){gate_offset} + {inner}", f"{k_mask}[:, None] & {dim_var('in', x)}[None, :]"


def step_pieces(step: SequentialStep) -> dict[str, list[str]]:
    """The lines of a step that do not depend on where the states live: the weights, inputs and
    outputs, the recomputed atoms and the backward pass (``leaves``: the cotangent per leaf gate).

    A split step (``step.split``) reads matrices with whole contracted rows, reads the inputs a
    matmul contracts whole as well (``full_<tile>``), and adds the gradients of scalar inputs and
    of contracted inputs atomically, since every program of a head holds a part of their sum.
    """
    ir, tiles = step.ir, step.tiles
    contracted = step.contracted_leaves() if step.split else []
    pieces: dict = {k: [] for k in ("weight_loads", "accumulator_inits", "accumulate", "weight_grad_stores")}
    for d in ir.weights:
        name, tile = d.name, tiles[d.name]
        for g, var in enumerate(tile.names):
            offsets, mask = weight_offsets(tile, g, whole_rows=step.split)
            masked = f", mask={mask}, other=0.0" if mask else ""
            suffix = "[None, :]" if tile.kind == "weight_vector" else ""
            load = f"tl.load({pointer('ptr', name)} + {offsets}{masked}).to(COMPUTE){suffix}"
            pieces["weight_loads"].append(f"{var} = {load}")
            acc = prefixed("acc", var)
            if tile.kind == "matrix":
                k = dim_var("FULL" if step.split else "TILE", tile.contracted)
                shape, reduced = f"[{k}, {dim_var('TILE', tile.dim)}]", acc
            elif tile.kind == "weight_vector":
                shape, reduced = f"[BLOCK_B, {dim_var('TILE', tile.dim)}]", f"tl.sum({acc}, axis=0)"
            else:
                shape, reduced = "[1, 1]", f"tl.sum(tl.sum({acc}, axis=1), axis=0)"
            pieces["accumulator_inits"].append(f"{acc} = tl.zeros({shape}, dtype=COMPUTE)")
            store_mask = f", mask={mask}" if mask else ""
            pieces["weight_grad_stores"].append(
                f"tl.atomic_add({pointer('grad_ptr', name)} + {offsets}, {reduced}{store_mask})"
            )

    pieces["input_loads"] = [
        f"{var} = {load_tile(tiles[d.name], g, pointer('ptr', d.name))}"
        for d in ir.inputs
        for g, var in enumerate(tiles[d.name].names)
    ]
    for d in ir.inputs:
        if d.name in contracted:
            pieces["input_loads"].append(whole_vector(tiles[d.name], pointer("ptr", d.name), "row"))
    pieces["output_stores"], pieces["seed_loads"] = [], []
    for r in ir.outputs:
        dim = split_shape(step.plan, r.shape)[1]
        offsets = f"row[:, None] * {dim_var('dim', dim)} + {dim_var('cols', dim)}[None, :]"
        value, out, mask = step.output_variable(r.name), pointer("out_ptr", r.name), dim_var("mask", dim)
        pieces["output_stores"].append(f"tl.store({out} + {offsets}, {value}.to({out}.dtype.element_ty), mask={mask})")
        seed, grad = step.output_seed(r.name), pointer("out_grad_ptr", r.name)
        pieces["seed_loads"].append(f"{seed} = tl.load({grad} + {offsets}, mask={mask}, other=0.0).to(COMPUTE)")
    pieces["atom_lines"] = step.atom_lines()
    pieces["result_lines"] = step.result_lines()
    pieces["backward_lines"], leaves = step.backward_lines()
    pieces["leaves"] = leaves
    pieces["input_grad_stores"] = []
    for d in ir.inputs:
        name, tile = d.name, tiles[d.name]
        grad = pointer("grad_ptr", name)
        for g, var in enumerate(tile.names):
            value = leaves.get((name, g))
            if value is None:
                continue  # no gradient flows: the buffer starts at zero
            if tile.kind == "row_scalar" and step.split:
                line = f"tl.atomic_add({grad} + row[:, None], {value}, mask=row_mask)"
            elif name in contracted:
                offsets = vector_offsets("row", tile, g)
                line = f"tl.atomic_add({grad} + {offsets}, {value}, mask={dim_var('mask', tile.dim)})"
            elif tile.kind == "row_scalar":
                line = f"tl.store({grad} + row[:, None], {value}, mask=row_mask)"
            else:
                line = f"tl.store({grad} + {vector_offsets('row', tile, g)}, {value}, mask={dim_var('mask', tile.dim)})"
            pieces["input_grad_stores"].append(line)
        for partial in step.exchanged.get(name, []):  # a matmul's part, summed over this program's slice
            pieces["input_grad_stores"].append(
                f"tl.atomic_add({grad} + {whole_offsets('row', tile.dim)}, {partial}, "
                f"mask={dim_var('mask_full', tile.dim)})"
            )
    for d in ir.weights:
        for g, var in enumerate(tiles[d.name].names):
            value = leaves.get((d.name, g))
            if tiles[d.name].kind != "matrix" and value is not None:
                pieces["accumulate"].append(f"{prefixed('acc', var)} += {value}")
    return pieces


def pointer_names(step: SequentialStep, *groups: tuple[str, str]) -> list[str]:
    """Pointer argument names: per (kind, role), :func:`pointer` of every tensor of that kind.

    Kinds: ``inputs``, ``weights``, ``states``, ``outputs``, and ``exchanged`` (the states a split
    step exchanges, known once ``step.backward_lines()`` ran). Distinct by construction: tensors
    of one kind have distinct names, and each group has its own role.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> step = SequentialStep(analyse_source(open("examples/elman.rnn").read()))
        >>> pointer_names(step, ("states", "init_ptr"), ("outputs", "out_ptr"))
        ['init_ptr_h', 'out_ptr_h']
    """
    ir = step.ir
    names = {kind: [t.name for t in getattr(ir, kind)] for kind in ("inputs", "weights", "states", "outputs")}
    names["exchanged"] = sorted(n for n in step.exchanged if n in names["states"])
    return [pointer(role, name) for kind, role in groups for name in names[kind]]
