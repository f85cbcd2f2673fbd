"""The backward kernel's lines: the stage's steps in reverse, one reverse scan per component.

For a state ``s`` with step map ``s' = A s + b`` (A the n x n map of a coupled component, the
indicator ``d max(m + a, b) / dm`` of a max-plus one), let ``h_t`` be the cotangent that reaches
``s'_t`` directly (outputs, later components, the carried trajectory) and ``o_t`` the one that
reaches the previous value ``s_t`` directly (RWKV-4's output, Aaren's ``exp(m - m')``). Then
the cotangent of the previous value, ``nu_t = o_t + A_t^T (h_t + nu_{t+1})``, is a reverse
linear scan over ``(A_t^T, o_t + A_t^T h_t)`` on the same rows, and ``lam_t = h_t + nu_{t+1}``,
the cotangent of ``s'_t``, is the same scan's "all but the last" map (see
:mod:`rnnc.templates.scan_combine`): no row of the chunk is shifted, and the chunk boundary is
the carry ``nu`` of the chunk after it (``d_final`` after the last). From ``lam`` the pieces get
``dA = lam s_prev^T`` and ``db = lam``, and sympy's partials carry those into the inputs,
weights, reductions and earlier states, before those components run their own reverse scans.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.scan_program import ScanProgram, scan_call
    >>> parts = backward_lines(ScanProgram(analyse_source(open("examples/hgrn.rnn").read())))
    >>> [line.strip() for line in parts.chunk if line.strip().startswith("lam_h")]
    ['lam_h = pa_h * dcarry_h + pb_h + do_h']
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.templates.names import comment
from rnnc.templates.scan_grad import INDENT, Gradients
from rnnc.templates.scan_layout import Layout
from rnnc.templates.scan_program import ScanProgram, scan_call


@dataclass
class BackwardLines:
    """The backward kernel's lines: before the time loop, inside it (one chunk), and after it."""

    setup: list[str]
    chunk: list[str]
    finish: list[str]


def backward_lines(program: ScanProgram) -> BackwardLines:
    """Every line of the backward kernel that depends on the stage."""
    space = program.space
    body: list[str] = []
    constants = {s for s, layout in program.layouts.items() if s.name.startswith("value_")}
    grads = Gradients(program.layouts, program.mask, body, program.fresh, constants)
    head: list[str] = []  # cotangent loads, before the body
    for s in program.stage.carries:
        d = program.state_symbol(s, "dtraj")
        at = program.at(program.name("d_traj", s), s, "row")
        mask = program.mask(space.leaf(s).layout)
        head.append(f"{INDENT}{d.name} = tl.load({at}, mask={mask}, other=0.0).to(COMPUTE)  # from a later stage")
        grads.add(space.leaf(s, "new").symbol, d)
    cotangents = []
    for o in space.outputs:
        do = sympy.Symbol(program.name("do", o.name), real=True)
        program.layouts[do] = o.layout
        grads.propagate([(do, o.expr)])
        cotangents.append((o, do))
    for kind, step in reversed(program.steps):
        if kind == "reduction":
            g = grads.take(step.symbol)
            if g is not None:
                symbol = grads.emit(program.names.own("reduction gradient", "gr"), g, program.layouts[step.symbol])
                grads.propagate([(_reduction_cotangent(program, grads, step, symbol), step.expr)])
        else:
            _component(program, grads, step)
    stores, setup, finish = [], [], []
    for leaf in space.leaves("input"):
        g = grads.take(leaf.symbol)
        if g is None:
            continue
        grads.used |= g.free_symbols
        split = space.parallel is not None and space.parallel not in leaf.axes  # programs share these entries
        store = "tl.atomic_add" if split or leaf.shared else "tl.store"  # shared: other leaves add there too
        at = program.at(program.name("d_in", leaf.source), leaf, "row")
        value = f"{program.zero(leaf.layout)} + ({program.src(g)})"
        stores.append(f"{INDENT}{store}({at}, {value}, mask={program.mask(leaf.layout)})")
    for leaf in space.leaves("weight"):
        g = grads.take(leaf.symbol)
        if g is None:
            continue
        grads.used |= g.free_symbols
        acc = program.names.tensor("g", leaf.source, gate=leaf.gate, placement=leaf.placement)
        setup.append(f"    {acc} = tl.zeros({program.tile_shape(leaf.layout)}, dtype=COMPUTE)")
        stores.append(f"{INDENT}{acc} += {program.src(g)}")
        at = program.at(program.name("d_w", leaf.source), leaf, "h")
        finish.append(f"    tl.atomic_add({at}, {acc}, mask={program.mask(leaf.layout)})")
    used = set(grads.used)
    for o, do in cotangents:
        if do in used:
            at = program.at(program.name("d_out", o.name), o.name, "row")
            head.append(f"{INDENT}{do.name} = tl.load({at}, mask={program.mask(o.layout)}, other=0.0).to(COMPUTE)")
    for r in reversed(space.reductions):  # what the body reads, and what those reductions read
        if r.symbol in used:
            used |= r.expr.free_symbols
    loads = []
    for leaf in space.leaves("input") + space.leaves("new") + space.leaves("old"):
        if leaf.symbol in used:
            loads += program.load_leaf(leaf)
    loads += [program.reduction_line(r) for r in space.reductions if r.symbol in used]
    setup[:0] = [program.load_weight(leaf) for leaf in space.leaves("weight") if leaf.symbol in used]
    for s in space.states:
        layout = space.leaf(s).layout
        at = program.state_at(s, "d_fin")
        valid = program.mask(Layout(layout.axes, False))
        setup.append(f"    {program.name('dcarry', s)} = tl.load({at}, mask={valid}, other=0.0).to(COMPUTE)")
        if space.leaf(s, "old").symbol in used:
            at = program.state_at(s, "st")
            setup.append(f"    {program.name('initial', s)} = tl.load({at}, mask={valid}, other=0.0).to(COMPUTE)")
        finish.append(f"    tl.store({program.state_at(s, 'd_st')}, {program.name('dcarry', s)}, mask={valid})")
    return BackwardLines(setup, loads + head + body + stores, finish)


def _reduction_cotangent(program: ScanProgram, grads: Gradients, r, g: sympy.Symbol) -> sympy.Expr:
    """The cotangent of a reduction's operand: ``g`` itself for a sum; for a max or min, ``g`` shared
    evenly by the entries that attain it (as ``torch.amax`` splits ties)."""
    if r.op == "sum":
        return g
    layout = grads.layout_of(r.expr)
    full = Layout(tuple(sorted(set(layout.axes) | set(r.axes))), layout.time)
    value = grads.emit(program.fresh("e"), r.expr, layout)
    hit = program.fresh("hit")
    mask = program.mask(full)
    grads.used |= {r.symbol}
    grads.lines.append(f"{INDENT}{hit} = tl.where({mask} & ({value.name} == {r.symbol.name}), 1.0, 0.0).to(COMPUTE)")
    count = hit
    for a in r.axes:
        count = f"tl.sum({count}, axis={a + 1}, keep_dims=True)"
    share = sympy.Symbol(program.fresh("share"), real=True)
    grads.lines.append(f"{INDENT}{share.name} = {hit} / {count}  # ties share the cotangent evenly")
    grads.layouts[share] = full
    return g * share


def _component(program: ScanProgram, grads: Gradients, position: int) -> None:
    """The reverse scan of one component and the cotangents of its pieces."""
    c, states, pieces = program.component(position)
    kind, n = program.kind_of(position)
    space = program.space
    layout = space.leaf(states[0]).layout
    mask, zero = program.mask(layout), program.zero(layout)
    program.combines.add(("affine", n, True))
    tag = states[0]
    h = [grads.take(space.leaf(s, "new").symbol) for s in states]
    o = [grads.take(space.leaf(s, "old").symbol) for s in states]
    old = [space.leaf(s, "old").symbol for s in states]
    lines = grads.lines
    named = comment(", ".join(states))
    lines.append(f"{INDENT}# component {c.index + 1} ({named}), in reverse: lam, the new value's cotangent per step")
    if kind == "maxplus":
        a, b = pieces["a"], pieces["b"]
        coefficient = [[sympy.Heaviside(old[0] + a - b, sympy.Rational(1, 2))]]
    elif n == 1:
        coefficient = [[pieces["a"]]]
    else:
        coefficient = [[pieces["m"][j][i] for j in range(n)] for i in range(n)]  # the transposed map
    co = [[program.state_symbol(tag, f"co{i}{j}" if n > 1 else "co") for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            grads.used |= sympy.sympify(coefficient[i][j]).free_symbols
            identity = 1.0 if i == j else 0.0
            text = program.src(coefficient[i][j])
            lines.append(f"{INDENT}{co[i][j].name} = tl.where({mask}, {zero} + ({text}), {identity})")
    cc = []
    for i in range(n):
        total = o[i] if o[i] is not None else sympy.Integer(0)
        for j in range(n):
            if h[j] is not None:
                total += co[i][j] * h[j]
        grads.used |= sympy.sympify(total).free_symbols
        name = program.name(f"cc{i}" if n > 1 else "cc", tag)
        lines.append(f"{INDENT}{name} = tl.where({mask}, {zero} + ({program.src(total)}), 0.0)")
        cc.append(name)
    entries = [co[i][j].name for i in range(n) for j in range(n)] + cc
    identity = [f"{zero} + 1.0" if i == j else zero for i in range(n) for j in range(n)] + [zero] * n
    suffix = [f"{i}{j}" for i in range(n) for j in range(n)] if n > 1 else [""]
    outs = [program.name(f"ca{x}", tag) for x in suffix] + [
        program.name(f"cb{i}" if n > 1 else "cb", tag) for i in range(n)
    ]
    prev = [program.name(f"pa{x}", tag) for x in suffix] + [
        program.name(f"pb{i}" if n > 1 else "pb", tag) for i in range(n)
    ]
    lines += scan_call(outs + prev, entries + identity, f"_affine{n}_prev", reverse=True)
    carries = [program.name("dcarry", s) for s in states]
    lam = [program.state_symbol(s, "lam") for s in states]
    for i in range(n):
        text = " + ".join(f"{prev[i * n + j]} * {carries[j]}" for j in range(n)) + f" + {prev[n * n + i]}"
        if h[i] is not None:
            text += f" + {program.src(h[i])}"
        lines.append(f"{INDENT}{lam[i].name} = {text}")
    nexts = []
    for i in range(n):
        inner = " + ".join(f"{outs[i * n + j]} * {carries[j]}" for j in range(n)) + f" + {outs[n * n + i]}"
        value = f"tl.sum(tl.where(lane == 0, {inner}, 0.0), axis=0, keep_dims=True)"
        if n == 1:
            lines.append(f"{INDENT}{carries[0]} = {value}")
        else:
            nexts.append(program.name(f"next{i}", tag))
            lines.append(f"{INDENT}{nexts[-1]} = {value}")
    for carry, nxt in zip(carries, nexts):
        lines.append(f"{INDENT}{carry} = {nxt}")
    if kind == "maxplus":
        pairs = [(lam[0] * co[0][0], pieces["a"]), (lam[0] * (1 - co[0][0]), pieces["b"])]
    elif n == 1:
        pairs = [(lam[0] * old[0], pieces["a"]), (lam[0], pieces["b"])]
    else:
        pairs = [(lam[i] * old[j], pieces["m"][i][j]) for i in range(n) for j in range(n)]
        pairs += [(lam[i], pieces["b"][i]) for i in range(n)]
    grads.propagate(pairs)
