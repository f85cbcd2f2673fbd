"""Scans over time in PyTorch with their own backward: what runs a scan component on the CPU path.

The pieces are evaluated for every step at once (:mod:`rnnc.runtime.reference_scan`), so the
recurrence is all that is left, and it runs one of two ways:

* small problems (at most ``TWO_LEVEL_MAX`` entries in all): two levels, chunks of about
  sqrt(T) steps scanned side by side (one step of every chunk per operation), then the chunks'
  ends chained and every step corrected at once: about 3 sqrt(T) operations;
* larger ones: one fused operation per step (``torch.addcmul(b_t, a_t, s, out=...)``), in place
  into the trajectory, which reads and writes each entry once and keeps a step's data in cache
  (the two-level form makes a dozen passes over tensors that no longer fit: 6x slower on
  Mamba's [4, 512, 4, 64, 16]; see docs/decisions.md).

No division and no logarithm: a decay of 0 or a negative one is fine. Backward is the same
recurrence on the transposed maps, ``lam_t = g_t + A_{t+1}^T lam_{t+1}``, not autograd
through a loop.

Example:
    >>> a, b = torch.full((1, 5, 2), 0.5), torch.ones(1, 5, 2)
    >>> linear_scan([[a]], [b], [torch.zeros(1, 2)])[0][0, :, 0].tolist()
    [1.0, 1.5, 1.75, 1.875, 1.9375]
    >>> maxplus_scan(torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 2.0]]), torch.zeros(1))[0].tolist()
    [1.0, 1.0, 2.0]
"""

from __future__ import annotations

import math

import torch

TWO_LEVEL_MAX = 1 << 20  # entries (steps x batch x state) up to which the two-level form is faster


def chunk_length(T: int) -> int:
    """Steps per chunk: about the square root of T, so both levels take about as many operations.

    Example:
        >>> chunk_length(1), chunk_length(1024), chunk_length(1000)
        (1, 32, 32)
    """
    return max(1, math.isqrt(max(T - 1, 0)) + 1) if T > 1 else 1


def _chunks(x: torch.Tensor, C: int, fill: float) -> torch.Tensor:
    """[B, T, ...] -> [B, nC, C, ...], padded at the end with ``fill`` (steps that change nothing)."""
    B, T = x.shape[:2]
    n = -(-T // C)
    if n * C != T:
        x = torch.cat([x, x.new_full((B, n * C - T, *x.shape[2:]), fill)], dim=1)
    return x.reshape(B, n, C, *x.shape[2:])


def _unchunk(x: torch.Tensor, T: int) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :T]


def _affine_forward(m, b, s0):
    """s_t = M_t s_{t-1} + b_t for n x n maps (lists of [B, T, ...] tensors), two-level; returns the n trajectories."""
    n = len(b)
    T = b[0].shape[1]
    if T == 0:
        return [x.new_empty((x.shape[0], 0, *x.shape[2:])) for x in b]
    C = chunk_length(T)
    m = [[_chunks(m[i][j], C, 1.0 if i == j else 0.0) for j in range(n)] for i in range(n)]
    b = [_chunks(x, C, 0.0) for x in b]
    acc = [x.clone() for x in b]  # the state within each chunk, from zero
    if n == 1:  # M_c ... M_0 within each chunk
        prod = [[torch.cumprod(m[0][0], dim=2)]]
        for c in range(1, C):
            torch.addcmul(b[0][:, :, c], m[0][0][:, :, c], acc[0][:, :, c - 1], out=acc[0][:, :, c])
    else:
        prod = [[m[i][j].clone() for j in range(n)] for i in range(n)]
        for c in range(1, C):
            step = [[m[i][j][:, :, c] for j in range(n)] for i in range(n)]
            before_p = [[prod[i][j][:, :, c - 1] for j in range(n)] for i in range(n)]
            before_s = [acc[i][:, :, c - 1] for i in range(n)]
            for i in range(n):
                for j in range(n):
                    prod[i][j][:, :, c] = _total([step[i][k] * before_p[k][j] for k in range(n)])
                acc[i][:, :, c] = _total([step[i][k] * before_s[k] for k in range(n)] + [b[i][:, :, c]])
    starts, carry = [], list(s0)
    for k in range(b[0].shape[1]):  # chain the chunks: each starts where the one before ended
        starts.append(carry)
        carry = [_total([prod[i][j][:, k, -1] * carry[j] for j in range(n)] + [acc[i][:, k, -1]]) for i in range(n)]
    start = [torch.stack([s[i] for s in starts], dim=1).unsqueeze(2) for i in range(n)]
    return [_unchunk(_total([prod[i][j] * start[j] for j in range(n)] + [acc[i]]), T) for i in range(n)]


def _total(terms: list[torch.Tensor]) -> torch.Tensor:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _affine_loop(m, b, s0):
    """The same trajectories, one fused operation per step and entry of the map, in place."""
    n = len(b)
    out = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in b]
    h = list(s0)
    for t in range(b[0].shape[1]):
        for i in range(n):
            torch.addcmul(b[i][:, t], m[i][0][:, t], h[0], out=out[i][:, t])
            for j in range(1, n):
                out[i][:, t].addcmul_(m[i][j][:, t], h[j])
        h = [x[:, t] for x in out]
    return out


def _reverse_loop(m, g):
    """lam_t = g_t + M_{t+1}^T lam_{t+1}, one fused operation per step and entry."""
    n = len(g)
    T = g[0].shape[1]
    lam = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in g]
    if T == 0:
        return lam
    for i in range(n):
        lam[i][:, T - 1] = g[i][:, T - 1]
    for t in range(T - 2, -1, -1):
        for i in range(n):
            torch.addcmul(g[i][:, t], m[0][i][:, t + 1], lam[0][:, t + 1], out=lam[i][:, t])
            for j in range(1, n):
                lam[i][:, t].addcmul_(m[j][i][:, t + 1], lam[j][:, t + 1])
    return lam


def _small(x: torch.Tensor) -> bool:
    return x.numel() <= TWO_LEVEL_MAX


def previous(trajectory: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Each step's previous value: the initial state, then the trajectory shifted by one step.

    Example:
        >>> previous(torch.tensor([[1.0, 2.0]]), torch.tensor([0.0])).tolist()
        [[0.0, 1.0]]
    """
    return torch.cat([initial.unsqueeze(1).to(trajectory.dtype), trajectory[:, :-1]], dim=1)


def _reverse_affine(m, g):
    """lam_t = g_t + M_{t+1}^T lam_{t+1} (lam after the last step is zero), as a forward scan on reversed time."""
    n = len(g)
    zeros = [torch.zeros_like(x[:, :1]) for x in g]
    nxt = [[torch.cat([m[j][i][:, 1:], zeros[0].expand_as(m[j][i][:, :1])], dim=1).flip(1) for j in range(n)]
           for i in range(n)]  # fmt: skip
    lam = _affine_forward(nxt, [x.flip(1) for x in g], [z[:, 0] for z in zeros])
    return [x.flip(1) for x in lam]


def _times_previous(lam: torch.Tensor, s: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """lam_t * s_{t-1} (s_{-1} = s0), without forming the shifted trajectory."""
    out = torch.empty(lam.shape, dtype=lam.dtype, device=lam.device)
    if lam.shape[1]:
        torch.mul(lam[:, 1:], s[:, :-1], out=out[:, 1:])
        torch.mul(lam[:, 0], s0, out=out[:, 0])
    return out


class _AffineScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n, *args):
        m = [list(args[i * n : (i + 1) * n]) for i in range(n)]
        b, s0 = list(args[n * n : n * n + n]), list(args[n * n + n :])
        s = (_affine_forward if _small(b[0]) else _affine_loop)(m, b, s0)
        ctx.n = n
        ctx.save_for_backward(*args[: n * n], *s0, *s)
        return tuple(s)

    @staticmethod
    def backward(ctx, *grads):
        n = ctx.n
        saved = ctx.saved_tensors
        m = [list(saved[i * n : (i + 1) * n]) for i in range(n)]
        s0, s = list(saved[n * n : n * n + n]), list(saved[n * n + n :])
        g = [torch.zeros_like(x) if gi is None else gi for gi, x in zip(grads, s)]
        lam = (_reverse_affine if _small(s[0]) else _reverse_loop)(m, g)
        d_m = [_times_previous(lam[i], s[j], s0[j]) for i in range(n) for j in range(n)]
        d_s0 = [_total([m[j][i][:, 0] * lam[j][:, 0] for j in range(n)]) if s[0].shape[1] else torch.zeros_like(s0[i])
                for i in range(n)]  # fmt: skip
        return (None, *d_m, *lam, *d_s0)


def linear_scan(m, b, s0):
    """The trajectories of ``s_t = M_t s_{t-1} + b_t`` (``m`` n x n lists of ``[B, T, ...]`` tensors,
    ``b`` n of them, ``s0`` n initial states ``[B, ...]``); differentiable in all of them."""
    n = len(b)
    shape = torch.broadcast_shapes(*(x.shape for row in m for x in row), *(x.shape for x in b))
    args = [x.expand(shape) for row in m for x in row] + [x.expand(shape) for x in b]
    return list(_AffineScan.apply(n, *args, *(x.expand(shape[:1] + shape[2:]) for x in s0)))


def _maxplus_forward(a, b, m0):
    T = a.shape[1]
    if T == 0:
        return a.new_empty(a.shape)
    C = chunk_length(T)
    a, b = _chunks(a, C, 0.0), _chunks(b, C, float("-inf"))
    total = torch.cumsum(a, dim=2)  # the shift of each chunk's start, step by step
    best = b.clone()  # the best of the chunk's own terms, from nothing
    for c in range(1, C):
        best[:, :, c] = torch.maximum(best[:, :, c - 1] + a[:, :, c], b[:, :, c])
    starts, carry = [], m0
    for k in range(a.shape[1]):
        starts.append(carry)
        carry = torch.maximum(carry + total[:, k, -1], best[:, k, -1])
    start = torch.stack(starts, dim=1).unsqueeze(2)
    return _unchunk(torch.maximum(start + total, best), T)


def _maxplus_loop(a, b, m0):
    out = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    h = m0
    for t in range(a.shape[1]):
        torch.add(h, a[:, t], out=out[:, t])
        torch.maximum(out[:, t], b[:, t], out=out[:, t])
        h = out[:, t]
    return out


class _MaxPlusScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, m0):
        m = (_maxplus_forward if _small(a) else _maxplus_loop)(a, b, m0)
        ctx.save_for_backward(a, b, m0, m)
        return m

    @staticmethod
    def backward(ctx, g):
        a, b, m0, m = ctx.saved_tensors
        if m.shape[1] == 0:
            return torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(m0)
        gap = previous(m, m0) + a - b
        through = torch.heaviside(gap, gap.new_tensor(0.5))  # d max(m + a, b) / dm, ties split evenly
        (lam,) = (_reverse_affine if _small(m) else _reverse_loop)([[through]], [g])
        return through * lam, (1 - through) * lam, through[:, 0] * lam[:, 0]


def maxplus_scan(a: torch.Tensor, b: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
    """The trajectory of ``m_t = max(m_{t-1} + a_t, b_t)``; differentiable (ties split the cotangent evenly)."""
    shape = torch.broadcast_shapes(a.shape, b.shape)
    return _MaxPlusScan.apply(a.expand(shape), b.expand(shape), m0.expand(shape[:1] + shape[2:]))
