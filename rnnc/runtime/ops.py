"""Tensor helpers that the generated PyTorch step functions call.

Every tensor here has two leading axes, batch and head (``[B, NH, ...]``;
weights have batch 1), followed by the cell's own axes. Helpers take the
number of the cell's own axes where NumPy semantics depend on it.

Example:
    >>> import torch
    >>> g = torch.arange(6.0).reshape(1, 1, 6)
    >>> tuple(view(g, (-2,), 2).shape)
    (1, 1, 6, 1)
"""

from __future__ import annotations

import torch


def view(t: torch.Tensor, axes: tuple[int, ...], rank: int) -> torch.Tensor:
    """Place an atom into a ``rank``-axis index space: its axis i goes to ``axes[i]`` (< 0).

    Example:
        >>> tuple(view(torch.zeros(2, 3, 4, 5), (-1, -2), 2).shape)
        (2, 3, 5, 4)
    """
    order = sorted(range(len(axes)), key=lambda i: axes[i])
    t = t.permute(0, 1, *(2 + i for i in order))
    shape = list(t.shape[:2]) + [1] * rank
    for position, i in enumerate(order):
        shape[2 + rank + axes[i]] = t.shape[2 + position]
    return t.reshape(shape)


def unview(g: torch.Tensor, axes: tuple[int, ...], rank: int, like: torch.Size) -> torch.Tensor:
    """The adjoint of :func:`view`: sum ``g`` back onto an atom of shape ``like``.

    Example:
        >>> tuple(unview(torch.ones(2, 3, 5, 4), (-1, -2), 2, torch.Size([1, 3, 4, 5])).shape)
        (1, 3, 4, 5)
    """
    g = _unplaced(g, axes, rank)
    return g.sum_to_size(like) if g.shape != like else g


def _unplaced(g: torch.Tensor, axes: tuple[int, ...], rank: int) -> torch.Tensor:
    """``g`` summed over the index space's axes that the view does not map, its own axes in order."""
    unmapped = [2 + rank + j for j in range(-rank, 0) if j not in axes]
    if unmapped:
        g = g.sum(dim=unmapped, keepdim=True)
    order = sorted(range(len(axes)), key=lambda i: axes[i])
    g = g.reshape(*g.shape[:2], *(g.shape[2 + rank + axes[i]] for i in order))
    inverse = [order.index(i) for i in range(len(axes))]
    return g.permute(0, 1, *(2 + p for p in inverse))


def fit(value, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``value`` (a tensor or a number) broadcast to ``shape``, as a tensor like ``like``.

    Example:
        >>> fit(2.0, (1, 2), torch.zeros(1)).tolist()
        [[2.0, 2.0]]
    """
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(value, dtype=like.dtype, device=like.device)
    return value.expand(shape)


def _promote(t: torch.Tensor, rank: int, vector_at: int, batch: int) -> torch.Tensor:
    if rank == 1:
        t = t.unsqueeze(vector_at)
    inner_batch = max(rank - 2, 0)
    for _ in range(batch - inner_batch):
        t = t.unsqueeze(2)
    return t


def _batch(ra: int, rb: int) -> int:
    return max(ra - 2, rb - 2, 0)


def matmul(a: torch.Tensor, b: torch.Tensor, ra: int, rb: int) -> torch.Tensor:
    """``a @ b`` with NumPy semantics on the cell's axes (``ra``, ``rb`` of them).

    Example:
        >>> R, h = torch.ones(1, 1, 4, 3, 3), torch.ones(2, 1, 3)
        >>> tuple(matmul(R, h, 3, 1).shape)
        (2, 1, 4, 3)
    """
    batch = _batch(ra, rb)
    c = _promote(a, ra, -2, batch) @ _promote(b, rb, -1, batch)
    if rb == 1:
        c = c.squeeze(-1)
    if ra == 1:
        c = c.squeeze(-2 if rb != 1 else -1)
    return c


def matmul_backward(gc, a, b, ra: int, rb: int):
    """Cotangents of ``a`` and ``b`` given that of ``a @ b``.

    Example:
        >>> a, b = torch.ones(1, 1, 2, 3), torch.ones(1, 1, 3)
        >>> [tuple(g.shape) for g in matmul_backward(torch.ones(1, 1, 2), a, b, 2, 1)]
        [(1, 1, 2, 3), (1, 1, 3)]
    """
    batch = _batch(ra, rb)
    ap, bp = _promote(a, ra, -2, batch), _promote(b, rb, -1, batch)
    gp = gc
    if ra == 1:
        gp = gp.unsqueeze(-2 if rb != 1 else -1)
    if rb == 1:
        gp = gp.unsqueeze(-1)
    ga = (gp @ bp.transpose(-1, -2)).sum_to_size(ap.shape).reshape(a.shape)
    gb = (ap.transpose(-1, -2) @ gp).sum_to_size(bp.shape).reshape(b.shape)
    return ga, gb


def outer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``outer(a, b)`` of vectors.

    Example:
        >>> tuple(outer(torch.ones(1, 1, 2), torch.ones(1, 1, 3)).shape)
        (1, 1, 2, 3)
    """
    return a.unsqueeze(-1) * b.unsqueeze(-2)


def outer_backward(gc, a, b):
    """Cotangents of both vectors of an outer product.

    Example:
        >>> ga, gb = outer_backward(torch.ones(1, 1, 2, 3), torch.ones(1, 1, 2), torch.ones(1, 1, 3))
        >>> ga.tolist(), gb.tolist()
        ([[[3.0, 3.0]]], [[[2.0, 2.0, 2.0]]])
    """
    ga = (gc * b.unsqueeze(-2)).sum(-1).sum_to_size(a.shape)
    gb = (gc * a.unsqueeze(-1)).sum(-2).sum_to_size(b.shape)
    return ga, gb


def reduce_sum(x: torch.Tensor, rank: int, axis: int | None) -> torch.Tensor:
    """``sum(x)`` over all of the cell's axes, or ``sum(x, axis)``.

    Example:
        >>> reduce_sum(torch.ones(1, 1, 2, 3), 2, 1).tolist()
        [[[3.0, 3.0]]]
    """
    if axis is None:
        return x.sum(dim=tuple(range(2, 2 + rank))) if rank else x
    return x.sum(dim=2 + axis)


def reduce_sum_backward(g: torch.Tensor, x: torch.Tensor, rank: int, axis: int | None) -> torch.Tensor:
    """The cotangent of ``x`` given that of ``sum(x[, axis])``.

    Example:
        >>> reduce_sum_backward(torch.ones(1, 1), torch.zeros(1, 1, 2), 1, None).tolist()
        [[[1.0, 1.0]]]
    """
    if axis is None:
        g = g.reshape(*g.shape[:2], *([1] * rank))
    else:
        g = g.unsqueeze(2 + axis)
    return g.expand(*x.shape[:2], *x.shape[2:]) if g.shape[:2] == x.shape[:2] else g.expand_as(x)


def reduce_max(x: torch.Tensor, rank: int, axis: int | None) -> torch.Tensor:
    """``max(x)`` over all of the cell's axes, or ``max(x, axis)``; autograd splits ties evenly.

    Example:
        >>> reduce_max(torch.tensor([[[[1.0, 3.0], [4.0, 2.0]]]]), 2, 1).tolist()
        [[[3.0, 4.0]]]
    """
    if axis is None:
        return x.amax(dim=tuple(range(2, 2 + rank))) if rank else x
    return x.amax(dim=2 + axis)


def reduce_min(x: torch.Tensor, rank: int, axis: int | None) -> torch.Tensor:
    """``min(x)`` over all of the cell's axes, or ``min(x, axis)``; autograd splits ties evenly.

    Example:
        >>> reduce_min(torch.tensor([[[[1.0, 3.0], [4.0, 2.0]]]]), 2, 0).tolist()
        [[[1.0, 2.0]]]
    """
    if axis is None:
        return x.amin(dim=tuple(range(2, 2 + rank))) if rank else x
    return x.amin(dim=2 + axis)


def reduce_extreme_backward(g: torch.Tensor, x: torch.Tensor, y: torch.Tensor, rank: int, axis: int | None):
    """The cotangent of ``x`` given that of ``y = max(x[, axis])`` (or ``min``): it goes to the
    entries equal to ``y``, split evenly between ties.

    Example:
        >>> x = torch.tensor([[[1.0, 3.0, 3.0]]])
        >>> reduce_extreme_backward(torch.ones(1, 1), x, reduce_max(x, 1, None), 1, None).tolist()
        [[[0.0, 0.5, 0.5]]]
    """
    if axis is None:
        shape = (*y.shape[:2], *([1] * rank))
        hit = (x == y.reshape(shape)).to(x.dtype)
        count = hit.sum(dim=tuple(range(2, 2 + rank)), keepdim=True) if rank else hit
        return g.reshape(shape) * hit / count
    hit = (x == y.unsqueeze(2 + axis)).to(x.dtype)
    return g.unsqueeze(2 + axis) * hit / hit.sum(dim=2 + axis, keepdim=True)


def part(t: torch.Tensor, axis: int, index: int, count: int, drop: int) -> torch.Tensor:
    """Part ``index`` of ``count`` equal parts along the cell's axis ``axis``.

    Example:
        >>> part(torch.arange(4.0).reshape(1, 1, 4), 0, 1, 2, 0).tolist()
        [[[2.0, 3.0]]]
    """
    size = t.shape[2 + axis] // count
    piece = t.narrow(2 + axis, index * size, size)
    return piece.squeeze(2 + axis) if drop else piece


def part_backward(g: torch.Tensor, parent: torch.Tensor, axis: int, index: int, count: int, drop: int):
    """The cotangent of the parent given that of one part (zeros elsewhere).

    Example:
        >>> part_backward(torch.ones(1, 1, 2), torch.zeros(1, 1, 4), 0, 1, 2, 0).tolist()
        [[[0.0, 0.0, 1.0, 1.0]]]
    """
    size = parent.shape[2 + axis] // count
    if drop:
        g = g.unsqueeze(2 + axis)
    shape = list(parent.shape)
    shape[0] = max(g.shape[0], parent.shape[0])
    out = torch.zeros(shape, dtype=g.dtype, device=g.device)
    out.narrow(2 + axis, index * size, size).copy_(g.expand(*out.narrow(2 + axis, index * size, size).shape))
    return out.sum_to_size(parent.shape)


def maximum(a, b, like: torch.Tensor):
    """Elementwise maximum of tensors or numbers (numbers take ``like``'s dtype).

    Example:
        >>> maximum(torch.tensor([1.0, 3.0]), 2.0, torch.zeros(())).tolist()
        [2.0, 3.0]
    """
    a, b = _tensors(a, b, like)
    return torch.maximum(a, b)


def minimum(a, b, like: torch.Tensor):
    """Elementwise minimum of tensors or numbers (numbers take ``like``'s dtype).

    Example:
        >>> minimum(torch.tensor([1.0, 3.0]), 2.0, torch.zeros(())).tolist()
        [1.0, 2.0]
    """
    a, b = _tensors(a, b, like)
    return torch.minimum(a, b)


def where(cond, a, b, like: torch.Tensor):
    """``a`` where ``cond`` holds, else ``b`` (numbers take ``like``'s dtype).

    Example:
        >>> where(torch.tensor([True, False]), 1.0, torch.tensor([5.0, 6.0]), torch.zeros(())).tolist()
        [1.0, 6.0]
    """
    a, b = _tensors(a, b, like)
    return torch.where(cond, a, b)


def heaviside(x, at_zero: float):
    """The step function: 0 below zero, 1 above, ``at_zero`` at zero.

    Example:
        >>> heaviside(torch.tensor([-1.0, 0.0, 2.0]), 0.5).tolist()
        [0.0, 0.5, 1.0]
    """
    return torch.heaviside(x, torch.tensor(at_zero, dtype=x.dtype, device=x.device))


def _tensors(a, b, like: torch.Tensor):
    if not isinstance(a, torch.Tensor):
        a = torch.tensor(a, dtype=like.dtype, device=like.device)
    if not isinstance(b, torch.Tensor):
        b = torch.tensor(b, dtype=like.dtype, device=like.device)
    return a, b


def parts(t: torch.Tensor, axis: int, count: int, drop: int) -> tuple[torch.Tensor, ...]:
    """All ``count`` equal parts along the cell's axis ``axis`` at once (one op, one backward).

    Example:
        >>> [p.tolist() for p in parts(torch.arange(4.0).reshape(1, 1, 4), 0, 2, 0)]
        [[[[0.0, 1.0]]], [[[2.0, 3.0]]]]
    """
    dim = 2 + axis
    if t.shape[dim] == 1 and count > 1:  # broadcast along the split axis: every part is the value
        return (t.squeeze(dim) if drop else t,) * count
    if drop:
        return t.unbind(dim)
    return t.split(t.shape[dim] // count, dim)


def unview_to(g: torch.Tensor, axes: tuple[int, ...], rank: int, shape: tuple[int, ...]) -> torch.Tensor:
    """:func:`unview`, then summed or broadcast to exactly ``shape`` (an atom's, batch first).

    Example:
        >>> tuple(unview_to(torch.ones(4, 1, 3, 2), (-2,), 2, (1, 1, 3)).shape)
        (1, 1, 3)
    """
    return fit_cotangent(_unplaced(g, axes, rank), shape)


def fit_cotangent(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``g`` summed over the axes where ``shape`` is 1 and broadcast where ``g`` is: a cotangent of that shape.

    Example:
        >>> fit_cotangent(torch.ones(4, 1, 3), (1, 2, 3)).tolist()
        [[[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]]
    """
    if tuple(g.shape) == tuple(shape):
        return g
    summed = [i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1]
    if summed:
        g = g.sum(dim=summed, keepdim=True)
    return g if tuple(g.shape) == tuple(shape) else g.expand(shape)


def join_parts(grads: list, shape: tuple[int, ...], axis: int, count: int, drop: int) -> torch.Tensor:
    """The cotangent of a tensor of ``shape`` split into ``count`` parts (see :func:`parts`), from the
    cotangents of its parts (None: zero); one stack when every part has one.

    Example:
        >>> join_parts([torch.ones(1, 1, 2), None], (1, 1, 2, 2), 0, 2, 1).tolist()
        [[[[1.0, 1.0], [0.0, 0.0]]]]
    """
    dim = 2 + axis
    size = shape[dim] // count
    part = list(shape)
    if drop:
        del part[dim]
    else:
        part[dim] = size
    full = [None if g is None else (g if tuple(g.shape) == tuple(part) else g.expand(part)) for g in grads]
    if all(g is not None for g in full):
        return torch.stack(full, dim) if drop else torch.cat(full, dim)
    some = next(g for g in full if g is not None)
    out = some.new_zeros(shape)
    for i, g in enumerate(full):
        if g is not None:
            out.narrow(dim, i * size, size).copy_(g.unsqueeze(dim) if drop else g)
    return out


def gemm_bias(values: list, tail: tuple[int, ...], axis: int | None, count: int, drop: int) -> torch.Tensor:
    """The bias of a GEMM whose result (or each of its ``count`` parts along ``axis``) has one
    value added: ``[rows, *tail]``, rows the values' (1 when every value is weight-only).

    Example:
        >>> gemm_bias([torch.ones(3, 1, 2), torch.zeros(1, 1, 2)], (1, 2, 2), 0, 2, 1)[:, 0, 1].tolist()
        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    """
    shape = (max(v.shape[0] for v in values), *tail)
    if axis is None:
        return values[0].expand(shape)
    return join_parts(values, shape, axis, count, drop)
