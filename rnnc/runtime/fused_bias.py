"""Folding state-free terms into a step's GEMM: ``x + R @ h + b`` split into gates becomes one
``addmm`` per step, instead of a GEMM and then an add per gate.

A ``weight @ state`` GEMM of the loop (or each part of its split) that every expression reads only
as ``part + s1 + s2 ...``, with the same state-free terms ``s`` each time, gets those terms as the
GEMM's bias: the prologue joins them for all steps at once (``ops.gemm_bias``), the step adds them
inside the GEMM (``gemm.per_head_gemm_add``), and the part's symbol then stands for the sum, so
the terms are struck from every expression that read them (forward and partial derivatives
alike, so both keep meaning the same values). Anything else (a part read bare, with other terms
or through another view) leaves the GEMM as it was.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.runtime.fused_codegen import fused_source
    >>> text = fused_source(analyse_source(open("examples/lstm.rnn").read()))
    >>> "gemm.per_head_gemm_add(st_h, t5_matrix, t5_bias)" in text
    True
"""

from __future__ import annotations

import sympy

from rnnc.runtime.loop_codegen import gemm_side
from rnnc.runtime.loop_writer import LOOP


def fold_gemm_biases(writer) -> None:
    """Fold what can be folded, for every GEMM of the step (see the module docstring); the biases
    are written later (:func:`emit_biases`). :func:`rnnc.runtime.fused_codegen.forward_writer` calls both.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.fused_codegen import forward_writer
        >>> writer, results = forward_writer(analyse_source(open("examples/lstm.rnn").read()))
        >>> writer.gemm_bias, len(writer.pending_biases)
        ({'R @ h': 't5_bias'}, 1)
    """
    for atom in writer.ir.atoms:
        if atom.op != "matmul" or writer.atom_phase[atom.name] != LOOP:
            continue
        phases = [writer.phase(writer.reduced[f"arg {atom.name} {i}"][0]) for i in range(2)]
        if gemm_side(atom, phases, LOOP) is not None:
            _fold(writer, atom)


def _expressions(writer):
    """(where, expression) of everything the step and the backward may read."""
    for key, (expr, _) in writer.reduced.items():
        yield ("item", key), expr
    for name, (expr, _) in writer.symbol_defs.items():
        if writer.symbol_phase[name] == LOOP:
            yield ("def", name), expr


def _pieces(writer, atom):
    """The atoms the GEMM's result is read through: its parts (one split, every part), or itself."""
    ir = writer.ir
    parts = [a for a in ir.atoms if a.op == "part" and writer.views[a.args[0].name].atom == atom.name]
    if not parts:
        return [atom], None
    splits = {(a.params[0], a.params[2], a.params[3]) for a in parts}
    if len(splits) != 1 or sorted(a.params[1] for a in parts) != list(range(parts[0].params[2])):
        return None, None
    return sorted(parts, key=lambda a: a.params[1]), splits.pop()


def _contexts(expr, name: str, found: list) -> None:
    """Append the Add each read of symbol ``name`` sits in (None where it is read otherwise)."""
    if isinstance(expr, sympy.Symbol):
        if expr.name == name:
            found.append(None)
        return
    for arg in expr.args:
        if isinstance(arg, sympy.Symbol) and arg.name == name:
            found.append(expr if isinstance(expr, sympy.Add) else None)
        elif isinstance(arg, sympy.Basic):
            _contexts(arg, name, found)


def _fold(writer, atom) -> None:
    pieces, split = _pieces(writer, atom)
    if pieces is None:
        return
    labels = {}
    for label, view in writer.views.items():
        labels.setdefault(view.atom, []).append((label, view))
    part_args = {f"arg {p.name} 0" for p in pieces} if split else set()
    if split:  # the GEMM's own result is read only through its parts
        own = {label for label, _ in labels.get(atom.name, [])}
        for (kind, key), expr in _expressions(writer):
            if (kind, key) not in {("item", k) for k in part_args} and {s.name for s in expr.free_symbols} & own:
                return
    terms = []
    for piece in pieces:
        views = labels.get(piece.name, [])
        if len(views) != 1 or tuple(views[0][1].axes) != tuple(range(-len(piece.shape), 0)):
            return
        name = views[0][0]
        found = []
        for (kind, key), expr in _expressions(writer):
            if (kind, key) not in {("item", k) for k in part_args}:
                _contexts(expr, name, found)
        sets = set()
        for add in found:
            if add is None:
                return
            sets.add(
                frozenset(
                    a for a in add.args if isinstance(a, sympy.Symbol) and a.name != name and writer.phase(a) < LOOP
                )
            )
        if len(sets) != 1 or not next(iter(sets)):
            return
        terms.append((name, next(iter(sets)), len(piece.shape)))
    _apply(writer, atom, terms, split)


def emit_biases(writer, pending) -> None:
    """Write the biases that :func:`fold_gemm_biases` promised (after the forward, when every
    state-free atom they read has its variable).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.fused_codegen import forward_writer
        >>> writer, results = forward_writer(analyse_source(open("examples/lstm.rnn").read()))
        >>> [line.strip() for line in writer.lines[1] if line.strip().startswith("t5_bias")]
        ['t5_bias = ops.gemm_bias([t5_b], tail5, None, 1, 0)  # added in R @ h']
    """
    for atom, terms, split, phase, bias in pending:
        whole = _whole_parents(writer, terms, split)
        if whole is not None:  # x[k] + b[k] for every part k: the bias is x + b, one add for all steps
            total = sympy.Add(*whole)
            var = writer.value(total, len(atom.shape), writer.phase(total), f"{writer.atom_var[atom.name]}_b")
            tail = writer.tail(atom.name, phase)
            code = f"ops.gemm_bias([{writer.use(var, phase)}], {tail}, None, 1, 0)"
            writer.emit(phase, bias, code, f"added in {atom.name}")
            continue
        values = []
        for k, (_, found, rank) in enumerate(terms):
            total = sympy.Add(*sorted(found, key=sympy.default_sort_key))
            var = writer.value(total, rank, writer.phase(total), f"{writer.atom_var[atom.name]}_b{k}")
            values.append(writer.use(var, phase))
        tail = writer.tail(atom.name, phase)
        axis, count, drop = split if split else (None, 1, 0)
        code = f"ops.gemm_bias([{', '.join(values)}], {tail}, {axis}, {count}, {drop})"
        writer.emit(phase, bias, code, f"added in {atom.name}")


def _part_views(writer, symbol) -> list | None:
    """The views of split parts that a bias term adds up (a part's view, or a state-free sum of them)."""
    view = writer.views.get(symbol.name)
    if view is not None:
        return [symbol] if writer.ir.atom(view.atom).op == "part" else None
    expr, _ = writer.symbol_defs[symbol.name]
    args = expr.args if isinstance(expr, sympy.Add) else (expr,)
    found = []
    for arg in args:
        inner = _part_views(writer, arg) if isinstance(arg, sympy.Symbol) else None
        if inner is None:
            return None
        found += inner
    return found


def _whole_parents(writer, terms, split) -> list | None:
    """When part k's bias is part k of the same tensors for every k (each split like the GEMM's
    result), the plain views of those tensors; else None."""
    if split is None:
        return None
    parents = None
    for k, (_, found, _) in enumerate(terms):
        views = []
        for symbol in found:
            more = _part_views(writer, symbol)
            if more is None:
                return None
            views += more
        atoms = [writer.ir.atom(writer.views[v.name].atom) for v in views]
        if any(a.params != (split[0], k, split[1], split[2]) for a in atoms):
            return None
        these = sorted((a.args[0] for a in atoms), key=sympy.default_sort_key)
        if parents is None:
            parents = these
        elif these != parents:
            return None
    return parents


def _apply(writer, atom, terms, split) -> None:
    phase = max(writer.phase(s) for _, found, _ in terms for s in found)
    bias = f"{writer.atom_var[atom.name]}_bias"
    writer.var_phase[bias] = phase  # the step reads it; its line comes after the forward (emit_biases)
    writer.gemm_bias[atom.name] = bias
    writer.pending_biases.append((atom, terms, split, phase, bias))
    for name, found, _ in terms:

        def reads(e, name=name):
            return isinstance(e, sympy.Add) and any(isinstance(a, sympy.Symbol) and a.name == name for a in e.args)

        def strike(e, found=found):
            return sympy.Add(*(a for a in e.args if a not in found))

        for key, (expr, rank) in list(writer.reduced.items()):
            writer.reduced[key] = (expr.replace(reads, strike), rank)
        for sym, (expr, rank) in list(writer.symbol_defs.items()):
            if writer.symbol_phase[sym] == LOOP:
                writer.symbol_defs[sym] = (expr.replace(reads, strike), rank)
