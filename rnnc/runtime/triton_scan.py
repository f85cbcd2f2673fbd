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

from rnnc.runtime.arguments import Call
from rnnc.runtime.custom_ops import run_kernels
from rnnc.runtime.launch import (
    GeneratedKernels,
    bind_for_triton,
    leaf_gradient_buffers,
    on_gpu,
    output_cotangents,
    output_shape,
    pow2_at_least,
    state_cotangents,
    triton_dtype,
)
from rnnc.templates.scan_codegen import render_scan


def _interpreter_tiles(call: Call, sizes: tuple[int, ...]) -> dict:
    """Small power-of-two tiles for the interpreter, which runs programs one at a time.

    Up to 1024 state entries per program: one program then owns all of Mamba's D = 64, N = 16,
    so B and C are read once per step (a program that owns a block of D re-reads them).
    Chunks of 16 steps, longer beyond 4096 steps so that there are at most 256 chunks: the
    interpreter's cost is per operation (Mamba at T = 65,536: 16 steps a chunk take 4 times as
    long as 256)."""
    rest = math.prod(pow2_at_least(n) for n in sizes[1:])
    block_first = min(pow2_at_least(sizes[0]), max(1, 1024 // rest))
    block_t = min(pow2_at_least(call.T), max(16, min(256, pow2_at_least(call.T) // 256)))
    return {"BLOCK_C": block_first * rest, "BLOCK_T": max(block_t, 2), "num_warps": 4}


def _axis_blocks(axes: list[str], sizes: tuple[int, ...], block_c: int) -> dict:
    """BLOCK_<axis> of each state axis from the tiling's BLOCK_C (state entries per program).

    A program owns every entry of the axes after the first (padded to powers of two) and as many
    entries of the first axis as BLOCK_C leaves room for, at least one.

    Example:
        >>> _axis_blocks(["ax0", "ax1"], (24, 16), 512)
        {'BLOCK_ax0': 32, 'BLOCK_ax1': 16}
    """
    rest = math.prod(pow2_at_least(n) for n in sizes[1:])
    first = min(pow2_at_least(sizes[0]), pow2_at_least(max(1, block_c // rest)))
    return {f"BLOCK_{axes[0]}": first, **{f"BLOCK_{a}": pow2_at_least(n) for a, n in zip(axes[1:], sizes[1:])}}


class ScanKernels(GeneratedKernels):
    """The generated kernels of one scan cell and the code that launches them."""

    strategy = "scan"
    render = staticmethod(render_scan)

    def tiles(self, call: Call, sizes: tuple[int, ...]) -> dict:
        """Launch parameters: on a GPU the tiling model's choice (or ``rnnc tune``'s winner), in the
        interpreter small tiles; pinned ones (``Cell.use_tiling``) on top of either.

        Example:
            >>> import torch
            >>> from rnnc.compiler import analyse_source
            >>> from rnnc.runtime.arguments import bind
            >>> kernels = ScanKernels(analyse_source(open("examples/hgrn.rnn").read()))
            >>> x = torch.zeros(1, 40, 1, 24)
            >>> call = bind(kernels.plan.ir, {"x": x, "g": x}, None)
            >>> kernels.tiles(call, (24,))
            {'BLOCK_C': 32, 'BLOCK_T': 16, 'num_warps': 4, 'num_stages': 1}
            >>> kernels.pinned = {"BLOCK_T": 8, "num_warps": 8}; kernels.tiles(call, (24,))
            {'BLOCK_C': 32, 'BLOCK_T': 8, 'num_warps': 8, 'num_stages': 1}
        """
        tiles = {"num_stages": 1} if on_gpu(call) else {**_interpreter_tiles(call, sizes), "num_stages": 1}
        tiles.update(self.model_params(call))  # the model's (or tune's) on a GPU, pinned ones everywhere
        return tiles

    def __call__(self, tensors: dict, state: dict | None, cu_seqlens=None):
        return run_kernels(self, bind_for_triton(self.plan.ir, tensors, state, cu_seqlens, self.binder))

    def _blocks(self, call: Call):
        sizes = call.shape_of(self.plan.ir.states[0].shape)
        tiles = self.tiles(call, sizes)
        blocks = _axis_blocks(self.module.axes, sizes, tiles["BLOCK_C"])
        grid = (triton.cdiv(sizes[0], blocks[f"BLOCK_{self.module.axes[0]}"]), call.B * call.NH)
        return sizes, tiles, blocks, grid

    def forward(self, call: Call, flat: list, needs_grad: bool):
        """Outputs, final states and (when ``needs_grad``) every step's states, for backward."""
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        sizes, tiles, blocks, grid = self._blocks(call)
        compute = call.compute_dtype
        store = needs_grad
        outputs = [
            torch.full(output_shape(call, o), float("nan"), dtype=call.dtype, device=call.device) for o in ir.outputs
        ]
        finals = [torch.full(s.shape, float("nan"), dtype=compute, device=call.device) for s in initial]
        saved = [
            torch.empty(
                (call.B, call.T, call.NH, math.prod(sizes)) if store else (1,), dtype=compute, device=call.device
            )
            for _ in initial
        ]
        self.kernels.forward_kernel[grid](
            *inputs,
            *weights,
            *initial,
            *outputs,
            *finals,
            *saved,
            call.T,
            call.NH,
            *sizes,
            COMPUTE=triton_dtype(compute),
            **blocks,
            BLOCK_T=tiles["BLOCK_T"],
            STORE_STATES=store,
            num_warps=tiles.get("num_warps", 4),
            num_stages=tiles["num_stages"],
        )
        return outputs, finals, saved if store else []

    def saved_like(self, call: Call, flat: list, needs_grad: bool) -> list:
        """Stand-ins shaped like what :meth:`forward` saves."""
        ir = self.plan.ir
        if not needs_grad:
            return []
        channels = math.prod(call.shape_of(ir.states[0].shape))
        return [flat[0].new_empty((call.B, call.T, call.NH, channels), dtype=call.compute_dtype) for _ in ir.states]

    def backward(self, call: Call, flat: list, saved: list, d_outputs: list, d_finals: list) -> list:
        """Cotangents of inputs, weights and initial states (a None cotangent counts as zero)."""
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        sizes, tiles, blocks, grid = self._blocks(call)
        compute = call.compute_dtype
        d_out, d_fin = output_cotangents(call, ir, d_outputs), state_cotangents(d_finals, initial)
        d_in, d_w = leaf_gradient_buffers(inputs, compute), leaf_gradient_buffers(weights, compute)
        d_st = [torch.full(s.shape, float("nan"), dtype=compute, device=s.device) for s in initial]
        self.kernels.backward_kernel[grid](
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
            *sizes,
            COMPUTE=triton_dtype(compute),
            **blocks,
            BLOCK_T=tiles["BLOCK_T"],
            num_warps=tiles.get("num_warps", 4),
            num_stages=tiles["num_stages"],
        )
        grads_in = [g.to(x.dtype) for g, x in zip(d_in, inputs)]
        grads_w = [g.to(w.dtype) for g, w in zip(d_w, weights)]
        return [*grads_in, *grads_w, *d_st]
