"""Lines of the sequential kernels that every variant shares: offsets, loads, and a step's pieces.

A step's pieces (weights on chip, inputs, outputs, the recomputed atoms and the
backward pass) do not depend on where the states live between steps; the
whole-head kernels keep them in registers, the split-head step kernels in
global memory. Each renderer adds its own state lines around these.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> pieces = step_pieces(SequentialStep(analyse_source(open("examples/elman.rnn").read())))
    >>> pieces["input_loads"][0][:35]
    'x_x = tl.load(ptr_x + row[:, None] '
"""

from __future__ import annotations

from rnnc.templates.names import derived, prefixed
from rnnc.templates.sequential_backward import backward_lines, gradient_stores
from rnnc.templates.sequential_offsets import load_tile, offsets, space_mask, space_prologue, store_tile, weight_mask
from rnnc.templates.sequential_step import SequentialStep
from rnnc.templates.sequential_tiles import DotWeight, dim_var, gate_index

PROLOGUE = """pid_b = tl.program_id(0)
head = tl.program_id(1)
rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
batch_mask = rows < B
state_row = rows.to(tl.int64) * NH + head  # [B, NH] row of this program's states
lane0 = tl.arange(0, 1)  # offsets of a weight with no dims: a [1] tile"""


def dim_prologue(d: str, sliced: bool = False) -> str:
    """The lines that set up dim ``d``'s variables (``sliced``: a split head's slice of it).

    ``size_<d>`` is the dim read as a number in the cell's math, a [1] tile in COMPUTE (sqrt(H) exact
    in fp64).

    Example:
        >>> print(dim_prologue("H"))
        cols_H = tl.arange(0, TILE_H)
        in_H = cols_H < dim_H
        size_H = tl.zeros([1], dtype=COMPUTE) + dim_H
    """
    v = {role: dim_var(role, d) for role in ("dim", "TILE", "cols", "in", "size")}
    cols = f"tl.arange(0, {v['TILE']})"
    if sliced:
        cols = f"part * {v['TILE']} + {cols}  # this program's slice of {d}"
    return "\n".join(
        [
            f"{v['cols']} = {cols}",
            f"{v['in']} = {v['cols']} < {v['dim']}",
            f"{v['size']} = tl.zeros([1], dtype=COMPUTE) + {v['dim']}",
        ]
    )


def pointer(role: str, name: str) -> str:
    """The kernel argument ``role`` (``ptr``, ``init_ptr``, ``grad_ptr``...) of tensor ``name``.

    Example:
        >>> pointer("ptr", "x"), pointer("init_grad_ptr", "h")
        ('ptr_x', 'init_grad_ptr_h')
    """
    return derived(role, user=name)


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


def dot_weight_offsets(w: DotWeight, gate: int) -> tuple[str, str]:
    """(offsets, mask) of one gate of an on-chip ``[contracted, result]`` weight tile."""
    x, y = w.result, w.contracted  # entry [k, j] multiplies v[k] into [j]
    size_x, size_y, cols_x, cols_y = dim_var("dim", x), dim_var("dim", y), dim_var("cols", x), dim_var("cols", y)
    per_gate = f"{size_x} * {size_y}"
    gate_offset = f" + {gate} * {per_gate}" if gate else ""
    if w.transposed:  # W[..., x, y] used as W @ v: entry [k, j] is W[j, k]
        inner = f"{cols_y}[:, None] + {cols_x}[None, :] * {size_y}"
    else:  # W[y, x] used as v @ W
        inner = f"{cols_y}[:, None] * {size_x} + {cols_x}[None, :]"
    count = len(w.names)
    head_size = per_gate if count == 1 else f"{count} * {per_gate}"
    mask = f"{dim_var('in', y)}[:, None] & {dim_var('in', x)}[None, :]"
    return f"head * ({head_size}){gate_offset} + {inner}", mask


def _weight_pieces(step: SequentialStep, pieces: dict) -> None:
    """Loads of every weight tile; gradient accumulators and stores of the weights read pointwise (a
    dot's weight gets its gradient from the launcher, as one contraction over all steps)."""
    for w in step.layout.dot_weights if not step.split else ():  # the step kernels stream these
        for g, var in enumerate(w.names):
            offs, mask = dot_weight_offsets(w, g)
            pieces["weight_loads"].append(
                f"{var} = tl.load({pointer('ptr', w.weight)} + {offs}, mask={mask}, other=0.0).to(DOT_DTYPE)"
            )
    summed = step.weight_sums()  # the launcher sums these from stored cotangents
    for d in step.ir.weights:
        if d.name not in step.layout.pointwise_weights:
            continue
        tile = step.tiles[d.name]
        dims = tile.space.dims
        for gate in tile.space.gates():
            var = tile.name(gate)
            offs, mask = offsets(tile.space, gate, "head", batched=False), weight_mask(tile.space)
            masked = f", mask={mask}, other=0.0" if mask else ""
            lead = "[" + ", ".join(["None"] + [":"] * len(dims)) + "]" if dims else ""
            load = f"tl.load({pointer('ptr', d.name)} + {offs}{masked}).to(COMPUTE){lead}"
            pieces["weight_loads"].append(f"{var} = {load}")
            if d.name in summed:
                continue
            blocks = ", ".join(["BLOCK_B"] + [dim_var("TILE", x) for x in dims])
            acc = prefixed("acc", var)
            pieces["accumulator_inits"].append(f"{acc} = tl.zeros([{blocks}], dtype=COMPUTE)")
            reduced = f"tl.sum({acc}, axis=0{'' if dims else ', keep_dims=True'})"
            store_mask = f", mask={mask}" if mask else ""
            grad = pointer("grad_ptr", d.name)
            pieces["weight_grad_stores"].append(f"tl.atomic_add({grad} + {offs}, {reduced}{store_mask})")


def step_pieces(step: SequentialStep) -> dict[str, list[str]]:
    """The lines of a step that do not depend on where the states live: the weights, inputs and
    outputs, the recomputed atoms and the backward pass (``leaves``: the cotangent per leaf gate).

    A step kernel (``step.split``) streams the matmuls' weights and vectors (``base_<input>`` says
    where an input's rows start), and adds the gradients of scalar inputs and of contracted inputs
    atomically, since every program of a head holds a part of their sum.
    """
    ir, tiles = step.ir, step.tiles
    contracted = step.contracted_leaves() if step.split else []
    pieces: dict = {k: [] for k in ("weight_loads", "accumulator_inits", "accumulate", "weight_grad_stores")}
    pieces["input_loads"] = [
        f"{tiles[d.name].name(g)} = {load_tile(step, tiles[d.name], g, pointer('ptr', d.name))}"
        for d in ir.inputs
        for g in tiles[d.name].space.gates()
    ]
    for d in ir.inputs:
        if d.name in contracted:  # where each batch row's vector starts, for the streamed matmuls
            (dim,) = tiles[d.name].space.dims
            base = derived("base", user=d.name)
            pieces["input_loads"].append(f"{base} = {pointer('ptr', d.name)} + row * {dim_var('dim', dim)}")
    pieces["output_stores"], pieces["seed_loads"] = [], []
    for r in ir.outputs:
        space = step.result_space(r)
        for gate in space.gates():
            out = pointer("out_ptr", r.name)
            value = f"{step.output_variable(r.name, gate)}.to({out}.dtype.element_ty)"
            pieces["output_stores"].append(store_tile(step, space, gate, out, "row", value))
            seed = derived("do", user=r.name, gate=gate_index(space, gate))
            mask, grad = step.mask(space), pointer("out_grad_ptr", r.name)
            pieces["seed_loads"].append(
                f"{seed} = tl.load({grad} + {offsets(space, gate, 'row')}, mask={mask}, other=0.0).to(COMPUTE)"
            )
    pieces["atom_lines"] = step.atom_lines()
    pieces["result_lines"] = step.result_lines()
    pieces["backward_lines"], leaves = backward_lines(step)
    pieces["leaves"] = leaves
    pieces["gradient_stores"] = gradient_stores(step, leaves)
    _weight_pieces(step, pieces)
    pieces["input_grad_stores"] = []
    for d in ir.inputs:
        name, tile = d.name, tiles[d.name]
        for g in tile.space.gates():
            value = leaves.get((name, g))
            if value is None:
                continue  # no gradient flows: the buffer starts at zero
            offs, mask = offsets(tile.space, g, "row"), step.mask(tile.space)
            atomic = name in contracted or (step.split and not tile.space.dims)
            verb = "tl.atomic_add" if atomic else "tl.store"
            pieces["input_grad_stores"].append(f"{verb}({pointer('grad_ptr', name)} + {offs}, {value}, mask={mask})")
    for d in ir.weights:
        tile = tiles[d.name]
        for g in tile.space.gates():
            value = leaves.get((d.name, g))
            if value is not None and d.name not in step.weight_sums():
                pieces["accumulate"].append(f"{prefixed('acc', tile.name(g))} += {value}")
    return pieces


def pointer_names(step: SequentialStep, *groups: tuple[str, str]) -> list[str]:
    """Pointer argument names: per (kind, role), :func:`pointer` of every tensor of that kind.

    Kinds: ``inputs``, ``weights``, ``states``, ``outputs``, ``exchanged`` (the states a split step
    exchanges, known once ``step_pieces(step)`` ran) and ``dots`` (each dot's stored cotangent and
    computed operand, for its weight's gradient; the role is not used). Distinct by construction:
    tensors of one kind have distinct names, each group has its own role, and the dots' pointers
    are the template's own (``a5_cotangent_ptr``).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> step = SequentialStep(analyse_source(open("examples/elman.rnn").read()))
        >>> pointer_names(step, ("states", "init_ptr"), ("outputs", "out_ptr"))
        ['init_ptr_h', 'out_ptr_h']
    """
    ir = step.ir
    names = {kind: [t.name for t in getattr(ir, kind)] for kind in ("inputs", "weights", "states", "outputs")}
    names["exchanged"] = sorted(n for n in step.exchanged if n in names["states"])
    found = [pointer(role, name) for kind, role in groups if kind != "dots" for name in names[kind]]
    if any(kind == "dots" for kind, _ in groups):  # the stores for the dots' weight gradients
        for g in step.dot_gradients():
            found += [p for p in (g.cotangent_pointer, g.operand_pointer) if p]
    return found


# where each row's sequence starts and how long it is; steps: the longest of this program's rows
SEQUENCES = """if VARLEN:  # sequence b of the batch: rows seq_starts[b] up to seq_starts[b + 1] of the packed inputs
    bos = tl.load(seq_starts + rows, mask=batch_mask, other=0).to(tl.int64)
    length = tl.load(seq_starts + rows + 1, mask=batch_mask, other=0).to(tl.int64) - bos
    steps = tl.max(length, axis=0)
else:
    bos = rows.to(tl.int64) * T
    length = tl.zeros([BLOCK_B], dtype=tl.int64) + T
    steps = T"""


def _spaces(step: SequentialStep) -> list[tuple[str, ...]]:
    return sorted(step.spaces, key=lambda s: (len(s), s))


def masks(step: SequentialStep, rows: str) -> list[str]:
    """Every tile space's mask over batch rows ``rows`` (``batch_mask``, or ``live`` within a step)."""
    return [space_mask(step, dims, rows) for dims in _spaces(step)]


def prologue(step: SequentialStep, first: str = PROLOGUE, sliced: bool = False) -> str:
    """The kernel's opening lines: program ids and rows, then per dim its lanes (``sliced``: a split
    head's slice of it), then per tile space its mask and zeros. Render it after every other line,
    since those name the spaces they use."""
    lines = [first] + [dim_prologue(d, sliced) for d in step.layout.dims]
    for dims in _spaces(step):
        lines += space_prologue(step, dims)
    return "\n".join(lines)
