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


def sizes_of(plan, call: Call) -> dict:
    """The ``sizes`` the fused module's ``prepare`` reads: dims, NH and every result's and atom's tail.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.reference import ReferenceRunner
        >>> from rnnc.runtime.reference_bptt import flat_from_call
        >>> run = ReferenceRunner(analyse_source(open("examples/elman.rnn").read()))
        >>> tensors = {"x": torch.ones(2, 3, 1, 4), "R": torch.zeros(1, 4, 4), "b": torch.zeros(1, 4)}
        >>> call = run.bind(tensors, {})
        >>> sizes = sizes_of(run.plan, call)
        >>> sizes["H"], sizes["NH"], sizes["tail h"]
        (4, 1, (1, 4))
    """
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
    """(outputs, finals, tape) of a dense call, no autograd; ``flat`` is inputs, weights, initial states.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.reference import ReferenceRunner
        >>> from rnnc.runtime.reference_bptt import flat_from_call
        >>> run = ReferenceRunner(analyse_source(open("examples/elman.rnn").read()))
        >>> tensors = {"x": torch.ones(2, 3, 1, 4), "R": torch.zeros(1, 4, 4), "b": torch.zeros(1, 4)}
        >>> call = run.bind(tensors, {})
        >>> outputs, finals, tape = fused_forward(run, call, flat_from_call(run.plan, call))
        >>> tuple(outputs[0].shape), len(tape.history), round(finals[0][0, 0, 0].item(), 4)
        ((2, 3, 1, 4), 4, 0.7616)
    """
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
    finals = [s.clone() for s in history[-1]]  # the tape keeps the last states: the caller gets its own
    return stacked, finals, Tape(consts, back_seqs, history, saved, like)


PIECE = 1 << 16  # linearise runs on pieces of time whose widest per-step value has about this many entries


def piece_steps(history: list, saved: list) -> int:
    """How many steps one piece of the backward holds: :data:`PIECE` entries of its widest value.

    Example:
        >>> piece_steps([(torch.zeros(16, 1, 128),)], [(torch.zeros(16, 1, 512),)])
        8
    """
    widest = max([t.numel() for t in (*history[0], *saved[0])], default=1)
    return max(1, PIECE // max(widest, 1))


def _time_rows(steps) -> torch.Tensor:
    """Per-step tensors ``[B, ...]`` as one ``[n * B, ...]``, time-major (row ``t * B + b``)."""
    return torch.stack(list(steps), dim=0).flatten(0, 1)


def fused_backward(runner, call: Call, tape: Tape, flat, d_outputs, d_finals, weights_too: bool = True):
    """Cotangents of every flat argument (inputs, weights, initial states); a cotangent may be None.

    Time is walked backwards in pieces of a few steps: ``linearise`` evaluates the partials of a
    piece's B * n rows at once (small enough to stay in cache, where all T steps at once would
    send a dozen temporaries of B * T rows through memory), then ``backward`` runs the piece's
    steps. ``reverse_all`` gets every step's rows time-major (row ``t * B + b``).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.reference import ReferenceRunner
        >>> from rnnc.runtime.reference_bptt import flat_from_call
        >>> run = ReferenceRunner(analyse_source(open("examples/elman.rnn").read()))
        >>> tensors = {"x": torch.ones(2, 3, 1, 4), "R": torch.zeros(1, 4, 4), "b": torch.zeros(1, 4)}
        >>> call = run.bind(tensors, {})
        >>> flat = flat_from_call(run.plan, call)
        >>> _, _, tape = fused_forward(run, call, flat)
        >>> d_x, d_R, d_b, d_h0 = fused_backward(run, call, tape, flat, [None], [torch.ones(2, 1, 4)])
        >>> round(d_x[0, 2, 0, 0].item(), 4), d_x[0, 0, 0, 0].item(), tuple(d_R.shape), tuple(d_h0.shape)
        (0.42, 0.0, (1, 4, 4), (2, 1, 4))
    """
    module, plan = runner.fused, runner.plan
    n_in, n_w, n_s = _counts(plan)
    cdt, B, T, like, consts = call.compute_dtype, call.B, call.T, tape.like, tape.consts
    history, saved = tape.history, tape.saved
    per_row = [s.dim() > 0 and s.shape[0] == B * T for s in tape.seqs]
    seqs = [s.unflatten(0, (B, T)) if row else s for s, row in zip(tape.seqs, per_row)]
    douts = [
        torch.zeros((B, T, call.NH, *call.shape_of(o.shape)), dtype=cdt, device=call.device) if g is None else g.to(cdt)
        for g, o in zip(d_outputs, plan.ir.outputs)
    ]
    dout_steps = [g.unbind(1) for g in douts]
    carry = tuple(torch.zeros_like(s) if g is None else g.to(cdt) for g, s in zip(d_finals, history[-1]))
    span = piece_steps(history, saved)
    pieces = []  # (rows reverse_all reads, carries, kept values) of each piece, the last piece first
    for start in range(((T - 1) // span) * span, -1, -span):
        stop = min(T, start + span)
        n = stop - start
        prev = [_time_rows(h[i] for h in history[start:stop]) for i in module.LINEARISE_STATES]
        news = [_time_rows(h[i] for h in history[start + 1 : stop + 1]) for i in module.LINEARISE_NEWS]
        keep = [_time_rows(k[j] for k in saved[start:stop]) for j in range(len(saved[0]))]
        piece_seqs = [s[:, start:stop].transpose(0, 1).flatten(0, 1) if row else s for s, row in zip(seqs, per_row)]
        rows, fixed = module.linearise(consts, piece_seqs, prev, news, keep, n * B, like)
        row_steps = [rows[i].unflatten(0, (n, B)).unbind(0) for i in module.STEP_ROWS]
        piece_douts = [d[start:stop] for d in dout_steps]
        carry, carries, kept = module.backward(consts, row_steps, fixed, carry, piece_douts, n, B, like)
        pieces.append(([rows[i] for i in module.ALL_ROWS], carries, kept))
    grads: list[torch.Tensor | None] = [None] * (n_in + n_w)
    if weights_too:
        pieces.reverse()
        all_rows: list[torch.Tensor | None] = [None] * len(rows)
        for j, i in enumerate(module.ALL_ROWS):
            all_rows[i] = torch.cat([p[0][j] for p in pieces])
        carries = [c for p in pieces for c in p[1]]
        carry_rows = [_time_rows(c[j] for c in carries) for j in range(len(module.ALL_CARRIES))]
        kept_rows = [_time_rows(v for p in pieces for v in p[2][j]) for j in range(len(kept))]
        d_out = [_time_rows(dout_steps[i]) if i in module.ALL_DOUTS else None for i in range(len(douts))]
        d_in, d_w = module.reverse_all(consts, all_rows, fixed, carry_rows, d_out, kept_rows, B * T, like)
        for i, g in enumerate(d_in):
            if g is not None:  # time-major rows back to [B, T, ...]
                grads[i] = g.unflatten(0, (T, B)).transpose(0, 1).expand(flat[i].shape).to(flat[i].dtype)
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
        ctx.runner, ctx.call, ctx.tape = runner, call, tape  # the tape: tensors no caller sees
        ctx.save_for_backward(*flat)
        return (*outputs, *finals)

    @staticmethod
    @once_differentiable  # the backward runs no autograd: a second derivative is refused, not wrong
    def backward(ctx, *grads):
        flat = ctx.saved_tensors
        runner, call = ctx.runner, ctx.call
        n_in, n_w, _ = _counts(runner.plan)
        n_out = len(runner.plan.ir.outputs)
        weights_too = any(ctx.needs_input_grad[2 : 2 + n_in + n_w])
        result = fused_backward(runner, call, ctx.tape, flat, grads[:n_out], grads[n_out:], weights_too)
        return (None, None, *result)


def run_fused(runner, call: Call):
    """(outputs, finals) of a dense call whose backward is the fused BPTT.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.reference import ReferenceRunner
        >>> from rnnc.runtime.reference_bptt import flat_from_call
        >>> run = ReferenceRunner(analyse_source(open("examples/elman.rnn").read()))
        >>> tensors = {"x": torch.ones(2, 3, 1, 4), "R": torch.zeros(1, 4, 4), "b": torch.zeros(1, 4)}
        >>> call = run.bind(tensors, {})
        >>> outputs, finals = run_fused(run, run.bind({**tensors, "x": tensors["x"].requires_grad_()}, {}))
        >>> type(outputs["h"].grad_fn).__name__, tuple(finals["h"].shape)
        ('FusedBackpropBackward', (2, 1, 4))
    """
    from rnnc.runtime.reference_bptt import flat_from_call

    ir = runner.plan.ir
    results = FusedBackprop.apply(runner, call, *flat_from_call(runner.plan, call))
    outputs = {r.name: results[i] for i, r in enumerate(ir.outputs)}
    return outputs, {d.name: results[len(ir.outputs) + i] for i, d in enumerate(ir.states)}


def fused_gradients(runner, call: Call, flat, d_outputs, d_finals) -> list[torch.Tensor | None]:
    """Cotangents of ``flat`` (the custom op's backward): the forward replayed, then the fused BPTT.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.reference import ReferenceRunner
        >>> from rnnc.runtime.reference_bptt import flat_from_call
        >>> run = ReferenceRunner(analyse_source(open("examples/elman.rnn").read()))
        >>> tensors = {"x": torch.ones(2, 3, 1, 4), "R": torch.zeros(1, 4, 4), "b": torch.zeros(1, 4)}
        >>> call = run.bind(tensors, {})
        >>> flat = flat_from_call(run.plan, call)
        >>> grads = fused_gradients(run, call, flat, [torch.ones(2, 3, 1, 4)], [None])
        >>> [tuple(g.shape) for g in grads][:2]
        [(2, 3, 1, 4), (1, 4, 4)]
    """
    with torch.no_grad():
        _, _, tape = fused_forward(runner, call, list(flat))
        return fused_backward(runner, call, tape, flat, d_outputs, d_finals)
