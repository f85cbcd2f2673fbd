"""Lowering of expressions: atoms, views, broadcasting, and every operator's shape rules.

A mixin of :class:`rnnc.compiler.lower._Lowering`, kept apart so each file stays short.

Example:
    >>> from rnnc.compiler import lower_source
    >>> lower_source("cell c(K, V) { input g: [K]; state S: [K, V]; S = exp(g)[:, None] * S }").update("S").expr
    S*exp(g[:,None])
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import sympy

from rnnc.compiler.ir import Atom
from rnnc.compiler.shapes import Shape, broadcast_shapes, matmul_shape, show
from rnnc.compiler.symbols import (
    ALL_FUNCTIONS,
    BINARY_FUNCTIONS,
    COMPARISONS,
    UNARY_FUNCTIONS,
    View,
    plain_view,
)
from rnnc.errors import AnalysisError
from rnnc.grammar import ast


@dataclass(frozen=True)
class Value:
    """A lowered expression: sympy element expression, its shape, and whether it is boolean."""

    expr: sympy.Expr
    shape: Shape
    is_bool: bool = False


class ExpressionLowering:
    """Atoms, views and expressions; the statement-level state lives in the subclass."""

    # --- atoms and views -----------------------------------------------------------------

    def _add_atom(self, atom: Atom) -> str:
        key = (atom.op, atom.args, tuple(map(tuple, atom.arg_shapes)), atom.params)
        if atom.op not in ("input", "weight", "state") and key in self.atom_keys:
            return self.atom_keys[key]
        name = atom.name
        while name in self.atoms:
            name += "'"
        if name != atom.name:
            atom = Atom(name, atom.op, atom.shape, atom.args, atom.arg_shapes, atom.params)
        self.atoms[name] = atom
        self.atom_keys[key] = name
        return name

    def _register_view(self, view: View) -> sympy.Symbol:
        label = view.label()
        known = self.views.get(label)
        if known is not None and known != view:  # pragma: no cover - labels are unique by construction
            raise AssertionError(f"view label clash: {label}")
        self.views[label] = view
        return view.symbol()

    def _view_symbols(self, expr: sympy.Expr) -> list[sympy.Symbol]:
        """The symbols of ``expr`` that are views (the others are dims)."""
        return sorted((s for s in expr.free_symbols if str(s) in self.views), key=str)  # sets iterate by hash

    def _leaf_value(self, name: str) -> Value:
        atom = self.atoms[name]
        return Value(self._register_view(plain_view(name, len(atom.shape))), atom.shape)

    def _remap(self, value: Value, mapping: dict[int, int], shape: Shape) -> Value:
        replace = {}
        for sym in self._view_symbols(value.expr):
            view = self.views[str(sym)]
            new = View(view.atom, tuple(mapping[a] for a in view.axes))
            if new != view:
                replace[sym] = self._register_view(new)
        return Value(value.expr.xreplace(replace), shape, value.is_bool)

    def _structural(self, op: str, label: str, args: list[Value], shape: Shape, params=()) -> Value:
        atom = Atom(label, op, shape, tuple(a.expr for a in args), tuple(a.shape for a in args), params)
        name = self._add_atom(atom)
        return Value(self._register_view(plain_view(name, len(shape))), shape)

    # --- expressions -----------------------------------------------------------------------

    def _expr(self, node: ast.Expr) -> Value:
        value = self._lower(node)
        if value.expr.is_number:  # a constant: it must be a finite real number in floating point
            _check_constant(value.expr, node)
        elif isinstance(node, ast.Binary):  # x * 1e200 * 1e200 folds its constants into one
            for number in value.expr.atoms(sympy.Number):
                if not abs(float(number)) <= FLOAT64_MAX:
                    raise AnalysisError(
                        f"{_text(node)} holds the constant {sympy.N(number, 4)}, beyond float64 "
                        f"(at most {FLOAT64_MAX:.4g}): a constant must be a finite real number",
                        node.span,
                    )
        return value

    def _lower(self, node: ast.Expr) -> Value:
        if isinstance(node, ast.Number):
            number = (
                sympy.Integer(int(node.value))
                if node.value.is_integer() and "." not in node.text and "e" not in node.text.lower()
                else sympy.Float(node.value)
            )
            return Value(number, ())
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.Unary):
            operand = self._numeric(node.operand, "'-'")
            return Value(-operand.expr, operand.shape)
        if isinstance(node, ast.Binary):
            return self._binary(node)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Index):
            return self._index(node)
        return self._transpose(node)

    def _numeric(self, node: ast.Expr, what: str) -> Value:
        value = self._expr(node)
        if value.is_bool:
            raise AnalysisError(f"{what} needs a number, has a comparison", node.span)
        return value

    def _name(self, node: ast.Name) -> Value:
        name = node.name
        if name in self.updated:
            return self.updated[name][0]
        if name in self.locals:
            return self.locals[name][0]
        if name in self.decls:
            return self._leaf_value(name)
        if name in self.dims:
            return Value(self.dims[name], ())  # a dim read as a number, e.g. 1 / sqrt(K)
        raise AnalysisError(self._undefined_message(name), node.span)

    def _binary(self, node: ast.Binary) -> Value:
        if node.op in COMPARISONS:
            left = self._numeric(node.left, f"'{node.op}'")
            right = self._numeric(node.right, f"'{node.op}'")
            shape = self._broadcast(node, left, right)
            return Value(COMPARISONS[node.op](left.expr, right.expr), shape, True)
        left = self._numeric(node.left, f"'{node.op}'")
        right = self._numeric(node.right, f"'{node.op}'")
        if node.op == "@":
            shape, reason = matmul_shape(left.shape, right.shape)
            if shape is None:
                raise AnalysisError(f"shape mismatch: {reason}", node.span)
            return self._structural("matmul", _text(node), [left, right], shape)
        if node.op == "**":
            if right.shape or not right.expr.is_Number:
                raise AnalysisError("'**' needs a number as its exponent, has an expression", node.right.span)
            return Value(left.expr**right.expr, left.shape)
        shape = self._broadcast(node, left, right)
        if node.op == "+":
            return Value(left.expr + right.expr, shape)
        if node.op == "-":
            return Value(left.expr - right.expr, shape)
        if node.op == "*":
            return Value(left.expr * right.expr, shape)
        if right.expr == 0:
            raise AnalysisError("division by the constant zero", node.right.span)
        return Value(left.expr / right.expr, shape)

    def _broadcast(self, node, *values: Value) -> Shape:
        shape = broadcast_shapes(*(v.shape for v in values))
        if shape is None:
            shapes = " and ".join(show(v.shape) for v in values)
            raise AnalysisError(f"shape mismatch: cannot broadcast {shapes}", node.span)
        return shape

    def _call(self, node: ast.Call) -> Value:
        fn = node.function
        if fn not in ALL_FUNCTIONS:
            close = difflib.get_close_matches(fn, ALL_FUNCTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise AnalysisError(f"unknown function {fn!r}; {hint}known: {', '.join(ALL_FUNCTIONS)}", node.name_span)
        node = self._axis_keyword(node)
        if fn == "sum":
            return self._sum(node)
        first = self._numeric(node.args[0], f"{fn}()") if fn in ("max", "min") and node.args else None
        if first is not None and (len(node.args) == 1 or node.keywords):
            return self._reduction(fn, node, first)
        arity = 1 if fn in UNARY_FUNCTIONS else 3 if fn == "where" else 2
        if len(node.args) != arity:
            forms = " (a, b), (x, axis=k) or (x)" if fn in ("max", "min") else ""
            raise AnalysisError(
                f"{fn}() needs {arity} argument{'s' if arity > 1 else ''}{forms}, has {len(node.args)}", node.span
            )
        if fn == "where":
            cond = self._expr(node.args[0])
            if not cond.is_bool:
                raise AnalysisError("where() needs a comparison as its first argument", node.args[0].span)
            a = self._numeric(node.args[1], "where()")
            b = self._numeric(node.args[2], "where()")
            shape = self._broadcast(node, cond, a, b)
            return Value(sympy.Piecewise((a.expr, cond.expr), (b.expr, True)), shape)
        args = [self._numeric(a, f"{fn}()") if first is None or k else first for k, a in enumerate(node.args)]
        if fn == "outer":
            for arg, src in zip(args, node.args):
                if len(arg.shape) != 1:
                    raise AnalysisError(f"outer() needs vectors, has {show(arg.shape)}", src.span)
            return self._structural("outer", _text(node), args, (args[0].shape[0], args[1].shape[0]))
        if fn in BINARY_FUNCTIONS:
            shape = self._broadcast(node, *args)
            return Value(BINARY_FUNCTIONS[fn](args[0].expr, args[1].expr), shape)
        return Value(UNARY_FUNCTIONS[fn](args[0].expr), args[0].shape)

    def _axis_keyword(self, node: ast.Call) -> ast.Call:
        """``f(x, axis=k)``: the one keyword argument, accepted by ``sum``, ``max`` and ``min`` only."""
        for kw in node.keywords:
            if kw.name != "axis" or node.function not in ("sum", "max", "min"):
                takes = "only the keyword axis=" if node.function in ("sum", "max", "min") else "no keyword arguments"
                raise AnalysisError(f"{node.function}() takes {takes}, has {kw.name}=", kw.span)
        if len(node.keywords) > 1:
            raise AnalysisError(f"{node.function}() has axis= twice", node.keywords[1].span)
        if node.keywords and len(node.args) != 1:
            raise AnalysisError(
                f"{node.function}(x, axis=k) needs exactly one positional argument, has {len(node.args)}", node.span
            )
        if node.keywords and _integer_literal(node.keywords[0].value) is None:
            raise AnalysisError(f"{node.function}() needs an integer literal as its axis", node.keywords[0].value.span)
        return node

    def _sum(self, node: ast.Call) -> Value:
        if node.keywords:
            return self._reduction("sum", node, self._numeric(node.args[0], "sum()"))
        if len(node.args) not in (1, 2):
            raise AnalysisError(f"sum() needs 1 or 2 arguments (x, axis), has {len(node.args)}", node.span)
        if len(node.args) == 2 and _integer_literal(node.args[1]) is None:
            raise AnalysisError("sum() needs an integer literal as its axis", node.args[1].span)
        return self._reduction("sum", node, self._numeric(node.args[0], "sum()"))

    def _reduction(self, op: str, node: ast.Call, x: Value) -> Value:
        """``sum``/``max``/``min`` of ``x`` over all axes, or over the literal axis (``axis=`` or, for sum, second)."""
        axis_node = node.keywords[0].value if node.keywords else node.args[1] if len(node.args) == 2 else None
        if axis_node is None:
            return self._structural(op, _text(node), [x], (), ())
        axis = _integer_literal(axis_node)
        rank = len(x.shape)
        if not -rank <= axis < rank:
            raise AnalysisError(f"{op}() axis {axis} is out of range for {show(x.shape)}", axis_node.span)
        axis %= rank
        shape = x.shape[:axis] + x.shape[axis + 1 :]
        return self._structural(op, _text(node), [x], shape, (axis,))

    def _index(self, node: ast.Index) -> Value:
        operand = self._expr(node.operand)
        rank = len(operand.shape)
        slices = sum(1 for item in node.items if item == ":")
        if slices > rank:
            raise AnalysisError(
                f"index has {slices} ':' but the value is {show(operand.shape)} ({rank} axes)", node.span
            )
        items = list(node.items) + [":"] * (rank - slices)
        out_rank = len(items)
        mapping, shape, axis = {}, [], 0
        for position, item in enumerate(items):
            if item == ":":
                mapping[axis - rank] = position - out_rank
                shape.append(operand.shape[axis])
                axis += 1
            else:
                shape.append(sympy.Integer(1))
        return self._remap(operand, mapping, tuple(shape))

    def _transpose(self, node: ast.Transpose) -> Value:
        operand = self._expr(node.operand)
        rank = len(operand.shape)
        if rank < 2:
            raise AnalysisError(f"'.T' needs a matrix, has {show(operand.shape)}", node.span)
        mapping = {a: -rank - 1 - a for a in range(-rank, 0)}
        return self._remap(operand, mapping, tuple(reversed(operand.shape)))


FLOAT64_MAX = 1.7976931348623157e308


def _check_constant(expr: sympy.Expr, node: ast.Expr) -> None:
    """A constant that is infinite, undefined, complex or beyond float64 is an error at its place.

    Example:
        >>> from rnnc.errors import Source
        >>> _check_constant(sympy.log(0), ast.Name("x", Source("log(0)").span(0, 6)))
        Traceback (most recent call last):
        ...
        rnnc.errors.AnalysisError: <string>:1:1: error: log(0) is infinite: a constant must be a finite real number
            log(0)
            ^^^^^^
    """
    text = _text(node)
    if isinstance(node, ast.Number) and not abs(node.value) <= FLOAT64_MAX:
        raise AnalysisError(f"the number {text} does not fit a float64 (at most {FLOAT64_MAX:.4g})", node.span)
    if expr.has(sympy.nan):
        what = "undefined (nan)"
    elif expr.has(sympy.zoo) or expr.has(sympy.oo) or expr.has(-sympy.oo):
        what = {sympy.oo: "infinity", -sympy.oo: "-infinity"}.get(expr, "infinite")
    else:
        value = complex(sympy.N(expr))
        if value.imag != 0:
            what = f"complex ({sympy.N(expr, 4)})"
        elif not abs(value.real) <= FLOAT64_MAX:
            what = f"{sympy.N(expr, 4)}, beyond float64 (at most {FLOAT64_MAX:.4g})"
        else:
            return
    raise AnalysisError(f"{text} is {what}: a constant must be a finite real number", node.span)


def _names_in(node: ast.Expr) -> set[str]:
    if isinstance(node, ast.Name):
        return {node.name}
    children = []
    if isinstance(node, ast.Unary):
        children = [node.operand]
    elif isinstance(node, ast.Binary):
        children = [node.left, node.right]
    elif isinstance(node, ast.Call):
        children = list(node.args) + [kw.value for kw in node.keywords]
    elif isinstance(node, (ast.Index, ast.Transpose)):
        children = [node.operand]
    out: set[str] = set()
    for child in children:
        out |= _names_in(child)
    return out


def _integer_literal(node: ast.Expr) -> int | None:
    if isinstance(node, ast.Number) and node.value.is_integer() and "." not in node.text:
        return int(node.value)
    if isinstance(node, ast.Unary) and node.op == "-":
        inner = _integer_literal(node.operand)
        return None if inner is None else -inner
    return None


def _text(node) -> str:
    """The node's source text with whitespace collapsed, as a readable atom name."""
    span = node.span
    return " ".join(span.source.text[span.start : span.end].split())
