"""The step kernels of the sequential strategy: one launch per step, weights streamed from memory.

They run a head too large for one program (``SPLIT`` programs share it) or a head whose weights
do not fit on chip (``STREAM``, SPLIT = 1). Program ``part`` owns the slice
``[part * BLOCK_d, (part + 1) * BLOCK_d)`` of every dim (all of it when the head is not split).
A step needs the whole previous state of every vector a matmul contracts, so the states go
through global memory between steps, and each matmul streams that vector and its weight rows
in ``BLOCK_K`` pieces (``sequential_stream.py``); each step is one launch (the launch boundary
is the barrier), which also runs in the interpreter, where programs run one at a time.

Backward, a matmul sends each program a cotangent over the whole contracted dim, summed over
the program's slice only; each program writes that partial sum to an exchange buffer, and at
the next (earlier) step every program adds the slices it owns from all the partial sums, in a
fixed order.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> split = render_split(analyse_source(open("examples/lstm.rnn").read()))
    >>> split.supported, split.exchanged
    (True, ['h'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnc.compiler import Plan
from rnnc.errors import BackendError
from rnnc.templates.sequential_lines import (
    BACKWARD_READS,
    FORWARD_POINTERS,
    PROLOGUE,
    load_tile,
    pointer,
    pointer_names,
    prologue,
    step_pieces,
    store_tile,
)
from rnnc.templates.sequential_step import SequentialStep
from rnnc.templates.sequential_stream import base_pointer
from rnnc.templates.sequential_tiles import dim_var

SPLIT_PROLOGUE = (
    PROLOGUE
    + "\npart = tl.program_id(2)  # which slice of every dim this program owns"
    + "\nown_exchange_row = (part * B + rows.to(tl.int64)) * NH + head  # this program's partial sums"
)

# a program's slice of dim d; the other per-dim lines are the whole-head kernel's


@dataclass(frozen=True)
class SplitKernels:
    """What the split-head step kernels need, or why a cell has none (``supported`` False).

    ``exchanged``: states whose matmul cotangents the programs exchange backward;
    ``lines``: the template's context.
    """

    supported: bool
    reason: str = ""
    backward_args: list = field(default_factory=list)
    exchanged: list = field(default_factory=list)
    lines: dict = field(default_factory=dict)
    dots: tuple = ()  # DotGradient per tl.dot, as the step kernels store them
    weight_sums: dict = field(default_factory=dict)


def render_split(plan: Plan) -> SplitKernels:
    """The split-head step kernels' template context, or ``SplitKernels(False, why)``."""
    try:
        step = SequentialStep(plan, split=True)
        contracted = step.contracted_leaves()
        pieces = step_pieces(step)
    except BackendError as exc:
        return SplitKernels(False, str(exc))
    leaves = pieces.pop("leaves")
    states = step.states()

    def state_loads(role: str, row: str) -> list[str]:
        lines = []
        for name, tile in states:
            for gate in tile.space.gates():
                lines.append(f"{tile.name(gate)} = {load_tile(step, tile, gate, pointer(role, name), row)}")
            if name in contracted:  # where each batch row's vector starts, for the streamed matmuls
                lines.append(base_pointer(step, name, pointer(role, name), row))
        return lines

    saved_stores, final_stores, seed_loads, carry_stores = [], [], [], []
    for name, tile in states:
        for gate in tile.space.gates():
            new, seed = step.new_state(name, gate), step.state_seed(name, gate)
            saved_stores.append(store_tile(step, tile.space, gate, pointer("saved_ptr", name), "saved_row", new))
            final_stores.append(store_tile(step, tile.space, gate, pointer("final_ptr", name), "state_row", new))
            seed_loads.append(f"{seed} = {load_tile(step, tile, gate, pointer('carry_in_ptr', name), 'state_row')}")
            value = leaves.get((name, gate))
            carry = value if value is not None else step.zero(tile.space)
            carry_stores.append(store_tile(step, tile.space, gate, pointer("carry_out_ptr", name), "state_row", carry))
    state_names = {name for name, _ in states}
    exchanged = sorted(n for n in step.exchanged if n in state_names)  # inputs' go straight to their gradients
    exchange_adds = []
    for name in exchanged:
        (d,) = step.tiles[name].space.dims
        tile = step.tiles[name]
        seed, exchange = step.state_seed(name, tile.space.gates()[0]), pointer("exchange_in_ptr", name)
        offsets = f"exchange_row[:, None] * {dim_var('dim', d)} + {dim_var('cols', d)}[None, :]"
        exchange_adds.append(f"{seed} += tl.load({exchange} + {offsets}, mask={step.mask(tile.space)}, other=0.0)")

    forward_args = pointer_names(step, *FORWARD_POINTERS)
    backward_args = pointer_names(
        step,
        *BACKWARD_READS,
        ("states", "carry_in_ptr"),
        ("exchanged", "exchange_in_ptr"),
        ("inputs", "grad_ptr"),
        ("weights", "grad_ptr"),
        ("states", "carry_out_ptr"),
        ("exchanged", "exchange_out_ptr"),
        ("dots", ""),
    )
    lines = dict(
        pieces,
        forward_args=forward_args,
        backward_args=backward_args,
        prologue=prologue(step, SPLIT_PROLOGUE, sliced=True),
        previous_loads=state_loads("saved_ptr", "previous"),
        initial_loads=state_loads("init_ptr", "state_row"),
        saved_stores=saved_stores,
        final_stores=final_stores,
        state_seeds=seed_loads,
        exchange_adds=exchange_adds,
        carry_stores=carry_stores,
    )
    return SplitKernels(True, "", backward_args, exchanged, lines, tuple(step.dot_gradients()), step.weight_sums())
