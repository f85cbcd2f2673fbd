"""The IR: a cell's step in let-normal form, every name resolved, every shape known.

*Atoms* are tensors: the declared inputs, weights and (previous) states, and
the results of structural operations (``@``, ``outer``, ``sum``, parts of a
split). Everything pointwise is a sympy expression over *views* of atoms
(:class:`rnnc.compiler.symbols.View`), inlined into whatever uses it: the
arguments of structural atoms, the state updates and the outputs.

Example:
    >>> from rnnc.compiler import lower_source
    >>> ir = lower_source(open("examples/elman.rnn").read())
    >>> [a.name for a in ir.atoms]
    ['x', 'R', 'b', 'h', 'R @ h']
    >>> ir.update("h").expr
    tanh(R @ h + b + x)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sympy

from rnnc.compiler.shapes import Shape, show
from rnnc.compiler.symbols import View
from rnnc.errors import Span

LEAF_KINDS = ("input", "weight", "state")


@dataclass(frozen=True)
class Declared:
    """A declared tensor: ``kind`` is input, weight or state."""

    kind: str
    name: str
    shape: Shape
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Atom:
    """A tensor of the step.

    ``op`` is ``input``/``weight``/``state`` (a leaf; a state leaf is the value
    from the previous step), ``matmul`` (args a, b), ``outer`` (args a, b),
    ``sum``, ``max`` or ``min`` (a reduction of arg x; ``params`` = (axis,) or () for all
    axes) or ``part``
    (arg: the parent atom's plain view; ``params`` = (axis, index, count, drop)).
    ``arg_shapes`` are the index spaces of the argument expressions.
    """

    name: str
    op: str
    shape: Shape
    args: tuple[sympy.Expr, ...] = ()
    arg_shapes: tuple[Shape, ...] = ()
    params: tuple[int, ...] = ()

    @property
    def is_leaf(self) -> bool:
        """True for inputs, weights and previous states."""
        return self.op in LEAF_KINDS


@dataclass(frozen=True)
class Result:
    """A state update or an output: a pointwise expression in its own shape."""

    name: str
    expr: sympy.Expr
    shape: Shape
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class IR:
    """One cell after lowering.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> ir = lower_source(open("examples/gla.rnn").read())
        >>> ir.dims, [d.name for d in ir.states]
        (('K', 'V'), ['S'])
    """

    cell: str
    dims: tuple[str, ...]
    decls: tuple[Declared, ...]
    atoms: tuple[Atom, ...]
    views: tuple[tuple[str, View], ...]
    updates: tuple[Result, ...]
    outputs: tuple[Result, ...]
    filename: str = field(default="<string>", compare=False)
    span: Span | None = field(default=None, compare=False, repr=False)
    # the same cell lowered with every read of a state after its update kept as the symbol s'
    # (an atom of op "new"): what the analysis decomposes into components; never code-generated
    marked: IR | None = field(default=None, compare=False, repr=False)

    def _declared(self, kind: str) -> tuple[Declared, ...]:
        return tuple(d for d in self.decls if d.kind == kind)

    @property
    def inputs(self) -> tuple[Declared, ...]:
        """Declared inputs, in source order."""
        return self._declared("input")

    @property
    def weights(self) -> tuple[Declared, ...]:
        """Declared weights, in source order."""
        return self._declared("weight")

    @property
    def states(self) -> tuple[Declared, ...]:
        """Declared states, in source order."""
        return self._declared("state")

    def atom(self, name: str) -> Atom:
        """The atom called ``name``."""
        for a in self.atoms:
            if a.name == name:
                return a
        raise KeyError(name)

    def view_symbols(self, expr: sympy.Expr) -> list[sympy.Symbol]:
        """The view symbols of ``expr``, sorted by name (dims read as numbers are left out)."""
        views = dict(self.views)
        return sorted((s for s in expr.free_symbols if s.name in views), key=lambda s: s.name)

    def view(self, symbol: sympy.Symbol | str) -> View:
        """The view a symbol stands for."""
        return dict(self.views)[str(symbol)]

    def update(self, state: str) -> Result:
        """The update of ``state``."""
        return next(u for u in self.updates if u.name == state)

    def key(self) -> str:
        """A stable hash of the canonical form (same cell text, same key).

        Example:
            >>> from rnnc.compiler import lower_source
            >>> text = open("examples/hgrn.rnn").read()
            >>> lower_source(text).key() == lower_source(text + "\\n# edit").key()
            True
        """
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

    def canonical(self) -> str:
        """A deterministic text of everything that defines the cell's meaning."""
        lines = [f"cell {self.cell}({', '.join(self.dims)})"]
        lines += [f"{d.kind} {d.name}: {show(d.shape)}" for d in self.decls]
        for a in self.atoms:
            args = "; ".join(sympy.srepr(x) for x in a.args)
            shapes = " ".join(show(s) for s in a.arg_shapes)
            lines.append(f"atom {a.name!r} = {a.op}{a.params} {show(a.shape)} ({args}) in {shapes}")
        lines += [f"view {k} = {v.atom!r}{v.axes}" for k, v in self.views]
        lines += [f"update {r.name} {show(r.shape)} = {sympy.srepr(r.expr)}" for r in self.updates]
        lines += [f"output {r.name} {show(r.shape)} = {sympy.srepr(r.expr)}" for r in self.outputs]
        return "\n".join(lines)
