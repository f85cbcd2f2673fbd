"""Running a chunked stage's Triton kernels, with a torch.autograd.Function around them.

:class:`ChunkedStage` runs one chunked stage on its leaves (inputs, weights, and the old and new
values of earlier components' states, all in rnnc's layouts) and initial states. The forward kernel
walks the chunks of each (sequence, head, value block) in order and, when a gradient is needed,
stores each chunk's starting state (``[slots, NH, K, V]`` per state, one per chunk, not per step); the
backward kernel walks them in reverse from those. ``seq_starts`` (int64 ``[N + 1]``, the cu_seqlens)
runs N packed sequences of inputs ``[1, total, NH, ...]`` with states ``[N, NH, ...]``.

Example (the interpreter runs it on CPU when TRITON_INTERPRET=1):
    >>> from rnnc.compiler import analyse_source
    >>> kernels = ChunkedKernels(analyse_source(open("examples/simple_gla.rnn").read()))
    >>> kernels.module.forward_args[-1]
    's0_S_saved_ptr'
"""

from __future__ import annotations

import sympy
import torch
import triton

from rnnc.runtime.arguments import Call, bind
from rnnc.runtime.chunked_math import log_floor
from rnnc.runtime.launch import DOT_MINIMUM, GeneratedKernels, on_gpu, pow2_at_least, triton_dtype
from rnnc.runtime.scan_stage import ScanStage, scan_components
from rnnc.templates.chunked_codegen import render_chunked
from rnnc.templates.chunked_lines import value_space_whole
from rnnc.templates.chunked_spec import ChunkedSpec, stage_spec

DIAGONAL_CHUNK = 16  # per-channel decays sum the pairs of a chunk's rows elementwise: cost grows as CHUNK^2
UNIT = 16  # a vector state's one value column, padded to the tl.dot minimum


class ChunkedStage:
    """The Triton kernels of one chunked stage, and the code that launches them."""

    def __init__(self, spec: ChunkedSpec, key: str):
        from rnnc.runtime.modules import load_module

        self.spec = spec
        self.module = render_chunked(spec, key)
        self.kernels = load_module(self.module.text, f"{spec.cell}_chunked")
        self.pinned: dict = {}
        self.model_params = lambda call: {}  # the tiling model's (or tune's) parameters on a GPU

    @property
    def source(self) -> str:
        """The generated module's text."""
        return self.module.text

    def sizes(self, dims: dict) -> tuple[int, int]:
        """(K, V) of the stage's states (V = 1 when every state is a vector)."""
        subs = {sympy.Symbol(k, positive=True, integer=True): v for k, v in dims.items()}
        K = int(sympy.sympify(self.spec.key_dim).subs(subs))
        V = int(sympy.sympify(self.spec.value_dim).subs(subs)) if self.spec.value_dim is not None else 1
        return K, V

    def tiles(self, dims: dict, params: dict | None = None) -> dict:
        """Launch parameters: the given (model's, tune's or pinned) ones where they apply, else small tiles.

        The key dimension is whole in one program (padded to a power of two): the reads and the
        corrections contract over all of it. So is the value dimension when a piece sums over it.

        Example:
            >>> from rnnc.compiler import analyse_source
            >>> kernels = ChunkedKernels(analyse_source(open("examples/gla.rnn").read()))
            >>> kernels.stage.tiles({"K": 24, "V": 40})
            {'CHUNK': 16, 'STEPS': 16, 'N_SUB': 1, 'BK': 32, 'BV': 64, 'BU': 16, 'num_warps': 4, 'num_stages': 1}
            >>> kernels.stage.tiles({"K": 24, "V": 40}, {"BV": 16, "CHUNK": 64})
            {'CHUNK': 16, 'STEPS': 16, 'N_SUB': 1, 'BK': 32, 'BV': 16, 'BU': 16, 'num_warps': 4, 'num_stages': 1}
        """
        K, V = self.sizes(dims)
        k_pad, v_pad = pow2_at_least(K, DOT_MINIMUM), pow2_at_least(V, DOT_MINIMUM)
        params = {"CHUNK": DOT_MINIMUM, "BV": v_pad, "num_warps": 4, "num_stages": 1, **(params or {})}
        n_sub = self.spec.n_sub
        chunk = max(DOT_MINIMUM, n_sub, int(params["CHUNK"]))
        if any(s.decay == "diagonal" for s in self.spec.states):
            chunk = max(DIAGONAL_CHUNK, n_sub)
        bv = v_pad if value_space_whole(self.spec) else max(DOT_MINIMUM, min(int(params["BV"]), v_pad))
        return {
            "CHUNK": chunk,
            "STEPS": chunk // n_sub,
            "N_SUB": n_sub,
            "BK": k_pad,
            "BV": bv,
            "BU": UNIT,
            "num_warps": params["num_warps"],
            "num_stages": params["num_stages"],
        }

    def __call__(self, leaves: dict, initial: dict, dims: dict, seq_starts: torch.Tensor | None = None, params=None):
        """(outputs, finals): leaves in rnnc's layouts by name, initial states by name (zeros when missing)."""
        spec = self.spec
        flat = [leaves[x.name].contiguous() for x in spec.leaves if x.role != "dim"]
        like = next(leaves[x.name] for x in spec.leaves if x.role in ("input", "earlier"))
        B, T, NH = like.shape[:3]
        N = B if seq_starts is None else seq_starts.numel() - 1
        compute = torch.float64 if like.dtype == torch.float64 else torch.float32
        K, V = self.sizes(dims)
        states = []
        for s in spec.states:
            shape = (N, NH, K) if s.vector else ((N, NH, K, V) if s.key_axis == 0 else (N, NH, V, K))
            given = initial.get(s.name)
            states.append(
                given.to(compute).contiguous()
                if given is not None
                else torch.zeros(shape, dtype=compute, device=like.device)
            )
        shape = _Shape(B, T, NH, N, K, V, dims, seq_starts, like.dtype, compute)
        results = _ChunkedFunction.apply(self, shape, params, *flat, *states)
        n_out = len(spec.outputs)
        outputs = {o.name: r for o, r in zip(spec.outputs, results[:n_out])}
        finals = {s.name: r for s, r in zip(spec.states, results[n_out:])}
        return outputs, finals


class _Shape:
    """The sizes of one call."""

    def __init__(self, B, T, NH, N, K, V, dims, seq_starts, dtype, compute):
        self.B, self.T, self.NH, self.N, self.K, self.V = B, T, NH, N, K, V
        self.dims, self.seq_starts, self.dtype, self.compute = dims, seq_starts, dtype, compute


def _launch(stage: ChunkedStage, shape: _Shape, params) -> tuple[tuple, list, dict, dict]:
    """Grid, size arguments, constexprs and tiles shared by the forward and backward kernels."""
    tiles = stage.tiles(shape.dims, params)
    grid = (triton.cdiv(shape.V if stage.spec.value_dim is not None else 1, tiles["BV"]), shape.N * shape.NH)
    dims = [int(shape.dims[x.name]) for x in stage.spec.leaves if x.role == "dim"]
    sixteen = {torch.bfloat16, torch.float16}
    import triton.language as tl

    meta = {
        "COMPUTE": triton_dtype(shape.compute),
        "DOT_DTYPE": {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(shape.dtype)
        if shape.dtype in sixteen
        else triton_dtype(shape.compute),
        "DOT_PRECISION": "ieee",
        "FLOOR": log_floor(shape.compute),
        "VARLEN": shape.seq_starts is not None,
        **{k: tiles[k] for k in ("CHUNK", "STEPS", "N_SUB", "BK", "BV", "BU", "num_warps", "num_stages")},
    }
    starts = shape.seq_starts if shape.seq_starts is not None else torch.zeros(1, dtype=torch.int64)
    return grid, [starts.to(device=_device(stage, shape), dtype=torch.int64), shape.T, shape.NH, *dims], meta, tiles


def _device(stage, shape) -> torch.device:
    return shape.seq_starts.device if shape.seq_starts is not None else torch.device("cpu")


def _slots(shape: _Shape, steps: int) -> int:
    """Chunk-start slots per head: B * chunks, or (varlen) enough for every sequence's chunks."""
    if shape.seq_starts is None:
        return shape.B * triton.cdiv(shape.T, steps)
    return shape.B * shape.T // steps + shape.N + 1


class _ChunkedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, stage: ChunkedStage, shape: _Shape, params, *flat):
        spec = stage.spec
        n_leaves = len([x for x in spec.leaves if x.role != "dim"])
        leaves, initial = flat[:n_leaves], flat[n_leaves:]
        device = leaves[0].device
        grid, sizes, meta, tiles = _launch(stage, shape, params)
        sizes[0] = sizes[0].to(device)
        store = any(ctx.needs_input_grad[3:])
        outputs = [
            torch.full(
                (shape.B, shape.T, shape.NH, *_shape_of(o.shape, shape.dims)),
                float("nan"),
                dtype=shape.dtype,
                device=device,
            )
            for o in spec.outputs
        ]
        finals = [torch.full(s.shape, float("nan"), dtype=shape.compute, device=device) for s in initial]
        slots = _slots(shape, tiles["STEPS"]) if store else 1
        saved = [
            torch.empty(
                (slots, shape.NH, shape.K, 1 if s.vector else shape.V) if store else (1,),
                dtype=shape.compute,
                device=device,
            )
            for s in spec.states
        ]
        stage.kernels.forward_kernel[grid](
            *leaves, *initial, *outputs, *finals, *saved, *sizes, STORE_STATES=store, **meta
        )
        ctx.stage, ctx.shape, ctx.params = stage, shape, params
        ctx.save_for_backward(*leaves, *saved)
        return (*outputs, *finals)

    @staticmethod
    def backward(ctx, *grads):
        stage, shape = ctx.stage, ctx.shape
        spec = stage.spec
        n_out = len(spec.outputs)
        saved_tensors = ctx.saved_tensors
        n_leaves = len(saved_tensors) - len(spec.states)
        leaves, saved = saved_tensors[:n_leaves], saved_tensors[n_leaves:]
        device = leaves[0].device
        grid, sizes, meta, _ = _launch(stage, shape, ctx.params)
        sizes[0] = sizes[0].to(device)
        d_outputs = [
            (
                g
                if g is not None
                else torch.zeros((shape.B, shape.T, shape.NH, *_shape_of(o.shape, shape.dims)), device=device)
            )
            .to(shape.compute)
            .contiguous()
            for g, o in zip(grads[:n_out], spec.outputs)
        ]
        state_shapes = [_state_shape(s, shape) for s in spec.states]
        d_finals = [
            (g if g is not None else torch.zeros(sh, device=device)).to(shape.compute).contiguous()
            for g, sh in zip(grads[n_out:], state_shapes)
        ]
        d_leaves = [torch.zeros(x.shape, dtype=shape.compute, device=device) for x in leaves]
        d_initial = [
            (torch.zeros if s.vector else torch.full)(
                sh, *(() if s.vector else (float("nan"),)), dtype=shape.compute, device=device
            )
            for s, sh in zip(spec.states, state_shapes)
        ]
        stage.kernels.backward_kernel[grid](
            *leaves, *saved, *d_outputs, *d_finals, *d_leaves, *d_initial, *sizes, **{k: v for k, v in meta.items()}
        )
        grads_leaves = [g.to(x.dtype) for g, x in zip(d_leaves, leaves)]
        return (None, None, None, *grads_leaves, *d_initial)


def _packed_states(ir, call: Call, states: dict, seq_starts: torch.Tensor) -> dict:
    """Initial states of N packed sequences, checked: ``[N, NH, *shape]`` each."""
    if call.B != 1:
        raise ValueError(f"packed sequences (seq_starts) need inputs [1, total, NH, ...], has batch {call.B}")
    if seq_starts.dim() != 1 or seq_starts.numel() < 2 or int(seq_starts[-1]) != call.T or int(seq_starts[0]) != 0:
        raise ValueError(
            f"seq_starts needs [N + 1] offsets from 0 to the packed length {call.T}, has {seq_starts.tolist()}"
        )
    n = seq_starts.numel() - 1
    declared = {d.name: d for d in ir.states}
    for name, value in states.items():
        if name not in declared:
            raise ValueError(f"cell {ir.cell} has no state {name!r}")
        expected = (n, call.NH, *call.shape_of(declared[name].shape))
        if tuple(value.shape) != expected:
            raise ValueError(f"{name}: packed sequences need initial states {list(expected)}, has {list(value.shape)}")
    return dict(states)


def _shape_of(shape, dims: dict) -> tuple[int, ...]:
    subs = {sympy.Symbol(k, positive=True, integer=True): v for k, v in dims.items()}
    return tuple(int(sympy.sympify(d).subs(subs)) for d in shape)


def _state_shape(s, shape: _Shape) -> tuple[int, ...]:
    if s.vector:
        return (shape.N, shape.NH, shape.K)
    return (shape.N, shape.NH, shape.K, shape.V) if s.key_axis == 0 else (shape.N, shape.NH, shape.V, shape.K)


class ChunkedKernels(GeneratedKernels):
    """A chunked cell's Triton kernels, called like the other strategies' (tensors, state) -> (outputs, finals)."""

    strategy = "chunked"

    def __init__(self, plan):
        self.plan = plan
        spec = stage_spec(plan)
        self.scan = ScanStage(plan) if scan_components(plan) else None  # components the chunked stage reads
        self.stage = ChunkedStage(spec, plan.key())
        self.module = self.stage.module
        self.kernels = self.stage.kernels
        self.pinned: dict = {}
        self._model_tilings: dict = {}
        self._tuning_ids = None

    def __call__(self, tensors: dict, state: dict | None, seq_starts: torch.Tensor | None = None):
        """(outputs, finals) of one call; with ``seq_starts`` ([N + 1]), inputs ``[1, total, NH, ...]`` hold
        N packed sequences and the initial (and final) states are ``[N, NH, ...]``."""
        if seq_starts is None:
            call = bind(self.plan.ir, tensors, state)
        else:
            call = bind(self.plan.ir, tensors, None)
            call.states = _packed_states(self.plan.ir, call, state or {}, seq_starts)
        leaves = {**call.inputs, **call.weights}
        params = {**(self.model_params(call) if on_gpu(call) else {}), **self.pinned}
        finals = {}
        if self.scan is not None:
            values, finals = self.scan(leaves, call.states, call.dims, seq_starts)
            leaves.update(values)
        outputs, own = self.stage(leaves, call.states, call.dims, seq_starts=seq_starts, params=params)
        return outputs, {**finals, **own}

    def tiles(self, call: Call) -> dict:
        """The launch parameters of a call."""
        params = {**(self.model_params(call) if on_gpu(call) else {}), **self.pinned}
        return self.stage.tiles(call.dims, params)
