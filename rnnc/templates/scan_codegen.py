"""Rendering the scan template for a Plan: every expression from the sympy printer.

Covered so far: cells whose states share one shape, whose inputs and weights are
either of that shape or scalars, and whose outputs are pointwise functions of the
new states and the inputs (HGRN, minGRU and the like). Other scan cells (Mamba's
``S @ C`` output reduces over an axis) raise a BackendError that says why.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> module = render_scan(analyse_source(open("examples/hgrn.rnn").read()))
    >>> "def forward_kernel(" in module.text, module.forward_args[:2]
    (True, ['in_x', 'in_g'])
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import jinja2
import sympy

from rnnc.compiler import Plan
from rnnc.compiler.nested import nest
from rnnc.compiler.shapes import same_shape, show
from rnnc.compiler.symbols import tensor_symbol
from rnnc.errors import BackendError
from rnnc.templates.triton_printer import to_triton


@dataclass(frozen=True)
class ScanModule:
    """The generated module text and the order of its kernels' pointer arguments."""

    text: str
    forward_args: list
    backward_args: list


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    text = resources.files("rnnc.templates").joinpath("scan.py.jinja").read_text()
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=False, keep_trailing_newline=True
    )
    return env.from_string(text)


def _unsupported(plan: Plan, why: str) -> BackendError:
    return BackendError(f"the Triton scan template does not cover cell {plan.ir.cell} yet: {why}")


def render_scan(plan: Plan) -> ScanModule:
    """The Triton module (forward and backward kernels) of a scan cell."""
    ir = plan.ir
    if plan.strategy != "scan":
        raise _unsupported(plan, f"its strategy is {plan.strategy}")
    structural = [a.name for a in ir.atoms if not a.is_leaf]
    if structural:
        raise _unsupported(plan, f"it uses {', '.join(structural)} (only pointwise steps so far)")
    shape = ir.states[0].shape
    if any(not same_shape(d.shape, shape) for d in ir.states):
        raise _unsupported(plan, "its states differ in shape")
    for decl in (*ir.inputs, *ir.weights):
        if decl.shape and not same_shape(decl.shape, shape):
            raise _unsupported(plan, f"{decl.name} is {show(decl.shape)}, neither {show(shape)} nor a scalar")
    for out in ir.outputs:
        if not same_shape(out.shape, shape):
            raise _unsupported(plan, f"output {out.name} is {show(out.shape)}, not {show(shape)}")
    if any(not v.is_plain() for _, v in ir.views):
        raise _unsupported(plan, "it inserts or permutes axes")

    sym = tensor_symbol
    new_state = {d.name: sympy.Symbol(f"new_{d.name}", real=True) for d in ir.states}
    prev = {d.name: sympy.Symbol(f"prev_{d.name}", real=True) for d in ir.states}
    d_state = {d.name: sympy.Symbol(f"d_{d.name}", real=True) for d in ir.states}
    d_out = {o.name: sympy.Symbol(f"dout_{o.name}", real=True) for o in ir.outputs}

    names = {d.name: f"x_{d.name}" for d in ir.inputs}
    names.update({d.name: f"w_{d.name}" for d in ir.weights})
    names.update({f"new_{n}": f"s_{n}" for n in new_state})
    names.update({f"prev_{n}": f"p_{n}" for n in prev})
    names.update({f"d_{n}": f"ds_{n}" for n in d_state})
    names.update({f"dout_{n}": f"do_{n}" for n in d_out})
    names_next = {**names, **{d.name: f"x_{d.name}_next" for d in ir.inputs}}

    transitions = {t.state: t for t in plan.transitions}
    outputs = []
    for out in ir.outputs:
        expr = nest(ir, out.expr).xreplace({transitions[n].update: new_state[n] for n in new_state})
        stray = [s.name for s in expr.free_symbols if s.name in new_state and s not in new_state.values()]
        if stray or any(sym(n) in expr.free_symbols for n in new_state):
            raise _unsupported(plan, f"output {out.name} reads a previous state")
        outputs.append((out.name, expr))

    def tl(expr, table=names):
        return to_triton(sympy.sympify(expr), table)

    def load(decl, next_step=False) -> str:
        pointer = f"in_{decl.name}"
        row, mask_t, mask = ("row_next", "mask_t_next", "mask_next") if next_step else ("row", "mask_t", "mask")
        if decl.shape:
            return f"tl.load({pointer} + {row}[:, None] * C + c[None, :], mask={mask}, other=0.0).to(COMPUTE)"
        return f"tl.load({pointer} + {row}, mask={mask_t}, other=0.0).to(COMPUTE)[:, None]"

    def input_grad(decl) -> sympy.Expr:
        x = sym(decl.name)
        total = sympy.Integer(0)
        for n, t in transitions.items():
            total += d_state[n] * (prev[n] * sympy.diff(t.a, x) + sympy.diff(t.b, x))
        for name, expr in outputs:
            total += d_out[name] * sympy.diff(expr, x)
        return total

    inputs = []
    for decl in ir.inputs:
        grad = tl(input_grad(decl))
        if decl.shape:
            store = f"tl.store(d_in_{decl.name} + row[:, None] * C + c[None, :], zero + ({grad}), mask=mask)"
        else:  # a scalar per step: every channel contributes
            store = f"tl.atomic_add(d_in_{decl.name} + row, tl.sum(tl.where(mask, {grad}, 0.0), axis=1), mask=mask_t)"
        inputs.append(
            {"tile": names[decl.name], "load": load(decl), "load_next": load(decl, True), "store_grad": store}
        )
    weights = []
    for decl in ir.weights:
        if decl.shape:
            tile_load = f"tl.load(w_{decl.name} + h * C + c, mask=mask_c, other=0.0).to(COMPUTE)[None, :]"
            store = f"tl.atomic_add(d_w_{decl.name} + h * C + c, tl.sum(g_{decl.name}, axis=0), mask=mask_c)"
        else:
            tile_load = f"tl.load(w_{decl.name} + h).to(COMPUTE)"
            store = f"tl.atomic_add(d_w_{decl.name} + h, tl.sum(tl.sum(g_{decl.name}, axis=1), axis=0))"
        weights.append(
            {
                "tile": names[decl.name],
                "load": tile_load,
                "grad": f"g_{decl.name}",
                "grad_expr": tl(input_grad(decl)),
                "store_grad": store,
            }
        )
    states = []
    for decl in ir.states:
        t = transitions[decl.name]
        g = sum((d_out[name] * sympy.diff(expr, new_state[decl.name]) for name, expr in outputs), sympy.Integer(0))
        states.append(
            {
                "name": decl.name,
                "tile": f"s_{decl.name}",
                "prev": f"p_{decl.name}",
                "d": f"ds_{decl.name}",
                "carry": f"carry_{decl.name}",
                "initial": f"st_{decl.name}",
                "initial_tile": f"initial_{decl.name}",
                "final": f"fin_{decl.name}",
                "saved": f"saved_{decl.name}",
                "d_final": f"d_fin_{decl.name}",
                "d_initial": f"d_st_{decl.name}",
                "a_first": f"a_first_{decl.name}",
                "a_expr": tl(t.a),
                "b_expr": tl(t.b),
                "a_next_expr": tl(t.a, names_next),
                "g_expr": tl(g),
            }
        )
    outs = [
        {
            "pointer": f"out_{name}",
            "d_pointer": f"d_out_{name}",
            "d_tile": f"do_{name}",
            "expr": f"zero + ({tl(expr)})",
        }
        for name, expr in outputs
    ]

    forward_args = [f"in_{d.name}" for d in ir.inputs] + [f"w_{d.name}" for d in ir.weights]
    forward_args += [f"st_{d.name}" for d in ir.states] + [f"out_{o.name}" for o in ir.outputs]
    forward_args += [f"fin_{d.name}" for d in ir.states] + [f"saved_{d.name}" for d in ir.states]
    backward_args = [f"in_{d.name}" for d in ir.inputs] + [f"w_{d.name}" for d in ir.weights]
    backward_args += [f"st_{d.name}" for d in ir.states] + [f"saved_{d.name}" for d in ir.states]
    backward_args += [f"d_out_{o.name}" for o in ir.outputs] + [f"d_fin_{d.name}" for d in ir.states]
    backward_args += [f"d_in_{d.name}" for d in ir.inputs] + [f"d_w_{d.name}" for d in ir.weights]
    backward_args += [f"d_st_{d.name}" for d in ir.states]
    text = _template().render(
        cell=ir.cell,
        key=plan.key(),
        forward_args=forward_args,
        backward_args=backward_args,
        inputs=inputs,
        weights=weights,
        states=states,
        outputs=outs,
    )
    return ScanModule(text, forward_args, backward_args)
