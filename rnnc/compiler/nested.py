"""The nested form of IR expressions, used by the analysis.

Atoms are inlined: ``R @ h`` becomes ``Matmul(R, h)`` and a view becomes
``Placed(x, axes)``, so a state update is one sympy expression in the previous
states, inputs and weights. :func:`pull_scale` moves a scale factor out of the
(multi)linear structural operators, which turns "is this update affine in the
states?" into "is this a polynomial of degree <= 1 in the scale?".

Example:
    >>> from rnnc.compiler import lower_source
    >>> ir = lower_source(open("examples/deltanet.rnn").read())
    >>> eps = sympy.Symbol("eps")
    >>> u = pull_scale(nest(ir, ir.update("S").expr, scale_states=eps), eps)
    >>> sorted(scale_terms(u, eps))
    [0, 1]
    >>> show(nest(ir, ir.update("S").expr))
    'S + beta*outer(k, v - k @ S)'
"""

from __future__ import annotations

from itertools import product

import sympy
from sympy.printing.str import StrPrinter

from rnnc.compiler.ir import IR
from rnnc.compiler.symbols import (
    LINEAR_STRUCTURAL,
    REDUCTIONS,
    STRUCTURAL,
    TENSOR_ARGS,
    Matmul,
    Outer,
    Part,
    Placed,
    ReduceMax,
    ReduceMin,
    ReduceSum,
    View,
    tensor_symbol,
)


def nest(ir: IR, expr: sympy.Expr, scale_states: sympy.Expr | None = None) -> sympy.Expr:
    """``expr`` with every atom inlined; state leaves multiplied by ``scale_states``.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> ir = lower_source(open("examples/elman.rnn").read())
        >>> nest(ir, ir.update("h").expr)
        tanh(b + x + Matmul(R, h))
    """
    memo: dict[str, sympy.Expr] = {}

    def atom_form(name: str) -> sympy.Expr:
        if name in memo:
            return memo[name]
        atom = ir.atom(name)
        if atom.is_leaf or atom.op == "new":  # "new": a state's value after its update (marked IR)
            form = tensor_symbol(name)
            if atom.op == "state" and scale_states is not None:
                form = scale_states * form
        else:
            args = [expr_form(a) for a in atom.args]
            if atom.op == "matmul":
                form = Matmul(*args)
            elif atom.op == "outer":
                form = Outer(*args)
            elif atom.op in REDUCTIONS:
                form = REDUCTIONS[atom.op](args[0], sympy.Integer(atom.params[0] if atom.params else -1))
            else:
                form = Part(args[0], *(sympy.Integer(p) for p in atom.params))
        memo[name] = form
        return form

    def view_form(view: View) -> sympy.Expr:
        inner = atom_form(view.atom)
        if view.is_plain():
            return inner
        return Placed(inner, sympy.Tuple(*view.axes))

    def expr_form(e: sympy.Expr) -> sympy.Expr:
        return e.xreplace({s: view_form(ir.view(s)) for s in ir.view_symbols(e)})

    return expr_form(expr)


def scale_terms(expr: sympy.Expr, scale: sympy.Symbol) -> dict[int, sympy.Expr] | None:
    """``{power: coefficient}`` of ``expr`` as a polynomial in ``scale``, or None.

    Example:
        >>> x, e = sympy.symbols("x e")
        >>> scale_terms(3 * e * x + 1, e)
        {0: 1, 1: 3*x}
        >>> scale_terms(sympy.exp(e), e) is None
        True
    """
    if scale not in expr.free_symbols:
        return {0: expr}
    terms: dict[int, sympy.Expr] = {}
    # exponents and logs stay whole: exp(a + b) split into exp(a) exp(b) would overflow where it does not
    for term in sympy.Add.make_args(sympy.expand(expr, power_exp=False, power_base=False, log=False)):
        coeff, power = term.as_coeff_exponent(scale)
        if scale in coeff.free_symbols or not power.is_Integer or power < 0:
            return None
        terms[int(power)] = terms.get(int(power), 0) + coeff
    return terms


def pull_scale(expr: sympy.Expr, scale: sympy.Symbol) -> sympy.Expr:
    """Distribute (multi)linear structural operators over sums and pull out powers of ``scale``.

    Example:
        >>> q, S, e = sympy.symbols("q S e")
        >>> pull_scale(Matmul(q, e * S + q), e)
        e*Matmul(q, S) + Matmul(q, q)
    """
    if not expr.args or scale not in expr.free_symbols:
        return expr
    args = [pull_scale(a, scale) for a in expr.args]
    if not isinstance(expr, LINEAR_STRUCTURAL):  # max(x, axis) is not linear: the scale stays inside
        return expr.func(*args)
    positions = TENSOR_ARGS[type(expr)]
    expansions = []
    for i in positions:
        terms = scale_terms(args[i], scale)
        if terms is None:
            return expr.func(*args)
        expansions.append(sorted(terms.items()))
    total = sympy.Integer(0)
    for choice in product(*expansions):
        new_args = list(args)
        power = 0
        for i, (p, coeff) in zip(positions, choice):
            new_args[i] = coeff
            power += p
        if any(new_args[i] == 0 for i in positions):
            continue
        total += scale**power * expr.func(*new_args)
    return total


def nonpolynomial_part(expr: sympy.Expr, scale: sympy.Symbol) -> sympy.Expr | None:
    """The smallest subexpression that makes ``expr`` non-polynomial in ``scale``.

    Example:
        >>> x, e = sympy.symbols("x e")
        >>> nonpolynomial_part(x * e + sympy.tanh(e * x), e)
        tanh(e*x)
    """
    if scale not in expr.free_symbols:
        return None
    if isinstance(expr, (sympy.Add, sympy.Mul)) or isinstance(expr, LINEAR_STRUCTURAL):
        for arg in expr.args:
            found = nonpolynomial_part(arg, scale)
            if found is not None:
                return found
        return None
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and expr.exp >= 0:
        return nonpolynomial_part(expr.base, scale)
    if expr == scale:
        return None
    return expr


def varying_axes(expr: sympy.Expr, ranks: dict[str, int]) -> tuple[int, set[int]]:
    """The rank of a nested expression and the (negative) axes along which it varies.

    Example:
        >>> g = sympy.Symbol("g")
        >>> varying_axes(sympy.exp(Placed(g, sympy.Tuple(-2))), {"g": 1})
        (2, {-2})
    """
    if isinstance(expr, sympy.Symbol):
        rank = ranks.get(expr.name, 0)
        return rank, set(range(-rank, 0))
    if expr.is_Number or not expr.args:
        return 0, set()
    if isinstance(expr, Placed):
        rank_in, inner = varying_axes(expr.args[0], ranks)
        axes = [int(a) for a in expr.args[1]]
        return -min(axes), {axes[a + rank_in] for a in inner}
    if isinstance(expr, STRUCTURAL):
        rank = _structural_rank(expr, ranks)
        return rank, set(range(-rank, 0))
    rank, axes = 0, set()
    for arg in expr.args:
        r, a = varying_axes(arg, ranks)
        rank, axes = max(rank, r), axes | a
    return rank, axes


def _structural_rank(expr, ranks) -> int:
    arg_ranks = [varying_axes(a, ranks)[0] for a in expr.args[:2]]
    if isinstance(expr, Matmul):
        ra, rb = arg_ranks
        return max(ra, rb, 2) - (ra == 1) - (rb == 1) if ra >= 1 and rb >= 1 else 0
    if isinstance(expr, Outer):
        return 2
    if isinstance(expr, (ReduceSum, ReduceMax, ReduceMin)):
        return 0 if int(expr.args[1]) < 0 else arg_ranks[0] - 1
    return arg_ranks[0] - int(expr.args[4])  # Part


class NestedPrinter(StrPrinter):
    """Prints nested expressions in the language's own notation."""

    def _wrap(self, expr) -> str:
        text = self._print(expr)
        simple = isinstance(expr, (sympy.Symbol, sympy.Number, sympy.Function)) and not isinstance(expr, Matmul)
        return text if simple else f"({text})"

    def _print_Matmul(self, expr) -> str:
        return f"{self._wrap(expr.args[0])} @ {self._wrap(expr.args[1])}"

    def _print_Outer(self, expr) -> str:
        return f"outer({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_ReduceSum(self, expr) -> str:
        axis = int(expr.args[1])
        return f"sum({self._print(expr.args[0])}{'' if axis < 0 else f', {axis}'})"

    def _print_ReduceMax(self, expr) -> str:
        axis = int(expr.args[1])
        return f"max({self._print(expr.args[0])}{'' if axis < 0 else f', axis={axis}'})"

    def _print_ReduceMin(self, expr) -> str:
        axis = int(expr.args[1])
        return f"min({self._print(expr.args[0])}{'' if axis < 0 else f', axis={axis}'})"

    def _print_Part(self, expr) -> str:
        axis, index, count, drop = (int(a) for a in expr.args[1:])
        slot = str(index) if drop else f"{index}/{count}"
        return f"{self._wrap(expr.args[0])}[{':,' * axis}{slot}]"

    def _print_Placed(self, expr) -> str:
        view = View("@", tuple(int(a) for a in expr.args[1]))
        return view.label().replace("@", self._wrap(expr.args[0]), 1)

    def _print_Piecewise(self, expr) -> str:
        (a, cond), (b, _) = expr.args[:2]
        return f"where({self._print(cond)}, {self._print(a)}, {self._print(b)})"

    def _print_maximum(self, expr) -> str:
        return "max(" + ", ".join(self._elementwise_operand(a) for a in expr.args) + ")"

    def _print_minimum(self, expr) -> str:
        return "min(" + ", ".join(self._elementwise_operand(a) for a in expr.args) + ")"

    def _elementwise_operand(self, expr) -> str:
        # printed as a float, so that a reader never mistakes it for an axis
        return f"{int(expr)}.0" if isinstance(expr, sympy.Integer) else self._print(expr)

    def _print_Relational(self, expr) -> str:
        return f"{self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)}"

    def _print_Abs(self, expr) -> str:
        return f"abs({self._print(expr.args[0])})"


def show(expr: sympy.Expr) -> str:
    """A nested expression in the language's notation.

    Example:
        >>> show(Outer(*sympy.symbols("k v")) + Matmul(*sympy.symbols("q S")))
        'q @ S + outer(k, v)'
    """
    return NestedPrinter().doprint(expr)
