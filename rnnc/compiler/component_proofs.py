"""Symbolic proofs, per component, that its steps combine associatively (what a parallel form needs).

Each proof is built from the cell's own update at fresh time steps (inputs, and the values of
earlier components' states, renamed per step; weights stay):

* ``elementwise``: ``combine((a1, b1), (a2, b2)) = (a1 a2, a2 b1 + b2)``;
* ``maxplus``: ``combine((a1, b1), (a2, b2)) = (a1 + a2, max(b1 + a2, b2))``, checked on a normal
  form of nested maxima (``max(x, y) + c = max(x + c, y + c)``);
* ``coupled``: ``combine((M1, b1), (M2, b2)) = (M2 M1, M2 b1 + b2)`` with sympy matrices;
* ``matrix``: the factors as noncommutative operators (``S -> sum l S r + B``).

Each checks that running the update at step 1 then step 2 equals combine(step 1, step 2), and
that combine is associative on three steps.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> plan = analyse_source(open("examples/hgrn.rnn").read())
    >>> plan.proof.holds, plan.proof.lines[0]
    (True, 'h: elementwise, combine((a1, b1), (a2, b2)) = (a1*a2, a2*b1 + b2)')
"""

from __future__ import annotations

import sympy

from rnnc.compiler.components import Component
from rnnc.compiler.decompose import decompose
from rnnc.compiler.ir import IR
from rnnc.compiler.proof import Proof, _apply, _combine, _vanishes
from rnnc.compiler.symbols import maximum, tensor_symbol


def prove_components(ir: IR, components: list[Component]) -> Proof:
    """The proofs of every component that a parallel form runs (nonlinear ones have none).

    Example:
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.classify import classify
        >>> ir = lower_source(open("examples/mingru.rnn").read())
        >>> prove_components(ir, classify(ir)[0]).holds
        True
    """
    updates = {s: u for g in decompose(ir) for s, u in g.updates.items()}
    known = _per_step_names(ir)
    lines: list[str] = []
    holds = True
    for c in components:
        if c.kind == "elementwise":
            ok = _elementwise(c, updates, known, lines)
        elif c.kind == "maxplus":
            ok = _maxplus(c, updates, known, lines)
        elif c.kind == "coupled":
            ok = _coupled(c, updates, known, lines)
        elif c.kind == "matrix":
            ok = _matrix(c, lines)
        else:
            continue
        holds = holds and ok
    lines.append("elementwise parts hold at a generic entry, so for every size of every dim")
    return Proof(holds, tuple(lines))


def _per_step_names(ir: IR) -> set[str]:
    names = {d.name for d in ir.inputs} | {d.name for d in ir.states} | {d.name + "'" for d in ir.states}
    return names


def _at(expr: sympy.Expr, k: int, known: set[str], own: set[str]) -> sympy.Expr:
    """``expr`` at time step ``k``: every per-step value but the component's own states renamed."""
    table = {s: tensor_symbol(f"{s.name}_{k}") for s in expr.free_symbols if s.name in known and s.name not in own}
    return expr.xreplace(table)


def _verdict(ok: bool) -> str:
    return "verified" if ok else "FAILED"


def _elementwise(c: Component, updates, known, lines) -> bool:
    holds = True
    for piece in c.affine:
        s = tensor_symbol(piece.state)
        own = {piece.state}
        steps = [(_at(piece.a, k, known, own), _at(piece.b, k, known, own)) for k in (1, 2, 3)]
        update = [_at(updates[piece.state], k, known, own) for k in (1, 2)]
        twice = update[1].xreplace({s: update[0]})
        a12, b12 = steps[0][0] * steps[1][0], steps[1][0] * steps[0][1] + steps[1][1]
        composes = _vanishes(twice - (a12 * s + b12))

        def combine(p, q):
            return p[0] * q[0], q[0] * p[1] + q[1]

        left, right = combine(combine(steps[0], steps[1]), steps[2]), combine(steps[0], combine(steps[1], steps[2]))
        associative = _vanishes(left[0] - right[0]) and _vanishes(left[1] - right[1])
        lines.append(f"{piece.state}: elementwise, combine((a1, b1), (a2, b2)) = (a1*a2, a2*b1 + b2)")
        lines.append(
            f"{piece.state}: the update at t = 1 then t = 2 equals combine(step 1, step 2): {_verdict(composes)}"
        )
        lines.append(f"{piece.state}: combine is associative on three steps: {_verdict(associative)}")
        holds = holds and composes and associative
    return holds


def _max_normal(expr: sympy.Expr) -> frozenset:
    """The arguments of a nest of maxima with additive shifts pushed inside."""
    if isinstance(expr, maximum):
        return _max_normal(expr.args[0]) | _max_normal(expr.args[1])
    if isinstance(expr, sympy.Add):
        maxima = [t for t in expr.args if isinstance(t, maximum)]
        if len(maxima) == 1:
            shift = expr - maxima[0]
            return frozenset(sympy.expand(t + shift) for t in _max_normal(maxima[0]))
    return frozenset({sympy.expand(expr)})


def _maxplus(c: Component, updates, known, lines) -> bool:
    piece = c.maxplus
    s, own = tensor_symbol(piece.state), {piece.state}
    steps = [(_at(piece.a, k, known, own), _at(piece.b, k, known, own)) for k in (1, 2, 3)]
    update = [_at(updates[piece.state], k, known, own) for k in (1, 2)]

    def combine(p, q):
        return p[0] + q[0], maximum(p[1] + q[0], q[1])

    def run(p, x):
        return maximum(x + p[0], p[1])

    twice = update[1].xreplace({s: update[0]})
    composes = _max_normal(twice) == _max_normal(run(combine(steps[0], steps[1]), s))
    left, right = combine(combine(steps[0], steps[1]), steps[2]), combine(steps[0], combine(steps[1], steps[2]))
    associative = _vanishes(left[0] - right[0]) and _max_normal(left[1]) == _max_normal(right[1])
    lines.append(f"{piece.state}: max-plus, combine((a1, b1), (a2, b2)) = (a1 + a2, max(b1 + a2, b2))")
    lines.append(f"{piece.state}: the update at t = 1 then t = 2 equals combine(step 1, step 2): {_verdict(composes)}")
    lines.append(f"{piece.state}: combine is associative on three steps: {_verdict(associative)}")
    return composes and associative


def _coupled(c: Component, updates, known, lines) -> bool:
    piece = c.coupled
    own = set(piece.states)
    symbols = sympy.Matrix([tensor_symbol(s) for s in piece.states])

    def step(k):
        m = sympy.Matrix([[_at(e, k, known, own) for e in row] for row in piece.m])
        return m, sympy.Matrix([_at(b, k, known, own) for b in piece.b])

    def combine(p, q):
        return q[0] * p[0], q[0] * p[1] + q[1]

    steps = [step(k) for k in (1, 2, 3)]
    first = {tensor_symbol(s): _at(updates[s], 1, known, own) for s in piece.states}
    twice = sympy.Matrix([_at(updates[s], 2, known, own).xreplace(first) for s in piece.states])
    m12, b12 = combine(steps[0], steps[1])
    composes = all(_vanishes(e) for e in twice - (m12 * symbols + b12))
    left, right = combine(combine(steps[0], steps[1]), steps[2]), combine(steps[0], combine(steps[1], steps[2]))
    associative = all(_vanishes(e) for e in (left[0] - right[0])) and all(_vanishes(e) for e in (left[1] - right[1]))
    names = ", ".join(piece.states)
    lines.append(f"{names}: coupled, combine((M1, b1), (M2, b2)) = (M2 M1, M2 b1 + b2) per channel")
    lines.append(f"{names}: the update at t = 1 then t = 2 equals combine(step 1, step 2): {_verdict(composes)}")
    lines.append(f"{names}: combine is associative on three steps: {_verdict(associative)}")
    return composes and associative


def _matrix(c: Component, lines) -> bool:
    holds = True
    for state in c.linear:

        def step(k):
            terms = [(sympy.Integer(1), sympy.Integer(1))]
            for i, factor in enumerate(state.factors):
                if factor.decay == "identity":
                    ops = [sympy.Integer(1)]
                elif factor.decay == "scalar":
                    ops = [sympy.Symbol(f"a{i}_{k}")]
                else:
                    ops = [sympy.Symbol(f"D{i}_{k}", commutative=False)]
                for j, _ in enumerate(factor.corrections):
                    u = sympy.Symbol(f"u{i}{j}_{k}", commutative=False)
                    w = sympy.Symbol(f"wT{i}{j}_{k}", commutative=False)
                    ops.append(sympy.Symbol(f"c{i}{j}_{k}") * u * w)
                terms = [(op * left, right) for op in ops for left, right in terms]
            return terms, sympy.Symbol(f"B_{k}", commutative=False)

        steps = [step(k) for k in (1, 2, 3)]
        x = sympy.Symbol("X", commutative=False)
        composes = _vanishes(_apply(steps[1], _apply(steps[0], x)) - _apply(_combine(steps[0], steps[1]), x))
        left = _combine(_combine(steps[0], steps[1]), steps[2])
        right = _combine(steps[0], _combine(steps[1], steps[2]))
        associative = _vanishes(_apply(left, x) - _apply(right, x))
        factors = " then ".join(f.describe() for f in state.factors)
        lines.append(
            f"{state.state}: a step is the affine map S -> A S + B with A = {factors} (key axis {state.key_axis})"
        )
        lines.append(f"{state.state}: step 2 after step 1 equals combine(step 1, step 2): {_verdict(composes)}")
        lines.append(f"{state.state}: combine is associative on three steps: {_verdict(associative)}")
        holds = holds and composes and associative
    return holds
