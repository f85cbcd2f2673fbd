"""The kind of each component, with its evidence and its pieces (see ``docs/components.md``).

Kinds: ``elementwise`` (``s' = a * s + b``), ``coupled`` (n states of one shape mixed by an
n x n map per channel), ``maxplus`` (``m' = max(m + a, b)``), ``matrix`` (a linear state with
rank-one corrections, DeltaNet-like; an elementwise matrix state that the chunked form suits
becomes ``matrix`` when the stages are formed), ``coupled-linear`` (several jointly linear states
of which one is a matrix, in none of those forms), ``dense`` (linear, but the transition mixes
entries: ``A @ m``) and ``nonlinear``.

Example:
    >>> from rnnc.compiler import lower_source
    >>> [c.kind for c in classify(lower_source(open("examples/lstm.rnn").read()))[0]]
    ['nonlinear']
"""

from __future__ import annotations

import sympy

from rnnc.compiler.canonical import canonical, expand_terms
from rnnc.compiler.components import Affine, Component, Coupled, MaxPlus
from rnnc.compiler.decompose import decompose
from rnnc.compiler.ir import IR
from rnnc.compiler.linear import LinearForm, affine_split, leaf_ranks, linear_form
from rnnc.compiler.nested import show, varying_axes
from rnnc.compiler.shapes import same_shape
from rnnc.compiler.symbols import maximum, tensor_symbol


def classify(ir: IR) -> tuple[list[Component], dict[str, LinearForm]]:
    """The components of a cell in topological order, and the linear form of each single state.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> components, forms = classify(lower_source(open("examples/gla.rnn").read()))
        >>> components[0].kind, forms["S"].structure
        ('elementwise', 'diagonal')
    """
    ranks = leaf_ranks(ir)
    shapes = {d.name: d.shape for d in ir.states}
    spans = {u.name: u.span for u in ir.updates}
    components, forms = [], {}
    for index, group in enumerate(decompose(ir)):
        span = spans[group.states[0]]
        if len(group.states) == 1:
            (state,) = group.states
            form = linear_form(group.updates[state], state, len(shapes[state]), ranks)
            forms[state] = form
            components.append(_single(index, state, form, group.updates[state], span))
        else:
            components.append(_several(index, group.states, group.updates, shapes, ranks, span))
    return components, forms


def _single(index: int, state: str, form: LinearForm, update: sympy.Expr, span) -> Component:
    if not form.affine:
        found = max_plus(update, state)
        if found is not None:
            a, b = found
            evidence = (f"{state}' = max({state} + a, b) with a = {show(a)}, b = {show(b)}: a (max, +) scan",)
            return Component(index, (state,), "maxplus", evidence, span, maxplus=MaxPlus(state, a, b))
        return Component(index, (state,), "nonlinear", (f"{state}' is not affine in {state}: {form.reason}",), span)
    if form.structure == "dense":
        return Component(index, (state,), "dense", (f"{state}' is linear, but {form.reason}",), span)
    if form.structure == "rank-one":
        lines = [f"{state}' is linear with a transition of {len(form.steps)} factor(s):"]
        for i, step in enumerate(form.steps):
            parts = [show(step.a)] + [f"({show(c)}) outer({show(u)}, {show(w)})" for c, u, w, _ in step.corrections]
            lines.append(f"  factor {i + 1}: {' + '.join(parts)} (rank-one terms on axis {form.axis})")
        return Component(index, (state,), "matrix", tuple(lines), span)
    where = f" along axis {form.axis}" if form.structure == "diagonal" else ""
    evidence = (
        f"{state}' = a * {state} + b with a = {show(form.a)}, b = {show(form.b)}; A is {form.structure}{where}",
    )
    return Component(index, (state,), "elementwise", evidence, span, affine=(Affine(state, form.a, form.b),))


def max_plus(update: sympy.Expr, state: str) -> tuple[sympy.Expr, sympy.Expr] | None:
    """``(a, b)`` when ``update`` is ``max(state + a, b)`` (``a`` and ``b`` free of the state).

    Example:
        >>> m, f, i = (tensor_symbol(n) for n in ("m", "f", "i"))
        >>> max_plus(maximum(f + m, i), "m")
        (f, i)
    """
    s = tensor_symbol(state)
    update = _where_as_max(update)
    if not isinstance(update, maximum):
        return None
    x, y = update.args
    for p, q in ((x, y), (y, x)):
        if s in q.free_symbols:
            continue
        shift = p - s
        if s not in shift.free_symbols:
            return sympy.expand(shift), q
        inner = max_plus(p, state)
        if inner is not None:
            return inner[0], maximum(inner[1], q)
    return None


def _where_as_max(expr: sympy.Expr) -> sympy.Expr:
    """``where(a > b, a, b)`` (or ``>=``, or ``b < a``) as ``max(a, b)``; anything else unchanged.

    Example:
        >>> a, b = sympy.symbols("a b")
        >>> _where_as_max(sympy.Piecewise((a, a > b), (b, True)))
        maximum(a, b)
    """
    if not isinstance(expr, sympy.Piecewise) or len(expr.args) != 2 or expr.args[1][1] != sympy.true:
        return expr
    (a, cond), (b, _) = expr.args
    if isinstance(cond, (sympy.StrictGreaterThan, sympy.GreaterThan)) and (cond.lhs, cond.rhs) == (a, b):
        return maximum(a, b)
    if isinstance(cond, (sympy.StrictLessThan, sympy.LessThan)) and (cond.lhs, cond.rhs) == (b, a):
        return maximum(a, b)
    return expr


def _several(index, states, updates, shapes, ranks, span) -> Component:
    """A component of several states: nonlinear, coupled per channel, or coupled linear."""
    names = list(states)
    parts = {}
    for s in states:
        split = affine_split(updates[s], names)
        if split[0] is None:
            return Component(
                index, tuple(states), "nonlinear", (f"{s}' is not affine in {', '.join(states)}: {split[1]}",), span
            )
        parts[s] = split
    coupled = _coupled(states, parts, shapes, ranks)
    if coupled is not None:
        rows = [
            f"  {s}' = " + " + ".join(f"({show(m)}) * {t}" for m, t in zip(row, states) if m != 0) + f" + {show(b)}"
            for s, row, b in zip(states, coupled.m, coupled.b)
        ]
        lines = (
            f"{', '.join(states)} are jointly affine, mixed per channel by a {len(states)} x {len(states)} map:",
            *rows,
        )
        return Component(index, tuple(states), "coupled", lines, span, coupled=coupled)
    reason = f"{', '.join(states)} are jointly linear, but not elementwise in each other"
    if any(len(shapes[s]) == 2 for s in states):
        lines = (f"{reason}: a block system of linear states (the chunked block form)",)
        return Component(index, tuple(states), "coupled-linear", lines, span)
    return Component(index, tuple(states), "dense", (f"{reason}; it runs step by step",), span)


def _coupled(states, parts, shapes, ranks) -> Coupled | None:
    """The n x n map per channel, when every linear term is ``coefficient * state`` elementwise."""
    shape = shapes[states[0]]
    if any(not same_shape(shapes[s], shape) for s in states):
        return None
    symbols = {tensor_symbol(s): s for s in states}
    rows, bs = [], []
    for s in states:
        b, linear = parts[s]
        row = dict.fromkeys(states, sympy.Integer(0))
        for term in expand_terms(canonical(linear, ranks)):
            held = [f for f in sympy.Mul.make_args(term) if f.free_symbols & set(symbols)]
            if len(held) != 1 or held[0] not in symbols:
                return None
            coeff = term / held[0]
            if varying_axes(coeff, ranks)[0] > len(shape):
                return None
            row[symbols[held[0]]] += coeff
        rows.append(tuple(row[t] for t in states))
        bs.append(b)
    return Coupled(tuple(states), tuple(rows), tuple(bs))
