"""Running the scan strategy's Triton kernels, with a torch.autograd.Function around them.

Example (the interpreter runs it on CPU when TRITON_INTERPRET=1):
    >>> from rnnc.compiler import analyse_source
    >>> kernels = ScanKernels(analyse_source(open("examples/hgrn.rnn").read()))
    >>> kernels.module.forward_args[-1]
    'saved_h'
"""

from __future__ import annotations

import math

import torch
import triton

from rnnc import config
from rnnc.compiler import Plan
from rnnc.runtime.arguments import Call, bind
from rnnc.runtime.modules import load_module
from rnnc.templates.scan_codegen import render_scan


def _interpreter_tiles(call: Call, channels: int) -> dict:
    """Small power-of-two tiles for the interpreter, which runs programs one at a time."""
    block_c = min(64, 1 << max(0, math.ceil(math.log2(max(channels, 1)))))
    block_t = min(16, 1 << max(0, math.ceil(math.log2(max(call.T, 1)))))
    return {"BLOCK_C": block_c, "BLOCK_T": max(block_t, 2), "num_warps": 4}


class ScanKernels:
    """The generated kernels of one scan cell and the code that launches them."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.module = render_scan(plan)
        self.kernels = load_module(self.module.text, f"{plan.ir.cell}_scan")

    @property
    def source(self) -> str:
        """The generated module's text."""
        return self.module.text

    def tiles(self, call: Call, channels: int) -> dict:
        """Launch parameters: the tiling model's choice on a GPU, small tiles in the interpreter."""
        if call.device.type == "cuda" and not config.triton_interpret():
            from rnnc.constraints.tiling import solve_tiling

            dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float64: "float64"}.get(
                call.dtype, "float32"
            )
            shape = {"B": call.B, "T": call.T, "NH": call.NH, **call.dims}
            return solve_tiling(self.plan, "auto", shape, dtype, candidates=0, find_binding=False).params
        return _interpreter_tiles(call, channels)

    def __call__(self, tensors: dict, state: dict | None):
        call = bind(self.plan.ir, tensors, state)
        ir = self.plan.ir
        flat = [call.inputs[d.name].contiguous() for d in ir.inputs]
        flat += [call.weights[d.name].contiguous() for d in ir.weights]
        initial = []
        for d in ir.states:
            given = call.states.get(d.name)
            shape = (call.B, call.NH, *call.shape_of(d.shape))
            initial.append(
                given.to(call.compute_dtype).contiguous()
                if given is not None
                else torch.zeros(shape, dtype=call.compute_dtype, device=call.device)
            )
        results = _ScanFunction.apply(self, call, *flat, *initial)
        outputs = {o.name: results[i] for i, o in enumerate(ir.outputs)}
        finals = {d.name: results[len(ir.outputs) + i] for i, d in enumerate(ir.states)}
        return outputs, finals


class _ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernels: ScanKernels, call: Call, *flat):
        ir = kernels.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        channels = math.prod(call.shape_of(ir.states[0].shape))
        tiles = kernels.tiles(call, channels)
        compute = call.compute_dtype
        store = any(ctx.needs_input_grad[2:])
        outputs = [
            torch.full(_output_shape(call, o), float("nan"), dtype=call.dtype, device=call.device) for o in ir.outputs
        ]
        finals = [torch.full(s.shape, float("nan"), dtype=compute, device=call.device) for s in initial]
        saved = [
            torch.empty((call.B, call.T, call.NH, channels) if store else (1,), dtype=compute, device=call.device)
            for _ in initial
        ]
        grid = (triton.cdiv(channels, tiles["BLOCK_C"]), call.B * call.NH)
        kernels.kernels.forward_kernel[grid](
            *inputs,
            *weights,
            *initial,
            *outputs,
            *finals,
            *saved,
            call.T,
            call.NH,
            channels,
            COMPUTE=_triton_dtype(compute),
            BLOCK_C=tiles["BLOCK_C"],
            BLOCK_T=tiles["BLOCK_T"],
            STORE_STATES=store,
            num_warps=tiles.get("num_warps", 4),
        )
        ctx.kernels, ctx.call, ctx.tiles, ctx.channels = kernels, call, tiles, channels
        ctx.save_for_backward(*inputs, *weights, *initial, *saved)
        return (*outputs, *finals)

    @staticmethod
    def backward(ctx, *grads):
        kernels, call, tiles, channels = ctx.kernels, ctx.call, ctx.tiles, ctx.channels
        ir = kernels.plan.ir
        n_in, n_w, n_s, n_out = len(ir.inputs), len(ir.weights), len(ir.states), len(ir.outputs)
        saved_tensors = ctx.saved_tensors
        inputs = saved_tensors[:n_in]
        weights = saved_tensors[n_in : n_in + n_w]
        initial = saved_tensors[n_in + n_w : n_in + n_w + n_s]
        saved = saved_tensors[n_in + n_w + n_s :]
        compute = call.compute_dtype
        d_out = [
            (
                g.to(compute)
                if g is not None
                else torch.zeros(_output_shape(call, o), dtype=compute, device=call.device)
            ).contiguous()
            for g, o in zip(grads[:n_out], ir.outputs)
        ]
        d_fin = [
            (g if g is not None else torch.zeros_like(s)).to(compute).contiguous()
            for g, s in zip(grads[n_out:], initial)
        ]
        d_in = [torch.zeros(x.shape, dtype=compute, device=x.device) for x in inputs]
        d_w = [torch.zeros(w.shape, dtype=compute, device=w.device) for w in weights]
        d_st = [torch.full(s.shape, float("nan"), dtype=compute, device=s.device) for s in initial]
        grid = (triton.cdiv(channels, tiles["BLOCK_C"]), call.B * call.NH)
        kernels.kernels.backward_kernel[grid](
            *inputs,
            *weights,
            *initial,
            *saved,
            *d_out,
            *d_fin,
            *d_in,
            *d_w,
            *d_st,
            call.T,
            call.NH,
            channels,
            COMPUTE=_triton_dtype(compute),
            BLOCK_C=tiles["BLOCK_C"],
            BLOCK_T=tiles["BLOCK_T"],
            num_warps=tiles.get("num_warps", 4),
        )
        grads_in = [g.to(x.dtype) for g, x in zip(d_in, inputs)]
        grads_w = [g.to(w.dtype) for g, w in zip(d_w, weights)]
        return (None, None, *grads_in, *grads_w, *d_st)


def _output_shape(call: Call, output) -> tuple[int, ...]:
    """[B, T, NH, *shape] of an emitted output."""
    return (call.B, call.T, call.NH, *call.shape_of(output.shape))


def _triton_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32
