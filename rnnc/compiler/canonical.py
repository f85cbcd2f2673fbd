"""Canonical forms of nested expressions: structure is decided on these, not on the spelling.

Rewrites, applied bottom up:

* the bilinear operators ``@`` and ``outer`` and the linear ``sum`` distribute over sums;
* factors that are scalars per step (rank 0) leave them: ``k @ (exp(g) * S)`` is ``exp(g) * (k @ S)``;
* a factor of a matrix that varies along the contracted axis only moves into the vector that
  contracts it: ``k @ (a[:, None] * S)`` is ``(k * a) @ S``, ``(S * a) @ q`` is ``S @ (a * q)``;
* ``r @ outer(a, b)`` is ``(r @ a) * b`` and ``outer(a, b) @ w`` is ``a * (b @ w)``;
* a transposed matrix moves to the other side: ``S.T @ q`` is ``q @ S``;
* a sum over one axis of a matrix times a vector along that axis is a contraction:
  ``sum(q[:, None] * S, 0)`` is ``q @ S``, ``sum(S * w[None, :], 1)`` is ``S @ w``; a sum over all
  of a vector product that holds one of ``states`` is a dot: ``sum(q * n)`` is ``q @ n``.

Example:
    >>> k, S, g = (tensor_symbol(n) for n in ("k", "S", "g"))
    >>> canonical(Matmul(k, sympy.exp(g) * S), {"k": 1, "S": 2, "g": 0})
    exp(g)*Matmul(k, S)
    >>> a = tensor_symbol("a")
    >>> canonical(Matmul(k, Placed(a, sympy.Tuple(-2)) * S), {"k": 1, "S": 2, "a": 1})
    Matmul(a*k, S)
"""

from __future__ import annotations

import sympy

from rnnc.compiler.nested import varying_axes
from rnnc.compiler.symbols import Matmul, Outer, Placed, ReduceSum, tensor_symbol

__all__ = ["canonical", "expand_terms", "in_axis_space", "rank_of", "tensor_symbol"]


def rank_of(expr: sympy.Expr, ranks: dict[str, int]) -> int:
    """The number of axes of a nested expression.

    Example:
        >>> rank_of(Matmul(tensor_symbol("q"), tensor_symbol("S")), {"q": 1, "S": 2})
        1
    """
    return varying_axes(expr, ranks)[0]


def expand_terms(expr: sympy.Expr) -> tuple[sympy.Expr, ...]:
    """The terms of ``expr`` with products of sums multiplied out, exponents and logs left alone.

    ``exp(a + b)`` stays one factor (splitting it would overflow where the sum does not).

    Example:
        >>> x, y, z = sympy.symbols("x y z")
        >>> expand_terms((x + y) * sympy.exp(y + z))
        (x*exp(y + z), y*exp(y + z))
    """
    expanded = sympy.expand(expr, deep=False, power_exp=False, power_base=False, log=False, multinomial=True)
    return tuple(t for t in sympy.Add.make_args(expanded) if t != 0)


def in_axis_space(expr: sympy.Expr, axis: int, ranks: dict[str, int]) -> sympy.Expr | None:
    """``expr``, which lives in a matrix's index space and varies along ``axis`` only, as a vector.

    Returns None when it cannot be written over the vector's own index space.

    Example:
        >>> a = tensor_symbol("a")
        >>> in_axis_space(sympy.exp(Placed(a, sympy.Tuple(-2))), -2, {"a": 1})
        exp(a)
    """
    if axis == -1:
        out = expr.replace(
            lambda e: isinstance(e, Placed) and tuple(int(x) for x in e.args[1]) == (-1,), lambda e: e.args[0]
        )
    else:
        out = expr.replace(
            lambda e: isinstance(e, Placed) and tuple(int(x) for x in e.args[1]) == (-2,), lambda e: e.args[0]
        )
    rank, varying = varying_axes(out, ranks)
    if rank > 1 or any(isinstance(e, Placed) for e in sympy.preorder_traversal(out)):
        return None
    return out if varying <= {-1} else None


def canonical(expr: sympy.Expr, ranks: dict[str, int], states: tuple[str, ...] = ()) -> sympy.Expr:
    """``expr`` with the rewrites of this module applied everywhere.

    Example:
        >>> r, a, b = (tensor_symbol(n) for n in ("r", "a", "b"))
        >>> canonical(Matmul(r, Outer(a, b)), {"r": 1, "a": 1, "b": 1})
        b*Matmul(r, a)
    """
    memo: dict[sympy.Expr, sympy.Expr] = {}

    def walk(e: sympy.Expr) -> sympy.Expr:
        if not e.args:
            return e
        if e in memo:
            return memo[e]
        args = [walk(a) for a in e.args]
        if isinstance(e, Matmul):
            out = _matmul(args[0], args[1], ranks)
        elif isinstance(e, Outer):
            out = _bilinear(Outer, args[0], args[1], ranks)
        elif isinstance(e, ReduceSum):
            out = _linear_sum(args[0], args[1], ranks, states)
        else:
            out = e.func(*args)
        memo[e] = out
        return out

    return walk(expr)


def _scalar_split(expr: sympy.Expr, ranks) -> tuple[sympy.Expr, sympy.Expr]:
    """(product of the rank-0 factors, the rest) of a product."""
    scalar, rest = [], []
    for factor in sympy.Mul.make_args(expr):
        (scalar if rank_of(factor, ranks) == 0 else rest).append(factor)
    return sympy.Mul(*scalar), sympy.Mul(*rest)


def _full_terms(side: sympy.Expr, ranks) -> list[tuple[sympy.Expr, sympy.Expr]] | None:
    """(rank-0 part, rest) of each term of ``side``, or None when a term is broadcast (lower rank).

    A broadcast term (``S + 2`` read as a matrix) cannot leave the operator on its own: its
    shape is the operator's argument's, which the nested form does not carry.
    """
    rank = rank_of(side, ranks)
    out = []
    for term in expand_terms(side):
        if rank_of(term, ranks) != rank:
            return None
        out.append(_scalar_split(term, ranks))
    return out


def _bilinear(op, a: sympy.Expr, b: sympy.Expr, ranks) -> sympy.Expr:
    """``op(a, b)`` distributed over the terms of both sides, rank-0 factors pulled out."""
    terms_a, terms_b = _full_terms(a, ranks), _full_terms(b, ranks)
    if terms_a is None or terms_b is None:
        return op(a, b)
    return sympy.Add(*(ca * cb * op(ra, rb) for ca, ra in terms_a for cb, rb in terms_b))


def _matmul(a: sympy.Expr, b: sympy.Expr, ranks) -> sympy.Expr:
    terms_a, terms_b = _full_terms(a, ranks), _full_terms(b, ranks)
    if terms_a is None or terms_b is None:
        return Matmul(a, b)
    return sympy.Add(*(ca * cb * _matmul_term(ra, rb, ranks) for ca, ra in terms_a for cb, rb in terms_b))


def _transposed(x: sympy.Expr, ranks) -> sympy.Expr | None:
    """``X`` when ``x`` is ``X.T`` of a matrix ``X``."""
    if isinstance(x, Placed) and tuple(int(a) for a in x.args[1]) == (-1, -2) and rank_of(x.args[0], ranks) == 2:
        return x.args[0]
    return None


def _matmul_term(a: sympy.Expr, b: sympy.Expr, ranks) -> sympy.Expr:
    """One product of terms (no sums, no rank-0 factors) in canonical form."""
    rank_a, rank_b = rank_of(a, ranks), rank_of(b, ranks)
    if rank_b == 1 and _transposed(a, ranks) is not None:  # S.T @ q = q @ S
        return _matmul_term(b, _transposed(a, ranks), ranks)
    if rank_a == 1 and _transposed(b, ranks) is not None:  # q @ S.T = S @ q
        return _matmul_term(_transposed(b, ranks), a, ranks)
    if rank_a == 1 and isinstance(b, Outer):  # r @ outer(x, y) = (r @ x) * y
        return _matmul(a, b.args[0], ranks) * b.args[1]
    if rank_b == 1 and isinstance(a, Outer):  # outer(x, y) @ w = x * (y @ w)
        return a.args[0] * _matmul(a.args[1], b, ranks)
    if rank_a == 1 and rank_b == 2:  # factors of the matrix along its rows move into a
        moved, kept = _along(b, -2, ranks)
        if moved is not None:
            return Matmul(sympy.Mul(a, moved), kept)
    if rank_a == 2 and rank_b == 1:  # factors along its columns move into b
        moved, kept = _along(a, -1, ranks)
        if moved is not None:
            return Matmul(kept, sympy.Mul(moved, b))
    return Matmul(a, b)


def _along(matrix: sympy.Expr, axis: int, ranks) -> tuple[sympy.Expr | None, sympy.Expr]:
    """(the factors of ``matrix`` that vary along ``axis`` only, as a vector; the others)."""
    moved, kept = [], []
    for factor in sympy.Mul.make_args(matrix):
        _, varying = varying_axes(factor, ranks)
        vector = in_axis_space(factor, axis, ranks) if varying == {axis} else None
        (moved if vector is not None else kept).append(vector if vector is not None else factor)
    if not moved or not kept or rank_of(sympy.Mul(*kept), ranks) != 2:
        return None, matrix
    return sympy.Mul(*moved), sympy.Mul(*kept)


def _linear_sum(x: sympy.Expr, axis: sympy.Expr, ranks, states=()) -> sympy.Expr:
    """``sum(c * y)`` is ``c * sum(y)`` for a rank-0 ``c``; sums that are contractions become ``@``.

    A sum of terms stays whole: some terms may broadcast.
    """
    c, rest = _scalar_split(x, ranks)
    if rest == 1:
        return ReduceSum(x, axis)
    contraction = _as_contraction(rest, int(axis), ranks, states)
    if contraction is not None:
        return c * contraction
    return c * ReduceSum(rest, axis) if c != 1 else ReduceSum(rest, axis)


def _as_contraction(x: sympy.Expr, axis: int, ranks, states) -> sympy.Expr | None:
    """``x`` summed over ``axis`` (-1: every axis) as a matmul, when it is one."""
    rank = rank_of(x, ranks)
    factors = list(sympy.Mul.make_args(x))
    if rank == 2 and axis in (0, 1):
        along = -2 if axis == 0 else -1
        moved, kept = _along(x, along, ranks)
        if moved is None:
            return None
        return _matmul_term(moved, kept, ranks) if axis == 0 else _matmul_term(kept, moved, ranks)
    if rank == 1 and axis == -1 and len(factors) >= 2:
        held = [f for f in factors if any(s.name in states or s.name.rstrip("'") in states for s in f.free_symbols)]
        if len(held) != 1 or rank_of(held[0], ranks) != 1:
            return None
        others = sympy.Mul(*(f for f in factors if f is not held[0]))
        return Matmul(others, held[0]) if rank_of(others, ranks) == 1 else None
    return None
