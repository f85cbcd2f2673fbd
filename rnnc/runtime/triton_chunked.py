"""Running a chunked cell's Triton kernels: the scan stage before it (PyTorch), then the chunked stage.

:class:`ChunkedStage` launches one chunked stage's kernels on its leaves (inputs, weights, and the
old and new values of earlier components' states, in rnnc's layouts) and initial states. The forward
kernel walks the chunks of each (sequence, head, value block) in order and, when a gradient is
needed, stores each chunk's starting state (``[slots, NH, K, V]`` per state, one per chunk, not per
step); the backward kernel walks them in reverse from those. ``seq_starts`` (int64 ``[N + 1]``, the
cu_seqlens) runs N packed sequences of inputs ``[1, total, NH, ...]`` with states ``[N, NH, ...]``.

:class:`ChunkedKernels` is the cell's kernels object for ``rnnc.runtime.custom_ops`` (forward,
backward, saved_like; its kernels read ``cu_seqlens`` themselves).

Example (the interpreter runs it on CPU when TRITON_INTERPRET=1):
    >>> from rnnc.compiler import analyse_source
    >>> kernels = ChunkedKernels(analyse_source(open("examples/simple_gla.rnn").read()))
    >>> kernels.module.forward_args[-1], kernels.varlen
    ('saved_ptr_S', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
import triton

from rnnc import config
from rnnc.runtime.arguments import Call
from rnnc.runtime.binding import concrete_shape
from rnnc.runtime.chunked_math import log_floor
from rnnc.runtime.custom_ops import run_kernels
from rnnc.runtime.decay_guard import DecayGuard
from rnnc.runtime.launch import (
    DOT_MINIMUM,
    GeneratedKernels,
    bind_for_triton,
    dot_constexprs,
    dry_run_target,
    on_gpu,
    pow2_at_least,
    triton_dtype,
)
from rnnc.runtime.modules import load_module
from rnnc.runtime.scan_stage import ScanStage, scan_components
from rnnc.templates.chunked_codegen import ChunkedModule, render_chunked
from rnnc.templates.chunked_lines import value_space_whole

DIAGONAL_CHUNK = 16  # per-channel decays sum the pairs of a chunk's rows elementwise: cost grows as CHUNK^2
UNIT = 16  # a vector state's one value column, padded to the tl.dot minimum


@dataclass
class Shape:
    """The sizes of one call: batch rows B (1 when packed), time T, heads, sequences N, key and value sizes."""

    B: int
    T: int
    NH: int
    N: int
    K: int
    V: int
    dims: dict
    seq_starts: torch.Tensor | None
    dtype: torch.dtype
    compute: torch.dtype


class ChunkedStage:
    """The Triton kernels of one chunked stage, and the code that launches them."""

    def __init__(self, module: ChunkedModule, kernels=None):
        self.module = module
        self.spec = module.spec
        self.kernels = kernels if kernels is not None else load_module(module.text, f"{self.spec.cell}_chunked")

    @property
    def source(self) -> str:
        """The generated module's text."""
        return self.module.text

    @property
    def leaf_names(self) -> list[str]:
        """The leaves the kernels take, in argument order."""
        return [x.name for x in self.spec.leaves if x.role != "dim"]

    def sizes(self, dims: dict) -> tuple[int, int]:
        """(K, V) of the stage's states (V = 1 when every state is a vector); no sympy on a warm call."""
        value = (self.spec.value_dim,) if self.spec.value_dim is not None else (1,)
        return concrete_shape((self.spec.key_dim, *value), dims)

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
        chunk = max(DOT_MINIMUM, n_sub, pow2_at_least(int(params["CHUNK"])))
        if any(s.decay == "diagonal" for s in self.spec.states):
            chunk = max(DIAGONAL_CHUNK, n_sub)
        bv = v_pad if value_space_whole(self.spec) else max(DOT_MINIMUM, min(pow2_at_least(int(params["BV"])), v_pad))
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

    def _launch(self, shape: Shape, params, device) -> tuple[tuple, list, dict, dict]:
        """Grid, size arguments, constexprs and tiles shared by the forward and backward kernels."""
        tiles = self.tiles(shape.dims, params)
        grid = (triton.cdiv(shape.V, tiles["BV"]), shape.N * shape.NH)
        dims = [int(shape.dims[x.name]) for x in self.spec.leaves if x.role == "dim"]
        # 16-bit inputs meet at the dots in their own dtype (tensor cores), sums stay in COMPUTE
        call = SimpleNamespace(dtype=shape.dtype, compute_dtype=shape.compute)
        meta = {
            "COMPUTE": triton_dtype(shape.compute),
            **dot_constexprs(call, (params or {}).get("DOT_PRECISION", "ieee")),
            "FLOOR": log_floor(shape.compute),
            "VARLEN": shape.seq_starts is not None,
            **{k: tiles[k] for k in ("CHUNK", "STEPS", "N_SUB", "BK", "BV", "BU", "num_warps", "num_stages")},
        }
        starts = shape.seq_starts if shape.seq_starts is not None else torch.zeros(1, dtype=torch.int64, device=device)
        return grid, [starts.to(device=device, dtype=torch.int64), shape.T, shape.NH, *dims], meta, tiles

    def slots(self, shape: Shape, steps: int) -> int:
        """Chunk-start slots per head: B * chunks, or (packed) enough for every sequence's chunks."""
        if shape.seq_starts is None:
            return shape.B * triton.cdiv(shape.T, steps)
        return shape.T // steps + shape.N + 1

    def state_shape(self, s, shape: Shape) -> tuple[int, ...]:
        """A state's [N, NH, ...] shape in its declared orientation."""
        if s.vector:
            return (shape.N, shape.NH, shape.K)
        return (shape.N, shape.NH, shape.K, shape.V) if s.key_axis == 0 else (shape.N, shape.NH, shape.V, shape.K)

    def output_shape(self, out, shape: Shape) -> tuple[int, ...]:
        """An output's [B, T, NH, ...] shape."""
        return (shape.B, shape.T, shape.NH, *concrete_shape(tuple(out.shape), shape.dims))

    def forward(self, leaves: list, initial: list, shape: Shape, params, store: bool):
        """(outputs, finals, saved chunk-start states) in the spec's orders."""
        device = leaves[0].device
        grid, sizes, meta, tiles = self._launch(shape, params, device)
        nan = float("nan")
        outputs = [
            torch.full(self.output_shape(o, shape), nan, dtype=shape.dtype, device=device) for o in self.spec.outputs
        ]
        finals = [torch.full(s.shape, nan, dtype=shape.compute, device=device) for s in initial]
        slots = self.slots(shape, tiles["STEPS"]) if store else 1
        saved = [
            torch.empty(
                (slots, shape.NH, shape.K, 1 if s.vector else shape.V) if store else (1,),
                dtype=shape.compute,
                device=device,
            )
            for s in self.spec.states
        ]
        self.kernels.forward_kernel[grid](
            *leaves, *initial, *outputs, *finals, *saved, *sizes, STORE_STATES=store, **meta
        )
        return outputs, finals, saved

    def backward(self, leaves: list, saved: list, d_outputs: list, d_finals: list, shape: Shape, params):
        """(cotangents of the leaves, cotangents of the initial states); a None cotangent counts as zero."""
        device = leaves[0].device
        grid, sizes, meta, _ = self._launch(shape, params, device)
        d_outputs = [
            (g if g is not None else torch.zeros(self.output_shape(o, shape), device=device))
            .to(shape.compute)
            .contiguous()
            for g, o in zip(d_outputs, self.spec.outputs)
        ]
        shapes = [self.state_shape(s, shape) for s in self.spec.states]
        d_finals = [
            (g if g is not None else torch.zeros(sh, device=device)).to(shape.compute).contiguous()
            for g, sh in zip(d_finals, shapes)
        ]
        d_leaves = [torch.zeros(x.shape, dtype=shape.compute, device=device) for x in leaves]
        d_initial = [  # a vector state's cotangent is added by every value block; a matrix state's is stored
            torch.zeros(sh, dtype=shape.compute, device=device)
            if s.vector
            else torch.full(sh, float("nan"), dtype=shape.compute, device=device)
            for s, sh in zip(self.spec.states, shapes)
        ]
        align = bool((params or {}).get("ALIGN", False))  # products turned to the last one's orientation
        self.kernels.backward_kernel[grid](
            *leaves, *saved, *d_outputs, *d_finals, *d_leaves, *d_initial, *sizes, ALIGN=align, **meta
        )
        return d_leaves, d_initial


def align_products(call: Call) -> bool:
    """Whether backward computes the products across its last one's orientation as their transposes (the
    template's ALIGN): on NVIDIA GPUs before sm_90, where every chained product takes the last one's warps
    (sm_90 takes the tall state updates on warpgroup MMA, where turning the rest costs registers); never in
    the interpreter (a pinned ALIGN is honoured).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> align_products(NS(device=torch.device("cpu")))
        False
    """
    target = dry_run_target()
    if target is not None:
        profile = target[0]
        return profile.vendor == "nvidia" and int(profile.compute_capability.split(".")[0]) < 9
    if call.device.type != "cuda" or config.triton_interpret() or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(call.device)[0] < 9


class ChunkedKernels(GeneratedKernels):
    """A chunked cell's kernels: the scan stage before the chunked stage (if any) in PyTorch, then the chunked
    stage's Triton kernels, behind the kernel interface of ``rnnc.runtime.custom_ops``."""

    strategy = "chunked"
    varlen = True  # the kernels read cu_seqlens themselves (VARLEN)

    @staticmethod
    def render(plan) -> ChunkedModule:
        return render_chunked(plan)

    def __init__(self, plan):
        self.scan = ScanStage(plan) if scan_components(plan) else None  # components the chunked stage reads
        super().__init__(plan)
        self.stage = ChunkedStage(self.module, self.kernels)
        self.guard = DecayGuard(self.stage.spec)  # decays the analysis could not prove positive

    @property
    def kernels(self):
        """The imported module; setting it (a dry run's recorder, rnnc.runtime.dry_run) sets the stage's too."""
        return self._kernels

    @kernels.setter
    def kernels(self, module) -> None:
        self._kernels = module
        if getattr(self, "stage", None) is not None:
            self.stage.kernels = module

    def __call__(self, tensors: dict, state: dict | None, cu_seqlens=None):
        return run_kernels(self, bind_for_triton(self.plan.ir, tensors, state, cu_seqlens, self.binder))

    def tiles(self, call: Call) -> dict:
        """The launch parameters of a call (the tiling model's or tune's on a GPU, pinned ones everywhere)."""
        return self.stage.tiles(call.dims, self._params(call))

    def _params(self, call: Call) -> dict:
        params = self.model_params(call) if on_gpu(call) else dict(self.pinned)
        return {"ALIGN": align_products(call), **params, "DOT_PRECISION": self.precision}  # fp32 only: dot_constexprs

    def _shape(self, call: Call) -> Shape:
        K, V = self.stage.sizes(call.dims)
        starts = None if call.cu_seqlens is None else call.cu_seqlens.to(torch.int64)
        return Shape(call.B, call.T, call.NH, call.state_batch, K, V, call.dims, starts, call.dtype, call.compute_dtype)

    def _split(self, flat: list) -> tuple[dict, dict]:
        """The flat arguments as {leaf name: tensor} and {state name: initial value}."""
        ir = self.plan.ir
        n = len(ir.inputs) + len(ir.weights)
        leaves = dict(zip([d.name for d in (*ir.inputs, *ir.weights)], flat[:n]))
        return leaves, dict(zip([d.name for d in ir.states], flat[n:]))

    def _scan_values(self, call: Call, leaves: dict, initial: dict) -> tuple[dict, dict]:
        if self.scan is None:
            return {}, {}
        starts = None if call.cu_seqlens is None else call.cu_seqlens.to(torch.int64)
        return self.scan(leaves, initial, call.dims, starts)

    def forward(self, call: Call, flat: list, needs_grad: bool):
        """(outputs, finals, saved): the scan stage's values feed the chunked stage as per-step leaves."""
        leaves, initial = self._split(flat)
        with torch.no_grad():
            values, scan_finals = self._scan_values(call, leaves, initial)
        spec = self.stage.spec
        self.guard.refuse({**leaves, **values}, call.dims)  # the kernels take the decays' logs
        stage_leaves = [({**leaves, **values}[name]).contiguous() for name in self.stage.leaf_names]
        outputs, finals, saved = self.stage.forward(
            stage_leaves, [initial[s.name] for s in spec.states], self._shape(call), self._params(call), needs_grad
        )
        by_name = {o.name: x for o, x in zip(spec.outputs, outputs)}
        finals = {**scan_finals, **{s.name: x for s, x in zip(spec.states, finals)}}
        ir = self.plan.ir
        return [by_name[o.name] for o in ir.outputs], [finals[d.name] for d in ir.states], saved if needs_grad else []

    def saved_like(self, call: Call, flat: list, needs_grad: bool) -> list:
        """Stand-ins shaped like the chunk-start states :meth:`forward` saves (their count may be data-dependent)."""
        if not needs_grad:
            return []
        shape = self._shape(call)
        sizes = (shape.B, shape.T, shape.NH, shape.K, shape.V)
        if all(isinstance(n, int) for n in sizes):
            slots = self.stage.slots(shape, self.tiles(call)["STEPS"])
        else:
            slots = torch.library.get_ctx().new_dynamic_size()
        return [
            flat[-1].new_empty((slots, shape.NH, shape.K, 1 if s.vector else shape.V), dtype=call.compute_dtype)
            for s in self.stage.spec.states
        ]

    def backward(self, call: Call, flat: list, saved: list, d_outputs: list, d_finals: list) -> list:
        """Cotangents of inputs, weights and initial states; the scan stage's by replaying it under autograd."""
        ir, spec = self.plan.ir, self.stage.spec
        leaves, initial = self._split(flat)
        with torch.no_grad():
            values, _ = self._scan_values(call, leaves, initial)
        names = self.stage.leaf_names
        stage_leaves = [({**leaves, **values}[name]).contiguous() for name in names]
        out_index = {o.name: i for i, o in enumerate(ir.outputs)}
        state_index = {d.name: i for i, d in enumerate(ir.states)}
        d_leaves, d_initial = self.stage.backward(
            stage_leaves,
            saved,
            [d_outputs[out_index[o.name]] for o in spec.outputs],
            [d_finals[state_index[s.name]] for s in spec.states],
            self._shape(call),
            self._params(call),
        )
        grads = dict(zip(names, d_leaves))
        grads.update({s.name + "/initial": g for s, g in zip(spec.states, d_initial)})
        if self.scan is not None:
            self._scan_backward(
                call, leaves, initial, grads, {d.name: d_finals[state_index[d.name]] for d in ir.states}
            )
        result = [grads.get(d.name) for d in (*ir.inputs, *ir.weights)]
        result += [grads.get(d.name + "/initial") for d in ir.states]
        return [None if g is None else g.to(x.dtype) for g, x in zip(result, flat)]

    def _scan_backward(self, call: Call, leaves: dict, initial: dict, grads: dict, d_finals: dict) -> None:
        """Add the scan stage's share: its values' cotangents (from the chunked stage) back to the leaves."""
        from rnnc.errors import BackendError

        with torch.enable_grad():
            own = {k: v.detach().requires_grad_() for k, v in leaves.items()}
            start = {k: v.detach().requires_grad_() for k, v in initial.items() if k in self.scan.states}
            values, finals = self._scan_values(call, own, start)
            pairs = [(v, grads.pop(k)) for k, v in values.items() if grads.get(k) is not None]
            pairs += [(v, d_finals[k]) for k, v in finals.items() if d_finals.get(k) is not None]
            if not pairs:
                return
            if not all(value.requires_grad for value, _ in pairs):  # inside torch.compile's custom op
                raise BackendError(
                    f"cell {self.plan.ir.cell}: the backward of the scan stage before the chunked stage replays it "
                    "under autograd, which does not run inside torch.compile's custom op; run it eagerly"
                )
            wrt = [*own.values(), *start.values()]
            found = torch.autograd.grad(
                [v for v, _ in pairs], wrt, [g.to(v.dtype) for v, g in pairs], allow_unused=True
            )
        for name, g in zip([*own, *(k + "/initial" for k in start)], found):
            if g is not None:
                grads[name] = g if grads.get(name) is None else grads[name] + g.to(grads[name].dtype)
