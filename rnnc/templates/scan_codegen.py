"""Rendering the scan template for a Plan: every expression from the sympy printer.

Covered: cells whose states share one shape (a vector like HGRN's, or a matrix like
Mamba's ``S: [D, N]``), whose inputs and weights are views of the state's axes broadcast
into it (``dt[:, None]``, ``B[None, :]``, scalars), and whose outputs are pointwise
functions of the new states and the inputs, over the state's shape or over all but its
last axis with ``E @ V`` reductions of that axis (Mamba's ``y = S @ C + Dskip * u``).
Anything else (a state read along permuted axes, ``sum``, ``outer``, a matmul inside an
update) raises a BackendError that says why. Tile layouts live in
:mod:`rnnc.templates.scan_layout`.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> module = render_scan(analyse_source(open("examples/hgrn.rnn").read()))
    >>> "def forward_kernel(" in module.text, module.forward_args[:2], module.axes
    (True, ['in_x', 'in_g'], ['ax0'])
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.decompose import reads_of
from rnnc.compiler.nested import nest, show
from rnnc.templates.loading import template
from rnnc.templates.names import comment, derived
from rnnc.templates.scan_layout import Tiles, unsupported
from rnnc.templates.triton_printer import to_triton


@dataclass(frozen=True)
class ScanModule:
    """The generated module text, the order of its kernels' pointer arguments, and its state axes."""

    text: str
    forward_args: list
    backward_args: list
    axes: list  # names of the state axes (ax0, ...): the kernels take dim_<name> and BLOCK_<name>


class _Names(dict):
    """Tile symbols are named after their kernel variables: print them as they are."""

    def __missing__(self, key: str) -> str:
        return key


def _tl(expr) -> str:
    return to_triton(sympy.sympify(expr), _Names())


def _total(terms) -> sympy.Expr:
    return sum(terms, sympy.Integer(0))


def render_scan(plan: Plan) -> ScanModule:
    """The Triton module (forward and backward kernels) of a scan cell.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> module = render_scan(analyse_source(open("examples/mamba.rnn").read()))
        >>> module.axes, "m_0 = tl.sum(tl.where(mask_ax0_ax1, s_S * x_C, 0.0), axis=2, keep_dims=True)" in module.text
        (['ax0', 'ax1'], True)
    """
    ir = plan.ir
    if plan.strategy != "scan":
        raise unsupported(plan, f"its strategy is {plan.strategy}")
    states = [d.name for d in ir.states]
    for c in plan.components:  # independent elementwise states only: no state reads another
        pieces = [x for p in c.affine for x in (p.a, p.b)]
        others = sorted(reads_of(sympy.Add(*pieces), [s for s in states if s not in c.states])) if pieces else []
        if c.kind != "elementwise" or others:
            why = f"{c.kind}" if c.kind != "elementwise" else f"reads {', '.join(others)}"
            raise unsupported(plan, f"component {'/'.join(c.states)} is {why}; this template runs independent states")
    tiles = Tiles(plan)
    full, last = tiles.full, tiles.full[-1:]
    transitions = {t.state: t for t in plan.transitions}
    marker = tiles.markers  # the new value of each state, in nested form
    new = tiles.new_states
    prev = {n: sympy.Symbol(derived("p", user=n), real=True) for n in new}
    d_state = {n: sympy.Symbol(derived("ds", user=n), real=True) for n in new}

    # forward, in tile symbols: each state's a and b, each output in its own axes
    a = {n: tiles.flatten(transitions[n].a, full, products=False) for n in new}
    b = {n: tiles.flatten(transitions[n].b, full, products=False) for n in new}
    outputs = []
    for out in ir.outputs:
        space = tiles.output_space(out.name, out.shape)
        nested = nest(ir, out.expr).xreplace({transitions[n].update: marker[n] for n in new})
        expr = tiles.flatten(nested, space)
        do = sympy.Symbol(derived("do", user=out.name), real=True)
        outputs.append({"name": out.name, "space": space, "expr": expr, "do": do, "show": comment(show(nested))})

    # backward: gradients into each product E @ V, into each new state, and into each leaf's tile
    dm = {m.symbol: sympy.Symbol(f"d{m.symbol.name}", real=True) for m in tiles.matmuls}
    dv = {m.symbol: sympy.Symbol(f"dv_{m.symbol.name[2:]}", real=True) for m in tiles.matmuls}
    dm_expr = {
        m.symbol: _total(o["do"] * sympy.diff(o["expr"], m.symbol) for o in outputs if o["space"] == m.space)
        for m in tiles.matmuls
    }

    def into_full(x: sympy.Symbol) -> sympy.Expr:
        """Gradient reaching ``x`` through expressions over all state axes (upstream times partial)."""
        terms = [o["do"] * sympy.diff(o["expr"], x) for o in outputs if o["space"] == full]
        terms += [dm[m.symbol] * m.right * sympy.diff(m.left, x) for m in tiles.matmuls]
        return _total(terms)

    def contributions(x: sympy.Symbol) -> dict:
        """{state axes of a space: the gradient reaching tile x from expressions over that space}."""
        groups = {full: into_full(x) + _total(d_state[n] * (prev[n] * a[n].diff(x) + b[n].diff(x)) for n in new)}
        for o in outputs:
            if o["space"] != full:
                groups[o["space"]] = groups.get(o["space"], 0) + o["do"] * sympy.diff(o["expr"], x)
        for m in tiles.matmuls:
            groups[last] = groups.get(last, 0) + dv[m.symbol] * sympy.diff(m.right, x)
        return {space: g for space, g in groups.items() if g != 0}

    def reduced(x: sympy.Symbol, axes: tuple, time: bool) -> str:
        """The gradient of tile x, summed over every tile axis that x does not span."""
        parts = []
        for space, g in sorted(contributions(x).items()):
            text = f"tl.where({tiles.layout('mask', space)}, {_tl(g)}, 0.0)"
            for k in [0] * (not time) + [1 + s for s in space if s not in axes]:
                text = f"tl.sum({text}, axis={k}, keep_dims=True)"
            parts.append(text)
        return " + ".join(parts)

    def where(axes: tuple, row: str) -> str:
        return f"{row} * {tiles.layout('size', axes)} + {tiles.layout('offs', axes)}"

    backward_exprs = [*dm_expr.values()]  # what the backward kernel evaluates: does it read a product?
    # inputs the transitions read: the backward pass loads them at the next step too
    read_by_a = set().union(*(a[n].free_symbols for n in new))
    a_inputs = [d.name for d in ir.inputs if d.name in tiles.leaf_axes and tiles.tile_symbol(d.name) in read_by_a]
    to_next = {tiles.tile_symbol(name): tiles.tile_symbol(name, next_step=True) for name in a_inputs}
    inputs = []
    for decl in ir.inputs:
        if decl.name not in tiles.leaf_axes:
            continue  # read nowhere: its gradient stays zero
        axes, x = tiles.leaf_axes[decl.name], tiles.tile_symbol(decl.name)
        backward_exprs += contributions(x).values()
        grad = reduced(x, axes, time=True)
        store = "tl.store" if 0 in axes else "tl.atomic_add"  # programs share what does not span axis 0
        mask = tiles.layout("mask", axes)
        next_mask = f"mask_t_next & {tiles.layout('valid', axes)}"
        pointer, grad_pointer = derived("in", user=decl.name), derived("d_in", user=decl.name)
        inputs.append(
            {
                "tile": x.name,
                "load": f"tl.load({pointer} + {where(axes, 'row')}, mask={mask}, other=0.0).to(COMPUTE)",
                "next_tile": to_next[x].name if x in to_next else "",
                "load_next": f"tl.load({pointer} + {where(axes, '(row + NH)')}, mask={next_mask}, other=0.0)"
                ".to(COMPUTE)",
                "store_grad": grad
                and f"{store}({grad_pointer} + {where(axes, 'row')}, {tiles.layout('zero', axes)} + ({grad}), "
                f"mask={mask})",
            }
        )
    weights = []
    for decl in ir.weights:
        if decl.name not in tiles.leaf_axes:
            continue
        axes, w = tiles.leaf_axes[decl.name], tiles.tile_symbol(decl.name)
        backward_exprs += contributions(w).values()
        here, valid = where(axes, "h"), tiles.layout("valid", axes)
        pointer, grad_pointer, grad = (derived(role, user=decl.name) for role in ("w", "d_w", "g"))
        weights.append(
            {
                "tile": w.name,
                "load": f"tl.load({pointer} + {here}, mask={valid}, other=0.0).to(COMPUTE)",
                "grad": grad,
                "grad_shape": tiles.tile_shape(axes, time=False),
                "grad_expr": reduced(w, axes, time=False) or "0.0",
                "store_grad": f"tl.atomic_add({grad_pointer} + {here}, {grad}, mask={valid})",
            }
        )
    states = []
    for decl in ir.states:
        n = decl.name
        backward_exprs.append(into_full(new[n]))
        states.append(
            {
                "describe": comment(transitions[n].describe()),
                "tile": new[n].name,
                "prev": prev[n].name,
                "d": d_state[n].name,
                "carry": derived("carry", user=n),
                "initial": derived("st", user=n),
                "initial_tile": derived("initial", user=n),
                "final": derived("fin", user=n),
                "saved": derived("saved", user=n),
                "d_final": derived("d_fin", user=n),
                "d_initial": derived("d_st", user=n),
                "a_first": derived("a_first", user=n),
                "a_expr": _tl(a[n]),
                "b_expr": _tl(b[n]),
                "a_next_expr": _tl(a[n].xreplace(to_next)),
                "g_expr": _tl(into_full(new[n])),
            }
        )
    outs = [
        {
            "name": o["name"],
            "show": o["show"],
            "pointer": derived("out", user=o["name"]),
            "d_pointer": derived("d_out", user=o["name"]),
            "d_tile": o["do"].name,
            "at": where(o["space"], "row"),
            "mask": tiles.layout("mask", o["space"]),
            "expr": f"{tiles.layout('zero', o['space'])} + ({_tl(o['expr'])})",
        }
        for o in outputs
    ]
    read_in_backward = set().union(*(sympy.sympify(e).free_symbols for e in backward_exprs))
    full_mask = tiles.layout("mask", full)
    products = []
    for m in tiles.matmuls:
        dv_text = f"tl.where({full_mask}, {_tl(dm[m.symbol] * m.left)}, 0.0)"
        for k in [1 + s for s in full[:-1]]:  # dm * E summed over every axis but the last is dV
            dv_text = f"tl.sum({dv_text}, axis={k}, keep_dims=True)"
        space_mask, zero = tiles.layout("mask", m.space), tiles.layout("zero", m.space)
        products.append(
            {
                "show": comment(m.label),
                "tile": m.symbol.name,
                "expr": f"tl.sum(tl.where({full_mask}, {_tl(m.left * m.right)}, 0.0), axis={tiles.rank}, "
                "keep_dims=True)",
                "in_backward": m.symbol in read_in_backward,
                "d_tile": dm[m.symbol].name,
                "d_expr": f"tl.where({space_mask}, {zero} + ({_tl(dm_expr[m.symbol])}), 0.0)",
                "dv_tile": dv[m.symbol].name,
                "dv_expr": dv_text if m.right.free_symbols else "",
            }
        )

    kinds = {"in": ir.inputs, "w": ir.weights, "st": ir.states, "out": ir.outputs, "fin": ir.states}
    kinds.update({"saved": ir.states, "d_out": ir.outputs, "d_fin": ir.states})
    kinds.update({"d_in": ir.inputs, "d_w": ir.weights, "d_st": ir.states})

    def pointers(*roles: str) -> list[str]:
        return [derived(role, user=d.name) for role in roles for d in kinds[role]]

    forward_args = pointers("in", "w", "st", "out", "fin", "saved")
    backward_args = pointers("in", "w", "st", "saved", "d_out", "d_fin", "d_in", "d_w", "d_st")
    layouts = sorted({full, last, *tiles.leaf_axes.values(), *(o["space"] for o in outputs)}, key=lambda s: (len(s), s))
    text = template("scan.py.jinja").render(
        cell=ir.cell,
        key=plan.key(),
        forward_args=forward_args,
        backward_args=backward_args,
        axes=[
            {"name": x.name, "dim": comment(str(x.dim)), "size": x.size, "block": x.block}
            | {"index": x.index, "valid": x.valid}
            for x in tiles.axes
        ],
        time_spread=tiles.spread(0),
        dims_read=[x.name for x in tiles.axes if x.name in tiles.dims_read],
        one_shape=tiles.tile_shape((), time=False),
        layouts=[
            {
                "name": tiles.layout_name(s),
                "offs": tiles.offsets(s),
                "valid": tiles.valid(s),
                "size": tiles.size(s),
                "shape": tiles.tile_shape(s),
            }
            for s in layouts
        ],
        full=tiles.layout_name(full),
        state_shape=tiles.tile_shape(full, time=False),
        inputs=inputs,
        weights=weights,
        states=states,
        outputs=outs,
        products=products,
    )
    return ScanModule(text, forward_args, backward_args, [x.name for x in tiles.axes])
