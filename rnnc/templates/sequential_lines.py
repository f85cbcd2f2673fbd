"""Lines of the sequential kernels that every variant shares: offsets, loads, and a step's pieces.

A step's pieces (weights on chip, inputs, outputs, the recomputed atoms and the
backward pass) do not depend on where the states live between steps; the
whole-head kernels keep them in registers, the split-head step kernels in
global memory. Each renderer adds its own state lines around these.

Example:
    >>> vector_offsets("row", Tile("vector", "H", 4, ["a", "b", "c", "d"]), 2)
    'row[:, None] * 4 * dim_H + 2 * dim_H + cols_H[None, :]'
"""

from __future__ import annotations

from rnnc.templates.sequential_step import SequentialStep
from rnnc.templates.sequential_tiles import Tile, split_shape, unsupported

PROLOGUE = """pid_b = tl.program_id(0)
head = tl.program_id(1)
rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
mask_b = rows < B
mask_row = mask_b[:, None]
zero_row = tl.zeros([BLOCK_B, 1], dtype=COMPUTE)
state_row = rows.to(tl.int64) * NH + head  # [B, NH] row of this program's states"""

# per dim; size_<d> is the dim read as a number in the cell's math, a [1, 1] tile in COMPUTE (sqrt(H) exact in fp64)
DIM_PROLOGUE = """cols_{d} = tl.arange(0, BLOCK_{d})
in_{d} = cols_{d} < dim_{d}
mask_{d} = mask_b[:, None] & in_{d}[None, :]
zero_{d} = tl.zeros([BLOCK_B, BLOCK_{d}], dtype=COMPUTE)
size_{d} = tl.zeros([1, 1], dtype=COMPUTE) + dim_{d}"""


# the forward kernels' pointers, whole head or split: (kind, suffix) for pointer_names
FORWARD_POINTERS = (
    ("inputs", "_ptr"),
    ("weights", "_ptr"),
    ("states", "_init_ptr"),
    ("outputs", "_out_ptr"),
    ("states", "_final_ptr"),
    ("states", "_saved_ptr"),
)

# what every backward kernel reads first: the step's operands, the saved states, the outputs' cotangents
BACKWARD_READS = (
    ("inputs", "_ptr"),
    ("weights", "_ptr"),
    ("states", "_init_ptr"),
    ("states", "_saved_ptr"),
    ("outputs", "_out_grad_ptr"),
)


def _size(gates: int, dim: str | None) -> str:
    """Elements per row of a ``[gates, dim]`` tensor, as source."""
    if dim is None:
        return str(gates)
    return f"dim_{dim}" if gates == 1 else f"{gates} * dim_{dim}"


def vector_offsets(row: str, tile: Tile, gate: int) -> str:
    """Offsets of gate ``gate`` of a [rows, gates, dim] tensor, as a [BLOCK_B, BLOCK_dim] tile."""
    gate_offset = f" + {gate} * dim_{tile.dim}" if gate else ""
    return f"{row}[:, None] * {_size(tile.gates, tile.dim)}{gate_offset} + cols_{tile.dim}[None, :]"


def load_tile(tile: Tile, gate: int, pointer: str, row: str = "row") -> str:
    if tile.kind == "row_scalar":
        return f"tl.load({pointer} + {row}[:, None], mask=mask_row, other=0.0).to(COMPUTE)"
    offsets = vector_offsets(row, tile, gate)
    return f"tl.load({pointer} + {offsets}, mask=mask_{tile.dim}, other=0.0).to(COMPUTE)"


def whole_vector(tile: Tile, pointer: str, row: str) -> str:
    """Load all of a vector along its dim (one a split head's matmul contracts) as ``full_<tile>``."""
    offsets = f"{row}[:, None] * dim_{tile.dim} + full_{tile.dim}[None, :]"
    var = tile.names[0]
    return f"full_{var} = tl.load({pointer} + {offsets}, mask=mask_full_{tile.dim}, other=0.0).to(COMPUTE)"


def weight_offsets(tile: Tile, gate: int, whole_rows: bool = False) -> tuple[str, str]:
    """(offsets, mask) of one gate of an on-chip weight.

    ``whole_rows``: a matrix's contracted dim is read whole (``full_<dim>``), as a split head needs.
    """
    if tile.kind == "weight_scalar":
        return "head", ""
    if tile.kind == "weight_vector":
        gate_offset = f" + {gate} * dim_{tile.dim}" if gate else ""
        return f"head * ({_size(tile.gates, tile.dim)}){gate_offset} + cols_{tile.dim}", f"in_{tile.dim}"
    x, y = tile.dim, tile.contracted  # a matrix tile is [BLOCK_y, BLOCK_x]; entry [k, j] multiplies v[k] into [j]
    k = f"full_{y}" if whole_rows else f"cols_{y}"
    per_gate = f"dim_{x} * dim_{y}"
    gate_offset = f" + {gate} * {per_gate}" if gate else ""
    if tile.transposed:  # W[..., x, y] used as W @ v: entry [k, j] is W[j, k]
        inner = f"{k}[:, None] + cols_{x}[None, :] * dim_{y}"
    else:  # W[y, x] used as v @ W
        inner = f"{k}[:, None] * dim_{x} + cols_{x}[None, :]"
    head_size = per_gate if tile.gates == 1 else f"{tile.gates} * {per_gate}"
    k_mask = f"in_full_{y}" if whole_rows else f"in_{y}"
    return f"head * ({head_size}){gate_offset} + {inner}", f"{k_mask}[:, None] & in_{x}[None, :]"


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
            pieces["weight_loads"].append(f"{var} = tl.load({name}_ptr + {offsets}{masked}).to(COMPUTE){suffix}")
            if tile.kind == "matrix":
                k = f"FULL_{tile.contracted}" if step.split else f"BLOCK_{tile.contracted}"
                shape, reduced = f"[{k}, BLOCK_{tile.dim}]", f"acc_{var}"
            elif tile.kind == "weight_vector":
                shape, reduced = f"[BLOCK_B, BLOCK_{tile.dim}]", f"tl.sum(acc_{var}, axis=0)"
            else:
                shape, reduced = "[1, 1]", f"tl.sum(tl.sum(acc_{var}, axis=1), axis=0)"
            pieces["accumulator_inits"].append(f"acc_{var} = tl.zeros({shape}, dtype=COMPUTE)")
            store_mask = f", mask={mask}" if mask else ""
            pieces["weight_grad_stores"].append(f"tl.atomic_add({name}_grad_ptr + {offsets}, {reduced}{store_mask})")

    pieces["input_loads"] = [
        f"{var} = {load_tile(tiles[d.name], g, f'{d.name}_ptr')}"
        for d in ir.inputs
        for g, var in enumerate(tiles[d.name].names)
    ]
    for d in ir.inputs:
        if d.name in contracted:
            pieces["input_loads"].append(whole_vector(tiles[d.name], f"{d.name}_ptr", "row"))
    pieces["output_stores"], pieces["seed_loads"] = [], []
    for r in ir.outputs:
        dim = split_shape(step.plan, r.shape)[1]
        offsets = f"row[:, None] * dim_{dim} + cols_{dim}[None, :]"
        value = step.output_variable(r.name)
        pieces["output_stores"].append(
            f"tl.store({r.name}_out_ptr + {offsets}, {value}.to({r.name}_out_ptr.dtype.element_ty), mask=mask_{dim})"
        )
        pieces["seed_loads"].append(
            f"do_{r.name} = tl.load({r.name}_out_grad_ptr + {offsets}, mask=mask_{dim}, other=0.0).to(COMPUTE)"
        )
    pieces["atom_lines"] = step.atom_lines()
    pieces["result_lines"] = step.result_lines()
    pieces["backward_lines"], leaves = step.backward_lines()
    pieces["leaves"] = leaves
    pieces["input_grad_stores"] = []
    for d in ir.inputs:
        name, tile = d.name, tiles[d.name]
        for g, var in enumerate(tile.names):
            value = leaves.get((name, g))
            if value is None:
                continue  # no gradient flows: the buffer starts at zero
            if tile.kind == "row_scalar" and step.split:
                line = f"tl.atomic_add({name}_grad_ptr + row[:, None], {value}, mask=mask_row)"
            elif name in contracted:
                offsets = vector_offsets("row", tile, g)
                line = f"tl.atomic_add({name}_grad_ptr + {offsets}, {value}, mask=mask_{tile.dim})"
            elif tile.kind == "row_scalar":
                line = f"tl.store({name}_grad_ptr + row[:, None], {value}, mask=mask_row)"
            else:
                line = f"tl.store({name}_grad_ptr + {vector_offsets('row', tile, g)}, {value}, mask=mask_{tile.dim})"
            pieces["input_grad_stores"].append(line)
        for partial in step.exchanged.get(name, []):  # a matmul's part, summed over this program's slice
            offsets = f"row[:, None] * dim_{tile.dim} + full_{tile.dim}[None, :]"
            pieces["input_grad_stores"].append(
                f"tl.atomic_add({name}_grad_ptr + {offsets}, {partial}, mask=mask_full_{tile.dim})"
            )
    for d in ir.weights:
        for g, var in enumerate(tiles[d.name].names):
            value = leaves.get((d.name, g))
            if tiles[d.name].kind != "matrix" and value is not None:
                pieces["accumulate"].append(f"acc_{var} += {value}")
    return pieces


def pointer_names(step: SequentialStep, *groups: tuple[str, str]) -> list[str]:
    """Pointer argument names: per (kind, suffix), ``<name><suffix>`` for every tensor of that kind.

    Kinds: ``inputs``, ``weights``, ``states``, ``outputs``, and ``exchanged`` (the states a split
    step exchanges, known once ``step.backward_lines()`` ran).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> step = SequentialStep(analyse_source(open("examples/elman.rnn").read()))
        >>> pointer_names(step, ("states", "_init_ptr"), ("outputs", "_out_ptr"))
        ['h_init_ptr', 'h_out_ptr']
    """
    ir = step.ir
    names = {kind: [t.name for t in getattr(ir, kind)] for kind in ("inputs", "weights", "states", "outputs")}
    names["exchanged"] = sorted(n for n in step.exchanged if n in names["states"])
    found = [f"{name}{suffix}" for kind, suffix in groups for name in names[kind]]
    if len(set(found)) != len(found):
        raise unsupported(step.plan, "two of its tensors' pointer names collide (rename an input, state or output)")
    return found
