"""Symbolic proofs that a cell's step combines associatively (what a parallel scan needs).

Two proofs, both built from the cell's own update:

* elementwise transitions (scan): at a generic element the step is
  ``s -> a(x_t) s + b(x_t)``. With ``combine((a1, b1), (a2, b2)) = (a1 a2, a2 b1 + b2)``
  sympy checks that combining steps 1 and 2 equals running the cell's update
  twice, and that combine is associative on three fresh steps. Elementwise, so
  the proof holds for every size of every dim.
* matrix transitions (chunked): the linear part of the update is written as a
  sum of ``l S r`` terms in noncommutative symbols (a scalar ``a_t``, a diagonal
  ``D_t``, a rank-one ``u_t w_t^T``); sympy checks the same two identities for
  the composition of affine maps ``S -> sum_i l_i S r_i + B``.

Example:
    >>> from rnnc.compiler import lower_source
    >>> from rnnc.compiler.affine import analyse_states
    >>> ir = lower_source(open("examples/hgrn.rnn").read())
    >>> p = prove_scan(ir, analyse_states(ir))
    >>> p.holds, p.lines[0]
    (True, 'combine((a1, b1), (a2, b2)) = (a1*a2, a2*b1 + b2)')
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.affine import Transition
from rnnc.compiler.ir import IR
from rnnc.compiler.nested import show, varying_axes
from rnnc.compiler.symbols import Outer, tensor_symbol


@dataclass(frozen=True)
class Proof:
    """The outcome of a proof and its steps, readable by a person."""

    holds: bool
    lines: tuple[str, ...]


def _at_step(ir: IR, expr: sympy.Expr, step: int) -> sympy.Expr:
    """``expr`` with every input replaced by its copy at time ``step`` (weights stay)."""
    return expr.xreplace({tensor_symbol(d.name): tensor_symbol(f"{d.name}_{step}") for d in ir.inputs})


def _vanishes(expr: sympy.Expr) -> bool:
    return sympy.expand(expr) == 0 or sympy.simplify(expr) == 0


def prove_scan(ir: IR, transitions: list[Transition]) -> Proof:
    """Prove the scan combine for cells whose transitions are all elementwise.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.affine import analyse_states
        >>> ir = lower_source(open("examples/mingru.rnn").read())
        >>> prove_scan(ir, analyse_states(ir)).holds
        True
    """
    lines = ["combine((a1, b1), (a2, b2)) = (a1*a2, a2*b1 + b2)"]
    holds = True

    def combine(e1, e2):
        return (e1[0] * e2[0], e2[0] * e1[1] + e2[1])

    for t in transitions:
        s = tensor_symbol(t.state)
        steps = [(_at_step(ir, t.a, k), _at_step(ir, t.b, k)) for k in (1, 2, 3)]
        own = [_at_step(ir, t.update, k) for k in (1, 2)]
        twice = own[1].xreplace({s: own[0]})
        a12, b12 = combine(steps[0], steps[1])
        composes = _vanishes(twice - (a12 * s + b12))
        left = combine(combine(steps[0], steps[1]), steps[2])
        right = combine(steps[0], combine(steps[1], steps[2]))
        associative = _vanishes(left[0] - right[0]) and _vanishes(left[1] - right[1])
        holds = holds and composes and associative
        lines.append(f"{t.state}: a_t = {show(steps[0][0])}, b_t = {show(steps[0][1])} (inputs at t = 1)")
        lines.append(
            f"{t.state}: the update run at t = 1 then t = 2 equals combine(step 1, step 2): "
            f"{'verified' if composes else 'FAILED'}"
        )
        lines.append(
            f"{t.state}: combine(combine(p1, p2), p3) - combine(p1, combine(p2, p3)) expands to 0: "
            f"{'verified' if associative else 'FAILED'}"
        )
    lines.append("elementwise at a generic entry, so it holds for every size of every dim")
    return Proof(holds, tuple(lines))


def prove_chunked(ir: IR, transitions: list[Transition]) -> Proof:
    """Prove that the affine maps of matrix transitions compose associatively.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.affine import analyse_states
        >>> ir = lower_source(open("examples/deltanet.rnn").read())
        >>> prove_chunked(ir, analyse_states(ir)).holds
        True
    """
    ranks = {a.name: len(a.shape) for a in ir.atoms if a.is_leaf}
    lines = [
        "a step is the affine map S -> sum_i l_i S r_i + B_t in noncommutative symbols;",
        "combine(f1, f2) = f2 after f1, i.e. l = l2 l1, r = r1 r2, B = sum l2 B1 r2 + B2",
    ]
    holds = True
    for t in transitions:
        maps = [_operator_terms(t, k, ranks) for k in (1, 2, 3)]
        if maps[0] is None:
            return Proof(False, (*lines, f"{t.state}: the transition has no l S r form; no proof"))
        described = " + ".join(f"{_nc(left)} {t.state} {_nc(right)}".strip() for left, right in maps[0])
        lines.append(f"{t.state}: step at t = 1 is {t.state} -> {described} + B_1 ({_legend(t)})")
        steps = [(m, sympy.Symbol(f"B_{k}", commutative=False)) for k, m in zip((1, 2, 3), maps)]
        x = sympy.Symbol("X", commutative=False)
        composes = _vanishes(_apply(steps[1], _apply(steps[0], x)) - _apply(_combine(steps[0], steps[1]), x))
        left = _combine(_combine(steps[0], steps[1]), steps[2])
        right = _combine(steps[0], _combine(steps[1], steps[2]))
        associative = _vanishes(_apply(left, x) - _apply(right, x))
        holds = holds and composes and associative
        lines.append(
            f"{t.state}: step 2 after step 1 equals combine(step 1, step 2): {'verified' if composes else 'FAILED'}"
        )
        lines.append(f"{t.state}: combine is associative on three steps: {'verified' if associative else 'FAILED'}")
    return Proof(holds, tuple(lines))


def _apply(step, x):
    terms, b = step
    return sympy.Add(*(left * x * right for left, right in terms)) + b


def _combine(first, second):
    (t1, b1), (t2, b2) = first, second
    terms = [(l2 * l1, r1 * r2) for l1, r1 in t1 for l2, r2 in t2]
    return terms, _apply((t2, 0), b1) + b2


def _operator_terms(t: Transition, k: int, ranks) -> list[tuple] | None:
    """The linear part of ``t`` at step ``k`` as [(left, right)] noncommutative factors."""
    one = sympy.Integer(1)
    scalar = sympy.Symbol(f"a_{k}")
    if t.structure == "identity":
        return [(one, one)]
    if t.structure == "scalar":
        return [(scalar, one)]
    if t.structure == "diagonal":
        diag = sympy.Symbol(f"D_{k}", commutative=False)
        return [(diag, one)] if t.axis == -2 else [(one, diag)]
    if t.structure == "identity-minus-rank-one" and t.decay in ("identity", "scalar"):
        a = one if t.decay == "identity" else scalar
        u = sympy.Symbol(f"u_{k}", commutative=False)
        w = sympy.Symbol(f"wT_{k}", commutative=False)
        beta = sympy.Symbol(f"beta_{k}")
        return [(a, one), (-a * beta * u * w, one)]
    return None


def _nc(factor) -> str:
    return "" if factor == 1 else f"({factor})"


def _legend(t: Transition) -> str:
    parts = []
    if t.a is not None and t.a != 1:
        name = "D_t" if t.structure == "diagonal" else "a_t"
        parts.append(f"{name} = {show(t.a)}")
    if t.beta is not None:
        parts.append(f"beta_t = {show(t.beta)}, u_t = {show(t.u)}, w_t = {show(t.w)}")
    return "; ".join(parts) or "identity"


def outer_like(expr: sympy.Expr, ranks) -> bool:
    """Whether a matrix expression is a sum of terms of rank one.

    A term is rank one when each factor is an ``outer`` or varies along at most
    one axis (the Hadamard product of rank-one matrices is rank one).

    Example:
        >>> k, v, beta = (tensor_symbol(n) for n in "k v beta".split())
        >>> outer_like(beta * Outer(k, v), {"k": 1, "v": 1, "beta": 0})
        True
    """
    for term in sympy.Add.make_args(sympy.expand(expr)):
        for factor in sympy.Mul.make_args(term):
            if not isinstance(factor, Outer) and len(varying_axes(factor, ranks)[1] & {-1, -2}) > 1:
                return False
    return True
