"""Matmuls of the step kernels, streamed: weights and the contracted vector read in ``BLOCK_K`` pieces.

The step kernels (one launch per step: a head split over ``SPLIT`` programs, or a whole head
with ``STREAM``) keep no weight on chip between steps. Each matmul ``W @ v`` of an on-chip-sized
tile would need all of ``W``'s rows at once; instead a loop walks the contracted dim in pieces of
``BLOCK_K``, loads that piece of ``v`` (a state or an input, in global memory) and of every
weight gate that contracts it, and accumulates ``tl.dot`` into the program's slice of the
result. Backward walks the same pieces: each piece of ``dv`` (this program's partial sum) goes
to the exchange buffer or the input's gradient.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.sequential_step import SequentialStep
    >>> step = SequentialStep(analyse_source(open("examples/elman.rnn").read()), split=True)
    >>> print(stream_forward(step)[2])
    for k0 in range(0, dim_H, BLOCK_K):
"""

from __future__ import annotations

from rnnc.templates.names import comment, derived, prefixed
from rnnc.templates.sequential_step import SequentialStep, dot
from rnnc.templates.sequential_tiles import DotWeight, dim_var


def _piece(d: str) -> list[str]:
    """The lines of one ``BLOCK_K`` piece of the contracted dim ``d``: its lanes and which exist."""
    piece, valid, mask = dim_var("piece", d), dim_var("in_piece", d), dim_var("mask_piece", d)
    return [
        f"{piece} = k0 + tl.arange(0, BLOCK_K)",
        f"{valid} = {piece} < {dim_var('dim', d)}",
        f"{mask} = batch_mask[:, None] & {valid}[None, :]",
    ]


def streamed(step: SequentialStep) -> dict[str, list[int]]:
    """The leaves the dots contract (states and inputs), each with its dot atoms, in order."""
    found: dict[str, list[int]] = {}
    for i, c in sorted(step.layout.contractions.items()):
        if c.kind == "dot":
            found.setdefault(step.ir.view(step.ir.atoms[i].args[c.operand]).atom, []).append(i)
    return found


def base_pointer(step: SequentialStep, leaf: str, pointer: str, row: str) -> str:
    """``base_<leaf> = <pointer> + <row> * dim``: where each batch row's vector starts."""
    (d,) = step.tiles[leaf].space.dims
    return f"{derived('base', user=leaf)} = {pointer} + {row} * {dim_var('dim', d)}"


def _weight_piece(w: DotWeight, gate: int) -> tuple[str, str]:
    """(offsets, mask) of rows ``piece_<contracted>`` of one gate of a dot weight, this program's columns."""
    x, y = w.result, w.contracted
    size_x, size_y, cols_x, piece = dim_var("dim", x), dim_var("dim", y), dim_var("cols", x), dim_var("piece", y)
    per_gate = f"{size_x} * {size_y}"
    gate_offset = f" + {gate} * {per_gate}" if gate else ""
    if w.transposed:  # W[..., x, y] used as W @ v: entry [k, j] is W[j, k]
        inner = f"{piece}[:, None] + {cols_x}[None, :] * {size_y}"
    else:
        inner = f"{piece}[:, None] * {size_x} + {cols_x}[None, :]"
    head_size = per_gate if len(w.names) == 1 else f"{len(w.names)} * {per_gate}"
    mask = f"{dim_var('in_piece', y)}[:, None] & {dim_var('in', x)}[None, :]"
    return f"head * ({head_size}){gate_offset} + {inner}", mask


def _gates(step: SequentialStep, index: int):
    """(result gate, weight, weight gate) of every gate of dot atom ``index``."""
    c = step.layout.contractions[index]
    tile = step.tiles[step.ir.atoms[index].name]
    out = []
    for gate in tile.space.gates():
        (jg,) = step.joint_gates(index, gate)
        ga, gb = step.operand_gates(index, jg)
        weight_gate = (gb if c.operand == 0 else ga)[: len(c.weight.gates.axes)]
        out.append((gate, c.weight, c.weight.gates.gates().index(weight_gate)))
    return out


def stream_forward(step: SequentialStep) -> list[str]:
    """Every dot of the step, accumulated over pieces of the vector it contracts."""
    lines = []
    for leaf, atoms in streamed(step).items():
        (d,) = step.tiles[leaf].space.dims
        vector, base = derived("vpiece", user=leaf), derived("base", user=leaf)
        lines.append(
            f"# the matmuls over {comment(leaf)}, streamed in pieces of {comment(d)}: weights and vector from memory"
        )
        for i in atoms:
            tile = step.tiles[step.ir.atoms[i].name]
            for gate, *_ in _gates(step, i):
                lines.append(f"{tile.name(gate)} = {step.zero(tile.space)}")
        body = _piece(d)
        mask = dim_var("mask_piece", d)
        body.append(f"{vector} = tl.load({base}[:, None] + {dim_var('piece', d)}[None, :], mask={mask}, other=0.0)")
        for i in atoms:
            tile = step.tiles[step.ir.atoms[i].name]
            for gate, w, g in _gates(step, i):
                offsets, wmask = _weight_piece(w, g)
                weight = f"tl.load({derived('ptr', user=w.weight)} + {offsets}, mask={wmask}, other=0.0).to(DOT_DTYPE)"
                label = comment(step.ir.atoms[i].name)
                body.append(f"{tile.name(gate)} += {dot(vector, weight, weight=True)}  # {label}")
        lines.append(f"for k0 in range(0, {dim_var('dim', d)}, BLOCK_K):")
        lines += [f"    {line}" for line in body]
    return lines


def stream_backward(step: SequentialStep, cotangents: dict[int, dict]) -> list[str]:
    """The pieces of every dot's ``dv`` (to the exchange buffer for a state, the gradient for an
    input), from the cotangents of the dots' results (``dW`` is the launcher's, from the stored ``dY``)."""
    lines = []
    states = {d.name for d in step.ir.states}
    for leaf, atoms in streamed(step).items():
        (d,) = step.tiles[leaf].space.dims
        body = _piece(d)
        terms = []
        for i in atoms:
            for gate, w, g in _gates(step, i):
                seed = cotangents.get(i, {}).get(gate)
                if seed is None:
                    continue
                offsets, wmask = _weight_piece(w, g)
                piece = prefixed("piece", w.names[g])
                load = f"tl.load({derived('ptr', user=w.weight)} + {offsets}, mask={wmask}, other=0.0)"
                body.append(f"{piece} = {load}.to(DOT_DTYPE)")
                terms.append(dot(seed, f"tl.trans({piece})", weight=True))
        if not terms:
            continue
        lines.append(f"# the cotangent of {comment(leaf)}, in pieces of {comment(d)}: this program's partial sums")
        body.append(f"partial = {' + '.join(terms)}")
        columns = f"{dim_var('dim', d)} + {dim_var('piece', d)}[None, :]"
        mask = dim_var("mask_piece", d)
        if leaf in states:
            body.append(
                f"tl.store({derived('exchange_out_ptr', user=leaf)} + own_exchange_row[:, None] * {columns}, "
                f"partial, mask={mask})"
            )
        else:
            body.append(
                f"tl.atomic_add({derived('grad_ptr', user=leaf)} + row[:, None] * {columns}, partial, mask={mask})"
            )
        lines.append(f"for k0 in range(0, {dim_var('dim', d)}, BLOCK_K):")
        lines += [f"    {line}" for line in body]
        step.exchanged.setdefault(leaf, []).append("partial")
    return lines
