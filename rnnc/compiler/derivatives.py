"""Symbolic derivatives of every pointwise expression of the step, as data for backward passes.

The step is a graph of structural atoms (``@``, ``outer``, ``sum``, parts) joined
by pointwise expressions. Backpropagation needs, for every pointwise expression
(each state update, each output, each argument of a structural atom), its
partial derivative with respect to every view it reads. The structural atoms
have fixed adjoint rules (``dA = dY @ B^T`` ...), so these partials and those
rules give the derivative of every update and output with respect to every
state, input and weight. Common subexpressions are eliminated across all of them.

Example:
    >>> from rnnc.compiler import lower_source
    >>> ir = lower_source(open("examples/hgrn.rnn").read())
    >>> d = derive(ir)
    >>> dict(d.of("update", "h").wrt)
    {'g': h*exp(g), 'h': exp(g), 'x': 1}
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.ir import IR
from rnnc.compiler.shapes import Shape


@dataclass(frozen=True)
class Partials:
    """One pointwise expression and its partial derivative per view label (sorted).

    ``kind`` is ``update`` (``name`` a state), ``output`` or ``arg`` (argument
    ``index`` of atom ``name``).
    """

    kind: str
    name: str
    index: int
    expr: sympy.Expr
    shape: Shape
    wrt: tuple[tuple[str, sympy.Expr], ...]


@dataclass(frozen=True)
class Derivatives:
    """All partials of a step, plus their common subexpressions.

    ``common`` are ``(symbol, expression)`` pairs in dependency order, and
    ``reduced`` the partials (flattened in the order of ``partials``) written with them.
    """

    partials: tuple[Partials, ...]
    common: tuple[tuple[sympy.Symbol, sympy.Expr], ...]
    reduced: tuple[sympy.Expr, ...]

    def of(self, kind: str, name: str, index: int = 0) -> Partials:
        """The partials of one expression.

        Example:
            >>> from rnnc.compiler import lower_source
            >>> d = derive(lower_source(open("examples/elman.rnn").read()))
            >>> d.of("arg", "R @ h", 1).expr
            h
        """
        for p in self.partials:
            if (p.kind, p.name, p.index) == (kind, name, index):
                return p
        raise KeyError((kind, name, index))


def pointwise_expressions(ir: IR) -> list[tuple[str, str, int, sympy.Expr, Shape]]:
    """Every pointwise expression of the step: (kind, name, index, expr, shape).

    Example:
        >>> from rnnc.compiler import lower_source
        >>> [e[:2] for e in pointwise_expressions(lower_source(open("examples/hgrn.rnn").read()))]
        [('update', 'h'), ('output', 'h')]
    """
    out = [("update", r.name, 0, r.expr, r.shape) for r in ir.updates]
    out += [("output", r.name, 0, r.expr, r.shape) for r in ir.outputs]
    for atom in ir.atoms:
        for i, (arg, shape) in enumerate(zip(atom.args, atom.arg_shapes)):
            out.append(("arg", atom.name, i, arg, shape))
    return out


def derive(ir: IR) -> Derivatives:
    """Differentiate every pointwise expression of ``ir`` with respect to each view it reads.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> d = derive(lower_source(open("examples/mingru.rnn").read()))
        >>> sorted(dict(d.of("update", "h").wrt))
        ['gz', 'h', 'hc']
    """
    partials = []
    for kind, name, index, expr, shape in pointwise_expressions(ir):
        symbols = ir.view_symbols(expr)
        wrt = tuple((s.name, sympy.diff(expr, s)) for s in symbols)
        partials.append(Partials(kind, name, index, expr, shape, wrt))
    flat = [d for p in partials for _, d in p.wrt]
    common, reduced = sympy.cse(flat, symbols=sympy.numbered_symbols("cse"), order="none")
    return Derivatives(tuple(partials), tuple(common), tuple(reduced))
