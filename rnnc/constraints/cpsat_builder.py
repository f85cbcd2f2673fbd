"""Compiling the expressions of :mod:`rnnc.constraints.model` to CP-SAT variables and constraints.

Each expression object is compiled once per model; the expression is kept alive in
the cache with its variable, so the id it is cached under can never be reused by a
temporary (a bug the brute-force tests caught).

Example:
    >>> from rnnc.constraints.model import Model, Var
    >>> b = CpSatBuilder(Model("m", [Var("x", (1, 2))], [], Var("x", (1, 2))))
    >>> list(b.cp.Proto().variables[0].domain)
    [1, 2]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ortools.sat.python import cp_model

if TYPE_CHECKING:  # only for annotations: the model module imports this one
    from rnnc.constraints.model import Expr, Model, Var

INT_LIMIT = 2**62  # CP-SAT works in 64-bit integers; every bound must stay below this


class CpSatBuilder:
    """Compiles expressions to CP-SAT variables, once per expression object."""

    def __init__(self, model: Model):
        self.cp = cp_model.CpModel()
        self.cache: dict[int, tuple[Expr, object]] = {}
        self.index: dict[str, object] = {}
        self.value: dict[str, object] = {}
        for var in model.variables:
            self.var_of(var)

    def index_of(self, var: Var):
        if var.name not in self.index:
            self.index[var.name] = self.cp.new_int_var(0, len(var.domain) - 1, f"{var.name}_index")
        return self.index[var.name]

    def var_of(self, var: Var):
        if var.name not in self.value:
            value = self.cp.new_int_var_from_domain(cp_model.Domain.from_values(list(var.domain)), var.name)
            self.cp.add_element(self.index_of(var), list(var.domain), value)
            self.value[var.name] = value
        return self.value[var.name]

    def new(self, expr: Expr):
        lo, hi = expr.bounds()
        if hi > INT_LIMIT:
            raise OverflowError(f"an intermediate value may reach {hi}, past CP-SAT's range")
        var = self.cp.new_int_var(lo, hi, "")
        self.cache[id(expr)] = (expr, var)  # the expr is kept alive so that its id is never reused
        return var

    def define(self, expr: Expr, linear):
        self.cache[id(expr)] = (expr, linear)
        return linear

    def as_linear(self, expr: Expr):
        if id(expr) in self.cache:
            return self.cache[id(expr)][1]
        return expr.build(self)

    def as_var(self, expr: Expr):
        """A CP-SAT variable equal to ``expr`` (multiplication and division need variables)."""
        linear = self.as_linear(expr)
        if isinstance(linear, cp_model.IntVar):
            return linear
        lo, hi = expr.bounds()
        if hi > INT_LIMIT:
            raise OverflowError(f"an intermediate value may reach {hi}, past CP-SAT's range")
        var = self.cp.new_int_var(lo, hi, "")
        self.cp.add(var == linear)
        return var
