"""Running the sequential strategy's Triton kernels behind the kernel interface (``custom_ops``).

Example (the interpreter runs it on CPU when TRITON_INTERPRET=1):
    >>> from rnnc.compiler import analyse_source
    >>> kernels = SequentialKernels(analyse_source(open("examples/elman.rnn").read()))
    >>> kernels.module.forward_args
    ['ptr_x', 'ptr_R', 'ptr_b', 'init_ptr_h', 'out_ptr_h', 'final_ptr_h', 'saved_ptr_h']
"""

from __future__ import annotations

import dataclasses

import torch
import triton

from rnnc.errors import BackendError
from rnnc.runtime.arguments import Call
from rnnc.runtime.custom_ops import PerSequence, run_kernels
from rnnc.runtime.launch import (
    DOT_MINIMUM,
    GeneratedKernels,
    bind_for_triton,
    dot_constexprs,
    leaf_gradient_buffers,
    output_cotangents,
    output_shape,
    pow2_at_least,
    state_cotangents,
    triton_dtype,
)
from rnnc.runtime.sequential_weights import add_weight_gradients, dot_buffers
from rnnc.templates.sequential_codegen import render_sequential
from rnnc.templates.sequential_tiles import dim_var


class SequentialKernels(GeneratedKernels):
    """The generated kernels of one sequential cell and the code that launches them.

    The whole-head kernels read ``cu_seqlens`` themselves (``varlen``); a packed call whose tiling
    asks for the step kernels (SPLIT or STREAM) runs one sequence at a time through them.
    """

    strategy = "sequential"
    render = staticmethod(render_sequential)
    varlen = True

    def tiles(self, call: Call) -> dict:
        """Launch parameters: BLOCK_B, one BLOCK per dim, num_warps, num_stages, and for the step
        kernels SPLIT, STREAM and BLOCK_K.

        On a GPU they come from the tiling model (or ``rnnc tune``'s winner), with pinned
        parameters (``Cell.use_tiling``) on top; in the interpreter only pinned ones apply, so
        a GPU's tiling runs here as it would there. SPLIT > 1 splits each head over that many
        programs: each owns a power-of-two slice of every dim (at least 16 wide), cut down to the
        slices the dims need. STREAM = 1 runs the step kernels even for one program per head:
        one launch per step, the weights read from memory each step in BLOCK_K pieces of the
        contracted dim instead of kept on chip. A cell the step kernels do not cover runs
        whole-head unless SPLIT or STREAM was pinned.

        Example:
            >>> import torch
            >>> from rnnc.compiler import analyse_source
            >>> kernels = SequentialKernels(analyse_source(open("examples/lstm.rnn").read()))
            >>> x, R, b = torch.zeros(3, 2, 1, 4, 48), torch.zeros(1, 4, 48, 48), torch.zeros(1, 4, 48)
            >>> from rnnc.runtime.arguments import bind
            >>> call = bind(kernels.plan.ir, {"x": x, "R": R, "b": b}, None)
            >>> kernels.pinned = {"SPLIT": 2}; kernels.tiles(call)
            {'TILE_H': 32, 'BLOCK_B': 16, 'num_warps': 4, 'num_stages': 1, 'SPLIT': 2, 'STREAM': 1, 'BLOCK_K': 64}
        """
        params = self.model_params(call)
        dims = self.module.dims
        tiles = {dim_var("TILE", d): pow2_at_least(call.dims[d], DOT_MINIMUM) for d in dims}
        least = DOT_MINIMUM if self.module.row_dots else 1  # a tl.dot over the batch rows needs 16 of them
        block_b = params.get(
            "BLOCK_B", DOT_MINIMUM if self.module.row_dots else min(DOT_MINIMUM, pow2_at_least(call.B))
        )
        tiles.update(
            BLOCK_B=max(least, _power_of_two(block_b, "BLOCK_B")),
            num_warps=int(params.get("num_warps", 4)),
            num_stages=int(params.get("num_stages", 1)),
            SPLIT=1,
            STREAM=0,
        )
        # STREAM (pinned) or the tiling model's STREAM_WEIGHTS
        split, stream = int(params.get("SPLIT", 1)), bool(params.get("STREAM", params.get("STREAM_WEIGHTS", 0)))
        slices = {d: pow2_at_least(-(-call.dims[d] // max(split, 1)), DOT_MINIMUM) for d in dims}
        split = max((-(-call.dims[d] // slices[d]) for d in dims), default=1)
        if split <= 1 and not stream:
            return tiles  # the whole-head kernel: weights on chip across the time loop
        if not self.module.split.supported:
            if "SPLIT" not in self.pinned and "STREAM" not in self.pinned:
                return tiles  # the model's choice, for a cell the step kernels do not cover: try the whole head
            what = f"its heads split over {split} programs" if split > 1 else "its weights streamed each step"
            raise BackendError(f"cell {self.plan.ir.cell} at {call.dims} needs {what}, and {self.module.split.reason}")
        widest = max((call.dims[d] for d in dims), default=1)
        block_k = params.get("BLOCK_K", min(64, pow2_at_least(widest, DOT_MINIMUM)))
        if split > 1:
            tiles.update({dim_var("TILE", d): b for d, b in slices.items()})
        tiles.update(SPLIT=split, STREAM=1)
        tiles["BLOCK_K"] = max(DOT_MINIMUM, _power_of_two(block_k, "BLOCK_K"))
        return tiles

    def __call__(self, tensors: dict, state: dict | None, cu_seqlens=None):
        return run_kernels(self, bind_for_triton(self.plan.ir, tensors, state, cu_seqlens, self.binder))

    def _plan_call(self, call: Call) -> tuple[dict, int, bool]:
        """(tiles, batch rows of the kernels, whether this packed call runs one sequence at a time)."""
        rows = call.N if call.cu_seqlens is not None else call.B  # a packed call's rows are its sequences
        tiles = self.tiles(dataclasses.replace(call, B=rows))
        return tiles, rows, call.cu_seqlens is not None and tiles["STREAM"] == 1

    def _each_sequence(self) -> PerSequence:
        if getattr(self, "_sequences", None) is None:
            self._sequences = PerSequence(self)
        return self._sequences

    def forward(self, call: Call, flat: list, needs_grad: bool):
        """Outputs, final states and (when ``needs_grad``) every step's states, for backward."""
        tiles, rows, each = self._plan_call(call)
        if each:  # the step kernels take no cu_seqlens: one sequence at a time
            return self._each_sequence().forward(call, flat, needs_grad)
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        compute = call.compute_dtype
        store = needs_grad
        split = tiles["STREAM"] == 1  # the step kernels: one launch per step
        outputs = [
            torch.full(output_shape(call, o), float("nan"), dtype=call.dtype, device=call.device) for o in ir.outputs
        ]
        finals = [torch.full(s.shape, float("nan"), dtype=compute, device=call.device) for s in initial]
        # training keeps every step's states for backward; the step kernels at inference exchange
        # them through two alternating steps; the whole-head kernel at inference keeps them on chip
        saved_t = call.T if store else (2 if split else 0)
        saved = [
            torch.empty((call.B, saved_t, *s.shape[1:]) if saved_t else (1,), dtype=compute, device=call.device)
            for s in initial
        ]
        grid, sizes, meta = _launch_sizes(call, self, tiles, rows)
        pointers = (*inputs, *weights, *initial, *outputs, *finals, *saved)
        if split:
            for t in range(call.T):  # one launch per step: the launch boundary is the exchange's barrier
                self.kernels.forward_step_kernel[grid](*pointers, t, *sizes[:3], saved_t, *sizes[3:], **meta)
        else:
            varlen = call.cu_seqlens is not None
            self.kernels.forward_kernel[grid](
                *pointers, _starts(call), *sizes, STORE_STATES=store, VARLEN=varlen, **meta
            )
        return outputs, finals, saved if store else []

    def saved_like(self, call: Call, flat: list, needs_grad: bool) -> list:
        """Stand-ins shaped like what :meth:`forward` saves."""
        n_states = len(self.plan.ir.states)
        if not needs_grad or self._plan_call(call)[2]:
            return []
        return [s.new_empty((call.B, call.T, *s.shape[1:])) for s in flat[len(flat) - n_states :]]

    def backward(self, call: Call, flat: list, saved: list, d_outputs: list, d_finals: list) -> list:
        """Cotangents of inputs, weights and initial states (a None cotangent counts as zero)."""
        tiles, rows, each = self._plan_call(call)
        if each:
            return self._each_sequence().backward(call, flat, saved, d_outputs, d_finals)
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        compute = call.compute_dtype
        d_out = output_cotangents(call, ir, d_outputs)
        d_fin = state_cotangents(d_finals, initial)
        d_in, d_w = leaf_gradient_buffers(inputs, compute), leaf_gradient_buffers(weights, compute)
        grid, sizes, meta = _launch_sizes(call, self, tiles, rows)
        # what the kernel stores for the weights' gradients, which follow from it after the kernel
        module = self.module.split if tiles["STREAM"] else self.module
        dots = dot_buffers(module.dots, self, call)
        if tiles["STREAM"]:
            pointers = (*inputs, *weights, *initial, *saved, *d_out)
            d_st = _backward_split(self, call, tiles["SPLIT"], pointers, d_fin, (*d_in, *d_w), dots, grid, sizes, meta)
        else:
            d_st = [torch.full(s.shape, float("nan"), dtype=compute, device=s.device) for s in initial]
            pointers = (*inputs, *weights, *initial, *saved, *d_out, *d_fin, *d_in, *d_w, *d_st, *dots)
            varlen = call.cu_seqlens is not None
            self.kernels.backward_kernel[grid](*pointers, _starts(call), *sizes, VARLEN=varlen, **meta)
        starts = _starts(call) if call.cu_seqlens is not None else None
        held = {"inputs": inputs, "weights": weights, "initial": initial, "saved": saved, "starts": starts}
        add_weight_gradients(module.dots, module.weight_sums, self, call, dots, held, d_in, d_w)
        grads_in = [g.to(x.dtype) for g, x in zip(d_in, inputs)]
        grads_w = [g.to(w.dtype) for g, w in zip(d_w, weights)]
        return [*grads_in, *grads_w, *d_st]


def _starts(call: Call) -> torch.Tensor:
    """The kernels' ``seq_starts`` pointer: the offsets (int64), or one unused entry for a dense batch."""
    if call.cu_seqlens is None:
        return torch.zeros(1, dtype=torch.int64, device=call.device)
    from rnnc.runtime.varlen import sequence_bounds

    sequence_bounds(call.cu_seqlens, call.T)  # checked where first read: from 0, rising, to total_T
    return call.cu_seqlens.to(device=call.device, dtype=torch.int64).contiguous()


def _power_of_two(value, name: str) -> int:
    """A pinned block size, checked: Triton's tiles are powers of two."""
    value = int(value)
    if value < 1 or value & (value - 1):
        raise BackendError(f"{name} needs a power of two, has {value}")
    return value


def _launch_sizes(call: Call, kernels: SequentialKernels, tiles: dict, rows: int) -> tuple[tuple, list, dict]:
    grid = (triton.cdiv(rows, tiles["BLOCK_B"]), call.NH)
    if tiles.get("STREAM", 0):
        grid += (tiles["SPLIT"],)
    sizes = [rows, call.T, call.NH] + [call.dims[d] for d in kernels.module.dims]
    compute = call.compute_dtype
    meta = {
        "COMPUTE": triton_dtype(compute),
        **dot_constexprs(call, kernels.precision),  # docs/decisions.md
        "num_warps": tiles["num_warps"],
        "num_stages": tiles["num_stages"],
        **{k: v for k, v in tiles.items() if k in ("BLOCK_B", "BLOCK_K") or k.startswith("TILE_")},  # TILE_<dim>
    }
    return grid, sizes, meta


def _backward_split(kernels, call, split, pointers, d_fin, leaf_grads, dots, grid, sizes, meta) -> list[torch.Tensor]:
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
            *dots,
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
