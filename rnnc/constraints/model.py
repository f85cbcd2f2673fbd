"""A small integer modelling layer over OR-Tools CP-SAT, with a brute-force twin.

A model is written once as expressions over *choice variables* (each with an
explicit, small domain). The same model compiles to CP-SAT (linear terms,
products, ceiling divisions, minima, maxima and table lookups) and evaluates in
plain Python, so tests can enumerate it and compare optima, and the tiling
explanation can recompute every constraint at the solution.

All quantities are non-negative integers; bounds of intermediate values come
from interval arithmetic over the domains.

Example:
    >>> b = Var("BLOCK", (16, 32, 64))
    >>> w = Var("warps", (1, 2, 4))
    >>> m = Model("demo", [b, w], [Constraint("regs", b * 8 // w, 300, "registers per thread")], 1000 // b + w)
    >>> m.solve().values
    {'BLOCK': 64, 'warps': 2}
    >>> m.brute_force().objective == m.solve().objective
    True
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from rnnc.constraints.cpsat_builder import CpSatBuilder

TIEBREAK_RANGE = 1000  # the objective is scaled by this so that the tie-break never outweighs it


class Expr:
    """An integer expression over choice variables."""

    def evaluate(self, env: dict, memo: dict | None = None) -> int:
        """The value at an assignment ``env`` (shared subexpressions are computed once)."""
        if memo is None:
            memo = {}
        key = id(self)
        if key not in memo:  # the expr is kept alive with its value, so its id cannot be reused meanwhile
            memo[key] = (self, self._evaluate(env, memo))
        return memo[key][1]

    def __add__(self, other):
        return Sum((self, lift(other)))

    __radd__ = __add__

    def __mul__(self, other):
        return Product(self, lift(other))

    __rmul__ = __mul__

    def __floordiv__(self, other):
        return Divide(self, lift(other), ceil=False)

    def ceil_div(self, other) -> "Expr":
        """``ceil(self / other)``."""
        return Divide(self, lift(other), ceil=True)

    def __rfloordiv__(self, other):
        return Divide(lift(other), self, ceil=False)


def lift(value) -> Expr:
    """An Expr for a Python int (or the Expr itself)."""
    return value if isinstance(value, Expr) else Const(int(value))


@dataclass(frozen=True, eq=False)
class Const(Expr):
    value: int

    def bounds(self):
        return self.value, self.value

    def _evaluate(self, env, memo):
        return self.value

    def build(self, b):
        return self.value


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A choice variable; ``domain`` lists its allowed values (sorted, distinct)."""

    name: str
    domain: tuple[int, ...]

    def bounds(self):
        return min(self.domain), max(self.domain)

    def _evaluate(self, env, memo):
        return env[self.name]

    def build(self, b):
        return b.var_of(self)


@dataclass(frozen=True, eq=False)
class Sum(Expr):
    terms: tuple[Expr, ...]

    def bounds(self):
        bs = [t.bounds() for t in self.terms]
        return sum(lo for lo, _ in bs), sum(hi for _, hi in bs)

    def _evaluate(self, env, memo):
        return sum(t.evaluate(env, memo) for t in self.terms)

    def build(self, b):
        return b.define(self, sum(b.as_linear(t) for t in self.terms))


@dataclass(frozen=True, eq=False)
class Product(Expr):
    left: Expr
    right: Expr

    def bounds(self):
        (a, b), (c, d) = self.left.bounds(), self.right.bounds()
        return a * c, b * d

    def _evaluate(self, env, memo):
        return self.left.evaluate(env, memo) * self.right.evaluate(env, memo)

    def build(self, b):
        if isinstance(self.left, Const):
            return b.define(self, self.left.value * b.as_linear(self.right))
        if isinstance(self.right, Const):
            return b.define(self, self.right.value * b.as_linear(self.left))
        target = b.new(self)
        b.cp.add_multiplication_equality(target, [b.as_var(self.left), b.as_var(self.right)])
        return target


@dataclass(frozen=True, eq=False)
class Divide(Expr):
    """Floor or ceiling division by a positive divisor."""

    numerator: Expr
    denominator: Expr
    ceil: bool

    def bounds(self):
        (a, b), (c, d) = self.numerator.bounds(), self.denominator.bounds()
        c = max(c, 1)
        return (-(-a // d) if self.ceil else a // d), (-(-b // c) if self.ceil else b // c)

    def _evaluate(self, env, memo):
        n, d = self.numerator.evaluate(env, memo), self.denominator.evaluate(env, memo)
        return -(-n // d) if self.ceil else n // d

    def build(self, b):
        numerator = self.numerator + (self.denominator + (-1)) if self.ceil else self.numerator
        target = b.new(self)
        b.cp.add_division_equality(target, b.as_var(numerator), b.as_var(self.denominator))
        return target


@dataclass(frozen=True, eq=False)
class Extremum(Expr):
    terms: tuple[Expr, ...]
    largest: bool

    def bounds(self):
        bs = [t.bounds() for t in self.terms]
        pick = max if self.largest else min
        return pick(lo for lo, _ in bs), pick(hi for _, hi in bs)

    def _evaluate(self, env, memo):
        return (max if self.largest else min)(t.evaluate(env, memo) for t in self.terms)

    def build(self, b):
        target = b.new(self)
        args = [b.as_var(t) for t in self.terms]
        (b.cp.add_max_equality if self.largest else b.cp.add_min_equality)(target, args)
        return target


def maximum(*terms) -> Expr:
    """The largest of the terms."""
    return Extremum(tuple(lift(t) for t in terms), True)


def minimum(*terms) -> Expr:
    """The smallest of the terms."""
    return Extremum(tuple(lift(t) for t in terms), False)


@dataclass(frozen=True, eq=False)
class Table(Expr):
    """``values[var's position in its domain]``: any function of one variable."""

    var: Var
    values: tuple[int, ...]

    def bounds(self):
        return min(self.values), max(self.values)

    def _evaluate(self, env, memo):
        return self.values[self.var.domain.index(env[self.var.name])]

    def build(self, b):
        target = b.new(self)
        b.cp.add_element(b.index_of(self.var), list(self.values), target)
        return target


def table(var: Var, function) -> Table:
    """``function(value)`` of a choice variable, tabulated over its domain.

    Example:
        >>> v = Var("x", (1, 2, 4))
        >>> table(v, lambda x: x * x).evaluate({"x": 4})
        16
    """
    return Table(var, tuple(int(function(v)) for v in var.domain))


@dataclass(frozen=True)
class Constraint:
    """``lhs <= limit``, named by the hardware or kernel rule it encodes (``reason``)."""

    name: str
    lhs: Expr | int
    limit: Expr | int
    reason: str
    unit: str = ""

    def values(self, env, memo: dict | None = None) -> tuple[int, int]:
        """(lhs, limit) at an assignment."""
        memo = {} if memo is None else memo
        return lift(self.lhs).evaluate(env, memo), lift(self.limit).evaluate(env, memo)

    def holds(self, env, memo: dict | None = None) -> bool:
        """Whether the constraint is met at an assignment."""
        lhs, limit = self.values(env, memo)
        return lhs <= limit


@dataclass(frozen=True)
class Solution:
    """An assignment of the choice variables and its objective value."""

    values: dict[str, int]
    objective: int


def _solver() -> cp_model.CpSolver:
    """A deterministic CP-SAT solver set up for models of a few thousand assignments.

    One worker and a fixed seed make answers reproducible. Presolve, probing and linear relaxations
    pay off on large models; on these they were most of the time (50 ms of a 55 ms solve of the
    sequential model, 4 ms without them), and the search proves optimality just as well.
    """
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_time_in_seconds = 20.0
    solver.parameters.cp_model_presolve = False
    solver.parameters.cp_model_probing_level = 0
    solver.parameters.linearization_level = 0
    return solver


@dataclass
class Model:
    """Choice variables, constraints and an objective to minimise."""

    name: str
    variables: list[Var]
    constraints: list[Constraint]
    objective: Expr
    quantities: dict[str, Expr] = field(default_factory=dict)
    tiebreak: Expr | None = None  # among equal objectives, the smaller wins (below TIEBREAK_RANGE)
    unit_ns: int = 1  # the objective counts time in units of this many nanoseconds

    def solve(
        self, forbidden: list[dict[str, int]] = (), drop: tuple[str, ...] = (), minimise: Expr | None = None
    ) -> Solution | None:
        """The optimum (deterministic: one worker, fixed seed), or None when infeasible."""
        builder = CpSatBuilder(self)
        for c in self.constraints:
            if c.name not in drop:
                builder.cp.add(builder.as_linear(lift(c.lhs)) <= builder.as_linear(lift(c.limit)))
        for assignment in forbidden:
            literals = []
            for var in self.variables:
                lit = builder.cp.new_bool_var("")
                builder.cp.add(builder.var_of(var) != assignment[var.name]).only_enforce_if(lit)
                literals.append(lit)
            builder.cp.add_bool_or(literals)
        goal = minimise if minimise is not None else self.objective
        builder.cp.minimize(builder.as_linear(self._ranked(goal)))
        solver = _solver()
        status = solver.solve(builder.cp)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        if status != cp_model.OPTIMAL:  # pragma: no cover - the models are tiny
            raise RuntimeError(f"CP-SAT stopped before proving optimality on model {self.name}")
        values = {v.name: int(solver.value(builder.var_of(v))) for v in self.variables}
        return Solution(values, self.objective.evaluate(values) if minimise is None else goal.evaluate(values))

    def closest(self) -> Solution | None:
        """When no assignment meets every constraint: the one that breaks them least.

        Each constraint gets a slack; the objective is the sum of slacks relative to
        each limit (so 10 % over a register budget weighs like 10 % over shared memory).
        """
        builder = CpSatBuilder(self)
        penalties = []
        for c in self.constraints:
            lhs, limit = lift(c.lhs), lift(c.limit)
            slack = builder.cp.new_int_var(0, max(0, lhs.bounds()[1]), "")
            builder.cp.add(builder.as_linear(lhs) <= builder.as_linear(limit) + slack)
            weight = max(1, 10**6 // max(1, limit.bounds()[0]))
            penalties.append(weight * slack)
        builder.cp.minimize(sum(penalties))
        solver = _solver()
        if solver.solve(builder.cp) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        values = {v.name: int(solver.value(builder.var_of(v))) for v in self.variables}
        return Solution(values, self.objective.evaluate(values))

    def solution_at(self, values: dict[str, int]) -> Solution:
        """The assignment ``values`` with its objective."""
        return Solution(dict(values), self.objective.evaluate(values))

    def best(self, count: int, start: list[dict[str, int]] = ()) -> list[Solution]:
        """The ``count`` best distinct assignments, best first (ties broken by the solver, deterministically);
        ``start`` are the best ones already known, in order (the optimum, when solved before)."""
        found: list[Solution] = [self.solution_at(values) for values in start][:count]
        while len(found) < count:
            solution = self.solve(forbidden=[s.values for s in found])
            if solution is None:
                break
            found.append(solution)
        return found

    def _ranked(self, goal: Expr) -> Expr:
        """The goal, with the tie-break folded in below its resolution."""
        if self.tiebreak is None:
            return goal
        return goal * TIEBREAK_RANGE + minimum(self.tiebreak, TIEBREAK_RANGE - 1)

    def rank(self, env) -> int:
        """The value the solver minimises, at an assignment."""
        return self._ranked(self.objective).evaluate(env)

    def assignments(self):
        """Every assignment of the choice variables (for brute force)."""
        names = [v.name for v in self.variables]
        for combo in itertools.product(*(v.domain for v in self.variables)):
            yield dict(zip(names, combo))

    def brute_force(self) -> Solution | None:
        """The optimum by enumeration: the reference the tests hold CP-SAT to."""
        best, best_rank = None, None
        ranked = self._ranked(self.objective)
        for env in self.assignments():
            memo: dict = {}
            if all(c.holds(env, memo) for c in self.constraints):
                rank = ranked.evaluate(env, memo)
                if best is None or rank < best_rank:
                    best, best_rank = Solution(env, self.objective.evaluate(env, memo)), rank
        return best

    def binding(self, solution: Solution) -> list[Constraint]:
        """Constraints without which the optimum would be strictly better."""
        out = []
        for c in self.constraints:
            relaxed = self.solve(drop=(c.name,))
            if relaxed is not None and relaxed.objective < solution.objective:
                out.append(c)
        return out
