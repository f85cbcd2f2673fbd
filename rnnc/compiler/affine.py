"""Affine analysis: is each state update affine in the states, and how is ``A`` built?

For every state ``s`` the update is written ``s' = A(x) s + B(x)`` when it is
affine in the states jointly; the structure of ``A`` is one of ``identity``,
``scalar``, ``diagonal`` (along one axis of a matrix state), ``elementwise``,
``identity-minus-rank-one`` (``a (I - beta u w^T)``), ``dense`` or ``coupled``
(the update reads another state linearly).

Example:
    >>> from rnnc.compiler import lower_source
    >>> ir = lower_source(open("examples/gla.rnn").read())
    >>> t = analyse_states(ir)[0]
    >>> t.structure, t.axis, t.show_a()
    ('diagonal', -2, 'exp(g[:,None])')
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.ir import IR
from rnnc.compiler.nested import nest, nonpolynomial_part, pull_scale, scale_terms, show, varying_axes
from rnnc.compiler.symbols import Matmul, Outer, tensor_symbol

SCALE = sympy.Symbol("eps_state_scale")


@dataclass(frozen=True)
class Transition:
    """What the analysis found about one state's update.

    ``update`` is the update in previous states, inputs and weights (nested form).
    When affine: ``a`` is the elementwise coefficient, ``b`` the state-free part,
    and for identity-minus-rank-one, ``beta``, ``u``, ``w`` with A = a (I - beta u w^T).
    When not affine: ``nonlinear_term`` is the smallest offending subexpression.
    """

    state: str
    rank: int
    update: sympy.Expr
    affine: bool
    structure: str = ""
    axis: int | None = None
    a: sympy.Expr | None = None
    b: sympy.Expr | None = None
    linear: sympy.Expr | None = None
    beta: sympy.Expr | None = None
    u: sympy.Expr | None = None
    w: sympy.Expr | None = None
    nonlinear_term: sympy.Expr | None = None
    reason: str = ""
    decay: str = ""

    def show_a(self) -> str:
        """``a`` in the language's notation."""
        return show(self.a) if self.a is not None else ""

    def describe(self) -> str:
        """One line: the affine form and the structure of A, or why it is not affine.

        Example:
            >>> from rnnc.compiler import lower_source
            >>> ir = lower_source(open("examples/hgrn.rnn").read())
            >>> analyse_states(ir)[0].describe()
            "h' = a * h + b with a = exp(g), b = x; A is elementwise"
        """
        s = self.state
        if not self.affine:
            return f"{s}' is not affine in the states: {self.reason}"
        if self.structure == "identity-minus-rank-one":
            return (
                f"{s}' = a * ({s} - beta * outer({show(self.u)}, {show(self.w)} @ {s})) + b with "
                f"a = {show(self.a)}, beta = {show(self.beta)}, b = {show(self.b)}; "
                f"A is identity minus rank one (decay {self.decay_structure()})"
            )
        if self.structure in ("dense", "coupled"):
            return (
                f"{s}' = A({s}) + b with A({s}) = {show(self.linear)}, b = {show(self.b)}; "
                f"A is {self.structure}: {self.reason}"
            )
        where = f" along axis {self.axis}" if self.structure == "diagonal" else ""
        return f"{s}' = a * {s} + b with a = {show(self.a)}, b = {show(self.b)}; A is {self.structure}{where}"

    def decay_structure(self) -> str:
        """The structure of the elementwise factor ``a`` of identity-minus-rank-one."""
        return self.decay


def analyse_states(ir: IR) -> list[Transition]:
    """The :class:`Transition` of every state, in declaration order.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> ir = lower_source(open("examples/lstm.rnn").read())
        >>> [t.affine for t in analyse_states(ir)]
        [False, False]
    """
    ranks = {a.name: len(a.shape) for a in ir.atoms if a.is_leaf}
    states = {d.name for d in ir.states}
    out = []
    for decl in ir.states:
        update = nest(ir, ir.update(decl.name).expr)
        scaled = pull_scale(nest(ir, ir.update(decl.name).expr, scale_states=SCALE), SCALE)
        out.append(_classify(decl.name, len(decl.shape), update, scaled, states, ranks))
    return out


def _classify(state, rank, update, scaled, states, ranks) -> Transition:
    bad = nonpolynomial_part(scaled, SCALE)  # a cheap walk first: no expansion of big updates
    terms = None if bad is not None else scale_terms(scaled, SCALE)
    if terms is None:
        bad = (bad if bad is not None else nonpolynomial_part(scaled, SCALE) or scaled).subs(SCALE, 1)
        used = sorted(s.name for s in bad.free_symbols if s.name in states)
        reason = f"{show(bad)} is a nonlinear function of state {', '.join(used)}"
        return Transition(state, rank, update, False, nonlinear_term=bad, reason=reason)
    if max(terms) > 1:
        top = max(terms)
        bad = sympy.Add.make_args(terms[top])[0]
        reason = f"the term {show(bad)} has degree {top} in the states"
        return Transition(state, rank, update, False, nonlinear_term=bad, reason=reason)
    b = terms.get(0, sympy.Integer(0))
    linear = sympy.expand(terms.get(1, sympy.Integer(0)))
    me = tensor_symbol(state)
    elementwise: list[sympy.Expr] = []
    rank_one: list[tuple[sympy.Expr, sympy.Expr, sympy.Expr]] = []
    for term in sympy.Add.make_args(linear):
        if term == 0:
            continue
        coeff, core = _split_core(term, states)
        if core is None:
            return _dense(
                state, rank, update, b, "coupled", f"{show(term)} is not a single linear use of a state", linear
            )
        others = sorted(s.name for s in core.free_symbols if s.name in states and s.name != state)
        if others:
            return _dense(state, rank, update, b, "coupled", f"{show(term)} reads state {', '.join(others)}", linear)
        if core == me:
            elementwise.append(coeff)
            continue
        parsed = _rank_one(core, me, ranks)
        if parsed is not None and not varying_axes(coeff, ranks)[1]:
            factor, u, w = parsed
            rank_one.append((coeff * factor, u, w))
            continue
        return _dense(state, rank, update, b, "dense", f"{show(term)} mixes the entries of {state}", linear)
    a = sympy.Add(*elementwise)
    if not rank_one:
        structure, axis = _elementwise_structure(a, rank, ranks)
        return Transition(state, rank, update, True, structure, axis, a=a, b=b, linear=linear)
    if len(rank_one) > 1 and len({(u, w) for _, u, w in rank_one}) > 1:
        return _dense(state, rank, update, b, "dense", "more than one rank-one correction", linear)
    c = sympy.Add(*(c for c, _, _ in rank_one))
    _, u, w = rank_one[0]
    if a == 0:
        return _dense(state, rank, update, b, "dense", "a rank-one map without the identity part", linear)
    beta = sympy.simplify(-c / a)
    decay = _elementwise_structure(a, rank, ranks)[0]
    return Transition(
        state,
        rank,
        update,
        True,
        "identity-minus-rank-one",
        a=a,
        b=b,
        linear=linear,
        beta=beta,
        u=u,
        w=w,
        decay=decay,
    )


def _dense(state, rank, update, b, structure, reason, linear=None) -> Transition:
    return Transition(state, rank, update, True, structure, b=b, linear=linear, reason=reason)


def _split_core(term: sympy.Expr, states: set[str]):
    """(state-free coefficient, the one factor that holds a state), or (term, None)."""
    coeff, core = sympy.Integer(1), None
    for factor in sympy.Mul.make_args(term):
        if any(s.name in states for s in factor.free_symbols):
            if core is not None:
                return term, None
            core = factor
        else:
            coeff = coeff * factor
    return coeff, core


def _rank_one(core: sympy.Expr, me: sympy.Symbol, ranks):
    """``factor, u, w`` when ``core`` is ``outer(u, factor * (w @ me))`` with scalar factor."""
    if not isinstance(core, Outer):
        return None
    u, right = core.args
    if me in u.free_symbols:
        return None
    factor, read = _split_core(right, {me.name})
    if read is None or not isinstance(read, Matmul) or read.args[1] != me:
        return None
    w = read.args[0]
    if me in w.free_symbols or varying_axes(factor, ranks)[1]:
        return None
    if varying_axes(u, ranks)[0] != 1 or varying_axes(w, ranks)[0] != 1:
        return None
    return factor, u, w


def _elementwise_structure(a: sympy.Expr, rank: int, ranks) -> tuple[str, int | None]:
    if a == 1:
        return "identity", None
    varying = varying_axes(a, ranks)[1] & set(range(-rank, 0))
    if not varying:
        return "scalar", None
    if rank >= 2 and len(varying) == 1:
        return "diagonal", next(iter(varying))
    return "elementwise", None
