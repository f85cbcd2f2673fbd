"""The reference's fused backpropagation through time: one autograd node for a whole sequence.

The forward runs the generated loop (:mod:`rnnc.runtime.fused_codegen`) without a tape and keeps
each step's states and the few values its partial derivatives share with it. The backward
stacks those once, evaluates every partial derivative for all steps at once (``linearise``),
walks time in reverse along the states only (``backward``: pointwise products and one GEMM per
``weight @ state`` per step), then computes the cotangents of the inputs and weights for all
steps at once (``reverse_all``: a weight matrix's cotangent is one GEMM over all B * T rows, an
input's is written once, not stacked from steps). No autograd runs inside, so the same code is the
backward of the reference's custom op under ``torch.compile``.

Example:
    >>> import torch
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.runtime.reference import ReferenceRunner
    >>> run = ReferenceRunner(analyse_source(open("examples/elman.rnn").read()))
    >>> x = torch.ones(1, 3, 1, 2, requires_grad=True)
    >>> out, _ = run({"x": x, "R": torch.zeros(1, 2, 2), "b": torch.zeros(1, 2)}, {})
    >>> out["h"].sum().backward(); [round(v, 4) for v in x.grad[0, :, 0, 0].tolist()]
    [0.42, 0.42, 0.42]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from rnnc.runtime.arguments import Call


@dataclass
class Tape:
    """What the forward keeps for the backward: weight-only values, the prologue's values for the
    backward, every step's states (initial first) and every step's saved values."""

    consts: tuple
    seqs: tuple
    history: list
    saved: list
    like: torch.Tensor
    outputs: list  # stacked [B, T, ...]: the new states that are outputs, when in the compute dtype


def sizes_of(plan, call: Call) -> dict:
    """The ``sizes`` the fused module's ``prepare`` reads: dims, NH and every result's and atom's tail."""
    ir = plan.ir.marked if plan.ir.marked is not None else plan.ir
    sizes = {**call.dims, "NH": call.NH}
    for r in (*ir.updates, *ir.outputs):
        sizes["tail " + r.name] = (call.NH, *call.shape_of(r.shape))
    for atom in ir.atoms:
        sizes["shape " + atom.name] = (call.NH, *call.shape_of(atom.shape))
    return sizes


def _counts(plan) -> tuple[int, int, int]:
    ir = plan.ir
    return len(ir.inputs), len(ir.weights), len(ir.states)


def fused_forward(runner, call: Call, flat: list[torch.Tensor]):
    """(outputs, finals, tape) of a dense call, no autograd; ``flat`` is inputs, weights, initial states."""
    module, plan = runner.fused, runner.plan
    n_in, n_w, n_s = _counts(plan)
    cdt, B, T = call.compute_dtype, call.B, call.T
    like = torch.empty((), dtype=cdt, device=call.device)
    weights = {d.name: flat[n_in + i].to(cdt).unsqueeze(0) for i, d in enumerate(plan.ir.weights)}
    consts = module.prepare(weights, sizes_of(plan, call), like)
    inputs = {d.name: flat[i].to(cdt).flatten(0, 1) for i, d in enumerate(plan.ir.inputs)}
    step_seqs, back_seqs = module.prologue(inputs, consts, like)
    seqs = [s.unflatten(0, (B, T)).unbind(1) for s in step_seqs]
    states = tuple(flat[n_in + n_w + i].to(cdt) for i in range(n_s))
    history, saved, outputs = module.forward(consts, seqs, states, T, B, like)
    stacked = [torch.stack(acc, dim=1).to(call.dtype) for acc in outputs]
    given = {id(t) for t in flat}
    finals = [s.clone() if id(s) in given else s for s in history[-1]]
    return stacked, finals, Tape(consts, back_seqs, history, saved, like, stacked)


def _rows(steps: list[torch.Tensor]) -> torch.Tensor:
    """Per-step tensors ``[B, ...]`` as one ``[B * T, ...]`` (row ``b * T + t``, as the prologue's)."""
    return torch.stack(steps, dim=1).flatten(0, 1)


def fused_backward(runner, call: Call, tape: Tape, flat, d_outputs, d_finals, weights_too: bool = True):
    """Cotangents of every flat argument (inputs, weights, initial states); a cotangent may be None."""
    module, plan = runner.fused, runner.plan
    n_in, n_w, n_s = _counts(plan)
    cdt, B, T, like = call.compute_dtype, call.B, call.T, tape.like
    history, as_outputs = tape.history, dict(module.OUTPUT_NEWS)
    prev = [_rows([h[i] for h in history[:-1]]) for i in module.LINEARISE_STATES]
    news = []
    for i in module.LINEARISE_NEWS:
        out = tape.outputs[as_outputs[i]] if i in as_outputs else None
        news.append(out.flatten(0, 1) if out is not None and out.dtype == cdt else _rows([h[i] for h in history[1:]]))
    saved = [_rows([k[j] for k in tape.saved]) for j in range(len(tape.saved[0]))]
    rows, fixed = module.linearise(tape.consts, tape.seqs, prev, news, saved, B * T, like)
    row_steps = [rows[i].unflatten(0, (B, T)).unbind(1) for i in module.STEP_ROWS]
    douts = [
        torch.zeros((B, T, call.NH, *call.shape_of(o.shape)), dtype=cdt, device=call.device) if g is None else g.to(cdt)
        for g, o in zip(d_outputs, plan.ir.outputs)
    ]
    dout_steps = [g.unbind(1) for g in douts]
    carry = tuple(torch.zeros_like(s) if g is None else g.to(cdt) for g, s in zip(d_finals, history[-1]))
    consts = tape.consts
    carry, carries, kept = module.backward(consts, row_steps, fixed, carry, dout_steps, T, B, like)
    grads: list[torch.Tensor | None] = [None] * (n_in + n_w)
    if weights_too:
        carry_rows = [_rows([c[j] for c in carries]) for j in range(len(module.ALL_CARRIES))]
        kept_rows = [_rows(steps) for steps in kept]
        d_out = [g.flatten(0, 1) for g in douts]
        d_in, d_w = module.reverse_all(consts, rows, fixed, carry_rows, d_out, kept_rows, B * T, like)
        for i, g in enumerate(d_in):
            if g is not None:
                grads[i] = g.reshape(B, T, *g.shape[1:]).expand(flat[i].shape).to(flat[i].dtype)
        for i, g in enumerate(d_w):
            if g is not None:
                grads[n_in + i] = g.squeeze(0).expand(flat[n_in + i].shape).to(flat[n_in + i].dtype)
    for i in range(n_s):
        src = flat[n_in + n_w + i]
        grads.append(carry[i].expand(src.shape).to(src.dtype))
    return grads


class FusedBackprop(torch.autograd.Function):
    """Forward: the fused module's loop, no tape. Backward: :func:`fused_backward`."""

    @staticmethod
    def forward(ctx, runner, call, *flat):
        outputs, finals, tape = fused_forward(runner, call, list(flat))
        tape.outputs = []  # read back from save_for_backward, which checks that nothing changed them
        ctx.runner, ctx.call, ctx.tape, ctx.n_flat = runner, call, tape, len(flat)
        ctx.save_for_backward(*flat, *outputs)
        return (*outputs, *finals)

    @staticmethod
    @once_differentiable  # the backward runs no autograd: a second derivative is refused, not wrong
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        flat, ctx.tape.outputs = saved[: ctx.n_flat], list(saved[ctx.n_flat :])
        runner, call = ctx.runner, ctx.call
        n_in, n_w, _ = _counts(runner.plan)
        n_out = len(runner.plan.ir.outputs)
        weights_too = any(ctx.needs_input_grad[2 : 2 + n_in + n_w])
        result = fused_backward(runner, call, ctx.tape, flat, grads[:n_out], grads[n_out:], weights_too)
        return (None, None, *result)


def run_fused(runner, call: Call):
    """(outputs, finals) of a dense call whose backward is the fused BPTT."""
    from rnnc.runtime.reference_bptt import flat_from_call

    ir = runner.plan.ir
    results = FusedBackprop.apply(runner, call, *flat_from_call(runner.plan, call))
    outputs = {r.name: results[i] for i, r in enumerate(ir.outputs)}
    return outputs, {d.name: results[len(ir.outputs) + i] for i, d in enumerate(ir.states)}


def fused_gradients(runner, call: Call, flat, d_outputs, d_finals) -> list[torch.Tensor | None]:
    """Cotangents of ``flat`` (the custom op's backward): the forward replayed, then the fused BPTT."""
    with torch.no_grad():
        _, _, tape = fused_forward(runner, call, list(flat))
        return fused_backward(runner, call, tape, flat, d_outputs, d_finals)
