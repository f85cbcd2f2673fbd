"""What every strategy's kernel launcher shares: flat arguments, GPU tilings, dtypes, cotangents.

Example:
    >>> import torch
    >>> from rnnc.compiler import lower_source
    >>> from rnnc.runtime.arguments import bind
    >>> ir = lower_source(open("examples/hgrn.rnn").read())
    >>> x = torch.zeros(2, 5, 1, 3)
    >>> call = bind(ir, {"x": x, "g": x}, None)
    >>> [tuple(t.shape) for t in flat_arguments(call, ir)], output_shape(call, ir.outputs[0])
    ([(2, 5, 1, 3), (2, 5, 1, 3), (2, 1, 3)], (2, 5, 1, 3))
"""

from __future__ import annotations

import contextvars
import functools
import hashlib

import torch
import triton

from rnnc import config
from rnnc.compiler import Plan
from rnnc.compiler.ir import IR
from rnnc.errors import InternalError
from rnnc.runtime.arguments import Call, bind
from rnnc.runtime.binding import ShapeBinder
from rnnc.runtime.custom_ops import flat_arguments, register  # noqa: F401 - flat_arguments: the launchers' layout
from rnnc.runtime.modules import load_module

DOT_MINIMUM = 16  # tl.dot needs every side of a tile to be at least 16
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float64: "float64"}


# the GPU a dry run (rnnc.runtime.dry_run) pretends to launch on: (GpuProfile, device name or None)
_DRY_RUN_TARGET: contextvars.ContextVar = contextvars.ContextVar("rnnc_dry_run_target", default=None)


def set_target(profile, device_name: str | None = None):
    """Make the launchers pick tilings as on ``profile`` (a GpuProfile) until :func:`reset_target`.

    ``device_name`` (a GPU's name as torch reports it) lets them use ``rnnc tune``'s winners measured
    there. Returns the token to reset with.

    Example:
        >>> from rnnc.constraints.profiles import load_profile
        >>> token = set_target(load_profile("a100")); dry_run_target()[0].name
        'a100'
        >>> reset_target(token); dry_run_target() is None
        True
    """
    return _DRY_RUN_TARGET.set((profile, device_name))


def reset_target(token) -> None:
    """Undo :func:`set_target`."""
    _DRY_RUN_TARGET.reset(token)


def dry_run_target():
    """(profile, device name) of the GPU a dry run pretends to launch on, or None."""
    return _DRY_RUN_TARGET.get()


class GeneratedKernels:
    """A cell's generated Triton module, rendered and loaded from the module cache.

    Each strategy's launcher subclasses it and sets ``strategy`` and ``render`` (Plan -> module
    with a ``text``); ``kernels`` is the imported module.
    """

    strategy = ""

    @staticmethod
    def render(plan: Plan):
        raise NotImplementedError

    def __init__(self, plan: Plan):
        self.plan = plan
        self.module = self.render(plan)
        try:
            self.kernels = load_module(self.module.text, f"{plan.ir.cell}_{self.strategy}")
        except SyntaxError as exc:  # rnnc wrote source that is not Python: its fault, never the user's
            raise InternalError(
                f"the generated {self.strategy} module of cell {plan.ir.cell} does not import ({exc.msg}, line "
                f"{exc.lineno} of {exc.filename}); please report it with the cell"
            ) from exc
        # what these kernels compute, for the custom ops (rnnc.runtime.custom_ops)
        self.token = f"{self.strategy}/{plan.ir.cell}/{hashlib.sha256(self.module.text.encode()).hexdigest()[:16]}"
        self.binder = ShapeBinder(plan.ir)  # binds calls without sympy (torch.compile traces it)
        register(self)
        # launch parameters fixed by the caller (rnnc tune, tests): they win over the tiling model
        self.pinned: dict = {}
        self.gpu = "auto"  # the profile the tiling model uses on a GPU: the live device's, or rnnc.compile's gpu
        self.precision = "ieee"  # float32 dots: "ieee" or "tf32" (rnnc.compile's precision=)
        self._model_tilings: dict = {}  # (shape, dtype) -> the tiling model's parameters
        self._tuning_ids: tuple | None = None  # what tuning entries of these kernels are filed under

    def model_params(self, call: Call) -> dict:
        """Launch parameters on a GPU (none in the interpreter): ``rnnc tune``'s cached winner for this
        call when there is one, else the tiling model's; the pinned ones on top.

        The model's answer is remembered per shape and dtype: solving it takes milliseconds, a
        launch microseconds.
        """
        if not on_gpu(call):
            return dict(self.pinned)
        params = tuned_params(self, call)
        if not params:
            target = dry_run_target()
            gpu = target[0].key() if target else self.gpu
            shape = (gpu, call.B, call.T, call.NH, tuple(sorted(call.dims.items())), call.dtype)
            if shape not in self._model_tilings:
                extra = (self.gpu,) if self.gpu != "auto" else ()  # the live device's unless rnnc.compile named one
                self._model_tilings[shape] = gpu_tiling(self.plan, call, *extra)
            params = self._model_tilings[shape]
        return {**params, **self.pinned}

    @property
    def source(self) -> str:
        """The generated module's text."""
        return self.module.text


def pow2_at_least(n: int, least: int = 1) -> int:
    """The smallest power of two that is >= n and >= least.

    Example:
        >>> pow2_at_least(24), pow2_at_least(3, DOT_MINIMUM), pow2_at_least(0)
        (32, 16, 1)
    """
    return max(least, triton.next_power_of_2(max(n, 1)))


def triton_runs_on(device: torch.device) -> bool:
    """Whether Triton kernels can take tensors on ``device``: CUDA, or the CPU under TRITON_INTERPRET=1.

    Example:
        >>> triton_runs_on(torch.device("meta"))
        False
    """
    return device.type == "cuda" or (device.type == "cpu" and config.triton_interpret())


def bind_for_triton(ir: IR, tensors: dict, state: dict | None, cu_seqlens=None, binder=None) -> Call:
    """:func:`rnnc.runtime.arguments.bind`, then a ValueError for tensors the kernels cannot read.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> x = torch.zeros(1, 2, 1, 3, device="meta")
        >>> try:
        ...     bind_for_triton(lower_source(open("examples/hgrn.rnn").read()), {"x": x, "g": x}, None)
        ... except ValueError as exc:
        ...     print(str(exc)[:72])
        cell hgrn: the Triton backend needs CUDA tensors (or CPU ones with TRITO
    """
    call = bind(ir, tensors, state, cu_seqlens, binder)
    if not triton_runs_on(call.device) and dry_run_target() is None:  # a dry run records, on meta tensors
        raise ValueError(
            f"cell {ir.cell}: the Triton backend needs CUDA tensors (or CPU ones with TRITON_INTERPRET=1), "
            f"has tensors on {call.device}; backend='reference' runs on any device"
        )
    return call


def on_gpu(call: Call) -> bool:
    """True when the call's kernels run compiled on a GPU (not in the interpreter), or a dry run pretends so."""
    return dry_run_target() is not None or (call.device.type == "cuda" and not config.triton_interpret())


def gpu_tiling(plan: Plan, call: Call, gpu: str = "auto") -> dict:
    """The tiling model's parameters for this call on GPU profile ``gpu`` (the live GPU's for ``auto``), or
    on a dry run's: those of the kernels that exist (``Tiling.launch_params``)."""
    from rnnc.constraints.tiling import solve_tiling

    shape = {"B": call.B, "T": call.T, "NH": call.NH, **call.dims}
    dtype = DTYPE_NAMES.get(call.dtype, "float32")
    target = dry_run_target()
    profile = target[0] if target else gpu
    return solve_tiling(plan, profile, shape, dtype, candidates=0, find_binding=False).launch_params


def tuned_params(kernels: GeneratedKernels, call: Call) -> dict | None:
    """``rnnc tune``'s winner for this call's GPU, cell, kernels, dtype and shape bucket, or None."""
    from rnnc.tuning_cache import TuningKey, shape_bucket, source_digest, winner

    if kernels._tuning_ids is None:  # plan.key() takes milliseconds: once per kernels
        kernels._tuning_ids = (kernels.plan.ir.cell, kernels.plan.key(), source_digest(kernels.source))
    target = dry_run_target()
    name = target[1] if target else device_name(call.device)
    if name is None:  # a dry run with no GPU named: the tiling model's answer
        return None
    shape = shape_bucket({"B": call.B, "T": call.T, "NH": call.NH, **call.dims})
    dtype = DTYPE_NAMES.get(call.dtype, "float32")
    return winner(TuningKey(name, *kernels._tuning_ids, dtype, shape))


@functools.lru_cache(maxsize=None)
def device_name(device: torch.device) -> str:
    """The GPU's name as torch reports it (``NVIDIA H100 80GB HBM3``): what tuning entries are filed under."""
    return torch.cuda.get_device_name(device)


def dot_constexprs(call: Call, precision: str = "ieee", kernel=None) -> dict:
    """``DOT_DTYPE`` and ``DOT_PRECISION`` (docs/decisions.md): 16-bit inputs meet at a ``tl.dot`` in their
    own dtype (tensor cores, float32 accumulation), others in the compute dtype with ``precision`` for
    float32 ("ieee" unless asked; fp32 ``tl.dot`` would default to TF32 on NVIDIA GPUs) and "ieee" for
    float64. Given a ``kernel``, only those of the two it declares.

    Example:
        >>> import torch, triton.language as tl
        >>> from types import SimpleNamespace as NS
        >>> dots = dot_constexprs(NS(dtype=torch.bfloat16, compute_dtype=torch.float32), "tf32")
        >>> dots["DOT_DTYPE"] == tl.bfloat16, dots["DOT_PRECISION"]
        (True, 'tf32')
        >>> float64 = NS(dtype=torch.float64, compute_dtype=torch.float64)
        >>> dot_constexprs(float64, "tf32", kernel=NS(arg_names=["DOT_PRECISION"]))
        {'DOT_PRECISION': 'ieee'}
    """
    import triton.language as tl

    sixteen_bit = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
    wanted = {
        "DOT_DTYPE": sixteen_bit.get(call.dtype) or triton_dtype(call.compute_dtype),
        "DOT_PRECISION": precision if call.compute_dtype == torch.float32 else "ieee",
    }
    if kernel is None:
        return wanted
    declared = set(getattr(kernel, "arg_names", ()))
    return {name: value for name, value in wanted.items() if name in declared}


def output_shape(call: Call, output) -> tuple[int, ...]:
    """[B, T, NH, *shape] of an emitted output."""
    return (call.B, call.T, call.NH, *call.shape_of(output.shape))


def triton_dtype(dtype: torch.dtype):
    """The Triton dtype kernels compute in for a torch compute dtype (float64 or float32)."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def output_cotangents(call: Call, ir: IR, grads) -> list[torch.Tensor]:
    """The outputs' incoming gradients in the compute dtype, zeros where autograd passed None."""
    compute = call.compute_dtype
    return [
        (
            g.to(compute) if g is not None else torch.zeros(output_shape(call, o), dtype=compute, device=call.device)
        ).contiguous()
        for g, o in zip(grads, ir.outputs)
    ]


def state_cotangents(grads, initial) -> list[torch.Tensor]:
    """The final states' incoming gradients, shaped and typed like the initial states."""
    return [(g if g is not None else torch.zeros_like(s)).to(s.dtype).contiguous() for g, s in zip(grads, initial)]


def leaf_gradient_buffers(tensors, dtype: torch.dtype) -> list[torch.Tensor]:
    """Zeroed gradient buffers in ``dtype``, one per tensor (kernels add into them)."""
    return [torch.zeros(t.shape, dtype=dtype, device=t.device) for t in tensors]
