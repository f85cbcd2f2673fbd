"""The reference executor: runs a Plan as a PyTorch loop over time.

Two modes share the generated step:

* ``autograd``: the loop is ordinary PyTorch, so gradients come from autograd;
* ``bptt``: a ``torch.autograd.Function`` whose backward runs time in reverse
  with the step's sympy partial derivatives (no autograd inside), which checks
  those derivatives before any kernel relies on them.

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

import linecache

import torch

from rnnc.compiler import Plan
from rnnc.runtime.arguments import Call, bind
from rnnc.runtime.reference_codegen import backward_source, forward_source


def load_source(text: str, name: str) -> dict:
    """Execute generated module text and return its namespace (kept in linecache for tracebacks).

    Example:
        >>> load_source("x = 1\\n", "demo")["x"]
        1
    """
    filename = f"<rnnc {name}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
    namespace: dict = {"__name__": f"rnnc_generated_{name}"}
    exec(compile(text, filename, "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace


class ReferenceRunner:
    """Callable running a Plan on tensors; ``mode`` is ``autograd`` or ``bptt``."""

    def __init__(self, plan: Plan, mode: str = "autograd"):
        if mode not in ("autograd", "bptt"):
            raise ValueError(f"mode needs 'autograd' or 'bptt', has {mode!r}")
        self.plan = plan
        self.mode = mode
        self.forward_text = forward_source(plan)
        self.step = load_source(self.forward_text, f"{plan.ir.cell}_forward")["step"]
        self._backward = None

    @property
    def step_backward(self):
        """The generated backward step (built on first use)."""
        if self._backward is None:
            text = backward_source(self.plan)
            self.backward_text = text
            self._backward = load_source(text, f"{self.plan.ir.cell}_backward")["step_backward"]
        return self._backward

    def __call__(self, tensors: dict, state: dict | None):
        call = bind(self.plan.ir, tensors, state)
        if self.mode == "autograd":
            return _run_autograd(self, call)
        return _run_bptt(self, call)


def _shapes(plan: Plan, call: Call) -> dict[str, tuple[int, ...]]:
    ir = plan.ir
    shapes = {r.name: (call.B, call.NH, *call.shape_of(r.shape)) for r in ir.updates}
    shapes.update({r.name: (call.B, call.NH, *call.shape_of(r.shape)) for r in ir.outputs})
    return shapes


def _initial_states(plan: Plan, call: Call, like: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    for decl in plan.ir.states:
        given = call.states.get(decl.name)
        shape = (call.B, call.NH, *call.shape_of(decl.shape))
        out[decl.name] = given.to(call.compute_dtype) if given is not None else like.new_zeros(shape)
    return out


def _run_autograd(runner: ReferenceRunner, call: Call):
    plan = runner.plan
    like = torch.empty((), dtype=call.compute_dtype, device=call.device)
    shapes = _shapes(plan, call)
    weights = {n: w.to(call.compute_dtype).unsqueeze(0) for n, w in call.weights.items()}
    states = _initial_states(plan, call, like)
    outputs: dict[str, list[torch.Tensor]] = {r.name: [] for r in plan.ir.outputs}
    for t in range(call.T):
        inputs = {n: x[:, t].to(call.compute_dtype) for n, x in call.inputs.items()}
        states, out = runner.step(inputs, weights, states, shapes, like, call.dims)
        for name, value in out.items():
            outputs[name].append(value)
    stacked = {n: _stack(v, call, shapes[n]).to(call.dtype) for n, v in outputs.items()}
    return stacked, states


def _stack(values: list[torch.Tensor], call: Call, shape) -> torch.Tensor:
    if not values:
        return torch.empty((shape[0], 0, *shape[1:]), dtype=call.compute_dtype, device=call.device)
    return torch.stack(values, dim=1)


def _run_bptt(runner: ReferenceRunner, call: Call):
    ir = runner.plan.ir
    names = [d.name for d in ir.inputs] + [d.name for d in ir.weights] + [d.name for d in ir.states]
    like = torch.empty((), dtype=call.compute_dtype, device=call.device)
    given_states = _initial_states(runner.plan, call, like)
    flat = [call.inputs[d.name] for d in ir.inputs] + [call.weights[d.name] for d in ir.weights]
    flat += [call.states.get(d.name, given_states[d.name]) for d in ir.states]
    results = _ManualBackprop.apply(runner, call, names, *flat)
    outputs = {r.name: results[i] for i, r in enumerate(ir.outputs)}
    finals = {d.name: results[len(ir.outputs) + i] for i, d in enumerate(ir.states)}
    return outputs, finals


class _ManualBackprop(torch.autograd.Function):
    """Forward: the reference loop without autograd. Backward: BPTT from the sympy partials."""

    @staticmethod
    def forward(ctx, runner, call, names, *flat):
        ir = runner.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        cdt = call.compute_dtype
        like = torch.empty((), dtype=cdt, device=call.device)
        shapes = _shapes(runner.plan, call)
        inputs = {d.name: flat[i] for i, d in enumerate(ir.inputs)}
        weights = {d.name: flat[n_in + i].to(cdt).unsqueeze(0) for i, d in enumerate(ir.weights)}
        states = {d.name: flat[n_in + n_w + i].to(cdt) for i, d in enumerate(ir.states)}
        history = [states]
        outputs: dict[str, list] = {r.name: [] for r in ir.outputs}
        for t in range(call.T):
            step_inputs = {n: x[:, t].to(cdt) for n, x in inputs.items()}
            states, out = runner.step(step_inputs, weights, states, shapes, like, call.dims)
            history.append(states)
            for name, value in out.items():
                outputs[name].append(value)
        ctx.runner, ctx.call, ctx.history, ctx.shapes = runner, call, history, shapes
        ctx.save_for_backward(*flat)
        stacked = [_stack(outputs[r.name], call, shapes[r.name]).to(call.dtype) for r in ir.outputs]
        return (*stacked, *(states[d.name] for d in ir.states))

    @staticmethod
    def backward(ctx, *grads):
        runner, call, history, shapes = ctx.runner, ctx.call, ctx.history, ctx.shapes
        ir = runner.plan.ir
        flat = ctx.saved_tensors
        n_in, n_w, n_out = len(ir.inputs), len(ir.weights), len(ir.outputs)
        cdt = call.compute_dtype
        like = torch.empty((), dtype=cdt, device=call.device)
        inputs = {d.name: flat[i] for i, d in enumerate(ir.inputs)}
        weights = {d.name: flat[n_in + i].to(cdt).unsqueeze(0) for i, d in enumerate(ir.weights)}
        d_out_all = {r.name: grads[i] for i, r in enumerate(ir.outputs) if grads[i] is not None}
        d_new = {d.name: grads[n_out + i].to(cdt) for i, d in enumerate(ir.states) if grads[n_out + i] is not None}
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
        result = [None, None, None]
        result += [d_inputs[d.name].to(flat[i].dtype) for i, d in enumerate(ir.inputs)]
        result += [d_weights[d.name].squeeze(0).to(flat[n_in + i].dtype) for i, d in enumerate(ir.weights)]
        for i, d in enumerate(ir.states):
            g = d_new.get(d.name)
            src = flat[n_in + n_w + i]
            result.append(g.expand(src.shape).to(src.dtype) if g is not None else torch.zeros_like(src))
        return tuple(result)
