"""The reference executor: runs a Plan as a tight PyTorch loop over time, on any device.

The loop module (:mod:`rnnc.runtime.loop_codegen`) computes weight-only values once, every
state-free value for all steps at once, and per step only what reads a state: one GEMM per
``weight @ state`` over the batch, then the pointwise updates. Time is ``unbind``-ed (no
per-step slicing whose backward fills full-size zeros). Three modes:

* ``fused`` (the default): as ``autograd``, except that a sequential cell's dense calls that need
  gradients run through one autograd node whose backward is a generated BPTT
  (:mod:`rnnc.runtime.fused_bptt`, registered as the sequential strategy's fast path);
* ``autograd``: gradients come from autograd through the loop (``backend="reference-autograd"``);
* ``bptt``: a ``torch.autograd.Function`` whose backward runs time in reverse with the step's
  sympy partial derivatives (:mod:`rnnc.runtime.reference_bptt`).

A strategy may register a faster whole-sequence form (:func:`register_fast_path`): the runner
tries it first and falls back to the loop when it declines.

Example:
    >>> import torch
    >>> from rnnc.compiler import analyse_source
    >>> run = ReferenceRunner(analyse_source(open("examples/hgrn.rnn").read()))
    >>> x = torch.ones(1, 3, 1, 2)
    >>> out, final = run({"x": x, "g": torch.zeros_like(x)}, {})
    >>> out["h"][0, :, 0, 0].tolist()
    [1.0, 2.0, 3.0]
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch

from rnnc.compiler import Plan
from rnnc.runtime.arguments import Call, bind
from rnnc.runtime.binding import ShapeBinder
from rnnc.runtime.custom_ops import register
from rnnc.runtime.fused_codegen import fusion_pays
from rnnc.runtime.loop_codegen import loop_source
from rnnc.runtime.modules import load_module
from rnnc.runtime.varlen import each_sequence, sequence_bounds

# strategy -> run(runner, call) -> (outputs, finals), or None to decline (the loop runs instead)
FAST_PATHS: dict[str, Callable] = {}


def register_fast_path(strategy: str, run: Callable) -> None:
    """Make the reference run ``strategy`` cells with ``run(runner, call)`` (e.g. a chunked form).

    ``run`` returns ``(outputs, finals)`` like the loop, or None when it does not cover the call
    (then the plain loop runs). Gradients come from autograd through whatever it computes.

    Example:
        >>> before = FAST_PATHS.get("demo")
        >>> register_fast_path("demo", lambda runner, call: None)  # declines every call
        >>> _ = FAST_PATHS.pop("demo")
    """
    FAST_PATHS[strategy] = run


MODES = ("fused", "autograd", "bptt")


class ReferenceRunner:
    """Callable running a Plan on tensors; ``mode`` is ``fused``, ``autograd`` or ``bptt``.

    ``fused`` (the default) runs a sequential cell's dense calls that need gradients through one
    autograd node whose backward is the fused BPTT (:mod:`rnnc.runtime.fused_bptt`), and
    everything else through the loop with autograd, as ``autograd`` does.
    """

    kind = "reference"
    varlen = True  # runs packed inputs itself (run_packed)

    def __init__(self, plan: Plan, mode: str = "fused"):
        if mode not in MODES:
            raise ValueError(f"mode needs one of {', '.join(map(repr, MODES))}, has {mode!r}")
        self.plan = plan
        self.mode = mode
        self.binder = ShapeBinder(plan.ir)
        self.loop_text = loop_source(plan)
        self.loop = load_module(self.loop_text, f"{plan.ir.cell}_reference")
        self.token = f"reference/{plan.ir.cell}/{hashlib.sha256(self.loop_text.encode()).hexdigest()[:16]}"
        register(self)  # the custom ops find it by its token under torch.compile
        self._forward = None
        self._backward = None
        self._fused = None if mode == "fused" and fusion_pays(plan) else False

    @property
    def forward_text(self) -> str:
        """The generated loop module's text."""
        return self.loop_text

    @property
    def step_forward(self):
        """The dict-based forward step that BPTT replays (built on first use)."""
        if self._forward is None:
            from rnnc.runtime.reference_codegen import forward_source

            self._forward = load_module(forward_source(self.plan), f"{self.plan.ir.cell}_forward").step
        return self._forward

    @property
    def step_backward(self):
        """The generated backward step (built on first use)."""
        if self._backward is None:
            from rnnc.runtime.reference_codegen import backward_source

            text = backward_source(self.plan)
            self.backward_text = text
            self._backward = load_module(text, f"{self.plan.ir.cell}_backward").step_backward
        return self._backward

    @property
    def fused(self):
        """The fused-BPTT module (built on first use), or None where it does not run this cell."""
        if self._fused is None:
            from rnnc.runtime.fused_codegen import FusedUnsupported, fused_source

            try:
                self.fused_text = fused_source(self.plan)
            except FusedUnsupported:
                self._fused = False
            else:
                self._fused = load_module(self.fused_text, f"{self.plan.ir.cell}_fused")
        return self._fused or None

    def _fuses(self, call: Call) -> bool:
        """Whether a call runs the fused BPTT: a dense call of at least one step, in ``fused`` mode."""
        return call.cu_seqlens is None and call.T > 0 and self._fused is not False and self.fused is not None

    def bind(self, tensors: dict, state: dict | None, cu_seqlens=None) -> Call:
        """Check and bind a call's tensors (sizes without sympy once the cell is compiled)."""
        return bind(self.plan.ir, tensors, state, cu_seqlens, self.binder)

    def __call__(self, tensors: dict, state: dict | None, cu_seqlens=None):
        return self.run(self.bind(tensors, state, cu_seqlens))

    def run(self, call: Call):
        """(outputs, finals) of a bound call, differentiable."""
        if self.mode == "bptt":
            from rnnc.runtime.reference_bptt import run_bptt

            return run_bptt(self, call)
        if call.cu_seqlens is not None:
            return run_packed(self, call)
        fast = FAST_PATHS.get(self.plan.strategy)
        if fast is not None:
            result = fast(self, call)
            if result is not None:
                return result
        return run_dense(self, call)

    def step(self, tensors: dict, state: dict | None):
        """One step: inputs ``[B, NH, *shape]``; returns outputs ``[B, NH, *shape]`` and the new states."""
        names = {d.name for d in self.plan.ir.inputs}
        timed = {n: t.unsqueeze(1) if n in names and isinstance(t, torch.Tensor) else t for n, t in tensors.items()}
        call = self.bind(timed, state)
        return run_one_step(self, call)

    # ------------------------------------------------------------ the custom-op interface

    def forward(self, call: Call, flat: list[torch.Tensor], needs_grad: bool):
        """Outputs, final states and what backward needs (nothing: it replays the forward)."""
        with torch.no_grad():
            outputs, finals = run_packed(self, call) if call.cu_seqlens is not None else run_dense(self, call)
        ir = self.plan.ir
        return [outputs[o.name] for o in ir.outputs], [finals[d.name] for d in ir.states], []

    def backward(self, call: Call, flat, saved, d_outputs, d_finals) -> list[torch.Tensor | None]:
        """Cotangents of the flat arguments, by BPTT from the sympy partials (no autograd)."""
        if self._fuses(call):
            from rnnc.runtime.fused_bptt import fused_gradients

            return fused_gradients(self, call, flat, d_outputs, d_finals)
        from rnnc.runtime.reference_bptt import bptt_gradients

        return bptt_gradients(self, call, flat, d_outputs, d_finals)

    def saved_like(self, call: Call, flat, needs_grad: bool) -> list[torch.Tensor]:
        """Empty stand-ins of what :meth:`forward` saves (for torch.compile's fake tensors)."""
        return []


def _needs_grad(call: Call) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for group in (call.inputs, call.weights, call.states) for t in group.values())


def _initial_states(plan: Plan, call: Call) -> list[torch.Tensor]:
    out = []
    for decl in plan.ir.states:
        given = call.states.get(decl.name)
        shape = (call.state_batch, call.NH, *call.shape_of(decl.shape))
        if given is not None:
            out.append(given.to(call.compute_dtype))
        else:
            out.append(torch.zeros(shape, dtype=call.compute_dtype, device=call.device))
    return out


def _sizes(plan: Plan, call: Call) -> dict:
    ir = plan.ir
    sizes = {**call.dims, "NH": call.NH}
    for r in (*ir.updates, *ir.outputs):
        sizes["tail " + r.name] = (call.NH, *call.shape_of(r.shape))
    return sizes


def _prepared(runner: ReferenceRunner, call: Call):
    cdt = call.compute_dtype
    like = torch.empty((), dtype=cdt, device=call.device)
    weights = {n: w.to(cdt).unsqueeze(0) for n, w in call.weights.items()}
    return like, runner.loop.prepare(weights, _sizes(runner.plan, call), like)


def _stack(values: list[torch.Tensor], call: Call, shape: tuple) -> torch.Tensor:
    if not values:
        return torch.empty((shape[0], 0, *shape[1:]), dtype=call.dtype, device=call.device)
    return torch.stack(values, dim=1).to(call.dtype)


def run_dense(runner: ReferenceRunner, call: Call):
    """The loop over ``[B, T, ...]`` inputs: prologue on all steps at once, then one step per t."""
    ir, loop = runner.plan.ir, runner.loop
    like, consts = _prepared(runner, call)
    B, T = call.B, call.T
    inputs = {n: x.to(call.compute_dtype).flatten(0, 1) for n, x in call.inputs.items()}
    seqs = [s.unflatten(0, (B, T)).unbind(1) for s in loop.prologue(inputs, consts, like)]
    states = tuple(_initial_states(runner.plan, call))
    outputs: list[list[torch.Tensor]] = [[] for _ in ir.outputs]
    step = loop.step
    for t in range(T):
        states, out = step(consts, [s[t] for s in seqs], states, B, like)
        for acc, value in zip(outputs, out):
            acc.append(value)
    stacked = {o.name: _stack(acc, call, (B, call.NH, *call.shape_of(o.shape))) for o, acc in zip(ir.outputs, outputs)}
    return stacked, {d.name: s for d, s in zip(ir.states, states)}


def run_one_step(runner: ReferenceRunner, call: Call):
    """One step of a call whose inputs have T = 1; outputs without the time axis."""
    ir, loop = runner.plan.ir, runner.loop
    like, consts = _prepared(runner, call)
    inputs = {n: x.to(call.compute_dtype).squeeze(1) for n, x in call.inputs.items()}
    seqs = loop.prologue(inputs, consts, like)
    states, out = loop.step(consts, seqs, tuple(_initial_states(runner.plan, call)), call.B, like)
    outputs = {o.name: value.to(call.dtype) for o, value in zip(ir.outputs, out)}
    return outputs, {d.name: s for d, s in zip(ir.states, states)}


def run_packed(runner: ReferenceRunner, call: Call):
    """The loop over packed variable-length sequences (``cu_seqlens``), as ``PackedSequence`` runs.

    Sequences are sorted longest first and the inputs put in time-major order once, so step t
    runs the first ``n_t`` sequences (those longer than t) as one batch, and a sequence that
    ends leaves the batch with its final state. Batch rows never mix, so no value of one
    sequence reaches another, and every sequence sees exactly its own steps.
    """
    ir, loop = runner.plan.ir, runner.loop
    bounds = sequence_bounds(call.cu_seqlens, call.T)
    n_seq, device = call.N, call.device
    lengths = [bounds[b + 1] - bounds[b] for b in range(n_seq)]
    order = sorted(range(n_seq), key=lambda b: (-lengths[b], b))
    longest = lengths[order[0]]
    batch_sizes, rows = [], []
    active = n_seq
    for t in range(longest):
        while lengths[order[active - 1]] <= t:
            active -= 1
        batch_sizes.append(active)
        rows += [bounds[b] + t for b in order[:active]]
    like, consts = _prepared(runner, call)
    perm = torch.tensor(rows, dtype=torch.long, device=device)
    inputs = {n: x[0].to(call.compute_dtype).index_select(0, perm) for n, x in call.inputs.items()}
    seqs = [s.split(batch_sizes, 0) for s in loop.prologue(inputs, consts, like)]
    sort = torch.tensor(order, dtype=torch.long, device=device)
    states = tuple(s.index_select(0, sort) for s in _initial_states(runner.plan, call))
    finished: list[list[torch.Tensor]] = [[] for _ in states]
    outputs: list[list[torch.Tensor]] = [[] for _ in ir.outputs]
    current = n_seq
    for t, n_t in enumerate(batch_sizes):
        if n_t < current:
            for acc, s in zip(finished, states):
                acc.append(s[n_t:current])
            states, current = tuple(s[:n_t] for s in states), n_t
        states, out = loop.step(consts, [s[t] for s in seqs], states, n_t, like)
        for acc, value in zip(outputs, out):
            acc.append(value)
    for acc, s in zip(finished, states):
        acc.append(s[:current])
    unsort = torch.empty_like(sort)
    unsort[sort] = torch.arange(n_seq, device=device)
    finals = {d.name: torch.cat(acc[::-1], 0).index_select(0, unsort) for d, acc in zip(ir.states, finished)}
    packed = {}
    unperm = torch.empty_like(perm)
    unperm[perm] = torch.arange(perm.shape[0], device=device)
    for o, acc in zip(ir.outputs, outputs):
        shape = (call.NH, *call.shape_of(o.shape))
        flat = torch.cat(acc, 0).index_select(0, unperm) if acc else like.new_empty((0, *shape))
        packed[o.name] = flat.to(call.dtype).unsqueeze(0)
    return packed, finals


def run_each_sequence(runner, call: Call):
    """A packed call run one sequence at a time through ``runner`` (any backend)."""
    return each_sequence(call, runner.plan.ir, lambda tensors, state: runner.run(runner.bind(tensors, state)))


def _scan_fast_path(runner: ReferenceRunner, call: Call):
    from rnnc.runtime.reference_scan import run_scan  # pieces for every step at once, one scan per component

    return run_scan(runner, call)


def _sequential_fast_path(runner: ReferenceRunner, call: Call):
    """The fused BPTT for a dense call that needs gradients (``fused`` mode, a cell where it pays)."""
    if not (_needs_grad(call) and runner._fuses(call)):
        return None
    from rnnc.runtime.fused_bptt import run_fused  # one autograd node, a generated backward through time

    return run_fused(runner, call)


def _register_strategies() -> None:
    """The strategies' whole-sequence forms: the scan form of scan cells, the chunked form of chunked
    cells, the fused backward through time of sequential cells."""
    from rnnc.runtime.chunked_torch import chunked_fast_path

    register_fast_path("scan", _scan_fast_path)
    register_fast_path("chunked", chunked_fast_path)
    register_fast_path("sequential", _sequential_fast_path)


_register_strategies()
