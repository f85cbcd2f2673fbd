"""Shape binding compiled once per cell: no sympy on the call path.

A cell's declared shapes are polynomials in its dims (``[4, H]``, ``[2*H]``, ``[H*K]``). When the
cell is compiled, :class:`ShapeBinder` decides which axis of which argument tells each dim and
turns every declared axis into a small polynomial evaluated with Python integers. A call then
reads B, T, NH and the dims off the tensors' shapes and checks every axis with integer arithmetic.
A shape it cannot settle that way (a mismatch, a missing state, a dim it cannot solve for) goes
back to the sympy binder in :mod:`rnnc.runtime.arguments`, which finds the clash and words the error.
The same code runs on ``torch.SymInt`` sizes when ``torch.compile`` traces a call.

Example:
    >>> from rnnc.compiler import lower_source
    >>> binder = ShapeBinder(lower_source("cell c(H) { input x: [2*H]; state h: [H]; a, b = x; h = h + a; emit h }"))
    >>> binder.sizes({"x": (3, 5, 1, 8)}, {})
    {'B': 3, 'T': 5, 'NH': 1, 'dims': {'H': 4}}
    >>> binder.sizes({"x": (3, 5, 1, 7)}, {}) is None
    True
"""

from __future__ import annotations

from functools import lru_cache

import sympy

from rnnc.compiler.ir import IR

LAYOUT = {"input": ("B", "T", "NH"), "weight": ("NH",), "state": ("B", "NH")}
_LAYOUT_SLOT = {"B": "$B", "T": "$T", "NH": "$NH"}  # never a dim's name

Polynomial = tuple[tuple[int, tuple[tuple[str, int], ...]], ...]  # ((coefficient, ((name, power), ...)), ...)


@lru_cache(maxsize=4096)
def polynomial(expr: sympy.Expr) -> Polynomial | None:
    """``expr`` as integer-coefficient monomials over symbol names, or None when it is not one.

    Example:
        >>> H, K = sympy.symbols("H K", positive=True, integer=True)
        >>> polynomial(4 * H * K + 1)
        ((1, ()), (4, (('H', 1), ('K', 1))))
        >>> polynomial(H / 2) is None
        True
    """
    expr = sympy.expand(sympy.sympify(expr))
    names = sorted(expr.free_symbols, key=str)
    if not names:
        return ((int(expr), ()),) if expr.is_integer else None
    poly = sympy.Poly(expr, *names)
    terms = []
    for powers, coefficient in sorted(poly.terms()):
        if not coefficient.is_integer:
            return None
        monomial = tuple((str(s), int(p)) for s, p in zip(names, powers) if p)
        terms.append((int(coefficient), monomial))
    return tuple(terms)


def evaluate(poly: Polynomial, values: dict) -> int:
    """The value of a polynomial at ``values`` (ints or SymInts).

    Example:
        >>> evaluate(((1, ()), (4, (("H", 1),))), {"H": 3})
        13
    """
    total = 0
    for coefficient, monomial in poly:
        term = coefficient
        for name, power in monomial:
            term = term * values[name] ** power if power != 1 else term * values[name]
        total = total + term
    return total


@lru_cache(maxsize=4096)
def shape_polynomials(shape: tuple) -> tuple[Polynomial, ...] | None:
    """Each axis of a symbolic shape as a polynomial (None if any is not one).

    Example:
        >>> H = sympy.Symbol("H", positive=True, integer=True)
        >>> shape_polynomials((4, H))
        (((4, ()),), ((1, (('H', 1),)),))
    """
    polys = tuple(polynomial(d) for d in shape)
    return None if any(p is None for p in polys) else polys


def concrete_shape(shape: tuple, dims: dict) -> tuple:
    """Sizes of a symbolic shape under bound dims, without sympy on a warm path.

    Example:
        >>> H = sympy.Symbol("H", positive=True, integer=True)
        >>> concrete_shape((4, 2 * H), {"H": 3})
        (4, 6)
    """
    polys = shape_polynomials(tuple(shape))
    if polys is None:  # a shape that is no integer polynomial: sympy, once per call
        subs = {sympy.Symbol(k, positive=True, integer=True): v for k, v in dims.items()}
        return tuple(int(sympy.sympify(d).subs(subs)) for d in shape)
    return tuple(evaluate(p, dims) for p in polys)


class ShapeBinder:
    """Reads B, T, NH and the dims off given shapes; checks every declared axis.

    ``sizes`` returns None whenever something does not fit (the caller then runs the sympy
    binder, which raises the error), so this class never words an error itself.
    """

    def __init__(self, ir: IR):
        self.ir = ir
        self.layouts = {}
        self.own = {}  # each declared tensor's own axes (after B, T, NH) as polynomials
        for decl in ir.decls:
            own = shape_polynomials(tuple(decl.shape))
            self.own[decl.name] = own
            prefix = tuple(((1, ((_LAYOUT_SLOT[a], 1),)),) for a in LAYOUT[decl.kind])
            self.layouts[decl.name] = None if own is None else prefix + own
        self.compiled = all(v is not None for v in self.layouts.values()) and bool(ir.inputs)
        self.plan = self._resolution_plan() if self.compiled else None

    def _resolution_plan(self):
        """(name, decl, axis, a, b) steps: ``name = (size - b) // a`` with a, b polynomials in
        names bound earlier; inputs and weights first, then states in declaration order."""
        order = [d for d in self.ir.decls if d.kind != "state"] + list(self.ir.states)
        wanted = set(_LAYOUT_SLOT.values()) | set(self.ir.dims)
        known: set[str] = set()
        steps = []
        progress = True
        while progress and known != wanted:
            progress = False
            for decl in order:
                for axis, poly in enumerate(self.layouts[decl.name]):
                    unknown = {n for _, mono in poly for n, _ in mono} - known
                    if len(unknown) != 1:
                        continue
                    (name,) = unknown
                    split = _linear_in(poly, name)
                    if split is None:
                        continue
                    steps.append((name, decl.name, axis, *split))
                    known.add(name)
                    progress = True
        return tuple(steps) if known == wanted else None

    def own_shape(self, name: str, dims: dict) -> tuple:
        """The own axes of declared tensor ``name`` under bound dims (safe to trace: no sympy)."""
        own = self.own[name]
        if own is None:
            return concrete_shape(tuple(next(d for d in self.ir.decls if d.name == name).shape), dims)
        return tuple(evaluate(p, dims) for p in own)

    def sizes(self, shapes: dict[str, tuple], states: dict[str, tuple]) -> dict | None:
        """``{"B", "T", "NH", "dims"}`` from the shapes of the given arguments, or None.

        ``shapes`` holds inputs and weights, ``states`` the given initial states.
        """
        if self.plan is None:
            return None
        given = {**shapes, **states}
        values: dict = {}
        for name, decl, axis, a, b in self.plan:
            shape = given.get(decl)
            if shape is None or axis >= len(shape):
                return None
            a_value, rest = evaluate(a, values), shape[axis] - evaluate(b, values)
            if isinstance(a_value, int) and a_value <= 0:
                return None
            if a_value == 1:
                value = rest
            else:
                value = rest // a_value
                if value * a_value != rest:
                    return None
            if isinstance(value, int) and value <= 0 and name not in ("$B", "$T"):
                return None  # heads and dims are positive (B and T may be 0)
            values[name] = value
        for decl, shape in given.items():
            layout = self.layouts[decl]
            if len(shape) != len(layout):
                return None
            for size, poly in zip(shape, layout):
                if size != evaluate(poly, values):
                    return None
        dims = {d: values[d] for d in self.ir.dims}
        return {"B": values["$B"], "T": values["$T"], "NH": values["$NH"], "dims": dims}


def _linear_in(poly: Polynomial, name: str):
    """(a, b) with poly = a * name + b, a and b free of name; None when poly is not linear in it."""
    a, b = [], []
    for coefficient, monomial in poly:
        powers = dict(monomial)
        power = powers.pop(name, 0)
        rest = tuple(sorted(powers.items()))
        if power == 0:
            b.append((coefficient, rest))
        elif power == 1:
            a.append((coefficient, rest))
        else:
            return None
    return tuple(a), tuple(b)
