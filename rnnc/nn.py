"""``rnnc.nn.Layer``: a compiled cell as an ``nn.Module`` that drops in where ``nn.LSTM`` or a
linear-attention layer sits.

Each declared input gets a ``Linear(d_model, num_heads * prod(shape))`` projection (optionally
followed by an activation), each declared weight is an ``nn.Parameter`` ``[num_heads, *shape]``,
and the emitted outputs, flattened per step and concatenated, go through a
``Linear(..., d_model)`` back to the model width.

Initialisation: the projections are ``nn.Linear``'s; a weight that a ``@`` reads (a matrix) is
drawn like ``torch.nn.LSTM``'s, uniform in ``±1/sqrt(n)`` with ``n`` its last axis (the one the
product contracts); every other weight (vectors, scalars, elementwise matrices) starts at zero.
``init={"A": fn}`` overrides one: ``fn`` fills the parameter in place (a number fills it).

Example:
    >>> import torch, rnnc.nn
    >>> layer = rnnc.nn.Layer("examples/lstm.rnn", d_model=16, num_heads=2, dims={"H": 8}, backend="reference")
    >>> y, state = layer(torch.randn(3, 5, 16))
    >>> y.shape, state["c"].shape
    (torch.Size([3, 5, 16]), torch.Size([3, 2, 8]))
    >>> y_t, state = layer.step(torch.randn(3, 16), state)
    >>> y_t.shape
    torch.Size([3, 16])
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from rnnc.runtime.binding import concrete_shape


def _matrix_weights(ir) -> set[str]:
    """Weights read by a ``@`` (directly, as an operand of a matmul atom)."""
    views = dict(ir.views)
    weights = {d.name for d in ir.weights}
    found = set()
    for atom in ir.atoms:
        if atom.op != "matmul":
            continue
        for arg in atom.args:
            for s in arg.free_symbols:
                view = views.get(s.name)
                if view is not None and view.atom in weights:
                    found.add(view.atom)
    return found


class Layer(nn.Module):
    """A recurrent layer built from a ``.rnn`` cell: ``layer(x, state=None, cu_seqlens=None) -> (y, state)``.

    ``x`` is ``[B, T, d_model]`` (packed ``[1, total_T, d_model]`` with ``cu_seqlens``), ``y`` the
    same shape, ``state`` a dict of final states ``[B, NH, *shape]`` (``[N, NH, *shape]``).
    ``dims`` gives every dim of the cell; ``activations={"g": F.logsigmoid}`` applies a function to
    an input's projection (a log decay must stay <= 0, a step size > 0); the other keywords go to
    :func:`rnnc.compile`.
    """

    def __init__(
        self,
        src,
        *,
        d_model: int,
        num_heads: int,
        dims: dict[str, int],
        name: str | None = None,
        backend: str = "auto",
        init: dict[str, Callable | float] | None = None,
        activations: dict[str, Callable] | None = None,
        **options,
    ):
        super().__init__()
        import rnnc

        self.cell = rnnc.compile(src, name=name, backend=backend, **options)
        ir = self.cell.plan.ir
        wanted, given = set(ir.dims), set(dims)
        if wanted != given:
            missing, extra = sorted(wanted - given), sorted(given - wanted)
            raise ValueError(
                f"dims: cell {ir.cell} has dims {', '.join(ir.dims) or 'none'}; "
                + (f"missing {', '.join(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unknown {', '.join(extra)}" if extra else "")
            )
        for dim, size in dims.items():
            if not isinstance(size, int) or size <= 0:
                raise ValueError(f"dims: {dim} needs a positive int, has {size!r}")
        names = {d.name for d in ir.decls if d.kind != "state"}
        for label, mapping in (("init", init or {}), ("activations", activations or {})):
            unknown = sorted(set(mapping) - names)
            if unknown:
                raise ValueError(f"{label}: cell {ir.cell} has no input or weight {', '.join(unknown)}")
        self.d_model, self.num_heads, self.dims = d_model, num_heads, dict(dims)
        self.shapes = {d.name: concrete_shape(tuple(d.shape), self.dims) for d in ir.decls}
        self.shapes.update({o.name: concrete_shape(tuple(o.shape), self.dims) for o in ir.outputs})
        self.activations = dict(activations or {})
        self.in_proj = nn.ModuleDict(
            {d.name: nn.Linear(d_model, num_heads * math.prod(self.shapes[d.name])) for d in ir.inputs}
        )
        self.weights = nn.ParameterDict(
            {d.name: nn.Parameter(torch.empty(num_heads, *self.shapes[d.name])) for d in ir.weights}
        )
        width = num_heads * sum(math.prod(self.shapes[o.name]) for o in ir.outputs)
        self.out_proj = nn.Linear(width, d_model)
        self.reset_weights(init)

    def reset_weights(self, init: dict[str, Callable | float] | None = None) -> None:
        """Initialise the cell's weights: matrices like ``nn.LSTM``'s, the rest zero, then ``init``
        (name -> a function filling the parameter in place, or a number; an input's name means
        its projection's weight). ``init`` is not kept, so a layer pickles whatever it was."""
        matrices = _matrix_weights(self.cell.plan.ir)
        with torch.no_grad():
            for name, p in self.weights.items():
                if name in matrices:
                    bound = 1.0 / math.sqrt(p.shape[-1])
                    p.uniform_(-bound, bound)
                else:
                    p.zero_()
            for name, how in (init or {}).items():
                target = self.weights[name] if name in self.weights else self.in_proj[name].weight
                if callable(how):
                    how(target)
                else:
                    target.fill_(how)

    def _cell_arguments(self, x: torch.Tensor, lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, proj in self.in_proj.items():
            value = proj(x)
            if name in self.activations:
                value = self.activations[name](value)
            tensors[name] = value.reshape(*lead, self.num_heads, *self.shapes[name])
        tensors.update(self.weights.items())
        return tensors

    def _project_out(self, outputs: dict[str, torch.Tensor], lead: tuple[int, ...]) -> torch.Tensor:
        flat = [outputs[o.name].reshape(*lead, -1) for o in self.cell.plan.ir.outputs]
        return self.out_proj(flat[0] if len(flat) == 1 else torch.cat(flat, dim=-1))

    def forward(self, x: torch.Tensor, state: dict | None = None, cu_seqlens: torch.Tensor | None = None):
        """``x [B, T, d_model]`` -> ``(y [B, T, d_model], final states)``."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x: needs [B, T, d_model] with d_model = {self.d_model}, has {list(x.shape)}")
        lead = (x.shape[0], x.shape[1])
        out = self.cell(**self._cell_arguments(x, lead), state=state, cu_seqlens=cu_seqlens)
        return self._project_out(out.outputs, lead), out.state

    def step(self, x_t: torch.Tensor, state: dict | None = None):
        """One decoding step: ``x_t [B, d_model]`` -> ``(y_t [B, d_model], new states)``."""
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"x_t: needs [B, d_model] with d_model = {self.d_model}, has {list(x_t.shape)}")
        lead = (x_t.shape[0],)
        out = self.cell.step(**self._cell_arguments(x_t, lead), state=state)
        return self._project_out(out.outputs, lead), out.state

    def extra_repr(self) -> str:
        dims = ", ".join(f"{k}={v}" for k, v in self.dims.items())
        return f"cell={self.cell.name}, d_model={self.d_model}, num_heads={self.num_heads}, dims={{{dims}}}"
