"""``weight @ state`` in the reference loop: one GEMM per step over the whole batch.

A weight ``[NH, *lead, M, K]`` is prepared once per call as ``[NH, M', K]`` (``[M', K]`` for one
head, where ``F.linear`` is the fastest small GEMM on CPU), contiguous, so each step's weight
gradient adds into one buffer. (Filing each step's input and cotangent to make the weight's
gradient one large GEMM at the end was tried: a custom autograd Function per step costs more
than the small GEMMs it saves, 86 against 69-76 ms for LSTM B16 T256 H128.)

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

The fused backward (:mod:`rnnc.runtime.fused_codegen`) calls the two adjoints: the vector's
cotangent once per step (:func:`per_head_gemm_backward`) and the weight's once per call, one
GEMM over every step and batch row at once (:func:`weight_cotangent`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _prepared(w: torch.Tensor, tail: tuple):
    """``[NH, M, K]`` made contiguous once per call, ``[M, K]`` for one head."""
    w = w.contiguous()
    return (w[0] if w.shape[0] == 1 else w), tail


def weight_matrix(a: torch.Tensor, rank: int):
    """A weight ``[1, NH, *lead, M, K]`` prepared for ``a @ v`` (``v`` a vector per batch row).

    Example:
        >>> w, tail = weight_matrix(torch.ones(1, 2, 4, 3, 5), 3)
        >>> tuple(w.shape), tail
        ((2, 12, 5), (4, 3))
    """
    heads, k = a.shape[1], a.shape[-1]
    return _prepared(a.reshape(heads, -1, k), tuple(a.shape[2:-1]))


def weight_matrix_right(b: torch.Tensor, rank: int):
    """A weight ``[1, NH, *lead, K, N]`` prepared for ``v @ b``.

    Example:
        >>> w, tail = weight_matrix_right(torch.ones(1, 2, 4, 3, 5), 3)
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
    w, tail = prepared
    batch = v.shape[0]
    if w.dim() == 2:  # one head: one view back to [batch, 1, *tail]
        return F.linear(v.reshape(batch, -1), w).view(batch, 1, *tail)
    out = torch.bmm(v.expand(batch, w.shape[0], -1).transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)
    return out if len(tail) == 1 else out.unflatten(2, tail)


def per_head_gemm_add(v: torch.Tensor, prepared, bias: torch.Tensor) -> torch.Tensor:
    """``bias + per_head_gemm(v, prepared)`` as one GEMM (``addmm``); ``bias`` has the result's
    layout ``[batch or 1, NH, *tail]``.

    Example:
        >>> R = torch.arange(6.0).reshape(1, 1, 2, 3)
        >>> per_head_gemm_add(torch.ones(4, 1, 3), weight_matrix(R, 2), torch.ones(1, 1, 2))[0].tolist()
        [[4.0, 13.0]]
    """
    w, tail = prepared
    batch = v.shape[0]
    if w.dim() == 2:
        return torch.addmm(bias.reshape(bias.shape[0], -1), v.reshape(batch, -1), w.t()).view(batch, 1, *tail)
    heads = w.shape[0]
    b3 = bias.reshape(bias.shape[0], heads, -1).transpose(0, 1)
    out = torch.baddbmm(b3, v.expand(batch, heads, -1).transpose(0, 1), w.transpose(1, 2)).transpose(0, 1)
    return out if len(tail) == 1 else out.unflatten(2, tail)


def per_head_gemm_backward(g: torch.Tensor, prepared) -> torch.Tensor:
    """The cotangent ``[batch, NH, K]`` of ``v`` in ``per_head_gemm(v, prepared)``, given that of the result.

    Example:
        >>> R = torch.arange(6.0).reshape(1, 1, 2, 3)
        >>> per_head_gemm_backward(torch.ones(4, 1, 2), weight_matrix(R, 2))[0].tolist()
        [[3.0, 5.0, 7.0]]
    """
    w, _ = prepared
    batch = g.shape[0]
    if w.dim() == 2:
        return torch.mm(g.reshape(batch, -1), w).view(batch, 1, w.shape[1])
    heads = w.shape[0]
    return torch.bmm(g.reshape(batch, heads, -1).transpose(0, 1), w).transpose(0, 1)


def weight_cotangent(g: torch.Tensor, v: torch.Tensor, prepared, right: bool) -> torch.Tensor:
    """The cotangent of the weight of ``per_head_gemm(v, prepared)`` summed over every row: one GEMM.

    ``g`` is the result's cotangent and ``v`` the vector, row by row (all steps of all batch rows
    at once); the result has the weight's layout ``[1, NH, *lead, M, K]`` (``[1, NH, *lead, K, N]``
    when ``right``, the weight of ``v @ b``).

    Example:
        >>> R = torch.zeros(1, 1, 2, 3)
        >>> g, v = torch.ones(4, 1, 2), torch.arange(12.0).reshape(4, 1, 3)
        >>> weight_cotangent(g, v, weight_matrix(R, 2), False)[0, 0].tolist()
        [[18.0, 22.0, 26.0], [18.0, 22.0, 26.0]]
    """
    w, tail = prepared
    batch = g.shape[0]
    if w.dim() == 2:
        dw = torch.mm(g.reshape(batch, -1).t(), v.reshape(batch, -1)).unsqueeze(0)
    else:
        heads = w.shape[0]
        vh = v.expand(batch, heads, v.shape[-1]).transpose(0, 1)
        dw = torch.bmm(g.reshape(batch, heads, -1).permute(1, 2, 0), vh)
    heads, k = dw.shape[0], dw.shape[-1]
    if not right:
        return dw.reshape(1, heads, *tail, k)
    return dw.reshape(heads, *tail, k).movedim(-1, -2).unsqueeze(0)
