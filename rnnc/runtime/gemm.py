"""``weight @ state`` in the reference loop: one GEMM per step, one for the weight's gradient.

A weight ``[NH, *lead, M, K]`` is prepared once per call as ``[NH, M', K]`` (``[M', K]`` for one
head, where ``F.linear`` is the fastest small GEMM on CPU). Each step multiplies the whole
batch's state by it. Autograd would add a small ``[M', B] x [B, K]`` GEMM per step for the
weight's gradient; instead each step's backward files its input and output cotangent with the
weight's :class:`Collector`, and the weight's gradient is one ``[M', B*T] x [B*T, K]`` GEMM when
backward reaches the weight (what cuDNN and oneDNN do for RNNs).

Example:
    >>> import torch
    >>> R = torch.arange(6.0).reshape(1, 1, 2, 3).requires_grad_()
    >>> prepared = weight_matrix(R, 2)
    >>> h = torch.ones(4, 1, 3)
    >>> y = per_head_gemm(h, prepared) + per_head_gemm(2 * h, prepared)
    >>> y[0].tolist()
    [[9.0, 36.0]]
    >>> y.sum().backward(); R.grad[0, 0].tolist()
    [[12.0, 12.0, 12.0], [12.0, 12.0, 12.0]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class Collector:
    """Each step's (input, output cotangent) of one prepared weight, by step index."""

    def __init__(self):
        self.pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.count = 0


class _Shared(torch.autograd.Function):
    """Identity on the weight; its backward turns the collected pairs into one GEMM."""

    @staticmethod
    def forward(ctx, w, collector):
        ctx.collector = collector
        return w.view_as(w)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        pairs = ctx.collector.pairs
        if pairs:
            order = sorted(pairs)
            inputs = torch.cat([pairs[i][0] for i in order], dim=-2)
            cotangents = torch.cat([pairs[i][1] for i in order], dim=-2)
            grad = grad + cotangents.transpose(-1, -2) @ inputs
            pairs.clear()  # consumed: a later backward through the same graph files them again
        return grad, None


class _StepGemm(torch.autograd.Function):
    """``v @ w^T`` for one step; backward gives v's cotangent and files w's part."""

    @staticmethod
    def forward(ctx, v, w, collector, index):
        ctx.save_for_backward(v, w)
        ctx.collector, ctx.index = collector, index
        return F.linear(v, w) if w.dim() == 2 else torch.bmm(v, w.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        v, w = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            ctx.collector.pairs[ctx.index] = (v, grad)
        dv = grad @ w if ctx.needs_input_grad[0] else None
        return dv, None, None, None


def _prepared(w: torch.Tensor, tail: tuple):
    """``[NH, M, K]`` made contiguous once per call, ``[M, K]`` for one head, with its collector."""
    w = w.contiguous()
    w = w[0] if w.shape[0] == 1 else w
    if torch.is_grad_enabled() and w.requires_grad:
        collector = Collector()
        return _Shared.apply(w, collector), tail, collector
    return w, tail, None


def weight_matrix(a: torch.Tensor, rank: int):
    """A weight ``[1, NH, *lead, M, K]`` prepared for ``a @ v`` (``v`` a vector per batch row).

    Example:
        >>> w, tail, _ = weight_matrix(torch.ones(1, 2, 4, 3, 5), 3)
        >>> tuple(w.shape), tail
        ((2, 12, 5), (4, 3))
    """
    heads, k = a.shape[1], a.shape[-1]
    return _prepared(a.reshape(heads, -1, k), tuple(a.shape[2:-1]))


def weight_matrix_right(b: torch.Tensor, rank: int):
    """A weight ``[1, NH, *lead, K, N]`` prepared for ``v @ b``.

    Example:
        >>> w, tail, _ = weight_matrix_right(torch.ones(1, 2, 4, 3, 5), 3)
        >>> tuple(w.shape), tail
        ((2, 20, 3), (4, 5))
    """
    heads, k = b.shape[1], b.shape[-2]
    tail = (*b.shape[2:-2], b.shape[-1])
    return _prepared(b[0].movedim(-2, -1).reshape(heads, -1, k), tail)


def per_head_gemm(v: torch.Tensor, prepared) -> torch.Tensor:
    """``v [batch, NH, K]`` times a prepared weight: ``[batch, NH, *tail]``, one GEMM per head.

    Example:
        >>> R = torch.arange(6.0).reshape(1, 1, 2, 3)
        >>> per_head_gemm(torch.ones(4, 1, 3), weight_matrix(R, 2))[0].tolist()
        [[3.0, 12.0]]
    """
    w, tail, collector = prepared
    batch = v.shape[0]
    if w.dim() == 2:  # one head
        rows = v.reshape(batch, -1)
    else:
        rows = v.expand(batch, w.shape[0], -1).transpose(0, 1)
    if collector is not None:
        out = _StepGemm.apply(rows, w, collector, collector.count)
        collector.count += 1
    elif w.dim() == 2:
        out = F.linear(rows, w)
    else:
        out = torch.bmm(rows, w.transpose(1, 2))
    out = out.unsqueeze(1) if w.dim() == 2 else out.transpose(0, 1)
    return out if len(tail) == 1 else out.unflatten(2, tail)
