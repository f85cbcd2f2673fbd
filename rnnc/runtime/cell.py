"""The object ``rnnc.compile`` returns: a callable cell with its analysis attached.

Example:
    >>> import torch, rnnc
    >>> cell = rnnc.compile("examples/hgrn.rnn", backend="reference")
    >>> out = cell(x=torch.ones(1, 2, 1, 3), g=torch.zeros(1, 2, 1, 3))
    >>> out.h.shape, out.state["h"].shape
    (torch.Size([1, 2, 1, 3]), torch.Size([1, 1, 3]))
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from rnnc import config
from rnnc.compiler import Plan
from rnnc.errors import BackendError
from rnnc.runtime.custom_ops import flat_arguments, run_as_op
from rnnc.runtime.reference import ReferenceRunner

BACKENDS = ("auto", "reference", "reference-autograd", "reference-bptt", "triton")
PRECISIONS = ("ieee", "tf32")  # how float32 inputs meet at tl.dot: exact products, or TF32 tensor cores


class Output:
    """The result of a call: one attribute per emitted output, and ``state`` for final states.

    Example:
        >>> import torch
        >>> o = Output({"y": torch.zeros(1)}, {"h": torch.ones(1)})
        >>> o.y.tolist(), o.state["h"].tolist(), sorted(o.outputs)
        ([0.0], [1.0], ['y'])
    """

    def __init__(self, outputs: dict[str, torch.Tensor], state: dict[str, torch.Tensor]):
        self.outputs = dict(outputs)
        self.state = dict(state)

    def __getattr__(self, name: str) -> torch.Tensor:
        outputs = self.__dict__.get("outputs", {})
        if name in outputs:
            return outputs[name]
        raise AttributeError(f"no output {name!r}; the cell emits {', '.join(outputs) or 'nothing'}")

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in {**self.outputs}.items())
        states = ", ".join(f"{k}={list(v.shape)}" for k, v in self.state.items())
        return f"Output({shapes}; state: {states})"


class Cell:
    """A compiled cell. Call it with one keyword per input and weight, and ``state={...}``.

    Cells pickle and deep-copy (a pickled cell is rebuilt from its source text).
    """

    def __init__(
        self,
        plan: Plan,
        backend: str = "auto",
        origin: tuple | None = None,
        gpu: str | None = None,
        dtype=None,
        precision: str = "ieee",
    ):
        if backend not in BACKENDS:
            raise BackendError(f"backend needs one of {', '.join(BACKENDS)}, has {backend!r}")
        if precision not in PRECISIONS:
            raise BackendError(f"precision needs one of {', '.join(PRECISIONS)}, has {precision!r}")
        self.plan = plan
        self.backend = backend
        self.precision = precision  # float32 tl.dot: "ieee" (exact) or "tf32" (tensor cores)
        self._origin = origin  # (source text, file name, cell name) when compiled from text
        self.gpu, self.dtype = gpu, dtype  # rnnc.compile's tiling choices (checked there), or None
        mode = {"reference-bptt": "bptt", "reference-autograd": "autograd"}.get(backend, "fused")
        self._runner = ReferenceRunner(plan, mode)
        self._kernels = None  # the Triton kernels, built on first use: import triton only then
        self._no_kernels = backend in ("reference", "reference-autograd", "reference-bptt")
        self._pinned: dict = {}
        self._fallback: BackendError | None = None  # why no template covers the cell, once known
        self._warned = False  # backend="auto" warns once when it falls back to the reference
        self.last_backend = ""  # what ran the latest call: "reference" or "triton"
        if backend == "triton":
            self._kernels = _triton_runner(plan)
            self._kernels.gpu = gpu or "auto"  # the profile its tiling model uses on a GPU
            self._kernels.precision = precision
        elif backend == "auto" and _kernels_can_run():
            self._triton  # built now, so that torch.compile never traces code generation

    @property
    def _triton(self):
        """The Triton kernels (built on first use), or None when no template covers the cell."""
        if self._kernels is None and not self._no_kernels:
            try:
                self._kernels = _triton_runner(self.plan)
                self._kernels.pinned = dict(self._pinned)
                self._kernels.gpu = self.gpu or "auto"
                self._kernels.precision = self.precision
            except BackendError as exc:
                self._no_kernels, self._fallback = True, exc
        return self._kernels

    @property
    def name(self) -> str:
        """The cell's name."""
        return self.plan.ir.cell

    @property
    def strategy(self) -> str:
        """``sequential``, ``scan`` or ``chunked``."""
        return self.plan.strategy

    @property
    def source(self) -> str:
        """The generated module text: the Triton module when there is one, else the PyTorch loop."""
        if self.backend != "reference" and self._triton is not None:
            return self._triton.source
        return self._runner.forward_text

    def explain(self) -> str:
        """The analysis as readable text."""
        return self.plan.explain()

    def tiling(self, gpu: str | None = None, dtype: str | None = None, **shape: int):
        """The best tiling for a call shape on a GPU profile (no GPU needed).

        ``gpu`` and ``dtype`` default to those given to ``rnnc.compile``, else h100 and bfloat16.
        ``shape`` gives B, T, NH and every dim of the cell. Returns a
        :class:`rnnc.constraints.tiling.Tiling` (``params``, ``estimate_us``,
        ``candidates``); raises :class:`rnnc.TilingError` when nothing fits.

        Example:
            >>> import rnnc
            >>> cell = rnnc.compile("examples/lstm.rnn")
            >>> cell.tiling(gpu="h100", B=16, T=1024, NH=12, H=64).params["BLOCK_B"]
            16
        """
        from rnnc.constraints.tiling import solve_tiling

        gpu, dtype = gpu or self.gpu or "h100", dtype or self.dtype or "bfloat16"
        return solve_tiling(self.plan, gpu, shape, dtype)

    def use_tiling(self, params: dict | None) -> None:
        """Pin launch parameters of the Triton kernels (``rnnc tune``'s winner, or a test's choice).

        Pinned values win over the tiling model's; ``None`` unpins. ``SPLIT`` > 1 splits each
        head of a sequential cell over that many programs, also in the interpreter.

        Example:
            >>> import rnnc
            >>> cell = rnnc.compile("examples/lstm.rnn", backend="triton")
            >>> cell.use_tiling({"SPLIT": 2}); cell.pinned_tiling
            {'SPLIT': 2}
        """
        if self.backend not in ("triton", "auto"):
            raise BackendError(f"cell {self.name} has no Triton kernels to pin a tiling on (backend {self.backend})")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"use_tiling needs a dict of launch parameters or None, has {type(params).__name__}")
        self._pinned = dict(params or {})
        self._triton.pinned = dict(self._pinned)

    @property
    def pinned_tiling(self) -> dict:
        """The launch parameters pinned with :meth:`use_tiling` (empty when none)."""
        return dict(self._pinned)

    def __call__(
        self, *positional, state: dict[str, torch.Tensor] | None = None, cu_seqlens=None, **tensors: torch.Tensor
    ) -> Output:
        """Run the cell over time: inputs ``[B, T, NH, *shape]`` (or packed ``[1, total_T, NH, *shape]``
        with ``cu_seqlens`` ``[N + 1]``, states then ``[N, NH, *shape]``)."""
        if positional:
            raise TypeError(
                f"cell {self.name} takes keyword arguments only: {self.name}({self._takes()}, state={{...}})"
            )
        tensors, device_type = _autocast_inputs(self.plan, tensors)
        with _no_autocast(device_type):
            runner = self._pick(tensors)
            if runner is self._runner:
                call = runner.bind(tensors, state, cu_seqlens)
                if torch.compiler.is_compiling():
                    outputs, finals = run_as_op(runner, call, flat_arguments(call, self.plan.ir))
                else:
                    outputs, finals = runner.run(call)
            else:
                outputs, finals = runner(tensors, state, cu_seqlens)
        return Output(outputs, finals)

    def step(self, *positional, state: dict[str, torch.Tensor] | None = None, **tensors: torch.Tensor) -> Output:
        """One step, for decoding: inputs ``[B, NH, *shape]``; outputs ``[B, NH, *shape]`` and the new states.

        Equal to the same step of a full call. The Triton backend runs its kernels with T = 1
        (one fused launch per step for sequential cells).

        Example:
            >>> import torch, rnnc
            >>> cell = rnnc.compile("examples/hgrn.rnn", backend="reference")
            >>> out = cell.step(x=torch.ones(2, 1, 3), g=torch.zeros(2, 1, 3), state={"h": torch.ones(2, 1, 3)})
            >>> out.h[0, 0].tolist(), out.state["h"].shape
            ([2.0, 2.0, 2.0], torch.Size([2, 1, 3]))
        """
        if positional:
            raise TypeError(
                f"cell {self.name} takes keyword arguments only: {self.name}.step({self._takes()}, state=...)"
            )
        _check_step_layout(self.plan, tensors)
        tensors, device_type = _autocast_inputs(self.plan, tensors)
        with _no_autocast(device_type):
            runner = self._pick(tensors)
            if runner is self._runner and not torch.compiler.is_compiling():
                outputs, finals = runner.step(tensors, state)
                return Output(outputs, finals)
            names = {d.name for d in self.plan.ir.inputs}
            timed = {n: t.unsqueeze(1) if n in names and isinstance(t, torch.Tensor) else t for n, t in tensors.items()}
            out = self(state=state, **timed)
        return Output({n: v.squeeze(1) for n, v in out.outputs.items()}, out.state)

    def _pick(self, tensors: dict):
        if self.backend == "triton" or (self.backend == "auto" and _wants_triton(tensors) and self._triton is not None):
            self.last_backend = "triton"
            return self._triton
        if self.backend == "auto" and self._fallback is not None and not self._warned and _wants_triton(tensors):
            self._warned = True  # once per cell: every later call falls back the same way
            warnings.warn(f"cell {self.name} runs on the reference backend: {self._fallback}", stacklevel=3)
        self.last_backend = "reference"
        return self._runner

    def _takes(self) -> str:
        return ", ".join(f"{d.name}=..." for d in self.plan.ir.decls if d.kind != "state")

    def __repr__(self) -> str:
        return f"<rnnc.Cell {self.name} strategy={self.strategy} backend={self.backend}>"

    def __reduce__(self):
        return (
            _rebuild,
            (self._origin or self.plan, self.backend, self._pinned, (self.gpu, self.dtype), self.precision),
        )

    def __deepcopy__(self, memo):
        copy = Cell(
            self.plan, self.backend, self._origin, self.gpu, self.dtype, self.precision
        )  # the Plan is immutable: shared
        if self._pinned:
            copy.use_tiling(self._pinned)
        return copy


def _rebuild(origin, backend: str, pinned: dict, tiling: tuple = (None, None), precision: str = "ieee") -> Cell:
    """Unpickle a cell: compile its source again (or wrap its pickled Plan)."""
    gpu, dtype = tiling
    if isinstance(origin, tuple):
        from rnnc.api import compile_text

        text, filename, name = origin
        cell = compile_text(text, filename, name, backend, gpu=gpu, dtype=dtype, precision=precision)
    else:
        cell = Cell(origin, backend, gpu=gpu, dtype=dtype, precision=precision)
    if pinned:
        cell.use_tiling(pinned)
    return cell


def _check_step_layout(plan: Plan, tensors: dict) -> None:
    """A step's inputs are ``[B, NH, *shape]`` (no time axis)."""
    for decl in plan.ir.inputs:
        value = tensors.get(decl.name)
        if isinstance(value, torch.Tensor) and value.dim() != 2 + len(decl.shape):
            layout = ", ".join(["B", "NH", *(str(d) for d in decl.shape)])
            raise ValueError(
                f"{decl.name}: a step needs {2 + len(decl.shape)} axes [{layout}], "
                f"has {value.dim()} axes {list(value.shape)}"
            )


def _autocast_inputs(plan: Plan, tensors: dict) -> tuple[dict, str | None]:
    """Under ``torch.autocast``, inputs and weights cast to its dtype (states stay as given)."""
    first = next((t for t in tensors.values() if isinstance(t, torch.Tensor)), None)
    if first is None:
        return tensors, None
    device_type = first.device.type
    # meta tensors (shape inference) have no autocast: asking would raise
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return tensors, None
    dtype = torch.get_autocast_dtype(device_type)
    cast = {
        n: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64 else t
        for n, t in tensors.items()
    }
    return cast, device_type


def _no_autocast(device_type: str | None):
    """Inside the cell nothing is autocast: it computes in float32 (float64) itself."""
    if device_type is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def _triton_runner(plan: Plan):
    """The Triton kernels of a cell, or a BackendError saying why there are none yet."""
    blocked = plan.blocking_error()
    if blocked is not None:
        raise blocked
    if plan.strategy == "scan":
        from rnnc.runtime.triton_scan import ScanKernels

        return ScanKernels(plan)
    if plan.strategy == "sequential":
        from rnnc.runtime.triton_sequential import SequentialKernels

        return SequentialKernels(plan)
    if plan.strategy == "chunked":
        from rnnc.runtime.triton_chunked import ChunkedKernels

        return ChunkedKernels(plan)
    raise BackendError(
        f"the Triton {plan.strategy} template is not built yet (cell {plan.ir.cell}); use backend='reference'"
    )


def _kernels_can_run() -> bool:
    """Whether Triton kernels could run here (a GPU, or the interpreter): only then is triton imported."""
    return config.triton_interpret() or torch.cuda.is_available()


def _wants_triton(tensors: dict) -> bool:
    """backend='auto': Triton for CUDA tensors, or CPU ones when TRITON_INTERPRET=1 (meta tensors,
    say, go to the reference, which runs on any device)."""
    given = [t for t in tensors.values() if isinstance(t, torch.Tensor)]
    if any(t.device.type not in ("cuda", "cpu") for t in given):
        return False
    if config.triton_interpret():
        return True
    return any(t.is_cuda for t in given)


def triton_source(plan: Plan) -> str:
    """The generated Triton module of a cell (deterministic), or a BackendError saying why there is none.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> "def forward_kernel(" in triton_source(analyse_source(open("examples/hgrn.rnn").read()))
        True
    """
    if plan.strategy == "scan":
        from rnnc.templates.scan_codegen import render_scan

        return render_scan(plan).text
    return _triton_runner(plan).source
