"""Checking a call's tensors against the cell and binding its dims.

Example:
    >>> import torch
    >>> from rnnc.compiler import lower_source
    >>> ir = lower_source(open("examples/hgrn.rnn").read())
    >>> x = torch.zeros(2, 5, 3, 8)
    >>> call = bind(ir, {"x": x, "g": x}, None)
    >>> call.B, call.T, call.NH, call.dims
    (2, 5, 3, {'D': 8})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sympy
import torch

from rnnc.compiler.ir import IR, Declared
from rnnc.runtime.binding import ShapeBinder, concrete_shape


@dataclass
class Call:
    """The tensors of one call, checked, with batch, time, heads and dims bound."""

    inputs: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]
    states: dict[str, torch.Tensor]
    B: int
    T: int
    NH: int
    dims: dict[str, int]
    dtype: torch.dtype
    compute_dtype: torch.dtype
    device: torch.device
    # variable-length batches: inputs are packed [1, total T, NH, ...], states [N, NH, ...]
    cu_seqlens: torch.Tensor | None = None
    N: int = 0  # the number of sequences when cu_seqlens is given
    binder: ShapeBinder | None = None  # the cell's compiled binder, when the call was bound with one

    def own_shape(self, decl: Declared) -> tuple[int, ...]:
        """Concrete own axes of a declared tensor (no sympy when bound with a binder)."""
        if self.binder is not None:
            return self.binder.own_shape(decl.name, self.dims)
        return self.shape_of(decl.shape)

    def shape_of(self, shape) -> tuple[int, ...]:
        """Concrete sizes of a symbolic shape."""
        return concrete_shape(tuple(shape), self.dims)

    @property
    def state_batch(self) -> int:
        """The batch axis of states: N sequences with cu_seqlens, else B."""
        return self.N if self.cu_seqlens is not None else self.B


def _layout(decl: Declared) -> list[str]:
    own = [str(d) for d in decl.shape]
    return {"input": ["B", "T", "NH"], "weight": ["NH"], "state": ["B", "NH"]}[decl.kind] + own


def _describe(decl: Declared) -> str:
    return "[" + ", ".join(_layout(decl)) + "]"


def bind(
    ir: IR,
    tensors: dict[str, object],
    state: dict[str, object] | None,
    cu_seqlens: object = None,
    binder: ShapeBinder | None = None,
) -> Call:
    """Check names, dtypes, devices and shapes, and bind B, T, NH and the dims.

    ``binder`` (built once per cell) binds without sympy; ``cu_seqlens`` marks packed
    variable-length inputs (see :func:`rnnc.runtime.varlen.check_cu_seqlens`).

    Example:
        >>> import torch
        >>> from rnnc.compiler import lower_source
        >>> ir = lower_source(open("examples/hgrn.rnn").read())
        >>> bind(ir, {"x": torch.zeros(1, 2, 1, 4)}, None)
        Traceback (most recent call last):
        ...
        ValueError: cell hgrn needs argument 'g' (input [B, T, NH, D]); it takes x, g
    """
    if state is not None and not isinstance(state, Mapping):
        states = ", ".join(d.name for d in ir.states) or "none"
        raise TypeError(
            f"cell {ir.cell}: state needs a dict of initial states {{name: tensor}}, has {type(state).__name__}; "
            f"its states are {states}"
        )
    state = dict(state or {})
    takes = [d.name for d in ir.decls if d.kind != "state"]
    for name in tensors:
        if name not in takes:
            hint = " (initial states go in state={...})" if name in {d.name for d in ir.states} else ""
            raise ValueError(f"cell {ir.cell} has no argument {name!r}{hint}; it takes {', '.join(takes)}")
    for name in state:
        if name not in {d.name for d in ir.states}:
            states = ", ".join(d.name for d in ir.states)
            raise ValueError(f"cell {ir.cell} has no state {name!r}; its states are {states}")
    given: list[tuple[Declared, torch.Tensor]] = []
    for decl in ir.decls:
        value = state.get(decl.name) if decl.kind == "state" else tensors.get(decl.name)
        if value is None:
            if decl.kind == "state":
                continue
            raise ValueError(
                f"cell {ir.cell} needs argument {decl.name!r} ({decl.kind} {_describe(decl)}); "
                f"it takes {', '.join(takes)}"
            )
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{decl.name}: needs a torch.Tensor, has {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"{decl.name}: needs a floating-point tensor, has {value.dtype}")
        given.append((decl, value))
    dtype, device = _common_dtype_device(ir, given)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    n_seq = 0
    if cu_seqlens is not None:
        from rnnc.runtime.varlen import packed_arguments

        n_seq, given = packed_arguments(ir, given, cu_seqlens, device)
    fast = None
    if binder is not None:
        shapes = {d.name: tuple(v.shape) for d, v in given if d.kind != "state"}
        fast = binder.sizes(shapes, {d.name: tuple(v.shape) for d, v in given if d.kind == "state"})
    if fast is not None:
        call = Call({}, {}, {}, fast["B"], fast["T"], fast["NH"], fast["dims"], dtype, compute, device)
    else:
        sizes = _bind_sizes(ir, given)
        call = Call({}, {}, {}, sizes.pop("B", 1), sizes.pop("T", 0), sizes.pop("NH", 1), sizes, dtype, compute, device)
    call.binder = binder
    if cu_seqlens is not None:
        call.cu_seqlens, call.N = cu_seqlens, n_seq
        given = [(d, state[d.name] if d.kind == "state" else v) for d, v in given]
    for decl, value in given:
        {"input": call.inputs, "weight": call.weights, "state": call.states}[decl.kind][decl.name] = value
    return call


def _common_dtype_device(ir: IR, given):
    main = [(d, v) for d, v in given if d.kind != "state"] or given
    if not main:
        raise ValueError(f"cell {ir.cell} was given no tensors")
    dtype, device = main[0][1].dtype, main[0][1].device
    for decl, value in given:
        if value.device != device:
            raise ValueError(f"{decl.name}: on {value.device}, but {main[0][0].name} is on {device}")
        if decl.kind != "state" and value.dtype != dtype:
            raise ValueError(
                f"{decl.name}: dtype {value.dtype}, but {main[0][0].name} is {dtype}; inputs and weights need one dtype"
            )
    return dtype, device


def _bind_sizes(ir: IR, given) -> dict[str, int]:
    """Solve B, T, NH and the dims from the tensors' shapes; raise on any clash."""
    bound: dict[str, tuple[int, str]] = {}
    if not any(d.kind == "input" for d, _ in given):
        raise ValueError(f"cell {ir.cell} declares no input, so the number of steps is unknown")
    pending = []
    for decl, value in given:
        layout = _layout(decl)
        if value.dim() != len(layout):
            raise ValueError(
                f"{decl.name}: needs {len(layout)} axes {_describe(decl)}, has {value.dim()} axes {list(value.shape)}"
            )
        prefix = len(layout) - len(decl.shape)
        for axis, size in enumerate(value.shape):
            dim = sympy.sympify(layout[axis]) if axis < prefix else decl.shape[axis - prefix]
            pending.append((decl, value, axis, dim, int(size)))
    for _ in range(len(pending) + 1):
        progress, rest = False, []
        for item in pending:
            decl, value, axis, dim, size = item
            subs = {
                sympy.Symbol(k, positive=True, integer=True) if k not in ("B", "T", "NH") else sympy.Symbol(k): v
                for k, (v, _) in bound.items()
            }
            dim = sympy.sympify(dim).subs(subs) if subs else sympy.sympify(dim)
            free = sorted(dim.free_symbols, key=str)
            if not free:
                if int(dim) != size:
                    _clash(decl, value, axis, int(dim), size, bound)
                progress = True
                continue
            if len(free) == 1:
                solution = sympy.solve(sympy.Eq(dim, size), free[0])
                whole = [s for s in solution if s.is_integer and s > 0]
                if not whole:
                    raise ValueError(
                        f"{decl.name}: axis {axis} is {size}, but it must be {dim} {_describe(decl)}, "
                        f"which no whole {free[0]} > 0 gives"
                    )
                bound[str(free[0])] = (int(whole[0]), decl.name)
                progress = True
                continue
            rest.append((decl, value, axis, dim, size))
        pending = rest
        if not pending or not progress:
            break
    if pending:
        decl, _, axis, dim, _ = pending[0]
        raise ValueError(f"{decl.name}: cannot tell the dims of axis {axis} ({dim}) from the shapes given")
    for dim in ir.dims:
        if dim not in bound:
            users = [d.name for d in ir.decls if any(dim in {str(s) for s in x.free_symbols} for x in d.shape)]
            raise ValueError(
                f"dim {dim} appears only in {', '.join(users)}, which was not given, so its size is unknown; "
                f"pass state={{{users[0]!r}: ...}} (zeros are fine)"
            )
    return {k: v for k, (v, _) in bound.items()}


def _clash(decl, value, axis, expected, size, bound) -> None:
    layout = _layout(decl)
    sources = ", ".join(f"{k} = {v} (from {src})" for k, (v, src) in sorted(bound.items()))
    raise ValueError(
        f"{decl.name}: expected shape {_describe(decl)} with {sources}, got {list(value.shape)} "
        f"(axis {axis}, {layout[axis]}, is {size}, expected {expected})"
    )
