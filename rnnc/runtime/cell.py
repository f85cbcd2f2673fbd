"""The object ``rnnc.compile`` returns: a callable cell with its analysis attached.

Example:
    >>> import torch, rnnc
    >>> cell = rnnc.compile("examples/hgrn.rnn", backend="reference")
    >>> out = cell(x=torch.ones(1, 2, 1, 3), g=torch.zeros(1, 2, 1, 3))
    >>> out.h.shape, out.state["h"].shape
    (torch.Size([1, 2, 1, 3]), torch.Size([1, 1, 3]))
"""

from __future__ import annotations

import torch

from rnnc import config
from rnnc.compiler import Plan
from rnnc.errors import BackendError
from rnnc.runtime.reference import ReferenceRunner

BACKENDS = ("auto", "reference", "reference-bptt", "triton")


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
    """A compiled cell. Call it with one keyword per input and weight, and ``state={...}``."""

    def __init__(self, plan: Plan, backend: str = "auto"):
        if backend not in BACKENDS:
            raise BackendError(f"backend needs one of {', '.join(BACKENDS)}, has {backend!r}")
        self.plan = plan
        self.backend = backend
        mode = "bptt" if backend == "reference-bptt" else "autograd"
        self._runner = ReferenceRunner(plan, mode)
        self._triton = None
        self.last_backend = ""  # what ran the latest call: "reference" or "triton"
        if backend in ("triton", "auto"):
            try:
                self._triton = _triton_runner(plan)
            except BackendError:
                if backend == "triton":
                    raise

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
        """The generated module text: the Triton module when there is one, else the PyTorch step."""
        if self._triton is not None and self.backend != "reference":
            return self._triton.source
        return self._runner.forward_text

    def explain(self) -> str:
        """The analysis as readable text."""
        return self.plan.explain()

    def tiling(self, gpu: str = "h100", dtype: str = "bfloat16", **shape: int):
        """The best tiling for a call shape on a GPU profile (no GPU needed).

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
        if self._triton is None:
            raise BackendError(f"cell {self.name} has no Triton kernels to pin a tiling on (backend {self.backend})")
        if params is not None and not isinstance(params, dict):
            raise TypeError(f"use_tiling needs a dict of launch parameters or None, has {type(params).__name__}")
        self._triton.pinned = dict(params or {})

    @property
    def pinned_tiling(self) -> dict:
        """The launch parameters pinned with :meth:`use_tiling` (empty when none)."""
        return dict(self._triton.pinned) if self._triton is not None else {}

    def __call__(self, *positional, state: dict[str, torch.Tensor] | None = None, **tensors: torch.Tensor) -> Output:
        if positional:
            takes = ", ".join(f"{d.name}=..." for d in self.plan.ir.decls if d.kind != "state")
            raise TypeError(f"cell {self.name} takes keyword arguments only: {self.name}({takes}, state={{...}})")
        runner, self.last_backend = self._runner, "reference"
        if self._triton is not None and (self.backend == "triton" or _wants_triton(tensors)):
            runner, self.last_backend = self._triton, "triton"
        outputs, finals = runner(tensors, state)
        return Output(outputs, finals)

    def __repr__(self) -> str:
        return f"<rnnc.Cell {self.name} strategy={self.strategy} backend={self.backend}>"


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


def _wants_triton(tensors: dict) -> bool:
    """backend='auto': Triton for CUDA tensors, or anywhere when TRITON_INTERPRET=1."""
    if config.triton_interpret():
        return True
    return any(isinstance(t, torch.Tensor) and t.is_cuda for t in tensors.values())


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
