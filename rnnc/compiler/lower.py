"""Lowering: the syntax tree of one cell to the IR, with every rule of the language checked.

Example:
    >>> ir = lower_source("cell e(H) {\\n input x: [H]\\n state h: [H]\\n h = tanh(x + h)\\n}")
    >>> ir.update("h").expr
    tanh(h + x)
"""

from __future__ import annotations

import dataclasses
import difflib

import sympy

from rnnc.compiler.ir import IR, Atom, Declared, Result
from rnnc.compiler.lower_expressions import ExpressionLowering, Value, _names_in
from rnnc.compiler.shapes import broadcast_shapes, dim_symbol, divides, same_dim, same_shape, show
from rnnc.compiler.symbols import View, plain_view
from rnnc.errors import AnalysisError, Span
from rnnc.grammar import ast, parse

LAYOUT_AXES = ("B", "T", "NH")  # the leading axes of the call's tensors, never a cell's dims


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
            raise AnalysisError(
                f"needs a cell (cell NAME(DIMS) {{ ... }}), but {program.filename} defines none", program.span
            )
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
    ir = _Lowering(cell).run()
    return dataclasses.replace(ir, marked=_MarkedLowering(cell).run())


class _Lowering(ExpressionLowering):
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
            if dim in LAYOUT_AXES:
                raise AnalysisError(
                    f"{dim!r} names an axis of every tensor's layout (B batch, T time, NH heads); pick another "
                    "dim name",
                    span,
                )
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
        part = Atom(name, "part", shape, (arg.symbol(),), (atom.shape,), (axis, index, count, int(drop)))
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
                raise AnalysisError(f"dim {dim!r} appears in no declaration, so no tensor shape can bind it", span)

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
        return IR(
            self.cell.name,
            tuple(self.dims),
            decls,
            atoms,
            views,
            updates,
            outputs,
            self.cell.span.source.filename,
            self.cell.span,
        )

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


class _MarkedLowering(_Lowering):
    """Lowering for the analysis: a state read after its update is the leaf ``s'`` (op ``new``).

    The ordinary IR inlines the update wherever the new value is read, which is what the kernels
    compute; the analysis needs to see which state's new value an expression reads.
    """

    def _bind(self, target: str, value: Value, target_span: Span, stmt_span: Span) -> None:
        super()._bind(target, value, target_span, stmt_span)
        decl = self.decls.get(target)
        if decl is not None and decl.kind == "state":
            self.atoms[target + "'"] = Atom(target + "'", "new", decl.shape)

    def _name(self, node: ast.Name) -> Value:
        if node.name in self.updated:
            return self._leaf_value(node.name + "'")
        return super()._name(node)

    def _reachable(self, updates, outputs, decls) -> set[str]:
        return super()._reachable(updates, outputs, decls) | {d.name + "'" for d in decls if d.kind == "state"}
