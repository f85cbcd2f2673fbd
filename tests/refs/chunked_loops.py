"""Float64 loops for the chunked cells of ``tests/chunked_cells.py``, from the papers' equations.

Nothing here imports ``rnnc``. Layout as in ``loops.py``: inputs ``[B, T, NH, *shape]``, weights
``[NH, *shape]``, initial states ``[B, NH, *shape]`` passed as ``<state>0=``; each returns
``(outputs, final_states)`` keyed by the ``.rnn`` names. One Python iteration per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _zeros(s0, shape, like):
    return like.new_zeros(shape) if s0 is None else s0


def _read(q: Tensor, S: Tensor) -> Tensor:
    """q^T S: [B, NH, K] x [B, NH, K, V] -> [B, NH, V]."""
    return torch.einsum("bhk,bhkv->bhv", q, S)


def _outer(a: Tensor, b: Tensor) -> Tensor:
    return a[..., :, None] * b[..., None, :]


def _head(w: Tensor) -> Tensor:
    """A weight [NH, ...] broadcast over the batch."""
    return w[None]


def la_norm(q, k, v, S0=None, z0=None):
    """Linear attention with its normaliser (Katharopoulos et al. 2020, eq. 6):
    S_t = S_{t-1} + k_t v_t^T, z_t = z_{t-1} + k_t, o_t = S_t^T q_t / (z_t^T q_t)."""
    B, T, NH, K = q.shape
    S = _zeros(S0, (B, NH, K, v.shape[-1]), q)
    z = _zeros(z0, (B, NH, K), q)
    os = []
    for t in range(T):
        S = S + _outer(k[:, t], v[:, t])
        z = z + k[:, t]
        os.append(_read(q[:, t], S) / (q[:, t] * z).sum(-1, keepdim=True))
    return {"o": torch.stack(os, 1)}, {"S": S, "z": z}


def mlstm(q, k, v, i, f, go, C0=None, n0=None, m0=None):
    """Stabilised mLSTM (Beck et al. 2024, xLSTM, sec. 2.3 and appendix): log forget logsigmoid(f),
    m_t = max(log f_t + m_{t-1}, i_t), i'_t = exp(i_t - m_t), f'_t = exp(log f_t + m_{t-1} - m_t),
    C_t = f' C + i' k v^T, n_t = f' n + i' k, h_t = sigmoid(go) * (C_t^T q) / max(|n_t^T q|, exp(-m_t))."""
    B, T, NH, K = q.shape
    C = _zeros(C0, (B, NH, K, v.shape[-1]), q)
    n = _zeros(n0, (B, NH, K), q)
    m = _zeros(m0, (B, NH), q)
    hs = []
    for t in range(T):
        log_f = F.logsigmoid(f[:, t])
        m_new = torch.maximum(log_f + m, i[:, t])
        i_gate = torch.exp(i[:, t] - m_new)
        f_gate = torch.exp(log_f + m - m_new)
        C = f_gate[..., None, None] * C + i_gate[..., None, None] * _outer(k[:, t], v[:, t])
        n = f_gate[..., None] * n + i_gate[..., None] * k[:, t]
        m = m_new
        denominator = torch.maximum((n * q[:, t]).sum(-1).abs(), torch.exp(-m))
        hs.append(torch.sigmoid(go[:, t]) * _read(q[:, t], C) / denominator[..., None])
    return {"h": torch.stack(hs, 1)}, {"C": C, "n": n, "m": m}


def rwkv6(r, k, v, w, u, S0=None):
    """RWKV-6 (Peng et al. 2024, Eagle/Finch eq. 19-20): wkv_t = S_{t-1} + diag(u) k_t v_t^T read by r_t,
    o_t = r_t^T (S_{t-1} + diag(u) k v^T), S_t = diag(exp(-exp(w_t))) S_{t-1} + k_t v_t^T."""
    B, T, NH, K = r.shape
    S = _zeros(S0, (B, NH, K, v.shape[-1]), r)
    os = []
    for t in range(T):
        bonus = _outer(_head(u) * k[:, t], v[:, t])
        os.append(_read(r[:, t], S + bonus))
        S = torch.exp(-torch.exp(w[:, t]))[..., None] * S + _outer(k[:, t], v[:, t])
    return {"o": torch.stack(os, 1)}, {"S": S}


def mamba2(x, dt, B, C, A_log, D, S0=None):
    """Mamba-2's SSD recurrence (Dao & Gu 2024, eq. 1 with a scalar A per head): with a = -exp(A_log),
    h_t = exp(dt_t a) h_{t-1} + dt_t B_t x_t^T ([N, P]), y_t = h_t^T C_t + D x_t."""
    Bsz, T, NH, P = x.shape
    N = B.shape[-1]
    S = _zeros(S0, (Bsz, NH, N, P), x)
    a = -torch.exp(A_log)[None]
    ys = []
    for t in range(T):
        S = torch.exp(dt[:, t] * a)[..., None, None] * S + dt[:, t][..., None, None] * _outer(B[:, t], x[:, t])
        ys.append(_read(C[:, t], S) + D[None, :, None] * x[:, t])
    return {"y": torch.stack(ys, 1)}, {"S": S}


def hgrn2(q, f, v, lb, S0=None):
    """HGRN2 (Qin et al. 2024, eq. 6-7): forget gate with a lower bound, f_t = lb + (1 - lb) sigmoid(f),
    S_t = diag(f_t) S_{t-1} + (1 - f_t) v_t^T, o_t = S_t^T q_t."""
    B, T, NH, K = q.shape
    S = _zeros(S0, (B, NH, K, v.shape[-1]), q)
    os = []
    for t in range(T):
        gate = _head(lb) + (1 - _head(lb)) * torch.sigmoid(f[:, t])
        S = gate[..., None] * S + _outer(1 - gate, v[:, t])
        os.append(_read(q[:, t], S))
    return {"o": torch.stack(os, 1)}, {"S": S}


def square(q, k, v, g, S0=None):
    """A square state [D, D] with a per-channel decay and a skip: S = diag(exp(g)) S + k v^T, o = S^T q + v."""
    B, T, NH, D = q.shape
    S = _zeros(S0, (B, NH, D, D), q)
    os = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None] * S + _outer(k[:, t], v[:, t])
        os.append(_read(q[:, t], S) + v[:, t])
    return {"o": torch.stack(os, 1)}, {"S": S}


def rwkv7(r, w, k, v, kk, a, rk, S0=None):
    """RWKV-7 (Peng et al. 2025, eq. 17-18), state transposed to [K, V]:
    decay w_t = exp(-exp(-0.5) sigmoid(w)), S_t = (diag(w_t) - (a_t * kk_t) kk_t^T) S_{t-1} + k_t v_t^T,
    o_t = S_t^T r_t + (r_t . (rk * k_t)) v_t."""
    B, T, NH, K = r.shape
    S = _zeros(S0, (B, NH, K, v.shape[-1]), r)
    os = []
    for t in range(T):
        decay = torch.exp(-math.exp(-0.5) * torch.sigmoid(w[:, t]))
        removal = _outer(a[:, t] * kk[:, t], _read(kk[:, t], S))
        S = decay[..., None] * S - removal + _outer(k[:, t], v[:, t])
        bonus = (r[:, t] * _head(rk) * k[:, t]).sum(-1, keepdim=True) * v[:, t]
        os.append(_read(r[:, t], S) + bonus)
    return {"o": torch.stack(os, 1)}, {"S": S}


def gated_deltaproduct(q, k1, k2, v1, v2, b1, b2, g, S0=None):
    """Gated DeltaProduct with two Householder steps per token (Siems et al. 2025, eq. 5 with a gate):
    S <- exp(g) S, then for j = 1, 2: S <- S + b_j k_j (v_j - S^T k_j)^T; o = S^T q."""
    B, T, NH, K = q.shape
    S = _zeros(S0, (B, NH, K, v1.shape[-1]), q)
    os = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S
        for kj, vj, bj in ((k1, v1, b1), (k2, v2, b2)):
            err = vj[:, t] - _read(kj[:, t], S)
            S = S + bj[:, t][..., None, None] * _outer(kj[:, t], err)
        os.append(_read(q[:, t], S))
    return {"o": torch.stack(os, 1)}, {"S": S}


def kda(q, k, v, g, beta, S0=None):
    """Kimi Delta Attention (Kimi Linear, 2025, eq. 1): S_t = (I - beta k k^T) diag(exp(g_t)) S_{t-1} + beta k v^T,
    o_t = S_t^T q_t."""
    B, T, NH, K = q.shape
    S = _zeros(S0, (B, NH, K, v.shape[-1]), q)
    os = []
    for t in range(T):
        decayed = torch.exp(g[:, t])[..., None] * S
        bt = beta[:, t][..., None, None]
        S = decayed - bt * _outer(k[:, t], _read(k[:, t], decayed)) + bt * _outer(k[:, t], v[:, t])
        os.append(_read(q[:, t], S))
    return {"o": torch.stack(os, 1)}, {"S": S}


REFS = {
    "la_norm": la_norm,
    "mlstm": mlstm,
    "rwkv6": rwkv6,
    "mamba2": mamba2,
    "hgrn2": hgrn2,
    "square": square,
    "rwkv7": rwkv7,
    "gated_deltaproduct": gated_deltaproduct,
    "kda": kda,
}


def run(cell: str, args: dict, state: dict | None = None):
    """Call the loop for ``cell`` with ``.rnn``-named inputs and weights and initial ``state``."""
    kw = dict(args)
    for name, value in (state or {}).items():
        kw[name + "0"] = value
    return REFS[cell](**kw)
