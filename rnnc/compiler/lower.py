"""Lowering: the syntax tree of one cell to the IR, with every rule of the language checked.

Example:
    >>> ir = lower_source("cell e(H) {\\n input x: [H]\\n state h: [H]\\n h = tanh(x + h)\\n}")
    >>> ir.update("h").expr
    tanh(h + x)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import sympy

from rnnc.compiler.ir import IR, Atom, Declared, Result
from rnnc.compiler.shapes import (
    Shape,
    broadcast_shapes,
    dim_symbol,
    divides,
    matmul_shape,
    same_dim,
    same_shape,
    show,
)
from rnnc.compiler.symbols import (
    ALL_FUNCTIONS,
    BINARY_FUNCTIONS,
    COMPARISONS,
    UNARY_FUNCTIONS,
    View,
    plain_view,
)
from rnnc.errors import AnalysisError, Span
from rnnc.grammar import ast, parse


@dataclass(frozen=True)
class Value:
    """A lowered expression: sympy element expression, its shape, and whether it is boolean."""

    expr: sympy.Expr
    shape: Shape
    is_bool: bool = False


def lower_source(text: str | bytes, filename: str = "<string>", name: str | None = None) -> IR:
    """Parse ``text`` and lower the cell called ``name`` (or the only cell).

    Example:
        >>> lower_source(open("examples/lstm.rnn").read()).cell
        'lstm'
    """
    program = parse(text, filename)
    return lower(pick_cell(program, name))


def pick_cell(program: ast.Program, name: str | None) -> ast.Cell:
    """The cell called ``name``, or the lone cell of the file.

    Example:
        >>> pick_cell(parse("cell a(H) { state h: [H]; h = h }"), None).name
        'a'
    """
    _check_unique_cells(program)
    if name is None:
        if len(program.cells) == 1:
            return program.cells[0]
        if not program.cells:
            raise AnalysisError(f"needs a cell, but {program.filename} defines none")
        names = ", ".join(c.name for c in program.cells)
        raise AnalysisError(f"{program.filename} defines several cells ({names}): pick one by name")
    for cell in program.cells:
        if cell.name == name:
            return cell
    names = ", ".join(c.name for c in program.cells) or "none"
    raise AnalysisError(f"no cell named {name!r} in {program.filename}; it defines: {names}")


def _check_unique_cells(program: ast.Program) -> None:
    seen: dict[str, ast.Cell] = {}
    for cell in program.cells:
        if cell.name in seen:
            first = seen[cell.name].name_span.location()
            raise AnalysisError(f"cell {cell.name!r} is defined twice (first at {first})", cell.name_span)
        seen[cell.name] = cell


def lower(cell: ast.Cell) -> IR:
    """Lower one parsed cell to the IR.

    Example:
        >>> prog = parse("cell a(H) { state h: [H]; h = 2 * h }")
        >>> lower(prog.cells[0]).update("h").expr
        2*h
    """
    return _Lowering(cell).run()


class _Lowering:
    def __init__(self, cell: ast.Cell):
        self.cell = cell
        self.dims: dict[str, sympy.Symbol] = {}
        self.decls: dict[str, Declared] = {}
        self.atoms: dict[str, Atom] = {}
        self.atom_keys: dict[tuple, str] = {}
        self.views: dict[str, View] = {}
        self.locals: dict[str, tuple[Value, Span]] = {}
        self.updated: dict[str, tuple[Value, Span]] = {}
        self.outputs: dict[str, tuple[Value, Span]] = {}
        self.assigned_later: dict[str, tuple[int, ast.Assign]] = {}

    # --- statements --------------------------------------------------------------------

    def run(self) -> IR:
        cell = self.cell
        for dim, span in zip(cell.dims, cell.dim_spans):
            if dim in self.dims:
                raise AnalysisError(f"dim {dim!r} is listed twice", span)
            self.dims[dim] = dim_symbol(dim)
        for position, stmt in enumerate(cell.body):
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    self.assigned_later.setdefault(target, (position, stmt))
        for position, stmt in enumerate(cell.body):
            self.position = position
            if isinstance(stmt, ast.Decl):
                self._declare(stmt)
            elif isinstance(stmt, ast.Assign):
                self._assign(stmt)
            else:
                self._emit(stmt)
        self._check_complete()
        return self._build()

    def _declare(self, decl: ast.Decl) -> None:
        self._check_new_name(decl.name, decl.name_span)
        shape = tuple(self._dim(d) for d in decl.shape)
        self.decls[decl.name] = Declared(decl.kind, decl.name, shape, decl.span)
        self._add_atom(Atom(decl.name, decl.kind, shape))

    def _dim(self, dim: ast.Dim) -> sympy.Expr:
        value: sympy.Expr = sympy.Integer(1)
        for factor in dim.factors:
            if isinstance(factor.value, int):
                if factor.value <= 0:
                    raise AnalysisError(f"a dim needs a positive size, has {factor.value}", factor.span)
                value = value * factor.value
            elif factor.value in self.dims:
                value = value * self.dims[factor.value]
            else:
                listed = ", ".join(self.dims) or "no dims"
                raise AnalysisError(
                    f"unknown dim {factor.value!r}: the cell declares {listed} in its header", factor.span
                )
        return value

    def _check_new_name(self, name: str, span: Span) -> None:
        if name in self.dims:
            raise AnalysisError(f"{name!r} is already a dim of the cell; pick another name", span)
        if name in self.decls:
            first = self.decls[name].span
            where = f" (at {first.location()})" if first else ""
            raise AnalysisError(f"{name!r} is declared twice{where}", span)
        if name in self.locals:
            raise AnalysisError(f"{name!r} is already a local (at {self.locals[name][1].location()})", span)

    def _assign(self, stmt: ast.Assign) -> None:
        value = self._expr(stmt.value)
        if value.is_bool:
            raise AnalysisError("needs a number here, has a comparison (use it inside where())", stmt.value.span)
        if len(stmt.targets) == 1:
            self._bind(stmt.targets[0], value, stmt.target_spans[0], stmt.span)
            return
        for target, span, part in zip(stmt.targets, stmt.target_spans, self._split(value, stmt)):
            self._bind(target, part, span, stmt.span)

    def _bind(self, target: str, value: Value, target_span: Span, stmt_span: Span) -> None:
        if target in self.dims:
            raise AnalysisError(f"cannot assign to {target!r}: it is a dim of the cell", target_span)
        decl = self.decls.get(target)
        if decl is not None and decl.kind != "state":
            raise AnalysisError(f"cannot assign to {decl.kind} {target!r}: {decl.kind}s are read-only", target_span)
        if decl is not None:
            if target in self.updated:
                first = self.updated[target][1].location()
                raise AnalysisError(f"state {target!r} is updated twice in one step (first at {first})", target_span)
            if broadcast_shapes(value.shape, decl.shape) is None or not same_shape(
                broadcast_shapes(value.shape, decl.shape), decl.shape
            ):
                raise AnalysisError(
                    f"shape mismatch: state {target!r} is {show(decl.shape)} but its update is {show(value.shape)}",
                    stmt_span,
                )
            self.updated[target] = (Value(value.expr, decl.shape), stmt_span)
            return
        if target in self.locals:
            first = self.locals[target][1].location()
            raise AnalysisError(f"local {target!r} is assigned twice (first at {first})", target_span)
        self.locals[target] = (value, target_span)

    def _split(self, value: Value, stmt: ast.Assign) -> list[Value]:
        count = len(stmt.targets)
        if not value.shape:
            raise AnalysisError(f"cannot split a scalar into {count} parts: needs a first axis", stmt.value.span)
        first = value.shape[0]
        drop = same_dim(first, count)
        part_dim = None if drop else divides(count, first)
        if not drop and part_dim is None:
            raise AnalysisError(
                f"cannot split {show(value.shape)} into {count} parts: the first axis {first} "
                f"needs {count} entries or a multiple of {count}",
                stmt.value.span,
            )
        rank = len(value.shape)
        rest = value.shape[1:] if drop else (part_dim, *value.shape[1:])
        parts = []
        for index in range(count):
            replace = {}
            for sym in self._view_symbols(value.expr):
                view = self.views[str(sym)]
                if -rank in view.axes:
                    replace[sym] = self._part_view(view, -rank, index, count, drop)
            parts.append(Value(value.expr.xreplace(replace), rest))
        return parts

    def _part_view(self, view: View, out_axis: int, index: int, count: int, drop: bool) -> sympy.Symbol:
        atom = self.atoms[view.atom]
        axis = view.axes.index(out_axis)
        parent_extent = atom.shape[axis]
        if same_dim(parent_extent, 1):
            index, count = 0, 1  # a broadcast axis: every part sees the same entry
        if drop or count == 1:
            shape = atom.shape[:axis] + atom.shape[axis + 1 :] if drop else atom.shape
        else:
            shape = atom.shape[:axis] + (divides(count, parent_extent),) + atom.shape[axis + 1 :]
        if drop and count == 1 and not same_dim(parent_extent, 1):
            shape = atom.shape[:axis] + atom.shape[axis + 1 :]
        prefix = atom.name if atom.name.isidentifier() else f"({atom.name})"
        slots = [":"] * axis + [str(index) if drop else f"{index}/{count}"]
        name = f"{prefix}[{','.join(slots)}]"
        arg = plain_view(atom.name, len(atom.shape))
        self._register_view(arg)
        part = Atom(
            name, "part", shape, (arg.symbol(),), (atom.shape,), (axis, index, count, int(drop))
        )
        part_name = self._add_atom(part)
        axes = view.axes[:axis] + view.axes[axis + 1 :] if drop else view.axes
        return self._register_view(View(part_name, axes))

    def _emit(self, stmt: ast.Emit) -> None:
        if stmt.name in self.outputs:
            first = self.outputs[stmt.name][1].location()
            raise AnalysisError(f"output {stmt.name!r} is emitted twice (first at {first})", stmt.name_span)
        if stmt.value is None:
            value = self._expr(ast.Name(stmt.name, stmt.name_span))
        else:
            if stmt.name in self.decls or stmt.name in self.locals or stmt.name in self.dims:
                raise AnalysisError(
                    f"'emit {stmt.name} = ...' would shadow {stmt.name!r}; use 'emit {stmt.name}' or another name",
                    stmt.name_span,
                )
            value = self._expr(stmt.value)
        if value.is_bool:
            raise AnalysisError("an output needs numbers, has a comparison", stmt.span)
        self.outputs[stmt.name] = (value, stmt.span)

    def _check_complete(self) -> None:
        states = [d for d in self.decls.values() if d.kind == "state"]
        if not states:
            raise AnalysisError(
                f"cell {self.cell.name!r} declares no state: a recurrence needs 'state NAME: [shape]'",
                self.cell.name_span,
            )
        for state in states:
            if state.name not in self.updated:
                raise AnalysisError(
                    f"state {state.name!r} is never updated: every state needs '{state.name} = ...' in the step",
                    state.span,
                )
        used = set()
        for decl in self.decls.values():
            for d in decl.shape:
                used |= {str(s) for s in d.free_symbols}
        for dim, span in zip(self.cell.dims, self.cell.dim_spans):
            if dim not in used:
                raise AnalysisError(
                    f"dim {dim!r} appears in no declaration, so no tensor shape can bind it", span
                )

    def _build(self) -> IR:
        decls = tuple(self.decls.values())
        updates = tuple(
            Result(d.name, self.updated[d.name][0].expr, d.shape, self.updated[d.name][1])
            for d in decls
            if d.kind == "state"
        )
        outputs = tuple(Result(n, v.expr, v.shape, span) for n, (v, span) in self.outputs.items())
        used = self._reachable(updates, outputs, decls)
        atoms = tuple(a for a in self.atoms.values() if a.name in used)
        views = tuple(sorted((k, v) for k, v in self.views.items() if v.atom in used))
        return IR(self.cell.name, tuple(self.dims), decls, atoms, views, updates, outputs,
                  self.cell.span.source.filename, self.cell.span)

    def _reachable(self, updates, outputs, decls) -> set[str]:
        used = {d.name for d in decls}
        pending = [r.expr for r in (*updates, *outputs)]
        while pending:
            expr = pending.pop()
            for sym in self._view_symbols(expr):
                atom = self.atoms[self.views[str(sym)].atom]
                if atom.name not in used:
                    used.add(atom.name)
                    pending.extend(atom.args)
        return used

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
        return [s for s in expr.free_symbols if str(s) in self.views]

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
        if isinstance(node, ast.Number):
            number = sympy.Integer(int(node.value)) if node.value.is_integer() and "." not in node.text \
                and "e" not in node.text.lower() else sympy.Float(node.value)
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

    def _undefined_message(self, name: str) -> str:
        if name in self.assigned_later:
            position, stmt = self.assigned_later[name]
            cycle = self._cycle_through(name)
            if cycle:
                return f"cycle between locals: {' -> '.join(cycle)}"
            line = stmt.span.location().split(":")[-2]
            return f"{name!r} is used before it is assigned (line {line}); assign it first"
        if name in self.outputs:
            return f"{name!r} is an output; outputs cannot be read back"
        known = [*self.decls, *self.locals]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"undefined name {name!r}{hint}"

    def _cycle_through(self, start: str) -> list[str]:
        deps: dict[str, set[str]] = {}
        for stmt in self.cell.body:
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    deps.setdefault(target, set()).update(_names_in(stmt.value))
        current = [t for t, (_, stmt) in self.assigned_later.items() if self.cell.body.index(stmt) == self.position]
        states = {n for n, d in self.decls.items() if d.kind == "state"}
        for origin in current:
            path = _find_path(start, origin, deps, states)
            if path:
                return [origin, *path]
        return []

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
            raise AnalysisError(
                f"unknown function {fn!r}; {hint}known: {', '.join(ALL_FUNCTIONS)}", node.name_span
            )
        if fn == "sum":
            return self._sum(node)
        arity = 1 if fn in UNARY_FUNCTIONS else 3 if fn == "where" else 2
        if len(node.args) != arity:
            raise AnalysisError(
                f"{fn}() needs {arity} argument{'s' if arity > 1 else ''}, has {len(node.args)}", node.span
            )
        if fn == "where":
            cond = self._expr(node.args[0])
            if not cond.is_bool:
                raise AnalysisError("where() needs a comparison as its first argument", node.args[0].span)
            a = self._numeric(node.args[1], "where()")
            b = self._numeric(node.args[2], "where()")
            shape = self._broadcast(node, cond, a, b)
            return Value(sympy.Piecewise((a.expr, cond.expr), (b.expr, True)), shape)
        args = [self._numeric(a, f"{fn}()") for a in node.args]
        if fn == "outer":
            for arg, src in zip(args, node.args):
                if len(arg.shape) != 1:
                    raise AnalysisError(f"outer() needs vectors, has {show(arg.shape)}", src.span)
            return self._structural("outer", _text(node), args, (args[0].shape[0], args[1].shape[0]))
        if fn in BINARY_FUNCTIONS:
            shape = self._broadcast(node, *args)
            return Value(BINARY_FUNCTIONS[fn](args[0].expr, args[1].expr), shape)
        return Value(UNARY_FUNCTIONS[fn](args[0].expr), args[0].shape)

    def _sum(self, node: ast.Call) -> Value:
        if len(node.args) not in (1, 2):
            raise AnalysisError(f"sum() needs 1 or 2 arguments (x, axis), has {len(node.args)}", node.span)
        x = self._numeric(node.args[0], "sum()")
        if len(node.args) == 1:
            return self._structural("sum", _text(node), [x], (), ())
        axis = _integer_literal(node.args[1])
        rank = len(x.shape)
        if axis is None:
            raise AnalysisError("sum() needs an integer literal as its axis", node.args[1].span)
        if not -rank <= axis < rank:
            raise AnalysisError(f"sum() axis {axis} is out of range for {show(x.shape)}", node.args[1].span)
        axis %= rank
        shape = x.shape[:axis] + x.shape[axis + 1 :]
        return self._structural("sum", _text(node), [x], shape, (axis,))

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


def _names_in(node: ast.Expr) -> set[str]:
    if isinstance(node, ast.Name):
        return {node.name}
    children = []
    if isinstance(node, ast.Unary):
        children = [node.operand]
    elif isinstance(node, ast.Binary):
        children = [node.left, node.right]
    elif isinstance(node, ast.Call):
        children = list(node.args)
    elif isinstance(node, (ast.Index, ast.Transpose)):
        children = [node.operand]
    out: set[str] = set()
    for child in children:
        out |= _names_in(child)
    return out


def _find_path(start: str, goal: str, deps: dict[str, set[str]], states: set[str]) -> list[str]:
    """A dependency path start -> ... -> goal through locals (BFS), or []."""
    frontier, parent = [start], {start: None}
    while frontier:
        node = frontier.pop(0)
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = parent[node]
            return list(reversed(path))
        for nxt in sorted(deps.get(node, ())):
            if nxt not in parent and nxt not in states:
                parent[nxt] = node
                frontier.append(nxt)
    return []


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
