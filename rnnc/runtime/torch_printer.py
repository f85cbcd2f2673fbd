"""Printing sympy element expressions as PyTorch source.

Example:
    >>> import sympy
    >>> x, y = sympy.symbols("x y", real=True)
    >>> to_torch(maximum(x, y) * sympy.exp(-x), {"x": "a", "y": "b"})
    'torch.exp(-a) * ops.maximum(a, b, like)'
"""

from __future__ import annotations

import sympy

from rnnc.compiler.symbols import logsigmoid, maximum, minimum, relu, sigmoid, softplus, split_fraction

_UNARY = {
    sympy.exp: "torch.exp",
    sympy.log: "torch.log",
    sympy.tanh: "torch.tanh",
    sympy.cos: "torch.cos",
    sympy.sin: "torch.sin",
    sympy.Abs: "torch.abs",
    sympy.sign: "torch.sign",
    sigmoid: "torch.sigmoid",
    softplus: "F.softplus",
    logsigmoid: "F.logsigmoid",
    relu: "torch.relu",
}
_RELATIONS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}


def to_torch(expr: sympy.Expr, names: dict[str, str]) -> str:
    """PyTorch source for ``expr``; ``names`` maps symbol names to variables.

    The source may refer to ``like``, a tensor of the compute dtype, for constants.

    Example:
        >>> import sympy
        >>> x = sympy.Symbol("x", real=True)
        >>> to_torch(1 / (1 + x**2), {"x": "v"})
        '1.0 / (1.0 + v ** 2)'
    """
    return _Printer(names).print(expr)


class _Printer:
    def __init__(self, names: dict[str, str]):
        self.names = names

    def print(self, e) -> str:
        text, _ = self._p(e)
        return text

    def _wrap(self, e, level: int) -> str:
        text, own = self._p(e)
        return f"({text})" if own < level else text

    # returns (text, precedence): 1 sum, 2 product, 3 power, 4 atom
    def _p(self, e) -> tuple[str, int]:
        if isinstance(e, sympy.Symbol):
            return self.names[e.name], 4
        if e.is_number and not isinstance(e, sympy.logic.boolalg.BooleanAtom):
            value = float(e)
            return (repr(value), 4) if value >= 0 else (f"-{repr(-value)}", 1)
        if isinstance(e, sympy.Add):
            terms = sorted(e.args, key=sympy.default_sort_key)
            text = self._wrap(terms[0], 1)
            for term in terms[1:]:
                coeff, rest = term.as_coeff_Mul()
                if coeff.is_number and coeff < 0:
                    text += f" - {self._wrap(-term, 2)}"
                else:
                    text += f" + {self._wrap(term, 1)}"
            return text, 1
        if isinstance(e, sympy.Mul):
            return self._mul(e)
        if isinstance(e, sympy.Pow):
            return self._pow(e)
        if isinstance(e, sympy.Piecewise):
            return self._piecewise(list(e.args)), 4
        if isinstance(e, (sympy.Max, sympy.Min, maximum, minimum)):
            fn = "ops.maximum" if isinstance(e, (sympy.Max, maximum)) else "ops.minimum"
            args = sorted(e.args, key=sympy.default_sort_key)
            text = self.print(args[0])
            for arg in args[1:]:
                text = f"{fn}({text}, {self.print(arg)}, like)"
            return text, 4
        if isinstance(e, sympy.Heaviside):
            at_zero = float(e.args[1]) if len(e.args) > 1 else 0.5
            return f"ops.heaviside({self.print(e.args[0])}, {at_zero!r})", 4
        if isinstance(e, sympy.core.relational.Relational):
            op = _RELATIONS[e.rel_op]
            return f"{self._wrap(e.lhs, 2)} {op} {self._wrap(e.rhs, 2)}", 0
        if isinstance(e, sympy.And):
            return " & ".join(f"({self.print(a)})" for a in e.args), 0
        if isinstance(e, sympy.Or):
            return " | ".join(f"({self.print(a)})" for a in e.args), 0
        if isinstance(e, sympy.Not):
            return f"~({self.print(e.args[0])})", 4
        if e.func in _UNARY:
            return f"{_UNARY[e.func]}({self.print(e.args[0])})", 4
        raise NotImplementedError(f"no PyTorch form for {e.func.__name__}: {e}")

    def _mul(self, e) -> tuple[str, int]:
        coeff, rest = e.as_coeff_Mul()
        if coeff.is_number and coeff < 0:
            inner, _ = self._mul_terms(-e)
            return f"-{inner}" if not inner.startswith("-") else f"-({inner})", 1
        return self._mul_terms(e)

    def _mul_terms(self, product) -> tuple[str, int]:
        numer, denom = split_fraction(product)
        text = " * ".join(self._wrap(f, 2) for f in numer) if numer else "1.0"
        for d in denom:
            text += f" / {self._wrap(d, 3)}"
        return text, 2

    def _pow(self, e) -> tuple[str, int]:
        base, exp = e.args
        if exp == sympy.Rational(1, 2):
            return f"torch.sqrt({self.print(base)})", 4
        if exp == -1:
            return f"1.0 / {self._wrap(base, 3)}", 2
        if exp.is_number and exp < 0:
            return f"1.0 / {self._wrap(base ** (-exp), 3)}", 2
        if base == sympy.E:
            return f"torch.exp({self.print(exp)})", 4
        if exp.is_Integer:
            return f"{self._wrap(base, 4)} ** {int(exp)}", 3
        return f"{self._wrap(base, 4)} ** {self._wrap(exp, 4)}", 3

    def _piecewise(self, pieces) -> str:
        (value, cond), rest = pieces[0], pieces[1:]
        if cond == sympy.true or not rest:
            return self.print(value)
        return f"ops.where({self.print(cond)}, {self.print(value)}, {self._piecewise(rest)}, like)"
