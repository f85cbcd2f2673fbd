"""Backpropagation through time from the Plan's sympy partial derivatives, without autograd.

The ``reference-bptt`` backend runs it as its backward pass, which checks the derivatives
before any kernel relies on them; the reference backend's ``torch.library`` op uses it as its
backward under ``torch.compile`` (autograd does not run inside a custom op).

Example:
    >>> import torch
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.runtime.reference import ReferenceRunner
    >>> run = ReferenceRunner(analyse_source(open("examples/hgrn.rnn").read()), "bptt")
    >>> x = torch.ones(1, 3, 1, 2, requires_grad=True)
    >>> out, _ = run({"x": x, "g": torch.zeros(1, 3, 1, 2)}, {})
    >>> out["h"].sum().backward(); x.grad[0, :, 0, 0].tolist()
    [3.0, 2.0, 1.0]
"""

from __future__ import annotations

import torch

from rnnc.runtime.arguments import Call


def step_shapes(plan, call: Call, batch: int) -> dict[str, tuple[int, ...]]:
    """The ``[batch, NH, ...]`` size of every state and output (what the dict-based step fits to)."""
    ir = plan.ir
    return {r.name: (batch, call.NH, *call.shape_of(r.shape)) for r in (*ir.updates, *ir.outputs)}


def _unpacked(runner, call: Call, flat):
    """(compute dtype, like, shapes, inputs, weights [1, NH, ...]) of a flat argument list."""
    ir = runner.plan.ir
    n_in = len(ir.inputs)
    cdt = call.compute_dtype
    like = torch.empty((), dtype=cdt, device=call.device)
    inputs = {d.name: flat[i] for i, d in enumerate(ir.inputs)}
    weights = {d.name: flat[n_in + i].to(cdt).unsqueeze(0) for i, d in enumerate(ir.weights)}
    return cdt, like, step_shapes(runner.plan, call, call.B), inputs, weights


def forward_history(runner, call: Call, flat: list[torch.Tensor]):
    """The forward loop without autograd; returns outputs, finals and every step's states."""
    ir = runner.plan.ir
    n_in, n_w = len(ir.inputs), len(ir.weights)
    cdt, like, shapes, inputs, weights = _unpacked(runner, call, flat)
    states = {d.name: flat[n_in + n_w + i].to(cdt) for i, d in enumerate(ir.states)}
    history = [states]
    outputs: dict[str, list] = {r.name: [] for r in ir.outputs}
    with torch.no_grad():
        for t in range(call.T):
            step_inputs = {n: x[:, t].to(cdt) for n, x in inputs.items()}
            states, out = runner.step_forward(step_inputs, weights, states, shapes, like, call.dims)
            history.append(states)
            for name, value in out.items():
                outputs[name].append(value)
    stacked = []
    for r in ir.outputs:
        values = outputs[r.name]
        shape = shapes[r.name]
        empty = torch.empty((shape[0], 0, *shape[1:]), dtype=cdt, device=call.device)
        stacked.append((torch.stack(values, dim=1) if values else empty).to(call.dtype))
    finals = [states[d.name] if call.T else states[d.name].clone() for d in ir.states]
    return stacked, finals, history


def backward_from_history(runner, call: Call, flat, history, d_outputs, d_finals) -> list[torch.Tensor]:
    """Cotangents of every flat argument (inputs, weights, initial states) by BPTT."""
    ir = runner.plan.ir
    n_in, n_w = len(ir.inputs), len(ir.weights)
    cdt, like, shapes, inputs, weights = _unpacked(runner, call, flat)
    d_out_all = {r.name: g for r, g in zip(ir.outputs, d_outputs) if g is not None}
    d_new = {d.name: g.to(cdt) for d, g in zip(ir.states, d_finals) if g is not None}
    d_inputs = {d.name: torch.zeros_like(inputs[d.name], dtype=cdt) for d in ir.inputs}
    d_weights = {d.name: torch.zeros_like(weights[d.name]) for d in ir.weights}
    for t in reversed(range(call.T)):
        step_inputs = {n: x[:, t].to(cdt) for n, x in inputs.items()}
        d_out = {n: g[:, t].to(cdt) for n, g in d_out_all.items()}
        gi, gw, gs = runner.step_backward(step_inputs, weights, history[t], shapes, like, call.dims, d_new, d_out)
        for name, value in gi.items():
            d_inputs[name][:, t] += value.expand_as(d_inputs[name][:, t])
        for name, value in gw.items():
            d_weights[name] += value
        d_new = gs
    result = [d_inputs[d.name].to(flat[i].dtype) for i, d in enumerate(ir.inputs)]
    result += [d_weights[d.name].squeeze(0).to(flat[n_in + i].dtype) for i, d in enumerate(ir.weights)]
    for i, d in enumerate(ir.states):
        g = d_new.get(d.name)
        src = flat[n_in + n_w + i]
        result.append(g.expand(src.shape).to(src.dtype) if g is not None else torch.zeros_like(src))
    return result


class ManualBackprop(torch.autograd.Function):
    """Forward: the reference loop without autograd. Backward: BPTT from the sympy partials."""

    @staticmethod
    def forward(ctx, runner, call, *flat):
        outputs, finals, history = forward_history(runner, call, list(flat))
        ctx.runner, ctx.call, ctx.history = runner, call, history
        ctx.save_for_backward(*flat)
        return (*outputs, *finals)

    @staticmethod
    def backward(ctx, *grads):
        ir = ctx.runner.plan.ir
        n_out = len(ir.outputs)
        flat = ctx.saved_tensors
        result = backward_from_history(ctx.runner, ctx.call, flat, ctx.history, grads[:n_out], grads[n_out:])
        return (None, None, *result)


def flat_from_call(plan, call: Call) -> list[torch.Tensor]:
    """Inputs, weights and initial states (zeros where not given) of a bound call, in IR order."""
    ir = plan.ir
    flat = [call.inputs[d.name] for d in ir.inputs] + [call.weights[d.name] for d in ir.weights]
    for d in ir.states:
        given = call.states.get(d.name)
        shape = (call.state_batch, call.NH, *call.shape_of(d.shape))
        flat.append(given if given is not None else torch.zeros(shape, dtype=call.compute_dtype, device=call.device))
    return flat


def run_bptt(runner, call: Call):
    """The ``reference-bptt`` backend: (outputs, finals) whose backward is BPTT."""
    if call.cu_seqlens is not None:
        from rnnc.runtime.reference import run_each_sequence

        return run_each_sequence(runner, call)
    ir = runner.plan.ir
    results = ManualBackprop.apply(runner, call, *flat_from_call(runner.plan, call))
    outputs = {r.name: results[i] for i, r in enumerate(ir.outputs)}
    return outputs, {d.name: results[len(ir.outputs) + i] for i, d in enumerate(ir.states)}


def bptt_gradients(runner, call: Call, flat, d_outputs, d_finals) -> list[torch.Tensor]:
    """Cotangents of ``flat`` given those of the outputs and final states (None: zero); replays
    the forward for the states it needs, one sequence at a time for a packed call."""
    if call.cu_seqlens is None:
        history = forward_history(runner, call, list(flat))[2]
        return backward_from_history(runner, call, flat, history, d_outputs, d_finals)
    from rnnc.runtime.varlen import sequence_bounds

    ir = runner.plan.ir
    n_in, n_w = len(ir.inputs), len(ir.weights)
    bounds = sequence_bounds(call.cu_seqlens, call.T)
    d_inputs = [torch.zeros_like(x, dtype=call.compute_dtype) for x in flat[:n_in]]
    d_weights = [torch.zeros_like(w, dtype=call.compute_dtype) for w in flat[n_in : n_in + n_w]]
    d_states = []
    for b in range(call.N):
        bos, eos = bounds[b], bounds[b + 1]
        rows = [s[b : b + 1] for s in flat[n_in + n_w :]]
        d_fin = [None if g is None else g[b : b + 1] for g in d_finals]
        if eos == bos:
            d_states.append([torch.zeros_like(s) if g is None else g.to(s.dtype) for s, g in zip(rows, d_fin)])
            continue
        tensors = {d.name: x[:, bos:eos] for d, x in zip(ir.inputs, flat[:n_in])}
        tensors.update({d.name: w for d, w in zip(ir.weights, flat[n_in : n_in + n_w])})
        sub = runner.bind(tensors, {d.name: s for d, s in zip(ir.states, rows)})
        sub_flat = [*tensors.values(), *rows]
        d_out = [None if g is None else g[:, bos:eos] for g in d_outputs]
        grads = bptt_gradients(runner, sub, sub_flat, d_out, d_fin)
        for acc, g in zip(d_inputs, grads[:n_in]):
            acc[:, bos:eos] += g
        for acc, g in zip(d_weights, grads[n_in : n_in + n_w]):
            acc += g
        d_states.append(grads[n_in + n_w :])
    result = [g.to(x.dtype) for g, x in zip(d_inputs, flat[:n_in])]
    result += [g.to(w.dtype) for g, w in zip(d_weights, flat[n_in : n_in + n_w])]
    result += [torch.cat([row[i] for row in d_states], 0) for i in range(len(ir.states))]
    return result
