"""The lines of one backward time step of a sequential cell, as Triton source.

After the step is recomputed (``SequentialStep.atom_lines``), every sympy partial
derivative of the Plan is evaluated once (common subexpressions shared), and the
cotangents of the new states and outputs are propagated back through the
pointwise expressions and the structural atoms, in reverse order, to the step's
inputs, the weight accumulators and the previous states. Every cotangent tile is
zero in padded lanes, as every forward tile is.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> step = SequentialStep(analyse_source(open("examples/elman.rnn").read()))
    >>> lines, leaves = backward_lines(step)
    >>> leaves[("h", (0,))], [line for line in lines if line.startswith("d_a4_v")]
    ('d_s_h', ['d_a4_v = tl.dot(d_a4.to(DOT_DTYPE), tl.trans(r_R), input_precision=DOT_PRECISION)  # d R @ h'])
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.templates.names import comment, derived, prefixed
from rnnc.templates.sequential_offsets import store_tile
from rnnc.templates.sequential_step import SequentialStep, dot
from rnnc.templates.sequential_stream import stream_backward
from rnnc.templates.sequential_tiles import Space, Tile, atom_gate, dim_var, gate_index, own_name, place, unplace


@dataclass(frozen=True)
class _Term:
    """``seed * derivative`` in ``space``, to be summed back onto ``target`` through ``view_axes``."""

    seed: str
    code: str
    constant: bool
    space: Space
    view_axes: tuple[int, ...]
    target: Tile


def _derivative_entries(step: SequentialStep) -> list[tuple[tuple, str, sympy.Expr]]:
    """(key, view label, derivative at the key's gate) for every pointwise expression of the step.

    Keys: ("update", state, gate) and ("output", name, gate) for the results, ("arg", atom, arg, gate).
    """
    ir, derivatives = step.ir, step.plan.derivatives
    entries = []
    for kind, results in (("update", ir.updates), ("output", ir.outputs)):
        for r in results:
            space = step.result_space(r)
            for gate in space.gates():
                for label, d in derivatives.of(kind, r.name).wrt:
                    entries.append(((kind, r.name, gate), label, step.at_gate(d, space, gate)[0]))
    for i, atom in enumerate(ir.atoms):
        c = step.layout.contractions.get(i)
        for j in range(len(atom.args)):
            if c is not None and c.kind == "dot" and j != c.operand:
                continue  # the on-chip weight: its gradient is accumulated by tl.dot
            space = step.arg_space(i, j)
            gates = space.gates()
            if atom.op == "part":
                gates = sorted({step.part_gate(i, g) for g in step.tiles[atom.name].space.gates()})
            for gate in gates:
                for label, d in derivatives.of("arg", atom.name, j).wrt:
                    entries.append((("arg", i, j, gate), label, step.at_gate(d, space, gate)[0]))
    return [e for e in entries if e[2] != 0]


def backward_lines(step: SequentialStep) -> tuple[list[str], dict[tuple[str, tuple], str | None]]:
    """Lines that turn the seeds (``ds_<state>``, ``do_<output>``) into cotangents.

    Returns the lines and, per (leaf, gate), the variable holding that leaf's cotangent
    (reduced to the leaf's tile), or None where it is zero. Structural atoms are consumed
    here; a dot's result cotangent is kept in ``step.dot_cotangents`` (``gradient_stores`` stores it).
    """
    ir, tiles = step.ir, step.tiles
    entries = _derivative_entries(step)
    step.exchanged, step.dot_cotangents = {}, {}
    lines, reduced = step._cse([(str(k), e) for k, _, e in entries], "q")
    derivative_code: dict[tuple, list[tuple[str, str, bool]]] = {}
    named: dict[str, str] = {}  # printed derivative -> its variable
    for (key, label, _), value in zip(entries, reduced):
        code = "1" if value == 1 else step.code(value)
        if not (value.is_number or isinstance(value, sympy.Symbol)):
            if code not in named:
                named[code] = f"q_{len(named)}"
                lines.append(f"{named[code]} = {code}")
            code = named[code]
        derivative_code.setdefault(key, []).append((label, code, bool(value.is_number)))
    grads: dict[tuple[str, tuple], list[_Term]] = {}

    def propagate(key, seed: str, space: Space) -> None:
        gate = key[-1]
        for label, code, constant in derivative_code.get(key, []):
            view = ir.view(label)
            tile = tiles[view.atom]
            target = (tile.atom, atom_gate(tile.space, view.axes, space, gate))
            grads.setdefault(target, []).append(_Term(seed, code, constant, space, view.axes, tile))

    rendered: dict[str, str] = {}

    def cotangent(atom: str, gate: tuple, var: str) -> str | None:
        """Assign the sum of an atom's pending terms to ``var`` (or reuse an equal sum); None if zero."""
        terms = grads.pop((atom, gate), [])
        if not terms:
            return None
        text = " + ".join(_render_terms(terms, step))
        if text not in rendered:
            gates = len(tiles[atom].space.gates()) > 1
            lines.append(
                f"{var} = {text}  # d {comment(atom)}"
                + (f", gate {gate_index(tiles[atom].space, gate)}" if gates else "")
            )
            rendered[text] = var
        return rendered[text]

    for kind, results, seed in (("update", ir.updates, "ds"), ("output", ir.outputs, "do")):
        for r in results:
            space = step.result_space(r)
            for gate in space.gates():
                propagate((kind, r.name, gate), derived(seed, user=r.name, gate=gate_index(space, gate)), space)
    streamed: dict[int, dict] = {}
    for i in reversed(range(len(ir.atoms))):
        atom = ir.atoms[i]
        if atom.is_leaf:
            continue
        tile = tiles[atom.name]
        cotangents = {g: cotangent(atom.name, g, prefixed("d", tile.name(g))) for g in tile.space.gates()}
        cotangents = {g: d for g, d in cotangents.items() if d is not None}
        if not cotangents:
            continue
        if atom.op == "part":
            for g, d in cotangents.items():
                propagate(("arg", i, 0, step.part_gate(i, g)), d, step.arg_space(i, 0))
            continue
        if atom.op == "sum":
            args = _sum_backward(step, i, cotangents)
        elif atom.op in ("max", "min"):
            args = _extreme_backward(step, i, cotangents, lines)
        elif step.split and step.layout.contractions[i].kind == "dot":
            streamed[i] = cotangents  # streamed over the contracted vector's pieces, after the sweep
            step.dot_cotangents[i] = cotangents
            continue
        elif step.layout.contractions[i].kind == "dot":
            step.dot_cotangents[i] = cotangents
            args = _dot_backward(step, i, cotangents, lines)
        else:
            args = _generic_backward(step, i, cotangents)
        for (j, gate), terms in sorted(args.items()):
            space = step.arg_space(i, j)
            var = own_name(f"d_a{i}_arg{j}", space, gate)
            lines.append(f"{var} = {' + '.join(terms)}  # d of argument {j} of {comment(atom.name)}")
            propagate(("arg", i, j, gate), var, space)
    if streamed:
        lines += stream_backward(step, streamed)
    leaves = {}
    for atom in ir.atoms:
        if atom.is_leaf and (atom.op != "weight" or atom.name in step.layout.pointwise_weights):
            tile = tiles[atom.name]
            for g in tile.space.gates():
                leaves[(atom.name, g)] = cotangent(atom.name, g, prefixed("d", tile.name(g)))
    return lines, leaves


def _sum_backward(step: SequentialStep, index: int, cotangents: dict) -> dict:
    """A sum sends its cotangent, broadcast back over the summed axes, to every gate it added."""
    space = step.arg_space(index, 0)
    summed = step.sum_axes(index)
    n = len(space.axes)
    kept = tuple(k - n for k in range(n) if k not in summed)
    result = step.tiles[step.ir.atoms[index].name].space
    args: dict = {}
    for gate, d in cotangents.items():
        for g in step.sum_gates(index, gate):
            args.setdefault((0, g), []).append(f"tl.where({step.mask(space)}, {place(d, result, kept, space)}, 0.0)")
    return args


def _extreme_backward(step: SequentialStep, index: int, cotangents: dict, lines: list[str]) -> dict:
    """A max (min) sends its cotangent to the entries equal to the result, split evenly between ties."""
    space = step.arg_space(index, 0)
    summed = step.sum_axes(index)
    n = len(space.axes)
    kept = tuple(k - n for k in range(n) if k not in summed)
    tile = step.tiles[step.ir.atoms[index].name]
    positions = [space.position(a) for a in summed if space.axes[a].dim]
    args: dict = {}
    for gate, d in cotangents.items():
        y = place(tile.name(gate), tile.space, kept, space)
        hits = []
        for g in step.sum_gates(index, gate):
            hit = own_name(f"hit_a{index}", space, g)
            equal = f"{step.mask(space)} & ({step.arg_variable(index, 0, g)} == {y})"
            lines.append(f"{hit} = tl.where({equal}, 1.0, 0.0).to(COMPUTE)")
            hits.append(hit)
        count = []
        for hit in hits:
            code = hit
            for p in sorted(positions, reverse=True):
                code = f"tl.sum({code}, axis={1 + p})"
            count.append(code)
        total = own_name(f"count_a{index}", tile.space, gate)
        lines.append(f"{total} = tl.maximum({' + '.join(count)}, 1.0)  # entries equal to the extreme")
        share = place(f"({d} / {total})", tile.space, kept, space)
        for g, hit in zip(step.sum_gates(index, gate), hits):
            args.setdefault((0, g), []).append(f"{hit} * {share}")
    return args


def _generic_backward(step: SequentialStep, index: int, cotangents: dict) -> dict:
    """A product in the joint space sends ``dY * b`` back to ``a`` and ``dY * a`` to ``b``."""
    c = step.layout.contractions[index]
    sa, sb = step.arg_space(index, 0), step.arg_space(index, 1)
    result = step.tiles[step.ir.atoms[index].name].space
    size = len(c.joint.axes)
    result_axes = tuple(k - size for k in range(size) if k != c.k)
    args: dict = {}
    for gate, d in cotangents.items():
        seed = place(d, result, result_axes, c.joint)
        for jg in step.joint_gates(index, gate):
            ga, gb = step.operand_gates(index, jg)
            a = place(step.arg_variable(index, 0, ga), sa, c.a_axes, c.joint)
            b = place(step.arg_variable(index, 1, gb), sb, c.b_axes, c.joint)
            args.setdefault((0, ga), []).append(unplace(f"{seed} * {b}", sa, c.a_axes, c.joint))
            args.setdefault((1, gb), []).append(unplace(f"{seed} * {a}", sb, c.b_axes, c.joint))
    return args


def gradient_stores(step: SequentialStep, leaves: dict) -> list[str]:
    """Store what the launcher forms the dots' weight gradients from, and decide where each comes from.

    A dot's result cotangent ``dY`` is stored per step, unless it is an input's cotangent already
    (LSTM's gates: ``x + R @ h + b``), which the kernel stores anyway; a computed operand is stored
    too. A weight read pointwise whose cotangent is such a stored tensor (LSTM's ``b``) is summed by
    the launcher as well, instead of accumulated on chip. Fills ``step.sources``.
    """
    lines = []
    stored: dict[tuple, str] = {}  # (space, {gate: variable}) -> where the launcher finds it
    for d in step.ir.inputs:
        tile = step.tiles[d.name]
        found = {g: leaves.get((d.name, g)) for g in tile.space.gates()}
        if all(found.values()):
            stored[(tile.space, tuple(sorted(found.items())))] = f"input {d.name}"
    for i, cotangents in sorted(step.dot_cotangents.items()):
        space = step.tiles[step.ir.atoms[i].name].space
        key = (space, tuple(sorted(cotangents.items())))
        if not cotangents:
            step.sources[f"dot {i}"] = "zero"
            continue
        if key in stored:
            step.sources[f"dot {i}"] = stored[key]
        else:
            step.sources[f"dot {i}"] = "stored"
            stored[key] = f"dot {i}"
            pointer = step.dot_pointers(i)[0]
            for gate in space.gates():
                lines.append(store_tile(step, space, gate, pointer, "row", cotangents.get(gate) or step.zero(space)))
        operand = step.dot_pointers(i)[1]
        if operand is not None:
            c = step.layout.contractions[i]
            arg = step.arg_space(i, c.operand)
            for gate in arg.gates():
                lines.append(store_tile(step, arg, gate, operand, "row", step.arg_variable(i, c.operand, gate)))
    for d in step.ir.weights:
        tile = step.tiles[d.name]
        if d.name not in step.layout.pointwise_weights:
            continue
        found = {g: leaves.get((d.name, g)) for g in tile.space.gates()}
        key = (tile.space, tuple(sorted(found.items())))
        if all(found.values()) and key in stored:
            step.sources[f"weight {d.name}"] = stored[key]
    return lines


def _dot_backward(step: SequentialStep, index: int, cotangents: dict, lines: list[str]) -> dict:
    """``dv = dY W^T`` for the operand; ``dY`` (and a computed ``v``) stored for the weight's gradient."""
    c = step.layout.contractions[index]
    w = c.weight
    atom = step.ir.atoms[index]
    other, k_first = step.dot_shape(index)
    dots: dict[tuple, list[str]] = {}
    for gate, d in cotangents.items():
        (jg,) = step.joint_gates(index, gate)
        ga, gb = step.operand_gates(index, jg)
        operand_gate, weight_gate = (ga, gb) if c.operand == 0 else (gb, ga)
        weight = w.names[w.gates.gates().index(weight_gate[: len(w.gates.axes)])]
        if other is None:
            dots.setdefault(operand_gate, []).append(dot(d, f"tl.trans({weight})", weight=True))
            continue
        rows = f"BLOCK_B * {dim_var('TILE', other)}"
        d_rows = d if c.operand == 0 else f"tl.permute({d}, (0, 2, 1))"  # [X, result] order
        d2 = f"tl.reshape({d_rows}, [{rows}, {dim_var('TILE', w.result)}])"
        shape = f"[BLOCK_B, {dim_var('TILE', other)}, {dim_var('TILE', w.contracted)}]"
        back = f"tl.reshape({dot(d2, f'tl.trans({weight})', weight=True)}, {shape})"
        dots.setdefault(operand_gate, []).append(f"tl.permute({back}, (0, 2, 1))" if k_first else back)
    args: dict = {}
    for gate, terms in dots.items():
        space = step.arg_space(index, c.operand)
        var = own_name(f"d_a{index}_v", space, gate)
        lines.append(f"{var} = {' + '.join(terms)}  # d {comment(atom.name)}")
        args[(c.operand, gate)] = [var]
    return args


def _render_terms(terms: list[_Term], step: SequentialStep) -> list[str]:
    """Sum the seeds that share a derivative, mask, and reduce to the target's tile."""
    groups: dict[tuple, list[str]] = {}
    for t in terms:
        groups.setdefault((t.code, t.constant, t.space, t.view_axes, t.target.atom), []).append(t.seed)
    target = {t.target.atom: t.target for t in terms}
    out = []
    for (code, constant, space, view_axes, atom), seeds in groups.items():
        seed = seeds[0] if len(seeds) == 1 else f"({' + '.join(seeds)})"
        if code == "1":
            term = seed
        elif constant:  # seeds are zero in padded lanes already
            term = f"{seed} * {code}"
        else:  # a derivative may be inf or NaN in padded lanes, where the seed is zero
            term = f"tl.where({step.mask(space)}, {seed} * {code}, 0.0)"
        out.append(unplace(term, target[atom].space, view_axes, space))
    return out
