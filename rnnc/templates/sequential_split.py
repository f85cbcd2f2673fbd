"""The step kernels of a sequential head split over programs (head dims too large for one program).

``SPLIT`` programs share a head: program ``part`` owns the slice
``[part * BLOCK_d, (part + 1) * BLOCK_d)`` of every dim, with its slice of every
gate of the weights (a matrix's contracted rows whole). A step needs the whole
previous state of every vector a matmul contracts, so the programs exchange
the states through global memory between steps; here each step is one launch
(the launch boundary is the barrier), which also runs in the interpreter,
where programs run one at a time.

Backward, a matmul sends each program a cotangent over the whole contracted
dim, summed over the program's slice only; each program writes that partial
sum to an exchange buffer, and at the next (earlier) step every program adds
the slices it owns from all the partial sums, in a fixed order.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> split = render_split(analyse_source(open("examples/lstm.rnn").read()))
    >>> split.supported, split.exchanged, split.full_dims
    (True, ['h'], ['H'])
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnc.compiler import Plan
from rnnc.errors import BackendError
from rnnc.templates.sequential_lines import (
    BACKWARD_READS,
    DIM_PROLOGUE,
    FORWARD_POINTERS,
    PROLOGUE,
    load_tile,
    pointer_names,
    step_pieces,
    vector_offsets,
    whole_vector,
)
from rnnc.templates.sequential_step import SequentialStep

SPLIT_PROLOGUE = PROLOGUE + "\npart = tl.program_id(2)  # which slice of every dim this program owns"

# a program's slice of dim d; the other per-dim lines are the whole-head kernel's
SLICE_PROLOGUE = DIM_PROLOGUE.replace(
    "cols_{d} = tl.arange(0, BLOCK_{d})",
    "cols_{d} = part * BLOCK_{d} + tl.arange(0, BLOCK_{d})  # this program's slice of {d}",
)

FULL_PROLOGUE = """full_{d} = tl.arange(0, FULL_{d})  # all of {d}: the states a matmul contracts
in_full_{d} = full_{d} < dim_{d}
mask_full_{d} = mask_b[:, None] & in_full_{d}[None, :]"""


@dataclass(frozen=True)
class SplitKernels:
    """What the split-head step kernels need, or why a cell has none (``supported`` False).

    ``exchanged``: states whose matmul cotangents the programs exchange backward;
    ``full_dims``: dims read whole (``FULL_<dim>`` tiles); ``lines``: the template's context.
    """

    supported: bool
    reason: str = ""
    backward_args: list = field(default_factory=list)
    exchanged: list = field(default_factory=list)
    full_dims: list = field(default_factory=list)
    lines: dict = field(default_factory=dict)


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
    full_dims = sorted({step.tiles[name].dim for name in contracted})

    def state_loads(pointer: str, row: str) -> list[str]:
        lines = []
        for name, tile in states:
            lines.append(f"{tile.names[0]} = {load_tile(tile, 0, f'{name}{pointer}', row)}")
            if name in contracted:
                lines.append(whole_vector(tile, f"{name}{pointer}", row))
        return lines

    saved_stores, final_stores, seed_loads, carry_stores, exchange_stores = [], [], [], [], []
    for name, tile in states:
        new, d = step.new_state(name), tile.dim
        saved_stores.append(
            f"tl.store({name}_saved_ptr + {vector_offsets('saved_row', tile, 0)}, {new}, mask=mask_{d})"
        )
        final_stores.append(
            f"tl.store({name}_final_ptr + {vector_offsets('state_row', tile, 0)}, {new}, mask=mask_{d})"
        )
        seed_loads.append(f"ds_{name} = {load_tile(tile, 0, f'{name}_carry_in_ptr', 'state_row')}")
        value = leaves.get((name, 0))
        carry = value if value is not None else f"zero_{d}"
        carry_stores.append(
            f"tl.store({name}_carry_out_ptr + {vector_offsets('state_row', tile, 0)}, {carry}, mask=mask_{d})"
        )
    state_names = {name for name, _ in states}
    exchanged = sorted(n for n in step.exchanged if n in state_names)  # inputs' go straight to their gradients
    exchange_adds = []
    for name in exchanged:
        d = step.tiles[name].dim
        exchange_adds.append(
            f"ds_{name} += tl.load({name}_exchange_in_ptr + exchange_row[:, None] * dim_{d} + cols_{d}[None, :], "
            f"mask=mask_{d}, other=0.0)"
        )
        partial = " + ".join(step.exchanged[name])
        exchange_stores.append(
            f"tl.store({name}_exchange_out_ptr + own_exchange_row[:, None] * dim_{d} + full_{d}[None, :], "
            f"{partial}, mask=mask_full_{d})"
        )

    forward_args = pointer_names(step, *FORWARD_POINTERS)
    backward_args = pointer_names(
        step,
        *BACKWARD_READS,
        ("states", "_carry_in_ptr"),
        ("exchanged", "_exchange_in_ptr"),
        ("inputs", "_grad_ptr"),
        ("weights", "_grad_ptr"),
        ("states", "_carry_out_ptr"),
        ("exchanged", "_exchange_out_ptr"),
    )
    prologue = [SPLIT_PROLOGUE] + [SLICE_PROLOGUE.format(d=d) for d in step.layout.dims]
    prologue += [FULL_PROLOGUE.format(d=d) for d in full_dims]
    lines = dict(
        pieces,
        forward_args=forward_args,
        backward_args=backward_args,
        full_args=[f"FULL_{d}: tl.constexpr" for d in full_dims],
        prologue="\n".join(prologue),
        previous_loads=state_loads("_saved_ptr", "previous"),
        initial_loads=state_loads("_init_ptr", "state_row"),
        saved_stores=saved_stores,
        final_stores=final_stores,
        state_seeds=seed_loads,
        exchange_adds=exchange_adds,
        carry_stores=carry_stores,
        exchange_stores=exchange_stores,
    )
    return SplitKernels(True, "", backward_args, exchanged, full_dims, lines)
