"""Reverse-mode differentiation of a scan stage's tile expressions, written out as kernel lines.

Each tile symbol (a leaf, a state's old or new value, a reduction) collects gradient *terms*.
A consumer (an output, a component's pieces, a reduction) hands its upstream gradients and its
expressions to :meth:`Gradients.propagate`: the partials are sympy's, shared subexpressions
become temporaries (``sympy.cse``), and each term is summed down to its symbol's layout, over
the axes (and for a weight, the time steps) the symbol does not span, with padding masked off.
A symbol's gradient is read with :meth:`Gradients.take` once every consumer has added to it:
the kernel walks the stage's steps in reverse, so that holds.

Example:
    >>> import sympy
    >>> from rnnc.templates.scan_layout import Layout
    >>> x, w, up = sympy.symbols("x_u wt_w do_y", real=True)
    >>> layouts = {x: Layout((0,)), w: Layout((0,), False), up: Layout((0,))}
    >>> lines = []
    >>> count = itertools.count()
    >>> grads = Gradients(layouts, lambda layout: f"mask_{layout.axes}", lines, lambda stem: f"{stem}_{next(count)}")
    >>> grads.propagate([(up, x * w)])
    >>> grads.take(x), grads.take(w)
    (do_y*wt_w, gt_0)
    >>> print(lines[0])
            gt_0 = tl.sum(tl.where(mask_(0,), do_y * x_u, 0.0), axis=0, keep_dims=True)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import sympy

from rnnc.templates.scan_layout import SCALAR, Layout
from rnnc.templates.triton_printer import to_triton

INDENT = " " * 8


class _Names(dict):
    """Tile symbols are named after their kernel variables: print them as they are."""

    def __missing__(self, key: str) -> str:
        return key


def tl_source(expr) -> str:
    """Triton source of a tile expression (symbols print as their names).

    Example:
        >>> import sympy
        >>> tl_source(sympy.exp(sympy.Symbol("x_g")))
        'tl.exp(x_g)'
    """
    return to_triton(sympy.sympify(expr), _Names())


class Gradients:
    """Gradient terms per tile symbol; ``mask(layout)`` names the mask variable of a layout."""

    def __init__(self, layouts: dict, mask: Callable[[Layout], str], lines: list[str], fresh, constants=()):
        self.layouts = layouts
        self.constants = set(constants)  # symbols with no gradient (dims read as numbers)
        self.mask = mask
        self.lines = lines
        self.terms: dict[sympy.Symbol, list[sympy.Expr]] = {}
        self._fresh = fresh  # stem -> a new identifier (the module's allocator)
        self.used: set[sympy.Symbol] = set()  # every symbol the emitted lines read

    def layout_of(self, expr) -> Layout:
        """The union of the layouts of the expression's symbols."""
        layout = SCALAR
        for s in sympy.sympify(expr).free_symbols:
            layout = layout.union(self.layouts[s])
        return layout

    def emit(self, name: str, expr, layout: Layout | None = None) -> sympy.Symbol:
        """A line ``name = expr``; the symbol of ``name``, whose layout is the expression's unless given."""
        expr = sympy.sympify(expr)
        self.used |= expr.free_symbols
        symbol = sympy.Symbol(name, real=True)
        self.layouts[symbol] = layout if layout is not None else self.layout_of(expr)
        self.lines.append(f"{INDENT}{name} = {tl_source(expr)}")
        return symbol

    def _temporary(self, stem: str) -> str:
        return self._fresh(stem)

    def add(self, symbol: sympy.Symbol, term: sympy.Expr) -> None:
        """Add ``term`` (in a layout within the symbol's) to the symbol's gradient."""
        if symbol in self.terms and self.terms[symbol] is None:  # pragma: no cover - the step order prevents it
            raise AssertionError(f"a gradient term reached {symbol} after its gradient was used")
        self.terms.setdefault(symbol, []).append(term)

    def take(self, symbol: sympy.Symbol) -> sympy.Expr | None:
        """The gradient of ``symbol`` (None when nothing reached it); later terms are an error."""
        terms = self.terms.pop(symbol, None)
        self.terms[symbol] = None  # taken: a term added after this would be lost
        if not terms:
            return None
        return sympy.Add(*terms)

    def propagate(self, pairs: list[tuple[sympy.Expr, sympy.Expr]]) -> None:
        """Add ``sum_i upstream_i * d expr_i / d s`` to every symbol ``s`` the expressions read."""
        wrt = sorted({s for _, e in pairs for s in sympy.sympify(e).free_symbols if self._differentiable(s)},
                     key=lambda s: s.name)  # fmt: skip
        partials = []
        for s in wrt:
            total = sum((up * sympy.diff(e, s) for up, e in pairs), sympy.Integer(0))
            partials.append(total)
        if not wrt:
            return
        names = (sympy.Symbol(self._temporary("c"), real=True) for _ in itertools.count())  # drawn as cse needs
        shared, reduced = sympy.cse(partials, symbols=names)
        for symbol, expr in shared:
            self.emit(symbol.name, expr)
        for s, partial in zip(wrt, reduced):
            if partial != 0:
                self.add(s, self.sum_to(self.layouts[s], partial))

    def _differentiable(self, s: sympy.Symbol) -> bool:
        return s in self.layouts and s not in self.constants

    def sum_to(self, target: Layout, expr: sympy.Expr) -> sympy.Expr:
        """``expr`` summed over the axes (and time, for a target that does not vary in time) of its
        layout that ``target`` lacks, padding and steps past the end masked off."""
        layout = self.layout_of(expr)
        extra = [a for a in layout.axes if a not in target.axes]
        over_time = layout.time and not target.time
        if not extra and not over_time:
            return expr
        self.used |= expr.free_symbols
        text = f"tl.where({self.mask(layout)}, {tl_source(expr)}, 0.0)"
        for axis in ([0] if over_time else []) + [1 + a for a in extra]:
            text = f"tl.sum({text}, axis={axis}, keep_dims=True)"
        name = self._temporary("gt")
        symbol = sympy.Symbol(name, real=True)
        self.layouts[symbol] = Layout(tuple(a for a in layout.axes if a in target.axes), layout.time and target.time)
        self.lines.append(f"{INDENT}{name} = {text}")
        return symbol
