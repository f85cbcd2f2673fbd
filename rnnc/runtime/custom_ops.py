"""One autograd wrapper for every backend's kernels, and the ``torch.library`` ops that
``torch.compile`` sees.

A backend's *kernels* object (the reference runner, each Triton launcher) exposes:

* ``plan`` and ``token``: the cell, and a string naming what it computes (the same for two
  objects that compute the same thing, so a graph cached by one process calls the same kernels);
* ``forward(call, flat, needs_grad) -> (outputs, finals, saved)``: lists of tensors; ``saved`` is
  whatever backward needs besides ``flat`` (empty when ``needs_grad`` is false);
* ``backward(call, flat, saved, d_outputs, d_finals) -> grads``: one per flat argument (None:
  zero); a cotangent may be None;
* ``saved_like(call, flat, needs_grad)``: empty tensors shaped like ``saved`` (for fake tensors);
* optionally ``varlen = True`` when its kernels read ``cu_seqlens`` themselves.

``flat`` is inputs, weights and initial states (zeros where not given) in declaration order.
Eager calls go through a ``torch.autograd.Function``; under ``torch.compile`` the same methods run
inside two custom ops, ``rnnc::run`` and ``rnnc::run_backward``, whose fake implementations only
compute shapes, so Dynamo traces no sympy, no launcher and no loop over time.

Example:
    >>> import torch
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.runtime.reference import ReferenceRunner
    >>> runner = ReferenceRunner(analyse_source(open("examples/hgrn.rnn").read()))
    >>> x = torch.ones(1, 3, 1, 2)
    >>> call = runner.bind({"x": x, "g": torch.zeros_like(x)}, {})
    >>> outputs, finals = run_as_op(runner, call, flat_arguments(call, runner.plan.ir))
    >>> outputs["h"][0, :, 0, 0].tolist()
    [1.0, 2.0, 3.0]
"""

from __future__ import annotations

from typing import Optional

import torch

from rnnc.compiler.ir import IR
from rnnc.runtime.arguments import Call, bind
from rnnc.runtime.binding import ShapeBinder

_KERNELS: dict[str, object] = {}  # token -> the latest kernels object registered under it
_BINDERS: dict[str, ShapeBinder] = {}


def flat_arguments(call: Call, ir: IR) -> list[torch.Tensor]:
    """Inputs, weights (contiguous) and initial states (in the compute dtype; zeros where not given)."""
    flat = [call.inputs[d.name].contiguous() for d in ir.inputs]
    flat += [call.weights[d.name].contiguous() for d in ir.weights]
    for d in ir.states:
        given = call.states.get(d.name)
        shape = (call.state_batch, call.NH, *call.own_shape(d))
        flat.append(
            given.to(call.compute_dtype).contiguous()
            if given is not None
            else torch.zeros(shape, dtype=call.compute_dtype, device=call.device)
        )
    return flat


def register(kernels) -> str:
    """File ``kernels`` (and its one-sequence-at-a-time adapter) under its token, which the ops
    look up; returns the token. Called when kernels are built, never while Dynamo traces.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.reference import ReferenceRunner
        >>> register(ReferenceRunner(analyse_source(open("examples/hgrn.rnn").read())))[:15]
        'reference/hgrn/'
    """
    token = kernels.token
    _KERNELS[token] = kernels
    if token not in _BINDERS:
        _BINDERS[token] = getattr(kernels, "binder", None) or ShapeBinder(kernels.plan.ir)
    if not getattr(kernels, "varlen", False):
        adapter = kernels._per_sequence = PerSequence(kernels)
        _KERNELS[adapter.token], _BINDERS[adapter.token] = adapter, _BINDERS[token]
    return token


def bind_flat(token: str, flat, cu_seqlens) -> tuple[object, Call]:
    """The kernels of ``token`` and the call that ``flat`` describes."""
    kernels = _KERNELS[token]
    ir = kernels.plan.ir
    names = [d.name for d in ir.decls if d.kind != "state"]
    order = [d.name for d in ir.inputs] + [d.name for d in ir.weights]
    tensors = dict(zip(order, flat[: len(order)]))
    states = {d.name: s for d, s in zip(ir.states, flat[len(order) :])}
    call = bind(ir, {n: tensors[n] for n in names}, states, cu_seqlens, _BINDERS[token])
    return kernels, call


def _fresh(results: list[torch.Tensor], flat) -> list[torch.Tensor]:
    """Custom ops may not return their inputs (or views of them): copy any that are."""
    storages = {t.untyped_storage().data_ptr() for t in flat if t.numel()}
    return [r.clone() if r.numel() and r.untyped_storage().data_ptr() in storages else r for r in results]


@torch.library.custom_op("rnnc::run", mutates_args=())
def _run(
    token: str, flat: list[torch.Tensor], cu_seqlens: Optional[torch.Tensor], needs_grad: bool
) -> list[torch.Tensor]:
    kernels, call = bind_flat(token, flat, cu_seqlens)
    outputs, finals, saved = kernels.forward(call, list(flat), needs_grad)
    return _fresh([*outputs, *finals, *saved], flat)


@_run.register_fake
def _run_fake(token, flat, cu_seqlens, needs_grad):
    kernels, call = bind_flat(token, flat, cu_seqlens)
    ir = kernels.plan.ir
    like = flat[0]
    outputs = [like.new_empty((call.B, call.T, call.NH, *call.shape_of(o.shape)), dtype=call.dtype) for o in ir.outputs]
    finals = [
        like.new_empty((call.state_batch, call.NH, *call.shape_of(d.shape)), dtype=call.compute_dtype)
        for d in ir.states
    ]
    return [*outputs, *finals, *kernels.saved_like(call, list(flat), needs_grad)]


@torch.library.custom_op("rnnc::run_backward", mutates_args=())
def _run_backward(
    token: str,
    flat: list[torch.Tensor],
    saved: list[torch.Tensor],
    cotangents: list[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
) -> list[torch.Tensor]:
    kernels, call = bind_flat(token, flat, cu_seqlens)
    n_out = len(kernels.plan.ir.outputs)
    grads = kernels.backward(call, list(flat), list(saved), list(cotangents[:n_out]), list(cotangents[n_out:]))
    return _fresh([torch.zeros_like(f) if g is None else g.to(f.dtype) for g, f in zip(grads, flat)], flat)


@_run_backward.register_fake
def _run_backward_fake(token, flat, saved, cotangents, cu_seqlens):
    return [torch.empty_like(f) for f in flat]


def _setup_context(ctx, inputs, output):
    token, flat, cu_seqlens, _ = inputs
    ir = _KERNELS[token].plan.ir
    n_results = len(ir.outputs) + len(ir.states)
    ctx.token, ctx.n_flat, ctx.n_results = token, len(flat), n_results
    ctx.result_meta = [(r.shape, r.dtype) for r in output[:n_results]]
    ctx.has_cu = cu_seqlens is not None
    ctx.save_for_backward(*flat, *output[n_results:], *([cu_seqlens] if ctx.has_cu else []))


def _backward(ctx, grads):
    tensors = ctx.saved_tensors
    cu_seqlens = tensors[-1] if ctx.has_cu else None
    tensors = tensors[:-1] if ctx.has_cu else tensors
    flat, saved = list(tensors[: ctx.n_flat]), list(tensors[ctx.n_flat :])
    cotangents = [
        g if g is not None else torch.zeros(shape, dtype=dtype, device=flat[0].device)
        for g, (shape, dtype) in zip(grads[: ctx.n_results], ctx.result_meta)
    ]
    result = torch.ops.rnnc.run_backward(ctx.token, flat, saved, cotangents, cu_seqlens)
    return None, list(result), None, None


_run.register_autograd(_backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same interface without the dispatcher, for calls that are not being compiled."""

    @staticmethod
    def forward(ctx, kernels, call, *flat):
        needs_grad = any(ctx.needs_input_grad[2:])
        outputs, finals, saved = kernels.forward(call, list(flat), needs_grad)
        ctx.kernels, ctx.call, ctx.n_out, ctx.n_flat = kernels, call, len(outputs), len(flat)
        ctx.save_for_backward(*flat, *saved)
        return (*outputs, *finals)

    @staticmethod
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        flat, saved = list(tensors[: ctx.n_flat]), list(tensors[ctx.n_flat :])
        result = ctx.kernels.backward(ctx.call, flat, saved, list(grads[: ctx.n_out]), list(grads[ctx.n_out :]))
        return (None, None, *result)


def run_as_op(kernels, call: Call, flat: list[torch.Tensor]) -> tuple[dict, dict]:
    """(outputs, finals) of ``kernels`` on a bound call, differentiable; one custom op when compiling."""
    ir = kernels.plan.ir
    if torch.compiler.is_compiling():
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in flat)
        results = torch.ops.rnnc.run(kernels.token, flat, call.cu_seqlens, needs_grad)
    else:
        results = _Eager.apply(kernels, call, *flat)
    outputs = {o.name: results[i] for i, o in enumerate(ir.outputs)}
    finals = {d.name: results[len(ir.outputs) + i] for i, d in enumerate(ir.states)}
    return outputs, finals


def run_kernels(kernels, call: Call) -> tuple[dict, dict]:
    """A launcher's call: one op; packed inputs that its kernels do not read run one sequence at a time."""
    if call.cu_seqlens is not None and not getattr(kernels, "varlen", False):
        kernels = kernels._per_sequence  # made by register()
    return run_as_op(kernels, call, flat_arguments(call, kernels.plan.ir))


class PerSequence:
    """The kernel interface for packed inputs (``cu_seqlens``) over kernels that take one dense batch:
    each sequence runs alone (correct, slower); backward replays each sequence's forward."""

    varlen = True

    def __init__(self, kernels):
        self.kernels = kernels
        self.plan = kernels.plan
        self.token = kernels.token + "/each-sequence"
        self.binder = _BINDERS.get(kernels.token) or ShapeBinder(kernels.plan.ir)

    def _pieces(self, call: Call, flat):
        """(bos, eos, sub-call, sub-flat) per sequence; sub-call None for an empty sequence."""
        from rnnc.runtime.varlen import sequence_bounds

        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        bounds = sequence_bounds(call.cu_seqlens, call.T)
        for b in range(call.N):
            bos, eos = bounds[b], bounds[b + 1]
            sub_flat = [x[:, bos:eos] for x in flat[:n_in]] + list(flat[n_in : n_in + n_w])
            sub_flat += [s[b : b + 1] for s in flat[n_in + n_w :]]
            if eos == bos:
                yield bos, eos, None, sub_flat
                continue
            tensors = {d.name: t for d, t in zip((*ir.inputs, *ir.weights), sub_flat)}
            states = {d.name: s for d, s in zip(ir.states, sub_flat[n_in + n_w :])}
            yield bos, eos, bind(ir, tensors, states, None, self.binder), sub_flat

    def forward(self, call: Call, flat, needs_grad: bool):
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        outputs = [[] for _ in ir.outputs]
        finals = [[] for _ in ir.states]
        for _, _, sub, sub_flat in self._pieces(call, flat):
            if sub is None:
                for acc, s in zip(finals, sub_flat[n_in + n_w :]):
                    acc.append(s.clone())
                continue
            outs, fins, _ = self.kernels.forward(sub, [t.contiguous() for t in sub_flat], False)
            for acc, value in zip(outputs, outs):
                acc.append(value)
            for acc, value in zip(finals, fins):
                acc.append(value)
        packed = []
        for o, acc in zip(ir.outputs, outputs):
            shape = (1, 0, call.NH, *call.shape_of(o.shape))
            packed.append(torch.cat(acc, 1) if acc else torch.empty(shape, dtype=call.dtype, device=call.device))
        return packed, [torch.cat(acc, 0) for acc in finals], []

    def backward(self, call: Call, flat, saved, d_outputs, d_finals):
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        grads = [torch.zeros_like(t) for t in flat[: n_in + n_w]]
        d_states = [[] for _ in ir.states]
        for b, (bos, eos, sub, sub_flat) in enumerate(self._pieces(call, flat)):
            d_fin = [None if g is None else g[b : b + 1] for g in d_finals]
            if sub is None:
                for acc, g, s in zip(d_states, d_fin, sub_flat[n_in + n_w :]):
                    acc.append(torch.zeros_like(s) if g is None else g.to(s.dtype))
                continue
            sub_flat = [t.contiguous() for t in sub_flat]
            _, _, sub_saved = self.kernels.forward(sub, sub_flat, True)
            d_out = [None if g is None else g[:, bos:eos] for g in d_outputs]
            sub_grads = self.kernels.backward(sub, sub_flat, sub_saved, d_out, d_fin)
            for acc, g in zip(grads[:n_in], sub_grads[:n_in]):
                if g is not None:
                    acc[:, bos:eos] += g
            for acc, g in zip(grads[n_in:], sub_grads[n_in : n_in + n_w]):
                if g is not None:
                    acc += g
            for acc, g, s in zip(d_states, sub_grads[n_in + n_w :], sub_flat[n_in + n_w :]):
                acc.append(torch.zeros_like(s) if g is None else g)
        return [*grads, *(torch.cat(acc, 0) for acc in d_states)]

    def saved_like(self, call: Call, flat, needs_grad: bool):
        return []
