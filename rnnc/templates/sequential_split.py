"""The step kernels of a sequential head split over programs (head dims too large for one program).

``SPLIT`` programs share a head: program ``part`` owns the slice
``[part * TILE_d, (part + 1) * TILE_d)`` of every dim, with its slice of every
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
    FORWARD_POINTERS,
    PROLOGUE,
    dim_prologue,
    load_tile,
    pointer,
    pointer_names,
    step_pieces,
    vector_offsets,
    whole_offsets,
    whole_vector,
)
from rnnc.templates.sequential_step import SequentialStep
from rnnc.templates.sequential_tiles import dim_var

SPLIT_PROLOGUE = PROLOGUE + "\npart = tl.program_id(2)  # which slice of every dim this program owns"


def full_prologue(d: str) -> str:
    """The lines that set up all of dim ``d`` (the vectors a matmul contracts are read whole).

    Example:
        >>> print(full_prologue("H"))
        full_H = tl.arange(0, FULL_H)  # all of H: the states a matmul contracts
        in_full_H = full_H < dim_H
        mask_full_H = batch_mask[:, None] & in_full_H[None, :]
    """
    full, valid, mask = dim_var("full", d), dim_var("in_full", d), dim_var("mask_full", d)
    return "\n".join(
        [
            f"{full} = tl.arange(0, {dim_var('FULL', d)})  # all of {d}: the states a matmul contracts",
            f"{valid} = {full} < {dim_var('dim', d)}",
            f"{mask} = batch_mask[:, None] & {valid}[None, :]",
        ]
    )


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

    def state_loads(role: str, row: str) -> list[str]:
        lines = []
        for name, tile in states:
            lines.append(f"{tile.names[0]} = {load_tile(tile, 0, pointer(role, name), row)}")
            if name in contracted:
                lines.append(whole_vector(tile, pointer(role, name), row))
        return lines

    saved_stores, final_stores, seed_loads, carry_stores, exchange_stores = [], [], [], [], []
    for name, tile in states:
        new, mask, seed = step.new_state(name), dim_var("mask", tile.dim), step.state_seed(name)
        saved_stores.append(
            f"tl.store({pointer('saved_ptr', name)} + {vector_offsets('saved_row', tile, 0)}, {new}, mask={mask})"
        )
        final_stores.append(
            f"tl.store({pointer('final_ptr', name)} + {vector_offsets('state_row', tile, 0)}, {new}, mask={mask})"
        )
        seed_loads.append(f"{seed} = {load_tile(tile, 0, pointer('carry_in_ptr', name), 'state_row')}")
        value = leaves.get((name, 0))
        carry = value if value is not None else dim_var("zero", tile.dim)
        carry_stores.append(
            f"tl.store({pointer('carry_out_ptr', name)} + {vector_offsets('state_row', tile, 0)}, {carry}, mask={mask})"
        )
    state_names = {name for name, _ in states}
    exchanged = sorted(n for n in step.exchanged if n in state_names)  # inputs' go straight to their gradients
    exchange_adds = []
    for name in exchanged:
        d = step.tiles[name].dim
        exchange_adds.append(
            f"{step.state_seed(name)} += tl.load({pointer('exchange_in_ptr', name)} + exchange_row[:, None] * "
            f"{dim_var('dim', d)} + {dim_var('cols', d)}[None, :], mask={dim_var('mask', d)}, other=0.0)"
        )
        partial = " + ".join(step.exchanged[name])
        exchange_stores.append(
            f"tl.store({pointer('exchange_out_ptr', name)} + {whole_offsets('own_exchange_row', d)}, "
            f"{partial}, mask={dim_var('mask_full', d)})"
        )

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
    )
    prologue = [SPLIT_PROLOGUE] + [dim_prologue(d, sliced=True) for d in step.layout.dims]
    prologue += [full_prologue(d) for d in full_dims]
    lines = dict(
        pieces,
        forward_args=forward_args,
        backward_args=backward_args,
        full_args=[f"{dim_var('FULL', d)}: tl.constexpr" for d in full_dims],
        prologue="\n".join(prologue),
        previous_loads=state_loads("saved_ptr", "previous"),
        initial_loads=state_loads("init_ptr", "state_row"),
        saved_stores=saved_stores,
        final_stores=final_stores,
        state_seeds=seed_loads,
        exchange_adds=exchange_adds,
        carry_stores=carry_stores,
        exchange_stores=exchange_stores,
    )
    return SplitKernels(True, "", backward_args, exchanged, full_dims, lines)
