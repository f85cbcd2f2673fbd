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

from dataclasses import dataclass, field

from rnnc.compiler import Plan
from rnnc.templates.loading import template
from rnnc.templates.names import prefixed
from rnnc.templates.sequential_lines import (
    BACKWARD_READS,
    FORWARD_POINTERS,
    SEQUENCES,
    load_tile,
    masks,
    pointer,
    pointer_names,
    prologue,
    step_pieces,
    store_tile,
)
from rnnc.templates.sequential_offsets import rows_of
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
    row_dots: bool = False  # a tl.dot has the batch rows as its M side: BLOCK_B must be at least 16
    dots: tuple = ()  # DotGradient per tl.dot: what the launcher needs to form its weight's gradient
    # weights read pointwise whose gradient the launcher sums from a stored cotangent ("input x", "dot 5")
    weight_sums: dict = field(default_factory=dict)


def render_sequential(plan: Plan) -> SequentialModule:
    """The Triton module (forward and backward kernels) of a sequential cell, or a BackendError."""
    step = SequentialStep(plan)
    pieces = step_pieces(step)  # first: the pointers of the backward kernel depend on what it stores
    forward_args = pointer_names(step, *FORWARD_POINTERS)
    backward_args = pointer_names(
        step,
        *BACKWARD_READS,
        ("states", "final_grad_ptr"),
        ("inputs", "grad_ptr"),
        ("weights", "grad_ptr"),
        ("states", "init_grad_ptr"),
        ("dots", ""),
    )
    leaves = pieces.pop("leaves")

    state_loads, initial_loads, carry_inits, previous_loads, saved_stores = [], [], [], [], []
    state_advance, final_stores, carry_advance, initial_grad_stores = [], [], [], []
    state_holds, seed_holds, carry_holds = [], [], []  # variable-length batches: rows whose sequence has ended
    for name, tile in step.states():
        space = tile.space
        for gate in space.gates():
            var, new, seed = tile.name(gate), step.new_state(name, gate), step.state_seed(name, gate)
            init = prefixed("init", var)
            state_loads.append(f"{var} = {load_tile(step, tile, gate, pointer('init_ptr', name), 'state_row')}")
            initial_loads.append(f"{init} = {load_tile(step, tile, gate, pointer('init_ptr', name), 'state_row')}")
            carry_inits.append(f"{seed} = {load_tile(step, tile, gate, pointer('final_grad_ptr', name), 'state_row')}")
            saved_stores.append(store_tile(step, space, gate, pointer("saved_ptr", name), "row", new))
            state_advance.append(f"{var} = {new}")
            final_stores.append(store_tile(step, space, gate, pointer("final_ptr", name), "state_row", var))
            previous_loads.append(f"{var} = {load_tile(step, tile, gate, pointer('saved_ptr', name), 'previous_row')}")
            previous_loads.append(f"{var} = tl.where({rows_of(space, 'later')}, {var}, {init})")
            initial_grad_stores.append(store_tile(step, space, gate, pointer("init_grad_ptr", name), "state_row", seed))
            value = leaves.get((name, gate))
            carry = value if value is not None else step.zero(space)
            carry_advance.append(f"{seed} = {carry}")
            mask = step.mask(space)
            state_holds.append(f"{var} = tl.where({mask}, {new}, {var})")
            held = prefixed("held", seed)
            seed_holds += [f"{held} = {seed}", f"{seed} = tl.where({mask}, {seed}, 0.0)"]
            carry_holds.append(f"{seed} = tl.where({mask}, {carry}, {held})")

    split = render_split(plan)
    block_names = [dim_var("TILE", d) for d in step.layout.dims]
    text = template("sequential.py.jinja").render(
        cell=plan.ir.cell,
        key=plan.key(),
        forward_args=forward_args,
        backward_args=backward_args,
        dim_args=[dim_var("dim", d) for d in step.layout.dims],
        constexprs=[
            f"{name}: tl.constexpr" for name in ("COMPUTE", "DOT_DTYPE", "DOT_PRECISION", "BLOCK_B", *block_names)
        ],
        prologue=prologue(step),
        sequences=SEQUENCES,
        step_masks=masks(step, "live"),
        static_masks=masks(step, "batch_mask"),
        state_holds=state_holds,
        seed_holds=seed_holds,
        carry_holds=carry_holds,
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
    dots = tuple(step.dot_gradients())
    dims = list(step.layout.dims)
    return SequentialModule(
        text, forward_args, backward_args, dims, split, step.layout.row_dots, dots, step.weight_sums()
    )
