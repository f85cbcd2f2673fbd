"""Running the chunked strategy's Triton kernels, with a torch.autograd.Function around them.

The forward kernel walks the chunks of each (batch row, head, value block) in order and,
when a gradient is needed, stores each chunk's starting state ([B * NH, chunks, K, V],
one state per chunk, not per step); the backward kernel walks the chunks in reverse from those.

Example (the interpreter runs it on CPU when TRITON_INTERPRET=1):
    >>> from rnnc.compiler import analyse_source
    >>> kernels = ChunkedKernels(analyse_source(open("examples/simple_gla.rnn").read()))
    >>> kernels.module.decay, kernels.module.forward_args[-1]
    ('scalar', 'saved_S')
"""

from __future__ import annotations

import torch
import triton

from rnnc.runtime.arguments import Call
from rnnc.runtime.custom_ops import run_kernels
from rnnc.runtime.launch import (
    DOT_MINIMUM,
    GeneratedKernels,
    bind_for_triton,
    dot_constexprs,
    output_cotangents,
    pow2_at_least,
    state_cotangents,
    triton_dtype,
)
from rnnc.templates.chunked_codegen import render_chunked

# per-key-channel decays are split as q e^gamma . k e^-gamma, and e^-gamma grows along a
# chunk: 16 steps keep it finite in fp32 unless a channel decays below e^-5.5 per step
DIAGONAL_CHUNK = 16


class ChunkedKernels(GeneratedKernels):
    """The generated kernels of one chunked cell and the code that launches them."""

    strategy = "chunked"
    render = staticmethod(render_chunked)

    def tiles(self, call: Call) -> dict:
        """Launch parameters: on a GPU the tiling model's choice (or ``rnnc tune``'s winner); pinned
        ones (``Cell.use_tiling``) on top, in the interpreter as on a GPU; else small tiles.

        The key dimension stays whole in one program (padded to a power of two), whatever the
        model or a pin says: the outputs and the delta rule contract over all of it. Per-channel
        decays keep chunks of at most 16 steps (see DIAGONAL_CHUNK).

        Example:
            >>> import torch
            >>> from rnnc.compiler import analyse_source
            >>> kernels = ChunkedKernels(analyse_source(open("examples/gla.rnn").read()))
            >>> q = torch.zeros(1, 3, 1, 24)
            >>> from rnnc.runtime.arguments import bind
            >>> call = bind(kernels.plan.ir, {"q": q, "k": q, "v": torch.zeros(1, 3, 1, 40), "g": q}, None)
            >>> kernels.tiles(call)
            {'CHUNK': 16, 'BK': 32, 'BV': 64, 'num_warps': 4, 'num_stages': 1}
            >>> kernels.pinned = {"BV": 16, "num_warps": 2}; kernels.tiles(call)
            {'CHUNK': 16, 'BK': 32, 'BV': 16, 'num_warps': 2, 'num_stages': 1}
        """
        pieces_dims = self._dims(call)
        k_pad, v_pad = pow2_at_least(pieces_dims[0], DOT_MINIMUM), pow2_at_least(pieces_dims[1], DOT_MINIMUM)
        params = {"CHUNK": DOT_MINIMUM, "BV": v_pad, "num_warps": 4, "num_stages": 1}
        params.update(self.model_params(call))  # the model's (or tune's) on a GPU, pinned ones everywhere
        tiles = {
            "CHUNK": max(DOT_MINIMUM, params["CHUNK"]),
            "BK": k_pad,
            "BV": max(DOT_MINIMUM, min(params["BV"], v_pad)),
            "num_warps": params["num_warps"],
            "num_stages": params["num_stages"],
        }
        if self.module.decay == "diagonal":
            tiles["CHUNK"] = min(tiles["CHUNK"], DIAGONAL_CHUNK)
        return tiles

    def _dims(self, call: Call) -> tuple[int, int]:
        """(K, V): the state's key and value sizes."""
        key, value = call.shape_of(self.plan.ir.states[0].shape)
        return key, value

    def __call__(self, tensors: dict, state: dict | None, cu_seqlens=None):
        return run_kernels(self, bind_for_triton(self.plan.ir, tensors, state, cu_seqlens, self.binder))

    def forward(self, call: Call, flat: list, needs_grad: bool):
        """The output, the final state and (when ``needs_grad``) each chunk's starting state."""
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[-1]
        K, V = self._dims(call)
        tiles = self.tiles(call)
        compute = call.compute_dtype
        n_chunks = triton.cdiv(call.T, tiles["CHUNK"])
        store = needs_grad
        device = call.device
        output = torch.full((call.B, call.T, call.NH, V), float("nan"), dtype=call.dtype, device=device)
        final = torch.full(initial.shape, float("nan"), dtype=compute, device=device)
        saved_shape = (call.B * call.NH, n_chunks, K, V) if store else (1,)
        saved = torch.empty(saved_shape, dtype=compute, device=device)
        grid, sizes, meta = _launch(call, tiles, K, V)
        dots = dot_constexprs(call, self.precision, self.kernels.forward_kernel)
        self.kernels.forward_kernel[grid](
            *inputs, *weights, initial, output, final, saved, *sizes, STORE_STATES=store, **meta, **dots
        )
        return [output], [final], [saved] if store else []

    def saved_like(self, call: Call, flat: list, needs_grad: bool) -> list:
        """A stand-in shaped like the chunk states :meth:`forward` saves; the number of chunks is
        data-dependent when the chunk length comes from a GPU tiling of symbolic sizes."""
        if not needs_grad:
            return []
        K, V = self._dims(call)
        sizes = (call.B, call.T, call.NH, K, V)
        if all(isinstance(n, int) for n in sizes):
            n_chunks = triton.cdiv(call.T, self.tiles(call)["CHUNK"])
        else:
            n_chunks = torch.library.get_ctx().new_dynamic_size()
        return [flat[-1].new_empty((call.B * call.NH, n_chunks, K, V), dtype=call.compute_dtype)]

    def backward(self, call: Call, flat: list, saved: list, d_outputs: list, d_finals: list) -> list:
        """Cotangents of inputs, weights and the initial state (a None cotangent counts as zero)."""
        ir = self.plan.ir
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[-1]
        (saved,) = saved
        K, V = self._dims(call)
        tiles = self.tiles(call)
        compute, device = call.compute_dtype, call.device
        (d_output,), (d_final,) = output_cotangents(call, ir, d_outputs), state_cotangents(d_finals, [initial])
        # gradients shared by the value blocks are added atomically: they start at zero
        d_in = [torch.zeros(x.shape, dtype=compute, device=device) for x in inputs]
        d_w = [torch.zeros(w.shape, dtype=compute, device=device) for w in weights]
        d_initial = torch.full(initial.shape, float("nan"), dtype=compute, device=device)
        grid, sizes, meta = _launch(call, tiles, K, V)
        dots = dot_constexprs(call, self.precision, self.kernels.backward_kernel)
        self.kernels.backward_kernel[grid](
            *inputs, *weights, saved, d_output, d_final, *d_in, *d_w, d_initial, *sizes, **meta, **dots
        )
        grads_in = [g.to(x.dtype) for g, x in zip(d_in, inputs)]
        grads_w = [g.to(w.dtype) for g, w in zip(d_w, weights)]
        return [*grads_in, *grads_w, d_initial]


def _launch(call: Call, tiles: dict, K: int, V: int) -> tuple[tuple, list, dict]:
    """Grid, size arguments and meta-parameters shared by the forward and backward kernels."""
    grid = (triton.cdiv(V, tiles["BV"]), call.B * call.NH)
    meta = {
        "COMPUTE": triton_dtype(call.compute_dtype),
        **{k: tiles[k] for k in ("CHUNK", "BK", "BV", "num_warps", "num_stages")},
    }
    return grid, [call.T, call.NH, K, V], meta
