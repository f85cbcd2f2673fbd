"""The form of one state's update when it is affine in that state: its transition and input.

``s' = A(s) + b``. ``A`` is read off the canonical form (``rnnc.compiler.canonical``) term by
term: ``a * s`` (elementwise), rank-one corrections ``c * outer(u, w @ s)`` acting on the rows
(``c * outer(s @ w, u)`` on the columns), or anything else (dense). A product of such maps,
written with intermediate locals (``S1 = S + ...; S = S1 + ... k2 @ S1``), is found as
*steps*, each ``S_i = A_i S_{i-1} + B_i``; a step without a rank-one part merges into its
neighbour, so that spellings of one map give one form. ``b`` is split into outer products
``scale * outer(left, right)`` where it is separable.

Orientation is the declared one here: a correction's ``axis`` is -2 when it acts on the rows
(contracts axis 0) and -1 on the columns; writes are ``(scale, left, right)`` with ``left`` over
axis 0. Vector states have ``axis`` -1 and writes ``(scale, vector, None)``.

Example:
    >>> from rnnc.compiler import lower_source
    >>> from rnnc.compiler.decompose import decompose
    >>> ir = lower_source(open("examples/gated_deltanet.rnn").read())
    >>> form = linear_form(decompose(ir)[0].updates["S"], "S", 2, leaf_ranks(ir))
    >>> form.structure, [len(s.corrections) for s in form.steps]
    ('rank-one', [1])
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.canonical import canonical, expand_terms, in_axis_space, rank_of
from rnnc.compiler.ir import IR
from rnnc.compiler.nested import nonpolynomial_part, pull_scale, scale_terms, show, varying_axes
from rnnc.compiler.symbols import Matmul, Outer, Placed, tensor_symbol

SCALE = sympy.Symbol("eps_state_scale")


def leaf_ranks(ir: IR) -> dict[str, int]:
    """Ranks of every leaf symbol of the nested form, new values (``s'``) included.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> leaf_ranks(lower_source(open("examples/gla.rnn").read()))["S'"]
        2
    """
    ranks = {d.name: len(d.shape) for d in ir.decls}
    ranks.update({d.name + "'": len(d.shape) for d in ir.states})
    return ranks


@dataclass(frozen=True)
class Step:
    """``S_i = a * S_{i-1} + sum corrections + sum writes`` in the declared orientation."""

    a: sympy.Expr
    corrections: tuple[tuple[sympy.Expr, sympy.Expr, sympy.Expr, int], ...]  # (scale, u, w, axis)
    writes: tuple[tuple[sympy.Expr, sympy.Expr, sympy.Expr | None], ...] | None  # (scale, left, right)


@dataclass(frozen=True)
class LinearForm:
    """What :func:`linear_form` found: the affine parts, the structure of A and the steps."""

    state: str
    rank: int
    affine: bool
    a: sympy.Expr | None = None  # the elementwise coefficient (scan), when A is elementwise
    b: sympy.Expr | None = None
    structure: str = ""  # identity | scalar | diagonal | elementwise | rank-one | dense | nonlinear
    axis: int | None = None  # the diagonal's axis, or the corrections' (-2 rows, -1 columns)
    steps: tuple[Step, ...] = ()
    reason: str = ""
    blocking: sympy.Expr | None = None  # the subexpression that makes it nonlinear or dense


def affine_split(update: sympy.Expr, states: list[str]):
    """``(b, linear part)`` of ``update`` in ``states`` (old values), or ``(None, why, term)``.

    Example:
        >>> h, x = tensor_symbol("h"), tensor_symbol("x")
        >>> affine_split(2 * h + x, ["h"])
        (x, 2*h)
    """
    scaled = pull_scale(update.xreplace({tensor_symbol(s): SCALE * tensor_symbol(s) for s in states}), SCALE)
    bad = nonpolynomial_part(scaled, SCALE)
    terms = None if bad is not None else scale_terms(scaled, SCALE)
    if terms is None:
        bad = (bad if bad is not None else nonpolynomial_part(scaled, SCALE) or scaled).subs(SCALE, 1)
        used = sorted(s.name for s in bad.free_symbols if s.name in states)
        return None, f"{show(bad)} is a nonlinear function of state {', '.join(used)}", bad
    if max(terms) > 1:
        bad = sympy.Add.make_args(terms[max(terms)])[0].subs(SCALE, 1)
        return None, f"the term {show(bad)} has degree {max(terms)} in the states", bad
    return terms.get(0, sympy.Integer(0)), terms.get(1, sympy.Integer(0))


def linear_form(update: sympy.Expr, state: str, rank: int, ranks: dict[str, int]) -> LinearForm:
    """The form of one state's update (other states are known inputs here).

    Example:
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.decompose import marked_updates
        >>> ir = lower_source(open("examples/gla.rnn").read())
        >>> form = linear_form(marked_updates(ir)["S"], "S", 2, leaf_ranks(ir))
        >>> form.structure, form.axis
        ('diagonal', -2)
    """
    split = affine_split(update, [state])
    if split[0] is None:
        return LinearForm(state, rank, False, structure="nonlinear", reason=split[1], blocking=split[2])
    b, _ = split
    staged = _staged(update, state, rank, ranks)
    if staged is not None:
        steps = _merge(staged, rank, ranks)
        return _summarise(state, rank, b, steps, ranks)
    step = _direct_step(update, state, rank, ranks)
    if isinstance(step, LinearForm):
        return step
    return _summarise(state, rank, b, (step,), ranks)


def _summarise(state, rank, b, steps: tuple[Step, ...], ranks) -> LinearForm:
    corrections = [c for s in steps for c in s.corrections]
    if not corrections:
        (step,) = steps
        structure, axis = decay_structure(step.a, rank, ranks)
        return LinearForm(state, rank, True, step.a, b, structure, axis, steps)
    axes = {c[3] for c in corrections}
    if len(axes) > 1:
        return LinearForm(state, rank, True, b=b, structure="dense", reason="rank-one terms act on rows and columns")
    (axis,) = axes
    for s in steps:
        decay, decay_axis = decay_structure(s.a, rank, ranks)
        if s.a == 0:
            return LinearForm(
                state, rank, True, b=b, structure="dense", reason="a rank-one map without the identity part"
            )
        if decay == "elementwise" or (decay == "diagonal" and decay_axis != axis):
            return LinearForm(
                state,
                rank,
                True,
                b=b,
                structure="dense",
                reason=f"the decay {show(s.a)} varies along the axis the rank-one term does not contract",
            )
    return LinearForm(state, rank, True, None, b, "rank-one", axis, steps)


def decay_structure(a: sympy.Expr, rank: int, ranks) -> tuple[str, int | None]:
    """``identity``, ``scalar``, ``diagonal`` (with its axis) or ``elementwise`` for a coefficient.

    Example:
        >>> decay_structure(sympy.exp(Placed(tensor_symbol("g"), sympy.Tuple(-2))), 2, {"g": 1})
        ('diagonal', -2)
    """
    if a == 1:
        return "identity", None
    varying = varying_axes(a, ranks)[1] & set(range(-rank, 0))
    if not varying:
        return "scalar", None
    if len(varying) == 1 and (rank >= 2 or rank == 1):
        axis = next(iter(varying))
        return ("diagonal", axis) if rank >= 2 else ("elementwise", axis)
    return "elementwise", None


def _direct_step(update: sympy.Expr, state: str, rank: int, ranks) -> Step | LinearForm:
    """The single step ``a * s + corrections + writes`` read off the canonical form."""
    s = tensor_symbol(state)
    b, linear = affine_split(update, [state])
    linear = canonical(linear, ranks, (state,))
    a_terms, corrections = [], []
    for term in expand_terms(linear):
        coeff, core = _split_core(term, s)
        if core is None:
            return _dense(state, rank, b, term, f"{show(term)} is not a single linear use of {state}")
        if core == s:
            a_terms.append(coeff)
            continue
        correction = _correction(coeff, core, s, rank, ranks)
        if correction is None:
            return _dense(state, rank, b, term, f"{show(term)} mixes the entries of {state}")
        corrections.append(correction)
    writes = _writes(canonical(b, ranks), rank, ranks)
    return Step(sympy.Add(*a_terms), tuple(corrections), writes)


def _dense(state, rank, b, term, reason) -> LinearForm:
    return LinearForm(state, rank, True, b=b, structure="dense", reason=reason, blocking=term)


def _split_core(term: sympy.Expr, s: sympy.Symbol):
    """(state-free coefficient, the one factor that holds ``s``), or (term, None)."""
    coeff, core = [], None
    for factor in sympy.Mul.make_args(term):
        if s in factor.free_symbols:
            if core is not None:
                return term, None
            core = factor
        else:
            coeff.append(factor)
    return sympy.Mul(*coeff), core


def _vector_factors(coeff: sympy.Expr, axis: int, ranks) -> tuple[sympy.Expr, sympy.Expr] | None:
    """(rank-0 part, the rest as a vector along ``axis``) of a coefficient, or None."""
    scalar, vector = [], []
    for factor in sympy.Mul.make_args(coeff):
        rank, varying = varying_axes(factor, ranks)
        if rank == 0 or not varying:
            scalar.append(factor)
            continue
        v = in_axis_space(factor, axis, ranks) if varying == {axis} else None
        if v is None:
            return None
        vector.append(v)
    return sympy.Mul(*scalar), sympy.Mul(*vector)


def _correction(coeff, core, s, rank, ranks):
    """``(scale, u, w, axis)`` when ``coeff * core`` is a rank-one correction of ``s``."""
    if rank == 1:  # u (w . s) on a vector state
        if isinstance(core, Matmul) and s in core.args and rank_of(core, ranks) == 0:
            w = core.args[0] if core.args[1] == s else core.args[1]
            parts = _vector_factors(coeff, -1, ranks)
            if parts is not None and s not in w.free_symbols:
                return parts[0], parts[1], w, -1
        return None
    if rank != 2:
        return None
    if isinstance(core, Outer):  # outer(u, w @ s) on the rows, outer(s @ w, u) on the columns
        left, right = core.args
        if isinstance(right, Matmul) and right.args[1] == s and s not in left.free_symbols:
            parts = _vector_factors(coeff, -2, ranks)
            w = right.args[0]
            if parts is not None and s not in w.free_symbols:
                return parts[0], sympy.Mul(parts[1], left), w, -2
        if isinstance(left, Matmul) and left.args[0] == s and s not in right.free_symbols:
            parts = _vector_factors(coeff, -1, ranks)
            w = left.args[1]
            if parts is not None and s not in w.free_symbols:
                return parts[0], sympy.Mul(parts[1], right), w, -1
        return None
    if isinstance(core, Matmul) and core.args[1] == s and rank_of(core.args[0], ranks) == 1:
        parts = _vector_factors(coeff, -2, ranks)  # u[:, None] * (w @ s)[None, :]
        if parts is not None and s not in core.args[0].free_symbols:
            return parts[0], parts[1], core.args[0], -2
    if isinstance(core, Placed) and tuple(int(a) for a in core.args[1]) == (-2,):
        inner = core.args[0]
        if isinstance(inner, Matmul) and inner.args[0] == s and rank_of(inner.args[1], ranks) == 1:
            parts = _vector_factors(coeff, -1, ranks)  # (s @ w)[:, None] * u[None, :]
            if parts is not None and s not in inner.args[1].free_symbols:
                return parts[0], parts[1], inner.args[1], -1
    return None


def _writes(b: sympy.Expr, rank: int, ranks):
    """``b`` as ``(scale, left, right)`` outer products, or None where a term is not separable."""
    writes = []
    for term in expand_terms(b):
        if rank == 1:
            parts = _vector_factors(term, -1, ranks)
            if parts is None:
                return None
            writes.append((parts[0], parts[1], None))
            continue
        scale, left, right = [], [], []
        for factor in sympy.Mul.make_args(term):
            if isinstance(factor, Outer):
                left.append(factor.args[0])
                right.append(factor.args[1])
                continue
            r, varying = varying_axes(factor, ranks)
            if r == 0 or not varying:
                scale.append(factor)
            elif varying == {-2} and in_axis_space(factor, -2, ranks) is not None:
                left.append(in_axis_space(factor, -2, ranks))
            elif varying == {-1} and in_axis_space(factor, -1, ranks) is not None:
                right.append(in_axis_space(factor, -1, ranks))
            else:
                return None
        writes.append((sympy.Mul(*scale), sympy.Mul(*left), sympy.Mul(*right)))
    return tuple(writes)


def _staged(update: sympy.Expr, state: str, rank: int, ranks) -> tuple[Step, ...] | None:
    """Steps of a product written through intermediate values, or None when it is not one."""
    s = tensor_symbol(state)
    candidates = []
    for node in sympy.preorder_traversal(update):
        if isinstance(node, Matmul):
            for arg in node.args:
                if arg != s and s in arg.free_symbols and rank_of(arg, ranks) == rank and arg not in candidates:
                    candidates.append(arg)
    candidates.sort(key=sympy.count_ops, reverse=True)
    y = sympy.Dummy("stage", real=True)
    for x in candidates:
        rest = (update - x).xreplace({x: y}) + y
        if s in rest.free_symbols:
            continue
        inner = _staged(x, state, rank, ranks)
        if inner is None:
            inner_step = _direct_step(x, state, rank, ranks)
            if isinstance(inner_step, LinearForm):
                return None
            inner = (inner_step,)
        outer_ranks = {**ranks, y.name: rank}
        outer = _staged(rest.xreplace({y: s}), state, rank, outer_ranks)
        if outer is None:
            outer_step = _direct_step(rest.xreplace({y: s}), state, rank, ranks)
            if isinstance(outer_step, LinearForm):
                return None
            outer = (outer_step,)
        return inner + outer
    return None


def _merge(steps: tuple[Step, ...], rank: int, ranks) -> tuple[Step, ...]:
    """Merge every step without a rank-one part into a neighbour (the canonical form)."""
    steps = list(steps)
    changed = True
    while changed and len(steps) > 1:
        changed = False
        for i, step in enumerate(steps):
            if step.corrections or step.writes is None:
                continue
            if i + 1 < len(steps) and steps[i + 1].writes is not None:
                merged = _into_next(step, steps[i + 1], rank, ranks)
                if merged is not None:
                    steps[i : i + 2] = [merged]
                    changed = True
                    break
            if i > 0 and steps[i - 1].writes is not None:
                merged = _into_previous(steps[i - 1], step, rank, ranks)
                if merged is not None:
                    steps[i - 1 : i + 1] = [merged]
                    changed = True
                    break
    return tuple(steps)


def _scaled_vector(a: sympy.Expr, axis: int, rank: int, ranks) -> tuple[sympy.Expr, sympy.Expr] | None:
    """A decay ``a`` as (rank-0 factor, vector factor along ``axis``), or None."""
    return _vector_factors(a, axis if rank == 2 else -1, ranks)


def _into_next(first: Step, second: Step, rank, ranks) -> Step | None:
    """(D2 + C2)(D1 S + B1) + B2 = (D2 D1 + C2 D1) S + D2 B1 + C2 B1 + B2."""
    corrections = []
    for scale, u, w, axis in second.corrections:
        parts = _scaled_vector(first.a, axis, rank, ranks)
        if parts is None:
            return None
        corrections.append((scale * parts[0], u, canonical(w * parts[1], ranks), axis))
    decayed = _decayed_writes(first.writes, second.a, rank, ranks)
    if decayed is None:
        return None
    writes = list(decayed)
    for scale, u, w, axis in second.corrections:
        for ws, left, right in first.writes:
            key, value = (right, left) if rank == 2 and axis == -1 else (left, right)
            contracted = canonical(Matmul(w, key), ranks)
            if rank == 1:
                writes.append((scale * ws * contracted, u, None))
            elif axis == -2:
                writes.append((scale * ws * contracted, u, value))
            else:
                writes.append((scale * ws * contracted, value, u))
    writes += list(second.writes)
    return Step(second.a * first.a, tuple(corrections), tuple(writes))


def _into_previous(first: Step, second: Step, rank, ranks) -> Step | None:
    """D2 ((D1 + C1) S + B1) + B2 = (D2 D1 + D2 C1) S + D2 B1 + B2."""
    corrections = []
    for scale, u, w, axis in first.corrections:
        parts = _scaled_vector(second.a, axis, rank, ranks)
        if parts is None:
            return None
        corrections.append((scale * parts[0], u * parts[1], w, axis))
    decayed = _decayed_writes(first.writes, second.a, rank, ranks)
    if decayed is None:
        return None
    return Step(second.a * first.a, tuple(corrections), tuple(decayed) + tuple(second.writes))


def _decayed_writes(writes, a: sympy.Expr, rank: int, ranks):
    """``a * sum writes`` as writes, for a scalar or diagonal ``a``; None otherwise."""
    out = []
    for scale, left, right in writes:
        if rank == 1:
            parts = _vector_factors(a, -1, ranks)
            if parts is None:
                return None
            out.append((scale * parts[0], left * parts[1], None))
            continue
        rows, columns = _vector_factors(a, -2, ranks), _vector_factors(a, -1, ranks)
        if rows is not None:
            out.append((scale * rows[0], left * rows[1], right))
        elif columns is not None:
            out.append((scale * columns[0], left, right * columns[1]))
        else:
            return None
    return out
