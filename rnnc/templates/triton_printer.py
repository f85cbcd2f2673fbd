"""Printing sympy element expressions as Triton source.

A tile made of constants alone (a step function, a ``where`` between two numbers)
is float32 in Triton whatever the kernel computes in, so it is cast to the
kernel's ``COMPUTE`` dtype: a float64 kernel would otherwise round what it is
multiplied with to float32.

Triton has no ``tanh`` that runs everywhere (``libdevice`` does not run in the
interpreter), so tanh is printed as ``2 * sigmoid(2x) - 1``, which cannot
overflow; ``softplus`` and ``logsigmoid`` use the stable forms
``max(x, 0) + log(1 + exp(-|x|))`` and ``min(x, 0) - log(1 + exp(-|x|))``.

Example:
    >>> import sympy
    >>> x = sympy.Symbol("x", real=True)
    >>> to_triton(sympy.tanh(x) + x**2, {"x": "x_t"})
    'x_t * x_t + (2.0 * tl.sigmoid(2.0 * x_t) - 1.0)'
"""

from __future__ import annotations

import sympy
from sympy.printing.codeprinter import CodePrinter

from rnnc.compiler.symbols import logsigmoid, maximum, minimum, relu, sigmoid, softplus, split_fraction


class TritonPrinter(CodePrinter):
    """A sympy CodePrinter whose output is a Triton (``tl``) expression."""

    printmethod = "_tritoncode"
    language = "Triton"
    _default_settings = {**CodePrinter._default_settings, "strict": False, "order": "none"}

    def __init__(self, names: dict[str, str]):
        super().__init__()
        self.names = names

    def doprint(self, expr, assign_to=None):  # one expression, no statements or declarations
        return self._print(expr)

    def _print(self, expr, **kwargs):
        # a constant subexpression (sigmoid(0.5), exp(2)) becomes one float64 literal, so that
        # Triton does not evaluate it in float32
        if isinstance(expr, sympy.Expr) and expr.is_number and not isinstance(expr, sympy.Number):
            return repr(float(expr.evalf(30)))
        return super()._print(expr, **kwargs)

    # --- leaves ---------------------------------------------------------------------------
    def _print_Symbol(self, expr):
        return self.names[expr.name]

    def _print_Integer(self, expr):
        return f"{float(expr)!r}"

    def _print_Rational(self, expr):
        return f"{float(expr)!r}"

    def _print_Float(self, expr):
        return f"{float(expr)!r}"

    def _print_NumberSymbol(self, expr):
        return f"{float(expr)!r}"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    # --- arithmetic ---------------------------------------------------------------------
    def _print_Add(self, expr, order=None):
        terms = sorted(expr.args, key=sympy.default_sort_key)
        text = self.parenthesize(terms[0], 0)
        for term in terms[1:]:
            coeff, _ = term.as_coeff_Mul()
            if coeff.is_number and coeff < 0:
                text += f" - {self.parenthesize(-term, 50)}"
            else:
                text += f" + {self.parenthesize(term, 40)}"
        return text

    def _print_Mul(self, expr):
        coeff, _ = expr.as_coeff_Mul()
        if coeff.is_number and coeff < 0:
            return f"-({self._print(-expr)})"
        numer, denom = split_fraction(expr)
        text = " * ".join(self.parenthesize(f, 50) for f in numer) if numer else "1.0"
        for d in denom:
            text += f" / {self.parenthesize(d, 60)}"
        return text

    def _print_Pow(self, expr):
        base, exp = expr.args
        if base == sympy.E:
            return f"tl.exp({self._print(exp)})"
        if exp == sympy.Rational(1, 2):
            return f"tl.sqrt({self._print(base)})"
        if exp == -sympy.Rational(1, 2):
            return f"(1.0 / tl.sqrt({self._print(base)}))"
        if exp.is_Integer and 0 < exp <= 4:
            factor = self.parenthesize(base, 60)
            return " * ".join([factor] * int(exp))
        if exp.is_Integer and exp < 0:
            return f"(1.0 / {self.parenthesize(base ** (-exp), 60)})"
        return f"tl.exp({self.parenthesize(exp, 50)} * tl.log({self._print(base)}))"

    # --- functions --------------------------------------------------------------------------
    def _print_exp(self, expr):
        return f"tl.exp({self._print(expr.args[0])})"

    def _print_log(self, expr):
        return f"tl.log({self._print(expr.args[0])})"

    def _print_cos(self, expr):
        return f"tl.cos({self._print(expr.args[0])})"

    def _print_sin(self, expr):
        return f"tl.sin({self._print(expr.args[0])})"

    def _print_tanh(self, expr):
        x = self.parenthesize(expr.args[0], 50)
        return f"(2.0 * tl.sigmoid(2.0 * {x}) - 1.0)"

    def _print_sigmoid(self, expr):
        return f"tl.sigmoid({self._print(expr.args[0])})"

    def _print_softplus(self, expr):
        x = self._print(expr.args[0])
        return f"(tl.maximum({x}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({x}))))"

    def _print_logsigmoid(self, expr):
        x = self._print(expr.args[0])
        return f"(tl.minimum({x}, 0.0) - tl.log(1.0 + tl.exp(-tl.abs({x}))))"

    def _print_relu(self, expr):
        return f"tl.maximum({self._print(expr.args[0])}, 0.0)"

    def _print_Abs(self, expr):
        return f"tl.abs({self._print(expr.args[0])})"

    def _print_sign(self, expr):
        x = self._print(expr.args[0])
        return f"tl.where({x} > 0.0, 1.0, tl.where({x} < 0.0, -1.0, 0.0)).to(COMPUTE)"

    def _print_Heaviside(self, expr):
        x = self._print(expr.args[0])
        at_zero = float(expr.args[1]) if len(expr.args) > 1 else 0.5
        return f"tl.where({x} > 0.0, 1.0, tl.where({x} < 0.0, 0.0, {at_zero!r})).to(COMPUTE)"

    def _print_maximum(self, expr):
        return f"tl.maximum({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_minimum(self, expr):
        return f"tl.minimum({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Piecewise(self, expr):
        (value, cond), rest = expr.args[0], expr.args[1:]
        if cond == sympy.true or not rest:
            return self._print(value)
        text = f"tl.where({self._print(cond)}, {self._print(value)}, {self._print(sympy.Piecewise(*rest))})"
        if all(v.is_number for v, _ in expr.args):  # constants alone would make a float32 tile
            return f"{text}.to(COMPUTE)"
        return text

    def _print_Relational(self, expr):
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_Not(self, expr):
        return f"(not_({self._print(expr.args[0])}))"

    def _print_And(self, expr):
        return " & ".join(f"({self._print(a)})" for a in expr.args)

    def _print_Or(self, expr):
        return " | ".join(f"({self._print(a)})" for a in expr.args)

    def emptyPrinter(self, expr):  # noqa: N802 - sympy's name
        raise NotImplementedError(f"no Triton form for {type(expr).__name__}: {expr}")


# the language's own functions print through the methods above, named after these classes
_PRINTED_FUNCTIONS = (sigmoid, softplus, logsigmoid, relu, maximum, minimum)


def to_triton(expr: sympy.Expr, names: dict[str, str]) -> str:
    """Triton source for ``expr``; ``names`` maps each symbol's name to a tile variable.

    Example:
        >>> import sympy
        >>> a = sympy.Symbol("a", real=True)
        >>> to_triton(sympy.Piecewise((a, a > 0), (0.5 * a, True)), {"a": "v"})
        'tl.where((v > 0.0), v, 0.5 * v)'
    """
    return TritonPrinter(names).doprint(expr)
