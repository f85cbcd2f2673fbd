"""Gradients of the sequential kernels' on-chip weights, formed after the backward kernel.

Accumulating ``dW += v^T dY`` on chip over the time loop costs a program a float32 copy of every
weight matrix in registers (64 KB for LSTM at head dim 64: the backward spilled), and with several
batch blocks per head an atomic add whose order varies. Instead the backward kernel stores each
step's cotangent ``dY`` of every ``tl.dot`` result (and the operand ``v`` where it is computed in
the step), and here one contraction over all batch rows and steps per dot gives ``dW``, as a
GEMM on the GPU: deterministic, and at tensor-core speed.

Example:
    >>> import torch
    >>> dy, v = torch.randn(2, 3, 1, 4, 5), torch.randn(2, 3, 1, 5)  # R @ h: R [4, 5, 5], h [5]
    >>> dw = dot_weight_gradient(dy, v, side=0, ranks=(3, 1))
    >>> torch.allclose(dw, torch.einsum("btngi,btnj->ngij", dy, v))
    True
"""

from __future__ import annotations

import torch

from rnnc.runtime import ops
from rnnc.runtime.arguments import Call


def dot_weight_gradient(dy: torch.Tensor, v: torch.Tensor, side: int, ranks: tuple[int, int]) -> torch.Tensor:
    """``[NH, *weight argument]``: the sum over batch rows and steps of the cotangent of the weight
    argument ``side`` of ``a @ b`` (NumPy semantics, ranks ``ranks``), given ``dy`` ``[B, T, NH, *result]``
    and the other argument ``v`` ``[B, T, NH, *other]``."""
    ra, rb = ranks
    n, heads = dy.shape[0] * dy.shape[1], dy.shape[2]
    y, v = dy.reshape(n, heads, *dy.shape[3:]), v.reshape(n, heads, *v.shape[3:])
    batch = max(ra - 2, rb - 2, 0)
    if ra == 1:
        y = y.unsqueeze(-2 if rb != 1 else -1)
    if rb == 1:
        y = y.unsqueeze(-1)
    if side == 0:  # W @ v: dW[..., m, k] = sum y[..., m, j] v[..., k, j]
        other = ops._promote(v, rb, -1, batch)
        other = other.expand(*y.shape[:-2], *other.shape[-2:])
        grad = torch.einsum("nh...mj,nh...kj->h...mk", y, other)
        rank = ra
    else:  # v @ W: dW[..., k, j] = sum v[..., m, k] y[..., m, j]
        other = ops._promote(v, ra, -2, batch)
        other = other.expand(*y.shape[:-2], *other.shape[-2:])
        grad = torch.einsum("nh...mk,nh...mj->h...kj", other, y)
        rank = rb
    lead = batch - max(rank - 2, 0)  # batch axes the weight broadcasts over
    grad = grad.sum(dim=tuple(range(1, 1 + lead))) if lead else grad
    return grad


def dot_buffers(dots, kernels, call: Call) -> list[torch.Tensor]:
    """Per dot (``DotGradient``): the buffer of its result's cotangents where the kernel stores them, and
    of its operand where the kernel computes it, ``[B, T, NH, *shape]`` in the compute dtype, in the
    kernel's pointer order."""
    ir = kernels.plan.ir
    buffers = []
    for g in dots:
        atom = ir.atoms[g.index]
        shapes = ([atom.shape] if g.cotangent_pointer else []) + (
            [atom.arg_shapes[1 - g.side]] if g.operand_pointer else []
        )
        for shape in shapes:
            size = (call.B, call.T, call.NH, *call.shape_of(shape))
            buffers.append(torch.empty(size, dtype=call.compute_dtype, device=call.device))
    return buffers


def previous_states(tensors: dict, k: int) -> torch.Tensor:
    """State ``k`` before every step, ``[B, T, NH, ...]``: the initial state, then the saved ones; for a
    packed batch (``tensors["starts"]``, its int64 offsets) each sequence starts from its own initial state."""
    initial, saved, starts = tensors["initial"][k], tensors["saved"][k], tensors.get("starts")
    if starts is None:
        return torch.cat([initial.unsqueeze(1), saved[:, :-1]], dim=1)
    previous = torch.cat([saved[:, :1], saved[:, :-1]], dim=1)
    begins = starts[:-1][starts[1:] > starts[:-1]]  # the first row of every sequence with a step
    previous[0, begins] = initial[starts[1:] > starts[:-1]]
    return previous


def add_weight_gradients(dots, sums: dict, kernels, call: Call, buffers, tensors: dict, d_in, d_w) -> None:
    """Add into ``d_w`` each dot's weight gradient, and the sums of the weights read pointwise whose
    cotangents were stored (``sums``: weight -> "input NAME" or "dot INDEX").

    ``tensors``: ``inputs``, ``weights``, ``initial``, ``saved`` (as the autograd Function holds them) and
    ``starts`` (a packed batch's offsets, or None).
    """
    ir = kernels.plan.ir
    inputs = [d.name for d in ir.inputs]
    states = [d.name for d in ir.states]
    weights = [d.name for d in ir.weights]
    stored: dict[str, torch.Tensor] = {f"input {n}": d_in[k] for k, n in enumerate(inputs)}
    pending = list(buffers)
    for g in dots:
        dy = pending.pop(0) if g.cotangent_pointer else stored.get(g.cotangent)
        stored[f"dot {g.index}"] = dy
        v = pending.pop(0) if g.operand_pointer else None
        if dy is None:  # no cotangent reaches the dot: its weight gets nothing from it
            continue
        if v is None and g.operand_kind == "input":
            v = tensors["inputs"][inputs.index(g.operand)].to(call.compute_dtype)
        elif v is None:  # the state before each step: the initial one, then the saved ones
            v = previous_states(tensors, states.index(g.operand))
        grad = dot_weight_gradient(dy, v, g.side, g.ranks)
        w = weights.index(g.weight)
        like = torch.Size((1, *tensors["weights"][w].shape))
        d_w[w] += ops.unview(grad.unsqueeze(0), g.weight_axes, len(g.weight_axes), like)[0]
    for name, source in sums.items():
        d_w[weights.index(name)] += stored[source].sum(dim=(0, 1))
