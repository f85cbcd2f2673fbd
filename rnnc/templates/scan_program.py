"""The kernel names of a scan stage (pointers, layouts, offsets) and the forward kernel's lines.

:class:`ScanProgram` names everything the kernels read or write and emits the forward
kernel's chunk body: the inputs of the chunk, then the stage's steps in order (a reduction
inside a step, or a component: its pieces, one ``tl.associative_scan``, its new values and,
where something later reads them, its previous values), then the outputs. The backward
kernel's lines are :mod:`rnnc.templates.scan_backward`'s.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> program = ScanProgram(analyse_source(open("examples/hgrn.rnn").read()))
    >>> lines = program.forward_chunk()
    >>> [line.strip() for line in lines if "associative_scan" in line]
    ['a_h, b_h = tl.associative_scan((a_h, b_h), 0, _affine1)']
"""

from __future__ import annotations

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.components import Stage
from rnnc.templates.names import comment
from rnnc.templates.scan_combine import combine_name
from rnnc.templates.scan_grad import INDENT, tl_source
from rnnc.templates.scan_layout import Layout, Leaf, Reduction, TileSpace
from rnnc.templates.scan_names import Identifiers

IDENTITY = {"affine": (1.0, 0.0), "maxplus": (0.0, '-float("inf")')}  # (a, b) of a step that changes nothing


def scan_call(outs: list[str], scanned: list[str], combine: str, reverse: bool) -> list[str]:
    """``outs = tl.associative_scan((scanned), 0, combine)`` over time, one line or wrapped.

    Example:
        >>> scan_call(["a", "b"], ["a", "b"], "_affine1", reverse=True)[0].strip()
        'a, b = tl.associative_scan((a, b), 0, _affine1, reverse=True)'
    """
    tail = f"0, {combine}" + (", reverse=True" if reverse else "")
    line = f"{INDENT}{', '.join(outs)} = tl.associative_scan(({', '.join(scanned)}), {tail})"
    if len(line) <= 120:
        return [line]
    return _wrapped(outs, scanned, tail)


def _wrapped(outs: list[str], scanned: list[str], tail: str) -> list[str]:
    lines = [f"{INDENT}(", *(f"{INDENT}    {o}," for o in outs), f"{INDENT}) = tl.associative_scan(", f"{INDENT}    ("]
    lines += [f"{INDENT}        {x}," for x in scanned]
    return lines + [f"{INDENT}    ),", f"{INDENT}    {tail},", f"{INDENT})"]


class ScanProgram:
    """Names and forward lines of one scan stage's kernels."""

    def __init__(self, plan: Plan, stage: Stage | None = None):
        self.plan = plan
        self.names = Identifiers()
        self.space = TileSpace(plan, stage, self.names)
        self.stage = self.space.stage
        self.rank = len(self.space.axes)
        self.layouts = dict(self.space.layouts)  # symbol -> layout; the kernels' own symbols join
        self.used_layouts: set[Layout] = set()
        self.combines: set[tuple[str, int, bool]] = set()
        self.steps = self._steps()
        reads = set()
        for e in [
            *self._piece_exprs(),
            *(o.expr for o in self.space.outputs),
            *(r.expr for r in self.space.reductions),
        ]:
            reads |= sympy.sympify(e).free_symbols
        self.forward_reads = reads

    # --- names ----------------------------------------------------------------------------------
    def name(self, role: str, tensor: str) -> str:
        """The identifier of ``role`` (a pointer like ``in``, ``d_out``; a tile like ``carry``) of a tensor.

        Example:
            >>> from rnnc.compiler import analyse_source
            >>> ScanProgram(analyse_source(open("examples/hgrn.rnn").read())).name("d_in", "x")
            'd_in_x'
        """
        return self.names.tensor(role, tensor)

    def fresh(self, stem: str) -> str:
        """A new identifier ``stem_<n>`` (temporaries of the backward kernel)."""
        return self.names.own("temporary", stem)

    def state_symbol(self, state: str, role: str) -> sympy.Symbol:
        """A symbol of the kernels' own for a state (``lam``, ``co``...), with the state's layout."""
        symbol = sympy.Symbol(self.name(role, state), real=True)
        self.layouts[symbol] = self.space.leaf(state).layout
        return symbol

    def layout_name(self, layout: Layout) -> str:
        """``D_N`` for a tile over both axes of Mamba's state, ``scalar`` for one over none."""
        return "_".join(self.space.axes[a].name for a in layout.axes) or "scalar"

    def mask(self, layout: Layout) -> str:
        """The mask variable of a layout: ``mask_X`` (steps and entries that exist) or ``valid_X`` (entries)."""
        self.used_layouts.add(layout)
        self.used_layouts.add(Layout(layout.axes, False))
        return f"{'mask' if layout.time else 'valid'}_{self.layout_name(layout)}"

    def zero(self, layout: Layout) -> str:
        """``zero_X``: zeros of a per-step layout in the compute dtype (gives expressions the tile's shape)."""
        self.used_layouts.add(layout)
        return f"zero_{self.layout_name(layout)}"

    def tile_shape(self, layout: Layout) -> str:
        """``[BLOCK_T, BLOCK_D, 1]``-style shape of a layout (1 along time for a layout that does not vary)."""
        blocks = [a.block if i in layout.axes else "1" for i, a in enumerate(self.space.axes)]
        return "[" + ", ".join(["BLOCK_T" if layout.time else "1", *blocks]) + "]"

    def spread(self, position: int) -> str:
        """The indexing that puts a vector at tile axis ``position`` (0 is time)."""
        slots = ["None"] * (self.rank + 1)
        slots[position] = ":"
        return "[" + ", ".join(slots) + "]"

    def size(self, axes: tuple[int, ...]) -> str:
        """The number of entries of a tensor over these tile axes."""
        return " * ".join(self.space.axes[a].size for a in axes) or "1"

    def offsets(self, axes: tuple[int, ...]) -> str:
        """Row-major offsets of a tensor whose own axes lie along these tile axes (in its order)."""
        if not axes:
            return f"tl.zeros({self.tile_shape(Layout((), False))}, dtype=tl.int32)"
        terms = []
        for i, a in enumerate(axes):
            strides = [self.space.axes[b].size for b in axes[i + 1 :]]
            terms.append(" * ".join([f"{self.space.axes[a].index}{self.spread(a + 1)}", *strides]))
        return " + ".join(terms)

    def place_of(self, tensor) -> tuple[str, str]:
        """(offsets variable, row size variable) of a leaf, or of a state or output by name."""
        if isinstance(tensor, Leaf) and tensor.kind in ("input", "weight"):
            where = {"gate": tensor.gate, "placement": tensor.placement}
            return self.names.tensor("offs", tensor.source, **where), self.names.tensor("size", tensor.source, **where)
        name = tensor.source if isinstance(tensor, Leaf) else tensor
        return self.names.tensor("offs", name), self.names.tensor("size", name)

    def at(self, pointer: str, tensor, row: str) -> str:
        """The addresses of a tensor's entries of this block in row ``row`` of ``pointer``."""
        offs, size = self.place_of(tensor)
        return f"{pointer} + {row} * {size} + {offs}"

    def leaf_offsets(self, leaf: Leaf) -> tuple[str, str]:
        """(offsets, row size) expressions of a leaf; a part sits at an offset inside its source's row."""
        if leaf.part is None:
            return self.offsets(leaf.axes), self.size(leaf.axes)
        axis, index, count, drop = leaf.part
        own = list(leaf.axes)
        sizes = [self.space.axes[a].size for a in own]  # the source's dims: the part's, the split axis count times
        split = [str(count)] if drop else [f"{count} * {sizes[axis]}"]
        dims = sizes[:axis] + split + sizes[axis + (0 if drop else 1) :]

        def stride(position: int) -> list[str]:
            return dims[position + 1 :]

        terms = []
        for j, a in enumerate(own):
            position = j if not drop or j < axis else j + 1
            terms.append(" * ".join([f"{self.space.axes[a].index}{self.spread(a + 1)}", *stride(position)]))
        step = str(index) if drop else f"{index} * {sizes[axis]}"
        terms.append(" * ".join([step, *stride(axis)]))
        return " + ".join(terms), " * ".join(dims)

    def src(self, expr) -> str:
        """Triton source of a tile expression."""
        return tl_source(expr)

    # --- the stage's steps ----------------------------------------------------------------------
    def _piece_exprs(self):
        for pieces in self.space.pieces:
            for value in pieces.values():
                yield from (sympy.flatten(value) if isinstance(value, list) else [value])

    def _steps(self) -> list[tuple[str, object]]:
        """(``reduction``, Reduction) and (``component``, position) in the order they run."""
        done: set[sympy.Symbol] = set()
        by_symbol = {r.symbol: r for r in self.space.reductions}
        steps = []

        def need(exprs) -> None:
            read = set().union(*(sympy.sympify(e).free_symbols for e in exprs))
            for r in self.space.reductions:  # creation order: a reduction's own reductions come first
                if r.symbol in read and r.symbol not in done:
                    self._with_dependencies(r, done, steps, by_symbol)

        for position, pieces in enumerate(self.space.pieces):
            need([e for v in pieces.values() for e in (sympy.flatten(v) if isinstance(v, list) else [v])])
            steps.append(("component", position))
        need([o.expr for o in self.space.outputs])
        return steps

    def _with_dependencies(self, r: Reduction, done, steps, by_symbol) -> None:
        for s in sorted(r.expr.free_symbols, key=lambda s: s.name):
            if s in by_symbol and s not in done:
                self._with_dependencies(by_symbol[s], done, steps, by_symbol)
        if r.symbol not in done:
            done.add(r.symbol)
            steps.append(("reduction", r))

    def component(self, position: int):
        """The component at a position of the stage, its states and its pieces."""
        c = self.space.components[position]
        return c, list(c.states), self.space.pieces[position]

    def kind_of(self, position: int) -> tuple[str, int]:
        """(``affine`` or ``maxplus``, n): the combine a component's scan uses."""
        c = self.space.components[position]
        return ("maxplus", 1) if c.kind == "maxplus" else ("affine", len(c.states))

    def reduction_line(self, r: Reduction) -> str:
        """The line computing a reduction inside a step."""
        layout = self.space.layout_of(r.expr)
        full = Layout(tuple(sorted(set(layout.axes) | set(r.axes))), layout.time)
        fill = {"sum": "0.0", "max": '-float("inf")', "min": 'float("inf")'}[r.op]  # padding changes nothing
        text = f"tl.where({self.mask(full)}, {self.src(r.expr)}, {fill})"
        for a in r.axes:
            text = f"tl.{r.op}({text}, axis={a + 1}, keep_dims=True)"
        return f"{INDENT}{r.symbol.name} = {text}  # {comment(r.label)}"

    # --- loads ----------------------------------------------------------------------------------
    def load_leaf(self, leaf: Leaf, indent: str = INDENT) -> list[str]:
        """Lines loading a leaf's tile at this chunk's rows (an input, or a saved state's old or new value)."""
        mask = self.mask(leaf.layout)
        if leaf.kind == "input":
            at = self.at(self.name("in", leaf.source), leaf, "row")
            return [f"{indent}{leaf.symbol.name} = tl.load({at}, mask={mask}, other=0.0).to(COMPUTE)"]
        saved = self.name("saved", leaf.source)
        if leaf.kind == "new":
            return [f"{indent}{leaf.symbol.name} = tl.load({self.at(saved, leaf, 'row')}, mask={mask}, other=0.0)"]
        first = self.name("initial", leaf.source)
        return [
            f"{indent}{leaf.symbol.name} = tl.load({self.at(saved, leaf, '(row - NH)')}, mask={mask} & (t > 0), "
            "other=0.0)",
            f"{indent}{leaf.symbol.name} = tl.where(t == 0, {first}, {leaf.symbol.name})",
        ]

    def load_weight(self, leaf: Leaf) -> str:
        """The line loading a weight's tile (once per program)."""
        at = self.at(self.name("w", leaf.source), leaf, "h")
        return f"    {leaf.symbol.name} = tl.load({at}, mask={self.mask(leaf.layout)}, other=0.0).to(COMPUTE)"

    def state_at(self, state: str, pointer: str) -> str:
        """The address of a state's entries in a ``[B, NH, *shape]`` tensor (initial or final states)."""
        return self.at(self.name(pointer, state), state, "pid_bh")

    # --- forward --------------------------------------------------------------------------------
    def forward_chunk(self) -> list[str]:
        """The forward kernel's lines for one chunk of time, after the chunk's rows and masks."""
        lines = []
        for leaf in self.space.leaves("input"):
            if leaf.symbol in self.forward_reads:
                lines += self.load_leaf(leaf)
        lines.append(f"{INDENT}last = tl.minimum(T_b - t0, BLOCK_T) - 1")
        for kind, step in self.steps:
            if kind == "reduction":
                lines.append(self.reduction_line(step))
            else:
                lines += self._forward_component(step)
        for o in self.space.outputs:
            out = self.name("out", o.name)
            at = self.at(out, o.name, "row")
            value = f"({self.zero(o.layout)} + ({self.src(o.expr)})).to({out}.dtype.element_ty)"
            lines.append(f"{INDENT}# {comment(o.name + ' = ' + o.label)}")
            lines.append(f"{INDENT}tl.store({at}, {value}, mask={self.mask(o.layout)})")
        return lines

    def _forward_component(self, position: int) -> list[str]:
        c, states, pieces = self.component(position)
        kind, n = self.kind_of(position)
        layout = self.space.leaf(states[0]).layout
        mask, zero = self.mask(layout), self.zero(layout)
        previous = any(self.space.leaf(s, "old").symbol in self.forward_reads for s in states)
        self.combines.add((kind, n, previous))
        lines = [f"{INDENT}# component {c.index + 1}: {comment('; '.join(c.evidence[:1]))}"]
        one, none = IDENTITY[kind]
        if kind == "maxplus" or n == 1:
            entries = [("a", pieces["a"], one), ("b", pieces["b"], none)]
        else:
            entries = [(f"m{i}{j}", pieces["m"][i][j], 1.0 if i == j else 0.0) for i in range(n) for j in range(n)]
            entries += [(f"b{i}", pieces["b"][i], 0.0) for i in range(n)]
        tag = states[0]
        tiles = [self.name(e, tag) for e, _, _ in entries]
        for tile, (_, expr, identity) in zip(tiles, entries):
            lines.append(f"{INDENT}{tile} = tl.where({mask}, {zero} + ({self.src(expr)}), {identity})")
        scanned = list(tiles)
        if previous:
            prev = [self.name("p" + e, tag) for e, _, _ in entries]
            scanned += [f"{zero} + {identity}" if identity != 0.0 else zero for _, _, identity in entries]
            outs = tiles + prev
        else:
            outs = tiles
        lines += scan_call(outs, scanned, combine_name(kind, n, previous), reverse=False)
        for i, s in enumerate(states):
            new = self.space.leaf(s, "new").symbol.name
            lines.append(f"{INDENT}{new} = {self._apply(kind, n, i, tiles, states)}")
            if previous:
                old = self.space.leaf(s, "old").symbol.name
                lines.append(f"{INDENT}{old} = {self._apply(kind, n, i, prev, states)}")
        lines.append(f"{INDENT}if STORE_STATES:  # for the backward kernel, or for a later stage")
        for s in states:
            new = self.space.leaf(s, "new").symbol.name
            at = self.at(self.name("saved", s), s, "row")
            lines.append(f"{INDENT}    tl.store({at}, {new}, mask={mask})")
        for s in states:
            new = self.space.leaf(s, "new").symbol.name
            carry = self.name("carry", s)
            lines.append(f"{INDENT}{carry} = tl.sum(tl.where(lane == last, {new}, 0.0), axis=0, keep_dims=True)")
        return lines

    def _apply(self, kind: str, n: int, i: int, tiles: list[str], states: list[str]) -> str:
        """The state after the scanned map ``tiles`` (entries of A, then b) acts on the carries."""
        carries = [self.name("carry", s) for s in states]
        if kind == "maxplus":
            return f"tl.maximum({carries[0]} + {tiles[0]}, {tiles[1]})"
        terms = [f"{tiles[i * n + j]} * {carries[j]}" for j in range(n)]
        return " + ".join(terms) + f" + {tiles[n * n + i]}"
