"""In-step reductions of a chunked stage's pieces, and the spaces their leaves may live in.

A piece may sum over a vector within the step (``r @ (u * k)``, ``sum(k * k)``, ``r @ outer(k, v)``
read as ``(r @ k) v``): :class:`Reductions` turns each into a scalar symbol of its own, computed
before the pieces that use it. :func:`check_spaces` checks that every leaf a piece reads is a
scalar or a vector of the piece's space.

Example:
    >>> str(unsupported("c", "needs one key dim, has K and L"))
    "the chunked kernels do not cover cell c: needs one key dim, has K and L; backend='reference' runs it"
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.nested import show
from rnnc.compiler.shapes import same_dim
from rnnc.compiler.shapes import show as show_shape
from rnnc.compiler.symbols import STRUCTURAL, Matmul, Outer, ReduceSum, tensor_symbol
from rnnc.errors import BackendError
from rnnc.templates.names import internal


@dataclass(frozen=True)
class Reduction:
    """A scalar per step: ``sum`` over ``space`` of ``summand`` (an in-step reduction of step values)."""

    symbol: sympy.Symbol
    space: str  # key or value
    summand: sympy.Expr


def unsupported(cell: str, why: str) -> BackendError:
    """The error for a stage the chunked kernels do not cover, saying what they would need.

    Example:
        >>> str(unsupported("c", "needs one key dim, has K and L"))
        "the chunked kernels do not cover cell c: needs one key dim, has K and L; backend='reference' runs it"
    """
    return BackendError(f"the chunked kernels do not cover cell {cell}: {why}; backend='reference' runs it")


class Reductions:
    """Replaces in-step reductions by scalar symbols (``red0``, ``red1``...), collecting their summands."""

    def __init__(self, cell, leaves, key_dim, value_dim, found: dict):
        self.cell = cell
        self.shapes = {x.name: x.shape for x in leaves}
        self.key_dim, self.value_dim = key_dim, value_dim
        self.found = found

    def __call__(self, expr, reads=frozenset()):
        if expr is None:
            return None
        expr = sympy.sympify(expr)
        allowed = set(self.shapes) | set(reads)
        for symbol in expr.free_symbols:
            if symbol.name not in allowed:
                raise unsupported(self.cell, f"needs pieces over inputs, weights and earlier states, has {symbol.name}")
        return self._replace(expr)

    def _replace(self, expr):
        if isinstance(expr, Matmul) and isinstance(expr.args[1], Outer):  # r @ outer(a, b) = (r @ a) * b
            a, b = expr.args[1].args
            return self._replace(Matmul(expr.args[0], a)) * self._replace(b)
        if isinstance(expr, Matmul) and isinstance(expr.args[0], Outer):  # outer(a, b) @ r = a * (b @ r)
            a, b = expr.args[0].args
            return self._replace(a) * self._replace(Matmul(b, expr.args[1]))
        if isinstance(expr, (Matmul, ReduceSum)):
            if isinstance(expr, Matmul):
                a, b = (self._replace(x) for x in expr.args)
                summand = a * b
            else:
                if int(expr.args[1]) not in (-1, 0):
                    raise unsupported(self.cell, f"needs sums over the one axis of a vector, has {show(expr)}")
                summand = self._replace(expr.args[0])
            space = self._vector_space(expr, summand)
            if summand not in self.found:
                self.found[summand] = Reduction(tensor_symbol(internal(f"red{len(self.found)}")), space, summand)
            return self.found[summand].symbol
        if isinstance(expr, STRUCTURAL):
            raise unsupported(self.cell, f"needs pointwise pieces and reductions of vectors, has {show(expr)}")
        if not expr.args:
            return expr
        return expr.func(*(self._replace(a) for a in expr.args))

    def _vector_space(self, expr, summand) -> str:
        dims = {self.shapes[s.name] for s in summand.free_symbols if len(self.shapes.get(s.name, ())) > 0}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise unsupported(self.cell, f"needs reductions of vectors of one dim, has {show(expr)}")
        (dim,) = next(iter(dims))
        if same_dim(dim, self.key_dim):
            return "key"
        if self.value_dim is not None and same_dim(dim, self.value_dim):
            return "value"
        raise unsupported(self.cell, f"needs reductions over the key or value dim, has {show(expr)} over {dim}")


def check_spaces(spec) -> None:
    """Every leaf a piece reads is a scalar or a vector of the piece's space."""
    dims = {"key": spec.key_dim, "value": spec.value_dim}
    reduction_space = {r.symbol.name: r.space for r in spec.reductions}
    checks = [(label, expr, space) for label, expr, space in spec.pieces()]
    checks += [(str(r.symbol), r.summand, r.space) for r in spec.reductions]
    read_names = {r.symbol: spec.state(r.state).vector for r in spec.reads}
    for label, expr, space in checks:
        for symbol in expr.free_symbols:
            name = symbol.name
            if name in reduction_space:
                continue
            if name in read_names:
                if not read_names[name] and space != "value":
                    raise unsupported(spec.cell, f"needs reads of matrix states in value-space outputs, has {label}")
                continue
            shape = spec.leaf(name).shape
            if len(shape) == 0:
                continue
            if len(shape) > 1 or space == "scalar" or dims[space] is None or not same_dim(shape[0], dims[space]):
                raise unsupported(
                    spec.cell,
                    f"needs the {label} piece ({space} space) to read scalars or [{dims.get(space)}] vectors, "
                    f"has {name} {show_shape(shape)}",
                )
