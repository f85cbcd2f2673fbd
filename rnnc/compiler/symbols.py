"""The sympy vocabulary of the IR: pointwise functions, structural operators, views.

A pointwise expression in the IR is a sympy expression for one generic element
of a tensor. Its symbols are *views*: an atom (a declared tensor or the result
of a structural operation) placed into the expression's index space. Axes are
counted from the right, as NumPy broadcasting aligns them, so a view keeps its
meaning when an expression is broadcast to more leading axes.

Example:
    >>> v = View("g", (-2,))
    >>> v.label()
    'g[:,None]'
    >>> float(sigmoid(0))
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy


def tensor_symbol(name: str) -> sympy.Symbol:
    """The real-valued sympy symbol of a view or leaf called ``name``.

    Example:
        >>> tensor_symbol("h").is_real
        True
    """
    return sympy.Symbol(name, real=True)


@dataclass(frozen=True)
class View:
    """Atom ``atom`` placed in an index space: atom axis ``i`` sits at ``axes[i]`` (< 0).

    Example:
        >>> View("S", (-1, -2)).label()
        'S.T'
        >>> View("h", (-1,)).label()
        'h'
    """

    atom: str
    axes: tuple[int, ...]

    def is_plain(self) -> bool:
        """True when the view is NumPy's implicit right-aligned broadcast."""
        rank = len(self.axes)
        return self.axes == tuple(range(-rank, 0))

    def label(self) -> str:
        """A readable, unique name in NumPy notation."""
        if self.is_plain():
            return self.atom
        if list(self.axes) == sorted(self.axes):
            slots = [":" if j in self.axes else "None" for j in range(min(self.axes), 0)]
            return f"{self.atom}[{','.join(slots)}]"
        if self.axes == (-1, -2):
            return f"{self.atom}.T"
        return f"{self.atom}<{','.join(str(a) for a in self.axes)}>"

    def symbol(self) -> sympy.Symbol:
        """The sympy symbol that stands for this view."""
        return tensor_symbol(self.label())


def plain_view(atom: str, rank: int) -> View:
    """The implicit broadcast view of an atom of the given rank.

    Example:
        >>> plain_view("R", 3).axes
        (-3, -2, -1)
    """
    return View(atom, tuple(range(-rank, 0)))


# --- pointwise functions that sympy lacks -------------------------------------------


class sigmoid(sympy.Function):  # noqa: N801 - printed as the language spells it
    """The logistic function 1 / (1 + exp(-x)).

    Example:
        >>> sigmoid(sympy.Symbol("x")).diff(sympy.Symbol("x"))
        (1 - sigmoid(x))*sigmoid(x)
    """

    is_real = True

    def _eval_evalf(self, prec):  # numbers: the textbook formula
        x = self.args[0]
        return (1 / (1 + sympy.exp(-x)))._eval_evalf(prec)

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / (1 + sympy.exp(-x))
        return None


class softplus(sympy.Function):  # noqa: N801
    """log(1 + exp(x)).

    Example:
        >>> softplus(sympy.Symbol("x")).diff(sympy.Symbol("x"))
        sigmoid(x)
    """

    is_real = True

    def _eval_evalf(self, prec):  # numbers: the textbook formula
        x = self.args[0]
        return (sympy.log(1 + sympy.exp(x)))._eval_evalf(prec)

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class logsigmoid(sympy.Function):  # noqa: N801
    """log(sigmoid(x)) = -softplus(-x).

    Example:
        >>> logsigmoid(sympy.Symbol("x")).diff(sympy.Symbol("x"))
        sigmoid(-x)
    """

    is_real = True

    def _eval_evalf(self, prec):  # numbers: the textbook formula
        x = self.args[0]
        return (-sympy.log(1 + sympy.exp(-x)))._eval_evalf(prec)

    def fdiff(self, argindex=1):
        return sigmoid(-self.args[0])


class relu(sympy.Function):  # noqa: N801
    """max(x, 0); its derivative at 0 is 0, as in PyTorch.

    Example:
        >>> relu(sympy.Symbol("x")).diff(sympy.Symbol("x"))
        Heaviside(x, 0)
    """

    is_real = True

    def _eval_evalf(self, prec):  # numbers: the textbook formula
        x = self.args[0]
        return (sympy.Max(x, 0))._eval_evalf(prec)

    def fdiff(self, argindex=1):
        return sympy.Heaviside(self.args[0], 0)


class maximum(sympy.Function):  # noqa: N801
    """max(a, b) elementwise; at a tie each side gets half the gradient, as in PyTorch.

    (sympy's own Max simplifies on every construction, which is slow on large updates.)

    Example:
        >>> a, b = sympy.symbols("a b")
        >>> maximum(a, b).diff(a)
        Heaviside(a - b)
    """

    nargs = 2
    is_real = True

    def _eval_evalf(self, prec):  # numbers: sympy's own Max
        return sympy.Max(*self.args)._eval_evalf(prec)

    def fdiff(self, argindex=1):
        a, b = self.args
        diff = a - b if argindex == 1 else b - a
        return sympy.Heaviside(diff, sympy.Rational(1, 2))

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return a if a >= b else b
        if a == b:
            return a
        return None


class minimum(sympy.Function):  # noqa: N801
    """min(a, b) elementwise; at a tie each side gets half the gradient, as in PyTorch.

    Example:
        >>> a, b = sympy.symbols("a b")
        >>> minimum(a, b).diff(a)
        Heaviside(-a + b)
    """

    nargs = 2
    is_real = True

    def _eval_evalf(self, prec):  # numbers: sympy's own Min
        return sympy.Min(*self.args)._eval_evalf(prec)

    def fdiff(self, argindex=1):
        a, b = self.args
        diff = b - a if argindex == 1 else a - b
        return sympy.Heaviside(diff, sympy.Rational(1, 2))

    @classmethod
    def eval(cls, a, b):
        if a.is_Number and b.is_Number:
            return a if a <= b else b
        if a == b:
            return a
        return None


# --- structural operators (only in the nested form used by the analysis) -------------


class Matmul(sympy.Function):
    """``a @ b`` with NumPy semantics; linear in each argument.

    Example:
        >>> Matmul(*sympy.symbols("q S"))
        Matmul(q, S)
    """

    nargs = 2
    is_commutative = True


class Outer(sympy.Function):
    """``outer(a, b)`` of two vectors.

    Example:
        >>> Outer(*sympy.symbols("k v"))
        Outer(k, v)
    """

    nargs = 2
    is_commutative = True


class ReduceSum(sympy.Function):
    """``sum(x, axis)``; ``axis`` is a sympy Integer or ``None`` for all axes.

    Example:
        >>> ReduceSum(sympy.Symbol("x"), sympy.Integer(0))
        ReduceSum(x, 0)
    """

    nargs = 2
    is_commutative = True


class ReduceMax(sympy.Function):
    """``max(x, axis)``: the largest entry along ``axis`` (``-1``: over all axes); not linear.

    Its subgradient goes to the largest entries, split evenly between ties (as ``max(a, b)``
    and PyTorch's ``amax`` do).

    Example:
        >>> ReduceMax(sympy.Symbol("x"), sympy.Integer(0))
        ReduceMax(x, 0)
    """

    nargs = 2
    is_commutative = True
    is_real = True


class ReduceMin(sympy.Function):
    """``min(x, axis)``: the smallest entry along ``axis`` (``-1``: over all axes); not linear.

    Example:
        >>> ReduceMin(sympy.Symbol("x"), sympy.Integer(-1))
        ReduceMin(x, -1)
    """

    nargs = 2
    is_commutative = True
    is_real = True


class Part(sympy.Function):
    """Part ``index`` of ``count`` of ``x`` along ``axis`` (``drop``: the axis goes).

    Example:
        >>> Part(sympy.Symbol("x"), 0, 1, 4, 1)
        Part(x, 0, 1, 4, 1)
    """

    nargs = 5
    is_commutative = True


class Placed(sympy.Function):
    """``x`` placed in a larger index space: its axes go to ``axes`` (negative).

    Example:
        >>> Placed(sympy.Symbol("g"), sympy.Tuple(-2))
        Placed(g, (-2,))
    """

    nargs = 2
    is_commutative = True


# the structural operators that are (multi)linear in their tensor arguments, and all of them
LINEAR_STRUCTURAL = (Matmul, Outer, ReduceSum, Part, Placed)
REDUCTIONS = {"sum": ReduceSum, "max": ReduceMax, "min": ReduceMin}
STRUCTURAL = (*LINEAR_STRUCTURAL, ReduceMax, ReduceMin)

# arguments of each structural operator that are tensors (the rest are integers)
TENSOR_ARGS = {Matmul: (0, 1), Outer: (0, 1), Part: (0,), Placed: (0,)}
TENSOR_ARGS.update({reduction: (0,) for reduction in REDUCTIONS.values()})

UNARY_FUNCTIONS = {
    "sigmoid": sigmoid,
    "tanh": sympy.tanh,
    "exp": sympy.exp,
    "log": sympy.log,
    "relu": relu,
    "softplus": softplus,
    "logsigmoid": logsigmoid,
    "sqrt": sympy.sqrt,
    "abs": sympy.Abs,
    "cos": sympy.cos,
    "sin": sympy.sin,
}
BINARY_FUNCTIONS = {"max": maximum, "min": minimum}
COMPARISONS = {
    "<": sympy.StrictLessThan,
    "<=": sympy.LessThan,
    ">": sympy.StrictGreaterThan,
    ">=": sympy.GreaterThan,
    "==": sympy.Eq,
    "!=": sympy.Ne,
}
STRUCTURAL_FUNCTIONS = ("outer", "sum")
ALL_FUNCTIONS = tuple(sorted([*UNARY_FUNCTIONS, *BINARY_FUNCTIONS, "where", *STRUCTURAL_FUNCTIONS]))


def split_fraction(product: sympy.Expr) -> tuple[list[sympy.Expr], list[sympy.Expr]]:
    """The factors of a product above and below the fraction bar, in a fixed order (for printers).

    Example:
        >>> x, y = sympy.symbols("x y")
        >>> split_fraction(x / (2 * y**2))
        ([x], [2, y**2])
    """
    numer, denom = [], []
    for factor in sorted(sympy.Mul.make_args(product), key=sympy.default_sort_key):
        if isinstance(factor, sympy.Pow) and factor.exp.is_number and factor.exp < 0:
            denom.append(factor.base ** (-factor.exp))
        elif factor.is_Rational and not factor.is_Integer and factor.p == 1:
            denom.append(sympy.Integer(factor.q))
        else:
            numer.append(factor)
    return numer, denom
