"""Running the sequential strategy's Triton kernels, with a torch.autograd.Function around them.

Example (the interpreter runs it on CPU when TRITON_INTERPRET=1):
    >>> from rnnc.compiler import analyse_source
    >>> kernels = SequentialKernels(analyse_source(open("examples/elman.rnn").read()))
    >>> kernels.module.forward_args
    ['x_ptr', 'R_ptr', 'b_ptr', 'h_init_ptr', 'h_out_ptr', 'h_final_ptr', 'h_saved_ptr']
"""

from __future__ import annotations

import torch
import triton

from rnnc.errors import BackendError
from rnnc.runtime.arguments import Call, bind
from rnnc.runtime.launch import (
    DOT_MINIMUM,
    GeneratedKernels,
    flat_arguments,
    gpu_tiling,
    on_gpu,
    output_shape,
    pow2_at_least,
    triton_dtype,
)
from rnnc.templates.sequential_codegen import render_sequential


class SequentialKernels(GeneratedKernels):
    """The generated kernels of one sequential cell and the code that launches them."""

    strategy = "sequential"
    render = staticmethod(render_sequential)

    def tiles(self, call: Call) -> dict:
        """Launch parameters: BLOCK_B and one BLOCK per dim, covering each head whole.

        On a GPU, BLOCK_B and num_warps come from the tiling model when it keeps a head
        in one program; a head it splits across programs is refused (not built yet).
        """
        tiles = {f"BLOCK_{d}": pow2_at_least(call.dims[d], DOT_MINIMUM) for d in self.module.dims}
        tiles.update(BLOCK_B=DOT_MINIMUM, num_warps=4)
        if on_gpu(call):
            params = gpu_tiling(self.plan, call)
            if params.get("SPLIT", 1) != 1:
                raise BackendError(
                    f"cell {self.plan.ir.cell} at {call.dims} needs its heads split over {params['SPLIT']} "
                    "programs, and the split-head sequential kernel is not built yet; use smaller heads"
                )
            block_b = max(DOT_MINIMUM, params.get("BLOCK_B", DOT_MINIMUM))
            tiles.update(BLOCK_B=block_b, num_warps=params.get("num_warps", 4))
        return tiles

    def __call__(self, tensors: dict, state: dict | None):
        call = bind(self.plan.ir, tensors, state)
        ir = self.plan.ir
        results = _SequentialFunction.apply(self, call, *flat_arguments(call, ir))
        outputs = {o.name: results[i] for i, o in enumerate(ir.outputs)}
        finals = {d.name: results[len(ir.outputs) + i] for i, d in enumerate(ir.states)}
        return outputs, finals


def _launch_sizes(call: Call, kernels: SequentialKernels, tiles: dict) -> tuple[tuple, list, dict]:
    grid = (triton.cdiv(call.B, tiles["BLOCK_B"]), call.NH)
    sizes = [call.B, call.T, call.NH] + [call.dims[d] for d in kernels.module.dims]
    compute = call.compute_dtype
    meta = {
        "COMPUTE": triton_dtype(compute),
        "DOT_PRECISION": "ieee",  # fp32 tl.dot would default to TF32 on NVIDIA GPUs
        "num_warps": tiles["num_warps"],
        **{k: v for k, v in tiles.items() if k.startswith("BLOCK_")},
    }
    return grid, sizes, meta


class _SequentialFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernels: SequentialKernels, call: Call, *flat):
        ir = kernels.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        tiles = kernels.tiles(call)
        compute = call.compute_dtype
        store = any(ctx.needs_input_grad[2:])
        outputs = [
            torch.full(output_shape(call, o), float("nan"), dtype=call.dtype, device=call.device) for o in ir.outputs
        ]
        finals = [torch.full(s.shape, float("nan"), dtype=compute, device=call.device) for s in initial]
        saved = [
            torch.empty((call.B, call.T, *s.shape[1:]) if store else (1,), dtype=compute, device=call.device)
            for s in initial
        ]
        grid, sizes, meta = _launch_sizes(call, kernels, tiles)
        kernels.kernels.forward_kernel[grid](
            *inputs, *weights, *initial, *outputs, *finals, *saved, *sizes, STORE_STATES=store, **meta
        )
        ctx.kernels, ctx.call, ctx.tiles = kernels, call, tiles
        ctx.save_for_backward(*inputs, *weights, *initial, *saved)
        return (*outputs, *finals)

    @staticmethod
    def backward(ctx, *grads):
        kernels, call, tiles = ctx.kernels, ctx.call, ctx.tiles
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
                else torch.zeros(output_shape(call, o), dtype=compute, device=call.device)
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
        grid, sizes, meta = _launch_sizes(call, kernels, tiles)
        kernels.kernels.backward_kernel[grid](
            *inputs, *weights, *initial, *saved, *d_out, *d_fin, *d_in, *d_w, *d_st, *sizes, **meta
        )
        grads_in = [g.to(x.dtype) for g, x in zip(d_in, inputs)]
        grads_w = [g.to(w.dtype) for g, w in zip(d_w, weights)]
        return (None, None, *grads_in, *grads_w, *d_st)
