"""Running the scan strategy's Triton kernels, with a torch.autograd.Function around them.

:class:`ScanStageKernels` runs one scan stage of a Plan: a whole scan cell, or the scan stage
that a chunked cell runs before its chunked stage (the stabilised mLSTM's running maximum
``m``). :meth:`ScanStageKernels.run` returns the stage's outputs, the per-step values of the
states it carries to a later stage (``[B, T, NH, *shape]``: the new value at every step) and
its final states, all connected to autograd: the cotangents of the carried values flow back
into the scan's reverse pass. :func:`previous_values` turns a carried trajectory into the
previous value at every step, which a later stage reads as ``s`` (the trajectory is ``s'``).

A whole scan cell runs through the kernel interface of :mod:`rnnc.runtime.custom_ops`
(``forward``, ``backward``, ``saved_like``; one custom op under ``torch.compile``).
Variable-length batches: the kernels read ``cu_seqlens`` themselves (``varlen``): with
``[N + 1]`` offsets the inputs are packed ``[1, total_T, NH, *shape]`` and initial and final
states are ``[N, NH, *shape]``; each sequence runs from its own initial state.

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

from rnnc.runtime.arguments import Call, bind  # noqa: F401 - bind: the doctests bind calls
from rnnc.runtime.custom_ops import run_kernels
from rnnc.runtime.launch import GeneratedKernels, bind_for_triton, on_gpu, output_shape, pow2_at_least, triton_dtype
from rnnc.runtime.scan_around import AroundScan, pullback
from rnnc.runtime.varlen import sequence_bounds
from rnnc.templates.scan_codegen import render_scan, scan_stage

STAGE_TILES = {"BLOCK_C": 256, "BLOCK_T": 32, "num_warps": 4}  # a scan stage before another strategy, on a GPU
TILE_KEYS = ("BLOCK_C", "BLOCK_T", "num_warps", "num_stages")


def _interpreter_tiles(call: Call, sizes: tuple[int, ...]) -> dict:
    """Small power-of-two tiles for the interpreter, which runs programs one at a time.

    Up to 1024 entries per program: one program then owns all of Mamba's D = 64, N = 16,
    so B and C are read once per step (a program that owns a block of D re-reads them).
    Chunks of 16 steps, longer beyond 4096 steps so that there are at most 256 chunks: the
    interpreter's cost is per operation (Mamba at T = 65,536: 16 steps a chunk take 4 times as
    long as 256)."""
    rest = math.prod(pow2_at_least(n) for n in sizes[1:])
    block_first = min(pow2_at_least(sizes[0] if sizes else 1), max(1, 1024 // rest))
    block_t = min(pow2_at_least(call.T), max(16, min(256, pow2_at_least(call.T) // 256)))
    return {"BLOCK_C": block_first * rest, "BLOCK_T": max(block_t, 2), "num_warps": 4}


def axis_blocks(module, sizes: tuple[int, ...], block_c: int) -> dict:
    """BLOCK_<axis> of each tile axis from the tiling's BLOCK_C (entries per program).

    A program owns every entry of the axes but the parallel one (padded to powers of two) and
    as many entries of the parallel axis as BLOCK_C leaves room for, at least one.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> module = render_scan(analyse_source(open("examples/mamba.rnn").read()))
        >>> axis_blocks(module, (24, 16), 512)
        {'BLOCK_ax0': 32, 'BLOCK_ax1': 16}
    """
    blocks = {a.block: pow2_at_least(n) for a, n in zip(module.axes, sizes)}
    if module.parallel is not None:
        rest = math.prod(b for i, b in enumerate(blocks.values()) if i != module.parallel)
        axis = module.axes[module.parallel]
        blocks[axis.block] = min(blocks[axis.block], pow2_at_least(max(1, block_c // rest)))
    return blocks


class ScanStageKernels(GeneratedKernels):
    """The generated kernels of one scan stage of a Plan (by default the cell's only stage)."""

    strategy = "scan"
    varlen = True  # the kernels read cu_seqlens (seq_starts) themselves

    def __init__(self, plan, stage=None):
        self.stage = scan_stage(plan, stage)
        super().__init__(plan)

    def render(self, plan):
        """The stage's module, and the PyTorch around it (hoisted reductions, post outputs)."""
        module = render_scan(plan, self.stage)
        self.around = AroundScan(plan, module)
        return module

    @property
    def output_names(self) -> list[str]:
        """The stage's outputs, in the cell's order: the kernels' and the post outputs."""
        return [name for name, _ in self.stage.output_exprs]

    def tiles(self, call: Call, sizes: tuple[int, ...]) -> dict:
        """Launch parameters: on a GPU the tiling model's choice (or ``rnnc tune``'s winner), in the
        interpreter small tiles; pinned ones (``Cell.use_tiling``) on top of either.

        Example:
            >>> import torch
            >>> from rnnc.compiler import analyse_source
            >>> kernels = ScanKernels(analyse_source(open("examples/hgrn.rnn").read()))
            >>> x = torch.zeros(1, 40, 1, 24)
            >>> call = bind(kernels.plan.ir, {"x": x, "g": x}, None)
            >>> kernels.tiles(call, (24,))
            {'BLOCK_C': 32, 'BLOCK_T': 16, 'num_warps': 4, 'num_stages': 1}
            >>> kernels.pinned = {"BLOCK_T": 8, "num_warps": 8}; kernels.tiles(call, (24,))
            {'BLOCK_C': 32, 'BLOCK_T': 8, 'num_warps': 8, 'num_stages': 1}
        """
        if self.plan.strategy != "scan":  # the tiling model and the pins are the later stage's
            base = STAGE_TILES if on_gpu(call) else _interpreter_tiles(call, sizes)
            return {**base, "num_stages": 1}
        tiles = {"num_stages": 1} if on_gpu(call) else {**_interpreter_tiles(call, sizes), "num_stages": 1}
        tiles.update({k: v for k, v in self.model_params(call).items() if k in TILE_KEYS})
        return tiles

    def sizes(self, call: Call) -> tuple[int, ...]:
        """The length of each tile axis for a call."""
        return call.shape_of(tuple(a.dim for a in self.module.axes))

    def run(self, call: Call, flat: list[torch.Tensor]):
        """(outputs, carried trajectories, final states), each a dict by name; autograd flows through all.

        ``flat`` holds every input and weight of the cell (in declaration order) and the initial
        states of the stage's states (:meth:`flat_arguments`); a packed call (``call.cu_seqlens``)
        runs each sequence from its own initial state.
        """
        module = self.module
        results = _ScanFunction.apply(self, call, *flat)
        n_out, n_st = len(module.outputs), len(module.states)
        outputs = dict(zip(module.outputs, results[:n_out]))
        finals = dict(zip(module.states, results[n_out : n_out + n_st]))
        carried = dict(zip(module.carries, results[n_out + n_st :]))
        return outputs, carried, finals

    def flat_arguments(self, call: Call) -> list[torch.Tensor]:
        """Inputs, weights (contiguous) and the stage's initial states (compute dtype; zeros where not given)."""
        ir = self.plan.ir
        flat = [call.inputs[d.name].contiguous() for d in ir.inputs]
        flat += [call.weights[d.name].contiguous() for d in ir.weights]
        decls = {d.name: d for d in ir.states}
        for s in self.module.states:
            given = call.states.get(s)
            shape = (call.state_batch, call.NH, *call.own_shape(decls[s]))
            flat.append(
                given.to(call.compute_dtype).contiguous()
                if given is not None
                else torch.zeros(shape, dtype=call.compute_dtype, device=call.device)
            )
        return flat

    def _launch(self, call: Call):
        """(tile sizes, launch parameters, BLOCK_<axis>, grid rows per sequence and head) of a call."""
        module = self.module
        sizes = self.sizes(call)
        tiles = self.tiles(call, sizes)
        blocks = axis_blocks(module, sizes, tiles["BLOCK_C"])
        parallel = module.axes[module.parallel] if module.parallel is not None else None
        programs = triton.cdiv(sizes[module.parallel], blocks[parallel.block]) if parallel is not None else 1
        scalars = [*sizes, *(call.dims[d] for d in module.dims_read)]
        return tiles, blocks, programs, scalars

    def saved_like(self, call: Call, flat: list, needs_grad: bool) -> list:
        """Empty tensors shaped like what :meth:`forward` saves: every step's value of each state."""
        if not (needs_grad or self.module.carries):
            return []
        decls = {d.name: d for d in self.plan.ir.states}
        shapes = [(call.B, call.T, call.NH, *call.shape_of(decls[s].shape)) for s in self.module.states]
        return [flat[0].new_empty(shape, dtype=call.compute_dtype) for shape in shapes]

    def forward(self, call: Call, flat: list, needs_grad: bool):
        """(outputs, finals, saved): ``saved`` holds every step's new value of each state (the carried
        trajectories among them), written when a gradient is wanted or a later stage reads them."""
        module, ir = self.module, self.plan.ir
        tiles, blocks, programs, scalars = self._launch(call)
        compute = call.compute_dtype
        store = needs_grad or bool(module.carries)
        seq = _offsets(call)
        sequences = call.state_batch
        outs = {o.name: o for o in ir.outputs}
        outputs = [torch.full(output_shape(call, outs[o]), float("nan"), dtype=call.dtype, device=call.device)
                   for o in module.outputs]  # fmt: skip
        initial = flat[len(ir.inputs) + len(ir.weights) :]
        finals = [torch.full(s.shape, float("nan"), dtype=compute, device=call.device) for s in initial]
        saved = self.saved_like(call, flat, needs_grad) if store else []
        placeholder = _placeholder(call.device)
        seq_arg = seq if seq is not None else placeholder
        saved_args = saved or [placeholder] * len(initial)
        self.kernels.forward_kernel[(programs, sequences * call.NH)](
            *self.around.arguments(call, flat), *outputs, *finals, *saved_args, seq_arg, call.T, call.NH, *scalars,
            COMPUTE=triton_dtype(compute), **blocks, BLOCK_T=tiles["BLOCK_T"], STORE_STATES=store,
            VARLEN=seq is not None, num_warps=tiles.get("num_warps", 4), num_stages=tiles["num_stages"],
        )  # fmt: skip
        values = dict(zip(module.outputs, outputs))
        if module.post:
            n_in, n_w = len(ir.inputs), len(ir.weights)
            news = {s: saved[module.states.index(s)] for s in module.carries}
            firsts = dict(zip(module.states, initial))
            with torch.no_grad():
                post = self.around.post(call, flat[:n_in], flat[n_in : n_in + n_w], news, firsts)
            values.update(zip([name for name, _ in module.post], post))
        return [values[name] for name in self.output_names], finals, saved

    def backward(self, call: Call, flat: list, saved: list, d_outputs: list, d_finals: list, d_carried=()):
        """Cotangents of every flat argument (inputs, weights, initial states); a None cotangent is zero."""
        module, ir = self.module, self.plan.ir
        tiles, blocks, programs, scalars = self._launch(call)
        compute = call.compute_dtype
        n_in, n_w = len(ir.inputs), len(ir.weights)
        inputs, weights, initial = flat[:n_in], flat[n_in : n_in + n_w], flat[n_in + n_w :]
        seq = _offsets(call)
        sequences = call.state_batch

        def cotangent(g, shape):
            zeros = g is None
            return (torch.zeros(shape, dtype=compute, device=call.device) if zeros else g.to(compute)).contiguous()

        outs = {o.name: o for o in ir.outputs}
        d_named = dict(zip(self.output_names, d_outputs))
        d_out = [cotangent(d_named.get(o), output_shape(call, outs[o])) for o in module.outputs]
        d_fin = [cotangent(g, s.shape) for g, s in zip(d_finals, initial)]
        carried = [saved[module.states.index(s)] for s in module.carries]
        d_traj = [cotangent(g, x.shape) for g, x in zip([*d_carried, *[None] * len(carried)], carried)]
        extra = [None] * (n_in + n_w + len(initial))  # what the post outputs add to the flat arguments' cotangents
        d_post = [d_named.get(name) for name, _ in module.post]
        if any(g is not None for g in d_post):
            n_st = len(initial)

            def post(*tensors):
                ins, ws, firsts = tensors[:n_in], tensors[n_in : n_in + n_w], tensors[n_in + n_w : n_in + n_w + n_st]
                news = dict(zip(module.carries, tensors[n_in + n_w + n_st :]))
                return self.around.post(call, ins, ws, news, dict(zip(module.states, firsts)))

            found = pullback(post, [*inputs, *weights, *initial, *carried], d_post)
            extra = found[: n_in + n_w + n_st]
            for acc, g in zip(d_traj, found[n_in + n_w + n_st :]):
                if g is not None:
                    acc += g.to(compute)
        arguments = self.around.arguments(call, flat)  # with the hoisted reductions
        n_pre = len(arguments) - len(flat)
        n_pre_in = sum(h.kind == "input" for h in module.hoisted)
        leaves = arguments[: n_in + n_pre_in], arguments[n_in + n_pre_in : n_in + n_w + n_pre]
        d_in = [torch.zeros(x.shape, dtype=compute, device=x.device) for x in leaves[0]]
        d_w = [torch.zeros(w.shape, dtype=compute, device=w.device) for w in leaves[1]]
        d_st = [torch.full(s.shape, float("nan"), dtype=compute, device=s.device) for s in initial]
        seq_arg = seq if seq is not None else _placeholder(call.device)
        self.kernels.backward_kernel[(programs, sequences * call.NH)](
            *arguments[: n_in + n_w + n_pre], *initial, *saved, *d_out, *d_fin, *d_traj, *d_in, *d_w, *d_st,
            seq_arg, call.T, call.NH, *scalars,
            COMPUTE=triton_dtype(compute), **blocks, BLOCK_T=tiles["BLOCK_T"], VARLEN=seq is not None,
            num_warps=tiles.get("num_warps", 4), num_stages=tiles["num_stages"],
        )  # fmt: skip
        if n_pre:  # the hoisted reductions' cotangents go back through their PyTorch form

            def hoisted(*tensors):
                per_step, static = self.around.hoisted(call, tensors[:n_in], tensors[n_in:])
                return [*per_step, *static]

            found = pullback(hoisted, [*inputs, *weights], [*d_in[n_in:], *d_w[n_w:]])
            for acc, g in zip([*d_in[:n_in], *d_w[:n_w]], found):
                if g is not None:
                    acc += g.to(compute)
        mine = [*d_in[:n_in], *d_w[:n_w], *d_st]
        total = [g if e is None else g + e.to(compute) for g, e in zip(mine, extra)]
        return [g.to(x.dtype) for g, x in zip(total, flat)]

    def __call__(self, tensors: dict, state: dict | None, cu_seqlens=None):
        return run_kernels(self, bind_for_triton(self.plan.ir, tensors, state, cu_seqlens, self.binder))


class ScanKernels(ScanStageKernels):
    """The kernels of a scan cell (its one stage)."""


def _offsets(call: Call) -> torch.Tensor | None:
    """The call's cu_seqlens, their values checked (the kernels trust them), or None."""
    if call.cu_seqlens is None:
        return None
    sequence_bounds(call.cu_seqlens, call.T)
    return call.cu_seqlens.contiguous()


def previous_values(trajectory: torch.Tensor, initial: torch.Tensor, cu_seqlens=None) -> torch.Tensor:
    """The previous value at every step, from the new values ``[B, T, NH, *shape]`` and the initial states.

    Example:
        >>> new = torch.arange(1.0, 5.0).reshape(1, 4, 1)
        >>> previous_values(new, torch.zeros(1, 1))[0, :, 0].tolist()
        [0.0, 1.0, 2.0, 3.0]
        >>> previous_values(new, torch.tensor([[9.0], [7.0]]), torch.tensor([0, 1, 4]))[0, :, 0].tolist()
        [9.0, 7.0, 2.0, 3.0]
    """
    if cu_seqlens is None:
        return torch.cat([initial.unsqueeze(1).to(trajectory.dtype), trajectory[:, :-1]], dim=1)
    starts = cu_seqlens[:-1].to(device=trajectory.device, dtype=torch.int64)
    lengths = cu_seqlens[1:].to(device=trajectory.device, dtype=torch.int64) - starts
    shifted = torch.cat([trajectory[:, :1], trajectory[:, :-1]], dim=1)
    first = torch.zeros(trajectory.shape[1], dtype=torch.bool, device=trajectory.device)
    first[starts[lengths > 0]] = True
    which = torch.cumsum(first.long(), 0) - 1  # the sequence of each row
    firsts = initial[torch.nonzero(lengths > 0).flatten()][which.clamp(min=0)].to(trajectory.dtype).unsqueeze(0)
    mask = first.reshape(1, -1, *([1] * (trajectory.dim() - 2)))
    return torch.where(mask, firsts, shifted)


def _placeholder(device: torch.device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.int64, device=device)


class _ScanFunction(torch.autograd.Function):
    """Autograd around :meth:`ScanStageKernels.forward` and :meth:`ScanStageKernels.backward`,
    with the carried trajectories as results too (what a later stage reads)."""

    @staticmethod
    def forward(ctx, kernels: ScanStageKernels, call: Call, *flat):
        needs_grad = any(ctx.needs_input_grad[2:])
        outputs, finals, saved = kernels.forward(call, list(flat), needs_grad)
        ctx.kernels, ctx.call, ctx.n_out, ctx.n_flat = kernels, call, len(outputs), len(flat)
        ctx.save_for_backward(*flat, *saved)
        carried = [saved[kernels.module.states.index(s)] for s in kernels.module.carries]
        return (*outputs, *finals, *carried)

    @staticmethod
    def backward(ctx, *grads):
        kernels, n_out, n_fin = ctx.kernels, ctx.n_out, len(ctx.kernels.module.states)
        tensors = ctx.saved_tensors
        flat, saved = list(tensors[: ctx.n_flat]), list(tensors[ctx.n_flat :])
        d_outputs, d_finals, d_carried = grads[:n_out], grads[n_out : n_out + n_fin], grads[n_out + n_fin :]
        result = kernels.backward(ctx.call, flat, saved, list(d_outputs), list(d_finals), list(d_carried))
        return (None, None, *result)
