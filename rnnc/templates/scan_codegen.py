"""Rendering the scan template for a stage of a Plan: the compiler's pieces, lowered and printed.

Every scan component runs in one kernel, in the Plan's order, within each chunk of time:
elementwise (``s' = a * s + b``), coupled per channel (an n x n map, LRU's (re, im) pair) and
max-plus (``m' = max(m + a, b)``) components; outputs are any pointwise expression of inputs,
weights, and the old and new values of the states, with reductions inside a step (``S' @ C``)
over axes a program owns whole; reductions that read no state (``q @ k``, ``sum(k * k)``) are
computed before the kernel (:mod:`rnnc.templates.scan_hoist`). Tile layouts are
:mod:`rnnc.templates.scan_layout`'s, the forward lines :mod:`rnnc.templates.scan_program`'s,
the backward lines :mod:`rnnc.templates.scan_backward`'s.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> module = render_scan(analyse_source(open("examples/hgrn.rnn").read()))
    >>> "def forward_kernel(" in module.text, module.forward_args[:2], [a.name for a in module.axes]
    (True, ['in_x', 'in_g'], ['ax0'])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.components import Stage
from rnnc.compiler.nested import show
from rnnc.errors import BackendError, LocatedBackendError
from rnnc.templates.loading import template
from rnnc.templates.names import comment
from rnnc.templates.scan_backward import backward_lines
from rnnc.templates.scan_combine import combine_source
from rnnc.templates.scan_layout import Layout, TileAxis, TileSpace
from rnnc.templates.scan_program import ScanProgram


@dataclass(frozen=True)
class ScanModule:
    """The generated module text and what its launcher needs: argument order, axes, dims read."""

    text: str
    forward_args: list
    backward_args: list
    axes: list[TileAxis]
    parallel: int | None  # the tile axis programs split (None: one program per sequence and head)
    dims_read: list[str]  # dims the expressions read as numbers (kernel arguments num_<dim>)
    hoisted: list  # state-free reductions the launcher computes first (rnnc.templates.scan_hoist.Hoisted)
    post: list  # (name, nested expr) of the outputs computed after the kernels (split_outputs)
    states: list[str]
    outputs: list[str]
    carries: list[str]


def unsupported(plan: Plan, why: str) -> BackendError:
    """The error for a cell the scan template does not run, saying why.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> str(unsupported(analyse_source(open("examples/lstm.rnn").read()), "a reason"))
        'the Triton scan template does not run cell lstm: a reason'
    """
    return BackendError(f"the Triton scan template does not run cell {plan.ir.cell}: {why}")


def scan_stage(plan: Plan, stage: Stage | None = None) -> Stage:
    """The scan stage to render: the one given, or the cell's only stage; refusals are located.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> scan_stage(analyse_source(open("examples/hgrn.rnn").read())).components
        (0,)
    """
    if stage is None:
        if plan.strategy != "scan":
            raise unsupported(plan, f"its strategy is {plan.strategy}")
        stage = plan.stages[0]
    if stage.strategy != "scan":
        raise unsupported(plan, f"the stage runs {stage.strategy}")
    if stage.blockers:
        blocker = stage.blockers[0]
        states = ", ".join(plan.components[blocker.component].states)
        raise LocatedBackendError(
            f"the Triton scan template cannot run cell {plan.ir.cell} (component {blocker.component + 1}, "
            f"{states}, {blocker.piece}): {blocker.reason}",
            blocker.span,
        )
    return stage


def split_outputs(plan: Plan, stage: Stage) -> tuple[Stage, list]:
    """(the stage the kernels run, the outputs computed after them in PyTorch).

    An output that needs a tile axis no state has (LRU's ``y = C_re @ x_re' + ...`` is over H,
    and contracts the state's N with a weight) would make every tile of the kernel span that axis
    too; it is computed after the kernels from the states' per-step values, which the kernels then
    carry (a GEMM over all steps for ``C @ x``), and its cotangents come back as the trajectories'.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> plan = analyse_source(open("examples/lru.rnn").read())
        >>> kernel_stage, post = split_outputs(plan, plan.stages[0])
        >>> kernel_stage.outputs, [name for name, _ in post], kernel_stage.carries
        ((), ['y'], ('x_re', 'x_im'))
    """
    space = TileSpace(plan, stage)
    state_axes = {a for s in space.states for a in space.leaf(s).axes}
    by_symbol = {r.symbol: r for r in space.reductions}

    def axes_of(expr) -> set:
        found = set(space.layout_of(expr).axes)
        for symbol in sympy.sympify(expr).free_symbols:
            if symbol in by_symbol:
                found |= set(by_symbol[symbol].axes) | axes_of(by_symbol[symbol].expr)
        return found

    post = [(o.name, dict(stage.output_exprs)[o.name]) for o in space.outputs if not axes_of(o.expr) <= state_axes]
    if not post:
        return stage, []
    names = {n for n, _ in post}
    read = {s.name.rstrip("'") for _, e in post for s in sympy.sympify(e).free_symbols}
    carries = tuple(dict.fromkeys([*stage.carries, *(s for s in space.states if s in read)]))
    kept = tuple((n, e) for n, e in stage.output_exprs if n not in names)
    outputs = tuple(n for n in stage.outputs if n not in names)
    return dataclasses.replace(stage, outputs=outputs, output_exprs=kept, carries=carries), post


def render_scan(plan: Plan, stage: Stage | None = None) -> ScanModule:
    """The Triton module (forward and backward kernels) of a scan cell, or of one scan stage of a cell.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> module = render_scan(analyse_source(open("examples/mamba.rnn").read()))
        >>> "r_0 = tl.sum(tl.where(mask_ax0_ax1, new_S * x_C, 0.0), axis=2, keep_dims=True)  # S' @ C" in module.text
        True
    """
    stage, post = split_outputs(plan, scan_stage(plan, stage))
    program = ScanProgram(plan, stage)
    space, ir = program.space, plan.ir
    forward_chunk = program.forward_chunk()
    forward_setup = [program.load_weight(w) for w in space.leaves("weight") if w.symbol in program.forward_reads]
    forward_finish = []
    for s in space.states:
        valid = program.mask(Layout(space.leaf(s).layout.axes, False))
        carry = program.name("carry", s)
        forward_setup.append(f"    {carry} = tl.load({program.state_at(s, 'st')}, mask={valid}, other=0.0).to(COMPUTE)")
        forward_finish.append(f"    tl.store({program.state_at(s, 'fin')}, {carry}, mask={valid})")
    backward = backward_lines(program)

    hoisted = space.hoisted  # computed before the kernel, read as inputs and weights after the cell's own
    inputs = [d.name for d in ir.inputs] + [h.name for h in hoisted if h.kind == "input"]
    weights = [d.name for d in ir.weights] + [h.name for h in hoisted if h.kind == "weight"]
    # pointers in declaration order (the kernel interface's flat layout); the steps run in the Plan's order
    states = [d.name for d in ir.states if d.name in space.states]
    outputs, carries = [o.name for o in space.outputs], list(stage.carries)
    n = program.name
    forward_args = [n("in", x) for x in inputs] + [n("w", w) for w in weights] + [n("st", s) for s in states]
    forward_args += [n("out", o) for o in outputs] + [n("fin", s) for s in states] + [n("saved", s) for s in states]
    backward_args = [n("in", x) for x in inputs] + [n("w", w) for w in weights] + [n("st", s) for s in states]
    backward_args += [n("saved", s) for s in states] + [n("d_out", o) for o in outputs]
    backward_args += [n("d_fin", s) for s in states] + [n("d_traj", s) for s in carries]
    backward_args += [n("d_in", x) for x in inputs] + [n("d_w", w) for w in weights] + [n("d_st", s) for s in states]

    offsets = []
    tensors = [(leaf, *program.leaf_offsets(leaf)) for leaf in space.leaves("input") + space.leaves("weight")]
    tensors += [(s, program.offsets(space.leaf(s).axes), program.size(space.leaf(s).axes)) for s in states]
    tensors += [(o.name, program.offsets(o.axes), program.size(o.axes)) for o in space.outputs]
    for tensor, expr, count in tensors:
        offs, size = program.place_of(tensor)
        offsets.append({"offs": offs, "expr": expr, "size": size, "count": count})
    dims_read = [{"comment": comment(d), "arg": n("num", d), "tile": n("value", d)} for d in space.dims_read]
    layouts = sorted(program.used_layouts, key=lambda lay: (len(lay.axes), lay.axes, lay.time))
    static = sorted({lay.axes for lay in layouts})
    layout_rows = []
    for axes in static:
        timed = Layout(axes, True)
        valid = " & ".join(f"{space.axes[a].valid}{program.spread(a + 1)}" for a in axes)
        layout_rows.append(
            {
                "valid": program.mask(Layout(axes, False)),
                "valid_expr": valid or f"tl.zeros({program.tile_shape(Layout((), False))}, dtype=tl.int32) == 0",
                "zero": program.zero(timed) if timed in program.used_layouts else "",
                "shape": program.tile_shape(timed),
            }
        )
    masks = [{"mask": program.mask(Layout(axes, True)), "valid": program.mask(Layout(axes, False))}
             for axes in static if Layout(axes, True) in program.used_layouts]  # fmt: skip
    axes_rows = [{"name": a.name, "dim": comment(str(a.dim)), "size": a.size, "block": a.block, "index": a.index,
                  "valid": a.valid, "parallel": i == space.parallel} for i, a in enumerate(space.axes)]  # fmt: skip
    if space.parallel is None:
        ownership = "every entry of every axis"
    else:
        rest = [a.name for i, a in enumerate(space.axes) if i != space.parallel]
        ownership = f"BLOCK_{space.axes[space.parallel].name} entries of {space.axes[space.parallel].name}"
        ownership += f" and all of {', '.join(rest)}" if rest else ""
    describe = [f"{c.index + 1}. {', '.join(c.states)} ({c.kind})" for c in space.components]
    describe += [f"output {o.name} = {o.label}" for o in space.outputs]
    describe += [f"output {name} = {show(e)}, computed after the kernels" for name, e in post]
    describe += [f"reduction {h.name} = {show(h.expr)}, computed before the kernels" for h in hoisted]
    describe += [f"per-step values of {', '.join(carries)} for what follows" for _ in carries[:1]]
    describe = [comment(line) for line in describe]
    text = template("scan.py.jinja").render(
        cell=ir.cell,
        key=plan.key(),
        stage_note="" if plan.strategy == "scan" else f" (the scan stage before the {plan.strategy} stage)",
        describe=describe,
        ownership=ownership,
        combines=[combine_source(*c) for c in sorted(program.combines)],
        axes=axes_rows,
        size_args=[a.size for a in space.axes] + [d["arg"] for d in dims_read],
        forward_args=forward_args,
        backward_args=backward_args,
        time_spread=program.spread(0),
        dims_read=dims_read,
        one_shape=program.tile_shape(Layout((), False)),
        layouts=layout_rows,
        offsets=offsets,
        masks=masks,
        forward_setup=forward_setup,
        forward_chunk=forward_chunk,
        forward_finish=forward_finish,
        backward_setup=backward.setup,
        backward_chunk=backward.chunk,
        backward_finish=backward.finish,
    )
    return ScanModule(
        text,
        forward_args,
        backward_args,
        list(space.axes),
        space.parallel,
        list(space.dims_read),
        hoisted,
        post,
        states,
        outputs,
        carries,
    )
