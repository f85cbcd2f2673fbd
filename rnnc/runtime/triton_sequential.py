"""Running the sequential strategy's Triton kernels, with a torch.autograd.Function around them.

Example (the interpreter runs it on CPU when TRITON_INTERPRET=1):
    >>> from rnnc.compiler import analyse_source
    >>> kernels = SequentialKernels(analyse_source(open("examples/elman.rnn").read()))
    >>> kernels.module.forward_args
    ['ptr_x', 'ptr_R', 'ptr_b', 'init_ptr_h', 'out_ptr_h', 'final_ptr_h', 'saved_ptr_h']
"""

from __future__ import annotations

import torch
import triton

from rnnc.errors import BackendError
from rnnc.runtime.arguments import Call
from rnnc.runtime.custom_ops import run_kernels
from rnnc.runtime.launch import (
    DOT_MINIMUM,
    GeneratedKernels,
    bind_for_triton,
    leaf_gradient_buffers,
    output_cotangents,
    output_shape,
    pow2_at_least,
    state_cotangents,
    triton_dtype,
)
from rnnc.templates.sequential_codegen import render_sequential
from rnnc.templates.sequential_tiles import dim_var


class SequentialKernels(GeneratedKernels):
    """The generated kernels of one sequential cell and the code that launches them."""

    strategy = "sequential"
    render = staticmethod(render_sequential)

    def tiles(self, call: Call) -> dict:
        """Launch parameters: BLOCK_B, SPLIT and one TILE (and FULL) per dim, under the kernels' names.

        On a GPU, BLOCK_B, num_warps and SPLIT come from the tiling model, with pinned
        parameters (``Cell.use_tiling``) on top; in the interpreter only pinned ones apply.
        SPLIT > 1 splits each head over that many programs: each owns a power-of-two slice of
        every dim (at least 16 wide), and the split is cut down to the slices the dims need. A
        cell the split kernels do not cover runs whole-head unless the split was pinned.

        Example:
            >>> import torch
            >>> from rnnc.compiler import analyse_source
            >>> kernels = SequentialKernels(analyse_source(open("examples/lstm.rnn").read()))
            >>> x, R, b = torch.zeros(3, 2, 1, 4, 48), torch.zeros(1, 4, 48, 48), torch.zeros(1, 4, 48)
            >>> from rnnc.runtime.arguments import bind
            >>> call = bind(kernels.plan.ir, {"x": x, "R": R, "b": b}, None)
            >>> kernels.pinned = {"SPLIT": 2}; kernels.tiles(call)
            {'TILE_H': 32, 'BLOCK_B': 16, 'num_warps': 4, 'SPLIT': 2, 'FULL_H': 64}
        """
        params = self.model_params(call)
        tiles = {dim_var("TILE", d): pow2_at_least(call.dims[d], DOT_MINIMUM) for d in self.module.dims}
        tiles.update(
            BLOCK_B=max(DOT_MINIMUM, params.get("BLOCK_B", DOT_MINIMUM)), num_warps=params.get("num_warps", 4), SPLIT=1
        )
        split = int(params.get("SPLIT", 1))
        if split <= 1:
            return tiles
        slices = {d: pow2_at_least(-(-call.dims[d] // split), DOT_MINIMUM) for d in self.module.dims}
        split = max(-(-call.dims[d] // slices[d]) for d in self.module.dims)
        if split <= 1:
            return tiles  # the head fits one slice: the whole-head kernels
        if not self.module.split.supported and "SPLIT" not in self.pinned:
            return tiles  # the model's split, for a cell the split kernels do not cover: try the whole head
        if not self.module.split.supported:
            raise BackendError(
                f"cell {self.plan.ir.cell} at {call.dims} needs its heads split over {split} programs, "
                f"and {self.module.split.reason}"
            )
        tiles.update({dim_var("TILE", d): b for d, b in slices.items()}, SPLIT=split)
        full = self.module.split.full_dims
        tiles.update({dim_var("FULL", d): pow2_at_least(call.dims[d], DOT_MINIMUM) for d in full})
        return tiles

    def __call__(self, tensors: dict, state: dict | None, cu_seqlens=None):
        return run_kernels(self, bind_for_triton(self.plan.ir, tensors, state, cu_seqlens, self.binder))

    def forward(self, call: Call, flat: list, needs_grad: bool):
        """Outputs, final states and (when ``needs_grad``) every step's states, for backward."""
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        tiles = self.tiles(call)
        compute = call.compute_dtype
        store = needs_grad
        split = tiles["SPLIT"] > 1
        outputs = [
            torch.full(output_shape(call, o), float("nan"), dtype=call.dtype, device=call.device) for o in ir.outputs
        ]
        finals = [torch.full(s.shape, float("nan"), dtype=compute, device=call.device) for s in initial]
        # training keeps every step's states for backward; a split head at inference exchanges
        # them through two alternating steps; a whole head at inference keeps them on chip
        saved_t = call.T if store else (2 if split else 0)
        saved = [
            torch.empty((call.B, saved_t, *s.shape[1:]) if saved_t else (1,), dtype=compute, device=call.device)
            for s in initial
        ]
        grid, sizes, meta = _launch_sizes(call, self, tiles)
        pointers = (*inputs, *weights, *initial, *outputs, *finals, *saved)
        if split:
            for t in range(call.T):  # one launch per step: the launch boundary is the exchange's barrier
                self.kernels.forward_step_kernel[grid](*pointers, t, *sizes[:3], saved_t, *sizes[3:], **meta)
        else:
            self.kernels.forward_kernel[grid](*pointers, *sizes, STORE_STATES=store, **meta)
        return outputs, finals, saved if store else []

    def saved_like(self, call: Call, flat: list, needs_grad: bool) -> list:
        """Stand-ins shaped like what :meth:`forward` saves."""
        n_states = len(self.plan.ir.states)
        if not needs_grad:
            return []
        return [s.new_empty((call.B, call.T, *s.shape[1:])) for s in flat[len(flat) - n_states :]]

    def backward(self, call: Call, flat: list, saved: list, d_outputs: list, d_finals: list) -> list:
        """Cotangents of inputs, weights and initial states (a None cotangent counts as zero)."""
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        tiles = self.tiles(call)
        compute = call.compute_dtype
        d_out = output_cotangents(call, ir, d_outputs)
        d_fin = state_cotangents(d_finals, initial)
        d_in, d_w = leaf_gradient_buffers(inputs, compute), leaf_gradient_buffers(weights, compute)
        grid, sizes, meta = _launch_sizes(call, self, tiles)
        if tiles["SPLIT"] > 1:
            pointers = (*inputs, *weights, *initial, *saved, *d_out)
            d_st = _backward_split(self, call, tiles["SPLIT"], pointers, d_fin, (*d_in, *d_w), grid, sizes, meta)
        else:
            d_st = [torch.full(s.shape, float("nan"), dtype=compute, device=s.device) for s in initial]
            self.kernels.backward_kernel[grid](
                *inputs, *weights, *initial, *saved, *d_out, *d_fin, *d_in, *d_w, *d_st, *sizes, **meta
            )
        grads_in = [g.to(x.dtype) for g, x in zip(d_in, inputs)]
        grads_w = [g.to(w.dtype) for g, w in zip(d_w, weights)]
        return [*grads_in, *grads_w, *d_st]


def _launch_sizes(call: Call, kernels: SequentialKernels, tiles: dict) -> tuple[tuple, list, dict]:
    grid = (triton.cdiv(call.B, tiles["BLOCK_B"]), call.NH)
    if tiles["SPLIT"] > 1:
        grid += (tiles["SPLIT"],)
    sizes = [call.B, call.T, call.NH] + [call.dims[d] for d in kernels.module.dims]
    compute = call.compute_dtype
    meta = {
        "COMPUTE": triton_dtype(compute),
        "DOT_PRECISION": "ieee",  # fp32 tl.dot would default to TF32 on NVIDIA GPUs
        "num_warps": tiles["num_warps"],
        "BLOCK_B": tiles["BLOCK_B"],
        **{k: v for k, v in tiles.items() if k.startswith(("TILE_", "FULL_"))},  # the dims' (names.derived)
    }
    return grid, sizes, meta


def _backward_split(kernels, call, split, pointers, d_fin, leaf_grads, grid, sizes, meta) -> list[torch.Tensor]:
    """Backward of a split head, one launch per step in reverse; returns the initial states' gradients.

    Each state's cotangent travels in two parts: ``carry`` (each program's slice of the pointwise
    part) and, for the states a matmul contracts, ``exchange`` (each program's partial sum of the
    matmul part over the whole dim). Both alternate between two buffers, read one, write the other.
    """
    names = [d.name for d in kernels.plan.ir.states]
    exchanged = kernels.module.split.exchanged
    carry = [g.clone() for g in d_fin]
    carry_next = [torch.empty_like(g) for g in d_fin]
    exchange = [
        torch.zeros((split, *d_fin[names.index(n)].shape), dtype=d_fin[0].dtype, device=call.device) for n in exchanged
    ]
    exchange_next = [torch.empty_like(e) for e in exchange]
    for t in reversed(range(call.T)):
        kernels.kernels.backward_step_kernel[grid](
            *pointers,
            *carry,
            *exchange,
            *leaf_grads,
            *carry_next,
            *exchange_next,
            t,
            *sizes[:3],
            split,
            *sizes[3:],
            **meta,
        )
        carry, carry_next = carry_next, carry
        exchange, exchange_next = exchange_next, exchange
    for name, partial in zip(exchanged, exchange):
        carry[names.index(name)] += partial.sum(dim=0)  # the programs' partial sums, in program order
    return carry
