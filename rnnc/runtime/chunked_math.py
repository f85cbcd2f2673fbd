"""The chunkwise-parallel form of one linear state, in PyTorch (autograd gives the backward).

A state ``S [K, V]`` is driven by *rows* (a step is one row per factor): row ``r`` applies
``S_r = D_r S_{r-1} + sum_e a_e b_e^T``, where ``D_r = exp(lam_r)`` (identity, scalar or diagonal
along K), and the entries ``(a_e, b_e)`` of the row are its writes (``b`` known) and its rank-one
correction (``a = c u``, ``b = w^T S_{r-1}``, unknown until solved). *Queries* read
``q^T S`` after their row (``strict=False``) or before it (``strict=True``).

Time is cut into chunks of C rows. A query after row ``p`` sees entry ``e`` of row ``i <= p``
decayed by ``exp`` of the log decays of rows ``i < r <= p``, and the state before the chunk
decayed by those of rows ``r <= p`` (:class:`ChunkDecays` forms every such sum directly, so that
the decays' gradients add what reaches a row rather than cancel large terms). Every exponent is
``<= 0`` for log decays ``<= 0``: a scalar decay's pair exponents are masked before ``exp``; with
per-channel decays, pairs of rows are formed by halving the chunk, the pairs across two halves as
one product anchored at the boundary between them. Log decays are floored where ``exp`` is zero in the dtype
anyway (so ``-inf``, a reset, stays finite). A product that contracts rows of a chunk (scores times
values) zeroes non-finite operand rows and marks the outputs they would have reached as NaN, so a
NaN at row ``i`` reaches no output before ``i``.

Example:
    >>> import torch
    >>> B, H, R, K, V = 1, 1, 5, 3, 2
    >>> k, v, q = torch.randn(B, H, R, K), torch.randn(B, H, R, V), torch.randn(B, H, R, K)
    >>> (y,), final = run_state(torch.zeros(B, H, K, V), None, "identity", None, [(k, v, None)], [(q, False)], 4)
    >>> S = torch.zeros(K, V); ref = []
    >>> for r in range(R):
    ...     S = S + torch.outer(k[0, 0, r], v[0, 0, r]); ref.append(q[0, 0, r] @ S)
    >>> torch.allclose(y[0, 0], torch.stack(ref), atol=1e-5), torch.allclose(final[0, 0], S, atol=1e-5)
    (True, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log_floor(dtype: torch.dtype) -> float:
    """The log decay below which ``exp`` is exactly zero in ``dtype`` (a reset): decays are floored there.

    Example:
        >>> import torch
        >>> float(torch.exp(torch.tensor(log_floor(torch.float32)))), log_floor(torch.float64)
        (0.0, -746.0)
    """
    return -746.0 if dtype == torch.float64 else -104.0


def causal_product(scores: torch.Tensor, values: torch.Tensor, strict: bool) -> torch.Tensor:
    """``scores @ values`` over rows of a chunk, where ``scores`` is causal (zero above the diagonal).

    A non-finite entry of ``values`` at row i would reach every row through ``0 * NaN``: it is
    zeroed in the product, and the outputs at rows after i (at and after, unless ``strict``) in its
    column are NaN, as a step-by-step loop gives.

    Example:
        >>> import torch
        >>> scores = torch.tril(torch.ones(3, 3))
        >>> causal_product(scores, torch.tensor([[1.0], [float("nan")], [2.0]]), False)[:, 0].tolist()
        [1.0, nan, nan]
    """
    if _finite(values):
        return scores @ values
    bad = ~torch.isfinite(values)
    seen = bad.to(values.dtype).cumsum(-2)
    if strict:
        seen = seen - bad.to(values.dtype)
    clean = scores @ torch.where(bad, 0.0, values)
    return torch.where(seen > 0, float("nan"), clean)


def _mask(C: int, strict: bool, device) -> torch.Tensor:
    return torch.ones(C, C, dtype=torch.bool, device=device).tril(-1 if strict else 0)


def _exclusive(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Running sums along the rows (axis -2) without each row's own term: formed as sums, never as differences."""
    if reverse:
        x = torch.flip(x, [-2])
    total = x.cumsum(-2)
    shifted = torch.cat([torch.zeros_like(total[..., :1, :]), total[..., :-1, :]], dim=-2)
    return torch.flip(shifted, [-2]) if reverse else shifted


def _between(C: int, strict: bool, like: torch.Tensor) -> torch.Tensor:
    """``[p, i, r]`` = 1 where row r's decay lies between entry row i and a query after (or before) row p."""
    rows = torch.arange(C, device=like.device)
    p, i, r = rows[:, None, None], rows[None, :, None], rows[None, None, :]
    return ((i < r) & (r <= (p - 1 if strict else p))).to(like.dtype)


def _sum_over(equation: str, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``einsum(equation, mask, x)`` for a 0/1 ``mask``: a non-finite term reaches only the sums it is in.

    Example:
        >>> import torch
        >>> _sum_over("ij,j->i", torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([1.0, float("nan")])).tolist()
        [1.0, nan]
    """
    if _finite(x):
        return torch.einsum(equation, mask, x)
    bad = ~torch.isfinite(x)
    total = torch.einsum(equation, mask, torch.where(bad, torch.zeros_like(x), x))
    reached = torch.einsum(equation, mask, bad.to(x.dtype)) > 0
    return torch.where(reached, torch.full_like(total, float("nan")), total)


class ChunkDecays:
    """The sums of a chunk's log decays ``lam`` ``[..., C, Kd]`` that the chunked form raises to ``exp``.

    Each is summed directly from ``lam`` over the rows it spans (never a difference of running
    sums), so that the decays' gradients, which autograd forms from these sums, add the terms
    that reach a row instead of cancelling large ones: ``through`` row p (or ``before`` it),
    ``to_end`` (after row i to the chunk's end), ``last`` (the whole chunk), and, for a scalar
    decay, the ``pairs`` between rows.

    Example:
        >>> import torch
        >>> d = ChunkDecays(torch.tensor([[-1.0], [-2.0], [-4.0]]), "scalar")
        >>> d.through[:, 0].tolist(), d.before[:, 0].tolist(), d.to_end[:, 0].tolist(), d.last.item()
        ([-1.0, -3.0, -7.0], [0.0, -1.0, -3.0], [-6.0, -4.0, 0.0], -7.0)
    """

    def __init__(self, lam: torch.Tensor, kind: str):
        self.lam, self.kind = lam, kind
        self.before = _exclusive(lam)
        self.through = self.before + lam
        self.to_end = _exclusive(lam, reverse=True)
        self.last = lam.sum(-2, keepdim=True)
        self._factors: dict[bool, torch.Tensor] = {}

    def query(self, strict: bool) -> torch.Tensor:
        """The decay from the chunk's start to a query after row p (before it when ``strict``)."""
        return self.before if strict else self.through

    def pairs(self, strict: bool) -> torch.Tensor:
        """Scalar decays: ``[..., p, i]`` = the sum of ``lam`` over rows i < r <= p (r < p when strict)."""
        return _sum_over("pir,...r->...pi", _between(self.lam.shape[-2], strict, self.lam), self.lam[..., 0])

    def factor(self, strict: bool) -> torch.Tensor:
        """Scalar decays: ``exp(pairs)`` where row i is before the query (one where it is not), computed once."""
        if strict not in self._factors:
            pairs = self.pairs(strict)
            self._factors[strict] = torch.exp(torch.where(_mask(pairs.shape[-1], strict, pairs.device), pairs, 0.0))
        return self._factors[strict]


def decayed_scores(Q, A, decays: ChunkDecays | None, strict: bool) -> torch.Tensor:
    """``[p, i] = sum_k Q[p, k] A[i, k] exp(decay between row i and the query at row p)``, zero where i is later.

    ``Q``, ``A``: ``[..., C, K]`` with C a power of two; ``decays`` None for the identity.

    Example:
        >>> import torch
        >>> Q, A = torch.ones(1, 2, 1), torch.ones(1, 2, 1)
        >>> scores = decayed_scores(Q, A, ChunkDecays(torch.tensor([[[-1.0], [-2.0]]]), "scalar"), False)[0]
        >>> [[round(float(x), 4) for x in row] for row in scores]
        [[1.0, 0.0], [0.1353, 1.0]]
    """
    if decays is not None and decays.kind == "diagonal":
        return _halving_scores(Q, A, decays.lam, strict)
    return _masked_scores(Q, [A], decays, strict)[0]


def _masked_scores(Q, entries: list, decays: ChunkDecays | None, strict: bool) -> list[torch.Tensor]:
    """Identity or scalar decays: the scores of ``Q`` against each entry tile, decayed and masked."""
    mask = _mask(Q.shape[-2], strict, Q.device)
    out = []
    for a in entries:
        scores = Q @ a.transpose(-1, -2)
        if decays is not None:
            scores = scores * decays.factor(strict)
        out.append(torch.where(mask, scores, 0.0))
    return out


def _halving_scores(Q, A, lam, strict: bool) -> torch.Tensor:
    """Decayed scores built by halving: at every level, the pairs across the two halves of a block are one
    product anchored at the boundary between them (the query side decays from it, the entry side to it,
    both exponents <= 0), and the halves recurse down to single rows. No pair is formed across a later
    row, so nothing is masked; the work is that of one dense product of a chunk.
    """
    *lead, C, K = Q.shape
    Kd = lam.shape[-1]
    if strict:
        blocks = Q.new_zeros(*lead, C, 1, 1)
    else:
        blocks = (Q * A).sum(-1)[..., None, None]
    size = 1
    while size < C:
        n = C // (2 * size)
        Qh, Ah = Q.reshape(*lead, n, 2, size, K), A.reshape(*lead, n, 2, size, K)
        halves = lam.reshape(*lead, n, 2, size, Kd)
        right, left = halves[..., 1, :, :], halves[..., 0, :, :]
        query_decay = _exclusive(right) if strict else _exclusive(right) + right
        Qs = Qh[..., 1, :, :] * torch.exp(query_decay)
        As = Ah[..., 0, :, :] * torch.exp(_exclusive(left, reverse=True))
        if size >= 8:
            cross = Qs @ As.transpose(-1, -2)
        else:
            cross = (Qs[..., :, None, :] * As[..., None, :, :]).sum(-1)
        pairs = blocks.reshape(*lead, n, 2, size, size)
        top = torch.cat([pairs[..., 0, :, :], torch.zeros_like(cross)], dim=-1)
        bottom = torch.cat([cross, pairs[..., 1, :, :]], dim=-1)
        blocks = torch.cat([top, bottom], dim=-2)
        size *= 2
    return blocks.reshape(*lead, C, C)


def _pad_chunks(x: torch.Tensor | None, R_pad: int, C: int) -> torch.Tensor | None:
    """[B, H, R, D] -> [B, H, N, C, D], padded with zero rows (identity rows: nothing enters)."""
    if x is None:
        return None
    if x.shape[-2] != R_pad:
        x = F.pad(x, (0, 0, 0, R_pad - x.shape[-2]))
    return x.reshape(*x.shape[:-2], R_pad // C, C, x.shape[-1])


def run_state(S0, lam, decay: str, W, entries, queries, chunk: int):
    """One linear state over all rows: the queries' reads and the final state.

    ``S0`` ``[B, H, K, V]``; ``lam`` ``[B, H, R, 1]`` or ``[B, H, R, K]`` (None for identity);
    ``entries`` a list of ``(A, B, c)``: keys ``A`` ``[B, H, R, K]`` with known values ``B``
    ``[B, H, R, V]`` (or None) and, for the first entry only, the correction's strengths ``c``
    ``[B, H, R]`` (or None): that entry's value is ``c * (w^T S_{r-1}) + B``, so a correction and the
    writes along its own key are one entry; ``W`` ``[B, H, R, K]`` the correction's query (or None);
    ``queries`` a list of ``(Q [B, H, R, K], strict)``. Returns ``([Y [B, H, R, V] per query], S_final)``;
    ``chunk`` (rows per chunk) is a power of two.
    """
    R = queries[0][0].shape[-2] if queries else entries[0][0].shape[-2]
    C = chunk
    N = -(-R // C)
    R_pad = N * C
    keys = [_pad_chunks(a, R_pad, C) for a, _, _ in entries]
    values = [_pad_chunks(b, R_pad, C) for _, b, _ in entries]
    strength = entries[0][2] if entries and W is not None else None
    queries = [(_pad_chunks(q, R_pad, C), strict) for q, strict in queries]
    W = _pad_chunks(W, R_pad, C)
    decays = None
    if decay != "identity":
        decays = ChunkDecays(_pad_chunks(lam.clamp(min=log_floor(lam.dtype)), R_pad, C), decay)

    def scale(x, which: str):  # x decayed by one of the decays' sums, or x for the identity
        return x if decays is None else x * torch.exp(getattr(decays, which))

    def scores(Q, tiles, strict):  # the scores of a query tile against several entry tiles
        if decays is not None and decays.kind == "diagonal":
            return [_halving_scores(Q, a, decays.lam, strict) for a in tiles]
        return _masked_scores(Q, tiles, decays, strict)

    ends = [scale(a, "to_end").transpose(-1, -2) for a in keys]  # entries decayed to the chunk's end
    local = None  # the state a chunk adds from its own rows: [B, H, N, K, V]
    known = [(i, b) for i, b in enumerate(values) if b is not None and (i > 0 or W is None)]
    for i, b in known:
        local = _add(local, ends[i] @ b)
    if W is not None:
        # the correcting entry's value Z = c (Wd S0 + M Z + sum_e M_e B_e) + B_0, M = P(W, A_0) strictly
        # causal: (I - c M) Z = c Wd S0 + (c rhs + B_0), so Z = Zw S0 + Z_loc by one triangular solve
        c = _pad_chunks(strength[..., None], R_pad, C)
        into = scores(W, keys, True)
        system = torch.eye(C, dtype=W.dtype, device=W.device) - c * into[0]
        rhs = None
        for m, (_, b) in zip(into[1:], known):
            rhs = _add(rhs, causal_product(m, b, True))
        rhs = None if rhs is None else c * rhs
        if values[0] is not None:
            rhs = _add(rhs, values[0])
        Wd = c * scale(W, "before")
        both = _solve_causal(system, Wd if rhs is None else torch.cat([Wd, rhs], dim=-1))
        Zw, Z_loc = (both, None) if rhs is None else both.split([Wd.shape[-1], rhs.shape[-1]], dim=-1)
        transition = (ends[0] @ Zw).unbind(2)  # [B, H, K, K] per chunk
        if Z_loc is not None:
            local = _add(local, ends[0] @ Z_loc)
    decay_end = None if decays is None else torch.exp(decays.last).transpose(-1, -2).unbind(2)  # [B, H, Kd, 1]
    local = None if local is None else local.unbind(2)

    starts = []
    S = S0
    for n in range(N):
        starts.append(S)
        nxt = S if decay_end is None else decay_end[n] * S
        if W is not None:
            nxt = nxt + transition[n] @ S
        S = nxt + local[n] if local is not None else nxt
    starts = torch.stack(starts, dim=2)  # [B, H, N, K, V]

    reads = []
    for Q, strict in queries:
        reader = scale(Q, "before" if strict else "through")
        const = None
        into = scores(Q, keys, strict)
        if W is not None:
            reader = reader + causal_product(into[0], Zw, strict)
            if Z_loc is not None:
                const = causal_product(into[0], Z_loc, strict)
        for i, b in known:
            const = _add(const, causal_product(into[i], b, strict))
        y = reader @ starts
        y = y + const if const is not None else y
        reads.append(y.reshape(*y.shape[:2], R_pad, y.shape[-1])[:, :, :R])
    return reads, S


def _finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite, in one pass (a sum that overflows only sends the caller the careful way)."""
    return math.isfinite(float(x.detach().sum()))


def _add(total, x):
    return x if total is None else total + x


def _solve_causal(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``system^-1 rhs`` for a unit lower-triangular ``system``; a non-finite row of ``rhs`` reaches only later rows."""

    def solve(x):
        return torch.linalg.solve_triangular(system, x, upper=False, unitriangular=True)

    if _finite(rhs):
        return solve(rhs)
    bad = ~torch.isfinite(rhs)
    seen = bad.to(rhs.dtype).cumsum(-2) > 0
    clean = solve(torch.where(bad, 0.0, rhs))
    return torch.where(seen, float("nan"), clean)
