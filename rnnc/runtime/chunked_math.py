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
``<= 0`` for log decays ``<= 0``: pair exponents are masked before ``exp``; per-channel decays
split the chunk into sub-blocks of 16 rows, anchored at the row before each query block, with the
diagonal sub-blocks summed elementwise. Log decays are floored where ``exp`` is zero in the dtype
anyway (so ``-inf``, a reset, stays finite). A product that contracts rows of a chunk (scores times
values) zeroes non-finite operand rows and marks the outputs they would have reached as NaN, so a
NaN at row ``i`` reaches no output before ``i``.

Example:
    >>> import torch
    >>> B, H, R, K, V = 1, 1, 5, 3, 2
    >>> k, v, q = torch.randn(B, H, R, K), torch.randn(B, H, R, V), torch.randn(B, H, R, K)
    >>> (y,), final = run_state(torch.zeros(B, H, K, V), None, "identity", None, None, [(k, v)], [(q, False)], 4)
    >>> S = torch.zeros(K, V); ref = []
    >>> for r in range(R):
    ...     S = S + torch.outer(k[0, 0, r], v[0, 0, r]); ref.append(q[0, 0, r] @ S)
    >>> torch.allclose(y[0, 0], torch.stack(ref), atol=1e-5), torch.allclose(final[0, 0], S, atol=1e-5)
    (True, True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SUB = 16  # rows of a sub-block of a per-channel decay (its diagonal blocks are summed elementwise)


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
    bad = ~torch.isfinite(values)
    if not bool(bad.any()):
        return scores @ values
    seen = bad.to(values.dtype).cumsum(-2)
    if strict:
        seen = seen - bad.to(values.dtype)
    clean = scores @ torch.where(bad, torch.zeros_like(values), values)
    return torch.where(seen > 0, torch.full_like(clean, float("nan")), clean)


def _mask(C: int, strict: bool, device) -> torch.Tensor:
    return torch.ones(C, C, dtype=torch.bool, device=device).tril(-1 if strict else 0)


def _between(C: int, strict: bool, like: torch.Tensor) -> torch.Tensor:
    """``[p, i, r]`` = 1 where row r's decay lies between entry row i and a query at (or before) row p."""
    rows = torch.arange(C, device=like.device)
    p, i, r = rows[:, None, None], rows[None, :, None], rows[None, None, :]
    return ((i < r) & (r <= (p - 1 if strict else p))).to(like.dtype)


def _exclusive(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Running sums along the rows (axis -2) without each row's own term: formed as sums, never as differences."""
    if reverse:
        x = torch.flip(x, [-2])
    total = x.cumsum(-2)
    shifted = torch.cat([torch.zeros_like(total[..., :1, :]), total[..., :-1, :]], dim=-2)
    return torch.flip(shifted, [-2]) if reverse else shifted


def _sum_over(equation: str, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``einsum(equation, mask, x)`` for a 0/1 ``mask``: a non-finite term reaches only the sums it is in.

    Example:
        >>> import torch
        >>> _sum_over("ij,j->i", torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([1.0, float("nan")])).tolist()
        [1.0, nan]
    """
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return torch.einsum(equation, mask, x)
    total = torch.einsum(equation, mask, torch.where(bad, torch.zeros_like(x), x))
    reached = torch.einsum(equation, mask, bad.to(x.dtype)) > 0
    return torch.where(reached, torch.full_like(total, float("nan")), total)


class ChunkDecays:
    """The sums of a chunk's log decays ``lam`` ``[..., C, Kd]`` that the chunked form raises to ``exp``.

    Each is summed directly from ``lam`` over the rows it spans (never a difference of running
    sums), so that the decays' gradients, which autograd forms from these sums, add the terms
    that reach a row instead of cancelling large ones: ``through`` row p (or ``before`` it), ``to_end``
    (after row i to the chunk's end), ``last`` (the whole chunk), and the pair sums of ``scores``.

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

    def query(self, strict: bool) -> torch.Tensor:
        """The decay from the chunk's start to a query after row p (before it when ``strict``)."""
        return self.before if strict else self.through

    def pairs(self, strict: bool) -> torch.Tensor:
        """Scalar decays: ``[..., p, i]`` = the sum of ``lam`` over rows i < r <= p (r < p when strict)."""
        return _sum_over("pir,...r->...pi", _between(self.lam.shape[-2], strict, self.lam), self.lam[..., 0])

    def blocks(self, s: int):
        """Diagonal decays in sub-blocks of s rows: ``lam`` as ``[..., n, s, K]``."""
        return self.lam.reshape(*self.lam.shape[:-2], -1, s, self.lam.shape[-1])


def decayed_scores(Q, A, decays: ChunkDecays | None, strict: bool) -> torch.Tensor:
    """``[p, i] = sum_k Q[p, k] A[i, k] exp(decay between row i and the query at row p)``, zero where i is later.

    ``Q``, ``A``: ``[..., C, K]``; ``decays`` None for the identity.

    Example:
        >>> import torch
        >>> Q, A = torch.ones(1, 2, 1), torch.ones(1, 2, 1)
        >>> scores = decayed_scores(Q, A, ChunkDecays(torch.tensor([[[-1.0], [-2.0]]]), "scalar"), False)[0]
        >>> [[round(float(x), 4) for x in row] for row in scores]
        [[1.0, 0.0], [0.1353, 1.0]]
    """
    C = Q.shape[-2]
    mask = _mask(C, strict, Q.device)
    if decays is not None and decays.kind == "diagonal":
        return _diagonal_scores(Q, A, decays, strict)
    scores = Q @ A.transpose(-1, -2)
    if decays is not None:
        pairs = decays.pairs(strict)
        scores = scores * torch.exp(torch.where(mask, pairs, torch.zeros_like(pairs)))
    return torch.where(mask, scores, torch.zeros_like(scores))


def _diagonal_scores(Q, A, decays: ChunkDecays, strict: bool) -> torch.Tensor:
    """Per-channel decays: sub-blocks of SUB rows; off the diagonal anchored at the row before the query block."""
    *lead, C, K = Q.shape
    s = min(SUB, C)
    n = C // s
    lam = decays.blocks(s)  # [..., n, s, K]
    Qb, Ab = Q.reshape(*lead, n, s, K), A.reshape(*lead, n, s, K)
    inside = _mask(s, strict, Q.device)[..., None]
    pairs = _sum_over("pir,...nrk->...npik", _between(s, strict, lam), lam)
    decay = torch.exp(torch.where(inside, pairs, torch.zeros_like(pairs)))
    products = Qb[..., :, None, :] * Ab[..., None, :, :] * decay
    diagonal = torch.where(inside, products, torch.zeros_like(products)).sum(-1)  # [..., n, s, s]
    eye = torch.eye(n, dtype=torch.bool, device=Q.device)[:, None, :, None]
    scores = torch.where(eye, diagonal[..., :, :, None, :], torch.zeros_like(diagonal[..., :, :, None, :]))
    if n > 1:
        # query block a >= 1 is anchored at the row before it: the query side decays from the block's
        # start, the entry side (rows of earlier blocks) from its row to the block's start
        own = _exclusive(lam) if strict else _exclusive(lam) + lam
        Qs = Qb[..., 1:, :, :] * torch.exp(own[..., 1:, :, :])
        tail = _exclusive(lam, reverse=True).reshape(*lead, C, K)  # after row i to the end of its block
        totals = lam.sum(-2)  # [..., n, K]
        a, b, b2 = (torch.arange(n, device=Q.device) for _ in range(3))
        between_blocks = ((b[None, :, None] < b2[None, None, :]) & (b2[None, None, :] < a[1:, None, None])).to(
            lam.dtype
        )
        middle = torch.einsum("abc,...ck->...abk", between_blocks, totals)  # [..., n-1, n, K]
        blocks = torch.arange(C, device=Q.device) // s
        gap = tail[..., None, :, :] + middle[..., :, blocks, :]  # [..., n-1, C, K]
        earlier = (blocks[None, :] < torch.arange(1, n, device=Q.device)[:, None])[..., None]  # [n-1, C, 1]
        scaled = A[..., None, :, :] * torch.exp(torch.where(earlier, gap, torch.zeros_like(gap)))
        As = torch.where(earlier, scaled, torch.zeros_like(scaled))
        off = Qs @ As.transpose(-1, -2)  # [..., n-1, s, C]
        off = torch.cat([torch.zeros_like(off[..., :1, :, :]), off], dim=-3)
        scores = scores + off.reshape(*lead, n, s, n, s)
    return scores.reshape(*lead, C, C)


def _pad_chunks(x: torch.Tensor | None, R_pad: int, C: int) -> torch.Tensor | None:
    """[B, H, R, D] -> [B, H, N, C, D], padded with zero rows (identity rows: nothing enters)."""
    if x is None:
        return None
    x = F.pad(x, (0, 0, 0, R_pad - x.shape[-2]))
    return x.reshape(*x.shape[:-2], R_pad // C, C, x.shape[-1])


def run_state(S0, lam, decay: str, W, U, writes, queries, chunk: int):
    """One linear state over all rows: the queries' reads and the final state.

    ``S0`` ``[B, H, K, V]``; ``lam`` ``[B, H, R, 1]`` or ``[B, H, R, K]`` (None for identity);
    ``W``, ``U`` ``[B, H, R, K]`` the correction's query and (scaled) key, or None; ``writes`` a list
    of ``(A [B, H, R, K], B [B, H, R, V])``; ``queries`` a list of ``(Q [B, H, R, K], strict)``.
    Returns ``([Y [B, H, R, V] per query], S_final)``. ``chunk`` rows per chunk (16 for a diagonal decay
    needs a multiple of 16 or fewer rows).
    """
    R = queries[0][0].shape[-2] if queries else writes[0][0].shape[-2]
    C = chunk
    N = -(-R // C)
    R_pad = N * C
    writes = [(_pad_chunks(a, R_pad, C), _pad_chunks(b, R_pad, C)) for a, b in writes]
    queries = [(_pad_chunks(q, R_pad, C), strict) for q, strict in queries]
    W, U = _pad_chunks(W, R_pad, C), _pad_chunks(U, R_pad, C)
    decays = None
    if decay != "identity":
        decays = ChunkDecays(_pad_chunks(lam.clamp(min=log_floor(lam.dtype)), R_pad, C), decay)

    def scale(x, g):  # x * exp(g), or x for the identity
        return x if decays is None else x * torch.exp(g(decays))

    def scores(Q, A, strict):
        return decayed_scores(Q, A, decays, strict)

    def to_end(d):
        return d.to_end

    def before(d):
        return d.before

    carried = [(scale(a, to_end), b) for a, b in writes]  # entries decayed to the chunk end
    local = None  # the state a chunk adds, from its own rows: [B, H, N, K, V]
    for a_end, b in carried:
        local = _add(local, a_end.transpose(-1, -2) @ b)
    if W is not None:
        # corrections: X = Wd S0 + Mcc X + sum Mcw B  ->  X = X_loc + Yw S0
        system = torch.eye(C, dtype=W.dtype, device=W.device) - scores(W, U, True)
        rhs = None
        for a, b in writes:
            rhs = _add(rhs, causal_product(scores(W, a, True), b, True))
        solve = lambda x: torch.linalg.solve_triangular(system, x, upper=False, unitriangular=True)  # noqa: E731
        Yw = _solve_causal(solve, scale(W, before))
        X_loc = _solve_causal(solve, rhs) if rhs is not None else None
        U_end = scale(U, to_end).transpose(-1, -2)
        transition = U_end @ Yw  # [B, H, N, K, K]
        if X_loc is not None:
            local = _add(local, U_end @ X_loc)
    decay_end = None if decays is None else torch.exp(decays.last).transpose(-1, -2)  # [B, H, N, Kd, 1]

    starts = []
    S = S0
    for c in range(N):
        starts.append(S)
        nxt = S if decay_end is None else decay_end[:, :, c] * S
        if W is not None:
            nxt = nxt + transition[:, :, c] @ S
        S = nxt + local[:, :, c] if local is not None else nxt
    starts = torch.stack(starts, dim=2)  # [B, H, N, K, V]

    reads = []
    for Q, strict in queries:
        reader = scale(Q, lambda d: d.query(strict))  # noqa: B023 - used at once
        const = None
        if W is not None:
            P_u = scores(Q, U, strict)
            reader = reader + causal_product(P_u, Yw, strict)
            if X_loc is not None:
                const = causal_product(P_u, X_loc, strict)
        for a, b in writes:
            const = _add(const, causal_product(scores(Q, a, strict), b, strict))
        y = reader @ starts
        y = y + const if const is not None else y
        reads.append(y.reshape(*y.shape[:2], R_pad, y.shape[-1])[:, :, :R])
    return reads, S


def _add(total, x):
    return x if total is None else total + x


def _solve_causal(solve, rhs: torch.Tensor) -> torch.Tensor:
    """A unit lower-triangular solve whose non-finite right-hand rows reach only the rows after them."""
    bad = ~torch.isfinite(rhs)
    if not bool(bad.any()):
        return solve(rhs)
    seen = bad.to(rhs.dtype).cumsum(-2) > 0
    clean = solve(torch.where(bad, torch.zeros_like(rhs), rhs))
    return torch.where(seen, torch.full_like(clean, float("nan")), clean)
