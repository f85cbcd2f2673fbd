"""Rendering the sequential template for a Plan (LSTM, GRU, sLSTM, Elman and the like).

Covered: vector states along one or more dims, inputs and weights of shape
``[constants..., dim]`` or scalars, matmuls of a weight matrix with a vector
(``R @ h`` or ``h @ W``), splits into gates along the first axis, and any
pointwise math. One program owns a whole head; for head dims too large for one
program the module also holds the step kernels of a head split across programs
(``sequential_split.py``).

Example:
    >>> from rnnc.compiler import analyse_source
    >>> module = render_sequential(analyse_source(open("examples/lstm.rnn").read()))
    >>> module.forward_args[:3], module.dims
    (['ptr_x', 'ptr_R', 'ptr_b'], ['H'])
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnc.compiler import Plan
from rnnc.templates.loading import template
from rnnc.templates.names import derived
from rnnc.templates.sequential_lines import (
    BACKWARD_READS,
    FORWARD_POINTERS,
    PROLOGUE,
    dim_prologue,
    load_tile,
    pointer,
    pointer_names,
    step_pieces,
    vector_offsets,
)
from rnnc.templates.sequential_split import SplitKernels, render_split
from rnnc.templates.sequential_step import SequentialStep
from rnnc.templates.sequential_tiles import dim_var


@dataclass(frozen=True)
class SequentialModule:
    """The generated module text, its kernels' pointer arguments in order, and the dims it masks."""

    text: str
    forward_args: list
    backward_args: list
    dims: list
    split: SplitKernels  # the step kernels of a head split over programs, or why there are none


def render_sequential(plan: Plan) -> SequentialModule:
    """The Triton module (forward and backward kernels) of a sequential cell, or a BackendError."""
    step = SequentialStep(plan)
    states = step.states()
    forward_args = pointer_names(step, *FORWARD_POINTERS)
    backward_args = pointer_names(
        step,
        *BACKWARD_READS,
        ("states", "final_grad_ptr"),
        ("inputs", "grad_ptr"),
        ("weights", "grad_ptr"),
        ("states", "init_grad_ptr"),
    )
    pieces = step_pieces(step)
    leaves = pieces.pop("leaves")

    state_loads, initial_loads, carry_inits, previous_loads, saved_stores = [], [], [], [], []
    state_advance, final_stores, carry_advance, initial_grad_stores = [], [], [], []
    for name, tile in states:
        var, mask = tile.names[0], dim_var("mask", tile.dim)
        new, seed, init = step.new_state(name), step.state_seed(name), derived("init", user=name)
        offsets = vector_offsets("state_row", tile, 0)
        state_loads.append(f"{var} = {load_tile(tile, 0, pointer('init_ptr', name), 'state_row')}")
        initial_loads.append(f"{init} = {load_tile(tile, 0, pointer('init_ptr', name), 'state_row')}")
        carry_inits.append(f"{seed} = {load_tile(tile, 0, pointer('final_grad_ptr', name), 'state_row')}")
        saved = vector_offsets("row", tile, 0)
        saved_stores.append(f"tl.store({pointer('saved_ptr', name)} + {saved}, {new}, mask={mask})")
        state_advance.append(f"{var} = {new}")
        final_stores.append(f"tl.store({pointer('final_ptr', name)} + {offsets}, {var}, mask={mask})")
        previous = vector_offsets("previous_row", tile, 0)
        saved_ptr = pointer("saved_ptr", name)
        previous_loads.append(f"{var} = tl.load({saved_ptr} + {previous}, mask={mask}, other=0.0).to(COMPUTE)")
        previous_loads.append(f"{var} = tl.where(t > 0, {var}, {init})")
        initial_grad_stores.append(f"tl.store({pointer('init_grad_ptr', name)} + {offsets}, {seed}, mask={mask})")
        value = leaves.get((name, 0))
        carry_advance.append(f"{seed} = {value if value is not None else dim_var('zero', tile.dim)}")

    prologue = "\n".join([PROLOGUE] + [dim_prologue(d) for d in step.layout.dims])
    split = render_split(plan)
    text = template("sequential.py.jinja").render(
        cell=plan.ir.cell,
        key=plan.key(),
        forward_args=forward_args,
        backward_args=backward_args,
        dim_args=[dim_var("dim", d) for d in step.layout.dims],
        block_args=[f"{dim_var('TILE', d)}: tl.constexpr" for d in step.layout.dims],
        prologue=prologue,
        state_loads=state_loads,
        saved_stores=saved_stores,
        state_advance=state_advance,
        final_stores=final_stores,
        initial_loads=initial_loads,
        carry_inits=carry_inits,
        previous_loads=previous_loads,
        carry_advance=carry_advance,
        initial_grad_stores=initial_grad_stores,
        split=split.lines if split.supported else None,
        **pieces,
    )
    return SequentialModule(text, forward_args, backward_args, list(step.layout.dims), split)
