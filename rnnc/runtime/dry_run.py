"""Dry runs: what a cell's kernels would be launched with on a GPU, recorded instead of launched.

Inside :func:`dry_run` the launchers behave as on a GPU of the given profile (the tiling model's
parameters for that profile, ``rnnc tune``'s winner when a device name is given, pinned ones on
top) and every ``kernel[grid](...)`` is recorded as a :class:`Launch`: the kernel, its positional
arguments (tensors and integers), its constexprs and ``num_warps``/``num_stages``. Meta tensors
stand in for the data, so nothing is allocated; :mod:`rnnc.inspect` compiles what was recorded.
With ``launch=True`` the kernels run too (the interpreter on CPU), which shows the parameters a
real call used.

Example:
    >>> import torch
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.runtime.triton_scan import ScanKernels
    >>> kernels = ScanKernels(analyse_source(open("examples/hgrn.rnn").read()))
    >>> launches = record_launches(kernels, "h100", {"B": 8, "T": 2048, "NH": 1, "D": 1024}, "bfloat16")
    >>> [(launch.name, launch.count) for launch in launches]
    [('forward_kernel', 1), ('backward_kernel', 1)]
    >>> sorted(k for k in launches[0].meta if k.startswith("BLOCK"))
    ['BLOCK_T', 'BLOCK_ax0']
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rnnc.runtime import launch as launch_state
from rnnc.runtime.modules import load_compiled_module

TORCH_DTYPES = {name: getattr(torch, name) for name in ("bfloat16", "float16", "float32", "float64")}
OPTIONS = ("num_warps", "num_stages")  # launch options, not constexprs


@dataclass
class Launch:
    """One kernel as the launcher called it (identical calls are counted, not repeated)."""

    name: str
    kernel: object  # the kernel object of the module the launcher used
    args: tuple  # positional arguments: tensors and integers
    meta: dict  # keyword arguments: constexprs, num_warps, num_stages
    grid: tuple
    count: int = 1

    @property
    def options(self) -> dict:
        """``num_warps`` and ``num_stages`` as launched (absent ones are Triton's defaults)."""
        return {k: self.meta[k] for k in OPTIONS if k in self.meta}

    @property
    def constexprs(self) -> dict:
        """The keyword constexprs as launched, named."""
        return {k: v for k, v in self.meta.items() if k not in OPTIONS}

    def signature_key(self) -> tuple:
        """What makes two launches compile to the same kernel, up to Triton's value specialisation."""
        args = tuple(_arg_key(a) for a in self.args)
        return (self.name, args, tuple(sorted((k, repr(v)) for k, v in self.meta.items())))


def _arg_key(arg) -> object:
    if isinstance(arg, torch.Tensor):
        return ("tensor", str(arg.dtype))
    if isinstance(arg, bool):
        return ("bool", arg)
    if isinstance(arg, int):
        return ("int", "i64" if abs(arg) >= 2**31 else "i32")
    return ("value", repr(arg))


class _RecordingKernel:
    def __init__(self, name: str, kernel, launches: list[Launch], run: bool):
        self.name, self.kernel, self.launches, self.run = name, kernel, launches, run
        self.arg_names = list(getattr(kernel, "arg_names", ()))

    def __getitem__(self, grid):
        def call(*args, **meta):
            launch = Launch(self.name, self.kernel, args, dict(meta), tuple(grid))
            key = launch.signature_key()
            for seen in self.launches:
                if seen.signature_key() == key:
                    seen.count += 1
                    break
            else:
                self.launches.append(launch)
            if self.run:
                return self.kernel[grid](*args, **meta)
            return None

        return call


class RecordingModule:
    """Stands in for a generated module: each ``kernel[grid](...)`` is recorded (and run if asked)."""

    def __init__(self, module, launches: list[Launch], run: bool = False):
        self._module, self._launches, self._run = module, launches, run

    def __getattr__(self, name: str):
        value = getattr(self._module, name)
        if name.startswith("_") or not hasattr(value, "arg_names"):
            return value
        return _RecordingKernel(name, value, self._launches, self._run)


@contextlib.contextmanager
def recording(kernels, *, profile=None, device_name: str | None = None, run: bool = False, compiled: bool = True):
    """Record the launches of ``kernels`` (a launcher's GeneratedKernels) while inside.

    ``profile`` (a GpuProfile or a name) makes the launchers pick tilings as on that GPU, even on
    CPU tensors; ``device_name`` lets them use ``rnnc tune``'s winner measured on a GPU of that name.
    ``compiled`` records the kernels of the module imported for compiling (not the interpreter's).
    Yields the list the launches are appended to.
    """
    launches: list[Launch] = []
    stem = f"{kernels.plan.ir.cell}_{kernels.strategy}"
    module = load_compiled_module(kernels.module.text, stem) if compiled else kernels.kernels
    saved = kernels.kernels
    kernels.kernels = RecordingModule(module, launches, run)
    token = launch_state.set_target(profile, device_name) if profile is not None else None
    try:
        yield launches
    finally:
        kernels.kernels = saved
        if token is not None:
            launch_state.reset_target(token)


def meta_call(plan, shape: dict, dtype: str) -> tuple[dict, dict]:
    """(tensors, states) on the meta device for a cell at ``shape``: shapes and dtypes, no data.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> tensors, states = meta_call(analyse_source(open("examples/gla.rnn").read()),
        ...                             {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}, "bfloat16")
        >>> tensors["v"].shape, tensors["v"].device.type, states["S"].shape
        (torch.Size([4, 2048, 16, 128]), 'meta', torch.Size([4, 16, 128, 128]))
    """
    import sympy

    ir = plan.ir
    torch_dtype = TORCH_DTYPES[dtype]
    subs = {sympy.Symbol(d, positive=True, integer=True): shape[d] for d in ir.dims}

    def sizes(decl) -> list[int]:
        return [int(sympy.sympify(s).subs(subs)) for s in decl.shape]

    def make(*size):
        return torch.empty(*size, dtype=torch_dtype, device="meta", requires_grad=True)

    B, T, NH = shape["B"], shape["T"], shape["NH"]
    tensors = {d.name: make(B, T, NH, *sizes(d)) for d in ir.inputs}
    tensors.update({d.name: make(NH, *sizes(d)) for d in ir.weights})
    states = {d.name: make(B, NH, *sizes(d)) for d in ir.states}
    return tensors, states


def run_training_step(kernels, tensors: dict, states: dict) -> None:
    """One forward and backward call of the kernels (every input, weight and initial state gets a gradient)."""
    outputs, finals = kernels(tensors, states)
    results = [*outputs.values(), *finals.values()]
    leaves = [*tensors.values(), *states.values()]
    torch.autograd.grad(results, leaves, [torch.ones_like(r) for r in results], allow_unused=True)


def record_launches(
    kernels, gpu, shape: dict, dtype: str, *, device_name: str | None = None, training: bool = True
) -> list[Launch]:
    """The launches one training step (or, with ``training=False``, one inference call) of ``kernels``
    would make at ``shape`` in ``dtype`` on the GPU profile ``gpu``, without running anything."""
    from rnnc.constraints.profiles import load_profile

    profile = gpu if not isinstance(gpu, str) else load_profile(gpu)
    tensors, states = meta_call(kernels.plan, shape, dtype)
    with recording(kernels, profile=profile, device_name=device_name) as launches:
        if training:
            run_training_step(kernels, tensors, states)
        else:
            with torch.no_grad():
                kernels(tensors, states)
    return launches
