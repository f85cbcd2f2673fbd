"""Decays: the logarithm a kernel computes for a positive decay, and whether it is proved positive.

A decay is any positive expression. Its log is simplified where the form allows it
(``exp(x)`` -> ``x``, ``sigmoid(x)`` -> ``logsigmoid(x)``, ``1 - sigmoid(x)`` -> ``logsigmoid(-x)``,
products -> sums, powers -> multiples) and is ``log(a)`` otherwise. Positivity is proved by a
sign analysis of the expression; where it cannot be, the decay is accepted and checked on each
call's values (``rnnc.runtime.decay_guard``: the reference runs its plain loop on a negative
decay, the Triton backend refuses the call).

Example:
    >>> x, g = sympy.symbols("x g", real=True)
    >>> log_decay(sympy.exp(g) * sigmoid(x))
    g + logsigmoid(x)
    >>> is_positive(1 - sigmoid(x)), is_positive(x)
    (True, False)
"""

from __future__ import annotations

import sympy

from rnnc.compiler.symbols import logsigmoid, sigmoid, softplus


def log_decay(a: sympy.Expr) -> sympy.Expr:
    """The log of a positive decay, simplified where its form allows.

    Example:
        >>> x = sympy.Symbol("x", real=True)
        >>> log_decay(sympy.Rational(1, 2)), log_decay(sigmoid(x) ** 2)
        (-log(2), 2*logsigmoid(x))
    """
    if isinstance(a, sympy.exp):
        return a.args[0]
    if isinstance(a, sigmoid):
        return logsigmoid(a.args[0])
    if a.is_Number and a.is_positive:
        return sympy.log(a)
    if isinstance(a, sympy.Mul):
        return sympy.Add(*(log_decay(f) for f in a.args))
    if isinstance(a, sympy.Pow) and a.exp.is_Number:
        return a.exp * log_decay(a.base)
    complement = _one_minus_sigmoid(a)
    if complement is not None:
        return logsigmoid(-complement)
    return sympy.log(a, evaluate=False)


def _one_minus_sigmoid(a: sympy.Expr) -> sympy.Expr | None:
    """``x`` when ``a`` is ``1 - sigmoid(x)``."""
    if isinstance(a, sympy.Add) and len(a.args) == 2 and sympy.Integer(1) in a.args:
        other = a.args[0] if a.args[1] == 1 else a.args[1]
        if isinstance(other, sympy.Mul) and len(other.args) == 2 and other.args[0] == -1:
            inner = other.args[1]
            if isinstance(inner, sigmoid):
                return inner.args[0]
    return None


def is_positive(a: sympy.Expr) -> bool:
    """Whether ``a`` is positive for every value of its symbols (a sign analysis; False if unsure).

    Example:
        >>> x = sympy.Symbol("x", real=True)
        >>> is_positive(sympy.exp(x) + sigmoid(x) ** 2), is_positive(sympy.tanh(x))
        (True, False)
    """
    return _sign(a) == "+"


def _sign(a: sympy.Expr) -> str:
    """``+`` (positive), ``0+`` (non-negative) or ``?``."""
    if a.is_Number:
        return "+" if a > 0 else "0+" if a == 0 else "?"
    if isinstance(a, (sympy.exp, sigmoid, softplus)):
        return "+"
    if isinstance(a, sympy.Abs):
        return "0+"
    if isinstance(a, sympy.Pow):
        base, exp = _sign(a.base), a.exp
        if exp.is_Number and exp.is_integer and exp % 2 == 0:
            return "+" if base == "+" else "0+"
        return base if base == "+" else "?"
    if isinstance(a, sympy.Mul):
        signs = [_sign(f) for f in a.args]
        if all(s == "+" for s in signs):
            return "+"
        return "0+" if all(s in ("+", "0+") for s in signs) else "?"
    if isinstance(a, sympy.Add):
        if _one_minus_sigmoid(a) is not None:
            return "+"
        signs = [_sign(t) for t in a.args]
        if all(s in ("+", "0+") for s in signs):
            return "+" if "+" in signs else "0+"
        return "?"
    return "?"
