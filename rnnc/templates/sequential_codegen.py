"""Rendering the sequential template for a Plan (LSTM, GRU, sLSTM, Elman and the like).

Covered: vector states along one or more dims, inputs and weights of shape
``[constants..., dim]`` or scalars, matmuls of a weight matrix with a vector
(``R @ h`` or ``h @ W``), splits into gates along the first axis, and any
pointwise math. One program owns a whole head; head dims too large for one
program (split across programs with a per-step exchange) are not built yet.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> module = render_sequential(analyse_source(open("examples/lstm.rnn").read()))
    >>> module.forward_args[:3], module.dims
    (['x_ptr', 'R_ptr', 'b_ptr'], ['H'])
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnc.compiler import Plan
from rnnc.templates.loading import template
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


@dataclass(frozen=True)
class SequentialModule:
    """The generated module text, its kernels' pointer arguments in order, and the dims it masks."""

    text: str
    forward_args: list
    backward_args: list
    dims: list


def _size(gates: int, dim: str | None) -> str:
    """Elements per row of a ``[gates, dim]`` tensor, as source."""
    if dim is None:
        return str(gates)
    return f"dim_{dim}" if gates == 1 else f"{gates} * dim_{dim}"


def _vector_offsets(row: str, tile: Tile, gate: int) -> str:
    """Offsets of gate ``gate`` of a [rows, gates, dim] tensor, as a [BLOCK_B, BLOCK_dim] tile."""
    gate_offset = f" + {gate} * dim_{tile.dim}" if gate else ""
    return f"{row}[:, None] * {_size(tile.gates, tile.dim)}{gate_offset} + cols_{tile.dim}[None, :]"


def _load_input(tile: Tile, gate: int, pointer: str, row: str = "row") -> str:
    if tile.kind == "row_scalar":
        return f"tl.load({pointer} + {row}[:, None], mask=mask_row, other=0.0).to(COMPUTE)"
    offsets = _vector_offsets(row, tile, gate)
    return f"tl.load({pointer} + {offsets}, mask=mask_{tile.dim}, other=0.0).to(COMPUTE)"


def _weight_offsets(tile: Tile, gate: int) -> tuple[str, str]:
    """(offsets, mask) of one gate of an on-chip weight."""
    if tile.kind == "weight_scalar":
        return "head", ""
    if tile.kind == "weight_vector":
        gate_offset = f" + {gate} * dim_{tile.dim}" if gate else ""
        return f"head * ({_size(tile.gates, tile.dim)}){gate_offset} + cols_{tile.dim}", f"in_{tile.dim}"
    x, y = tile.dim, tile.contracted  # a matrix tile is [BLOCK_y, BLOCK_x]; entry [k, j] multiplies v[k] into [j]
    per_gate = f"dim_{x} * dim_{y}"
    gate_offset = f" + {gate} * {per_gate}" if gate else ""
    if tile.transposed:  # W[..., x, y] used as W @ v: entry [k, j] is W[j, k]
        inner = f"cols_{y}[:, None] + cols_{x}[None, :] * dim_{y}"
    else:  # W[y, x] used as v @ W
        inner = f"cols_{y}[:, None] * dim_{x} + cols_{x}[None, :]"
    head_size = per_gate if tile.gates == 1 else f"{tile.gates} * {per_gate}"
    return f"head * ({head_size}){gate_offset} + {inner}", f"in_{y}[:, None] & in_{x}[None, :]"


def render_sequential(plan: Plan) -> SequentialModule:
    """The Triton module (forward and backward kernels) of a sequential cell, or a BackendError."""
    step = SequentialStep(plan)
    ir, tiles = plan.ir, step.tiles
    inputs = [(d.name, tiles[d.name]) for d in ir.inputs]
    weights = [(d.name, tiles[d.name]) for d in ir.weights]
    states = step.states()
    outputs = [r.name for r in ir.outputs]
    output_dims = {r.name: split_shape(plan, r.shape)[1] for r in ir.outputs}

    forward_args = [f"{n}_ptr" for n, _ in inputs] + [f"{n}_ptr" for n, _ in weights]
    forward_args += [f"{n}_init_ptr" for n, _ in states] + [f"{n}_out_ptr" for n in outputs]
    forward_args += [f"{n}_final_ptr" for n, _ in states] + [f"{n}_saved_ptr" for n, _ in states]
    backward_args = [f"{n}_ptr" for n, _ in inputs] + [f"{n}_ptr" for n, _ in weights]
    backward_args += [f"{n}_init_ptr" for n, _ in states] + [f"{n}_saved_ptr" for n, _ in states]
    backward_args += [f"{n}_out_grad_ptr" for n in outputs] + [f"{n}_final_grad_ptr" for n, _ in states]
    backward_args += [f"{n}_grad_ptr" for n, _ in inputs] + [f"{n}_grad_ptr" for n, _ in weights]
    backward_args += [f"{n}_init_grad_ptr" for n, _ in states]
    if len(set(forward_args)) != len(forward_args) or len(set(backward_args)) != len(backward_args):
        raise unsupported(plan, "two of its tensors' pointer names collide (rename an input, state or output)")

    weight_loads, accumulator_inits, accumulate, weight_grad_stores = [], [], [], []
    for name, tile in weights:
        for g, var in enumerate(tile.names):
            offsets, mask = _weight_offsets(tile, g)
            masked = f", mask={mask}, other=0.0" if mask else ""
            suffix = "[None, :]" if tile.kind == "weight_vector" else ""
            weight_loads.append(f"{var} = tl.load({name}_ptr + {offsets}{masked}).to(COMPUTE){suffix}")
            if tile.kind == "matrix":
                shape = f"[BLOCK_{tile.contracted}, BLOCK_{tile.dim}]"
                reduced = f"acc_{var}"
            elif tile.kind == "weight_vector":
                shape = f"[BLOCK_B, BLOCK_{tile.dim}]"
                reduced = f"tl.sum(acc_{var}, axis=0)"
            else:
                shape, reduced = "[1, 1]", f"tl.sum(tl.sum(acc_{var}, axis=1), axis=0)"
            accumulator_inits.append(f"acc_{var} = tl.zeros({shape}, dtype=COMPUTE)")
            store_mask = f", mask={mask}" if mask else ""
            weight_grad_stores.append(f"tl.atomic_add({name}_grad_ptr + {offsets}, {reduced}{store_mask})")

    state_loads, initial_loads, carry_inits, previous_loads, saved_stores = [], [], [], [], []
    state_advance, final_stores, carry_advance, initial_grad_stores = [], [], [], []
    for name, tile in states:
        var, d = tile.names[0], tile.dim
        offsets = _vector_offsets("state_row", tile, 0)
        state_loads.append(f"{var} = {_load_input(tile, 0, f'{name}_init_ptr', 'state_row')}")
        initial_loads.append(f"init_{name} = {_load_input(tile, 0, f'{name}_init_ptr', 'state_row')}")
        carry_inits.append(f"ds_{name} = {_load_input(tile, 0, f'{name}_final_grad_ptr', 'state_row')}")
        saved = _vector_offsets("row", tile, 0)
        saved_stores.append(f"tl.store({name}_saved_ptr + {saved}, {step.new_state(name)}, mask=mask_{d})")
        state_advance.append(f"{var} = {step.new_state(name)}")
        final_stores.append(f"tl.store({name}_final_ptr + {offsets}, {var}, mask=mask_{d})")
        previous = _vector_offsets("previous_row", tile, 0)
        previous_loads.append(f"{var} = tl.load({name}_saved_ptr + {previous}, mask=mask_{d}, other=0.0).to(COMPUTE)")
        previous_loads.append(f"{var} = tl.where(t > 0, {var}, init_{name})")
        initial_grad_stores.append(f"tl.store({name}_init_grad_ptr + {offsets}, ds_{name}, mask=mask_{d})")

    input_loads = [
        f"{var} = {_load_input(tile, g, f'{name}_ptr')}" for name, tile in inputs for g, var in enumerate(tile.names)
    ]
    output_stores, seed_loads = [], []
    for name in outputs:
        dim = output_dims[name]
        offsets = f"row[:, None] * dim_{dim} + cols_{dim}[None, :]"
        value = step.output_variable(name)
        output_stores.append(
            f"tl.store({name}_out_ptr + {offsets}, {value}.to({name}_out_ptr.dtype.element_ty), mask=mask_{dim})"
        )
        seed_loads.append(
            f"do_{name} = tl.load({name}_out_grad_ptr + {offsets}, mask=mask_{dim}, other=0.0).to(COMPUTE)"
        )

    backward_lines, leaves = step.backward_lines()
    input_grad_stores = []
    for name, tile in inputs:
        for g, var in enumerate(tile.names):
            value = leaves.get((name, g))
            if value is None:
                continue  # no gradient flows: the buffer starts at zero
            if tile.kind == "row_scalar":
                input_grad_stores.append(f"tl.store({name}_grad_ptr + row[:, None], {value}, mask=mask_row)")
            else:
                offsets = _vector_offsets("row", tile, g)
                input_grad_stores.append(f"tl.store({name}_grad_ptr + {offsets}, {value}, mask=mask_{tile.dim})")
    for name, tile in weights:
        for g, var in enumerate(tile.names):
            value = leaves.get((name, g))
            if tile.kind != "matrix" and value is not None:
                accumulate.append(f"acc_{var} += {value}")
    for name, tile in states:
        value = leaves.get((name, 0))
        carry_advance.append(f"ds_{name} = {value if value is not None else f'zero_{tile.dim}'}")

    prologue = "\n".join([PROLOGUE] + [DIM_PROLOGUE.format(d=d) for d in step.layout.dims])
    text = template("sequential.py.jinja").render(
        cell=ir.cell,
        key=plan.key(),
        forward_args=forward_args,
        backward_args=backward_args,
        dim_args=[f"dim_{d}" for d in step.layout.dims],
        block_args=[f"BLOCK_{d}: tl.constexpr" for d in step.layout.dims],
        prologue=prologue,
        weight_loads=weight_loads,
        state_loads=state_loads,
        input_loads=input_loads,
        atom_lines=step.atom_lines(),
        result_lines=step.result_lines(),
        output_stores=output_stores,
        saved_stores=saved_stores,
        state_advance=state_advance,
        final_stores=final_stores,
        accumulator_inits=accumulator_inits,
        initial_loads=initial_loads,
        carry_inits=carry_inits,
        previous_loads=previous_loads,
        seed_loads=seed_loads,
        backward_lines=backward_lines,
        input_grad_stores=input_grad_stores,
        accumulate=accumulate,
        carry_advance=carry_advance,
        initial_grad_stores=initial_grad_stores,
        weight_grad_stores=weight_grad_stores,
    )
    return SequentialModule(text, forward_args, backward_args, list(step.layout.dims))
