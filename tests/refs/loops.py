"""Float64 reference loops for every cell in ``examples/``.

Written from the papers' equations and the ``.rnn`` files, independently of ``rnnc``.
Plain torch ops (autograd works through them), one Python iteration per time step,
vectorised over batch B and heads NH.

Layout (the rnnc contract): inputs ``[B, T, NH, *shape]``, weights ``[NH, *shape]``,
initial / final states ``[B, NH, *shape]``; scalar-shaped ``[]`` inputs are ``[B, T, NH]``
and scalar weights ``[NH]``.  Every function returns ``(outputs, final_states)``: two dicts
keyed by the names used in the ``.rnn`` file, outputs ``[B, T, NH, *shape]``.
Missing initial states are zeros.  Computation happens in the inputs' dtype (use float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = [
    "lstm",
    "elman",
    "gru",
    "slstm",
    "hgrn",
    "mingru",
    "mamba",
    "linear_attention",
    "retnet",
    "simple_gla",
    "gla",
    "deltanet",
    "gated_deltanet",
    "lti",
    "REFS",
    "run",
]


def _init(s0: Tensor | None, like: Tensor, shape) -> Tensor:
    if s0 is not None:
        return s0
    return like.new_zeros(shape)


def _matvec(W: Tensor, v: Tensor) -> Tensor:
    """(W @ v) over the last axis with a leading per-head weight.

    W: [NH, *lead, I, J], v: [B, NH, J] -> [B, NH, *lead, I]; out[..., i] = sum_j W[..., i, j] v[j].
    """
    lead = W.dim() - 3  # axes between NH and (I, J)
    vv = v.reshape(v.shape[0], v.shape[1], *([1] * lead), 1, v.shape[2])
    return (W.unsqueeze(0) * vv).sum(-1)


def _stack(xs: list[Tensor]) -> Tensor:
    return torch.stack(xs, dim=1)


# ----------------------------------------------------------------------------------------
# Nonlinear recurrences
# ----------------------------------------------------------------------------------------


def lstm(x, R, b, h0=None, c0=None):
    """LSTM, gates i, f, z, o (PyTorch's i, f, g, o): x [B,T,NH,4,H], R [NH,4,H,H], b [NH,4,H]."""
    B, T, NH, _, H = x.shape
    h = _init(h0, x, (B, NH, H))
    c = _init(c0, x, (B, NH, H))
    hs = []
    for t in range(T):
        pre = x[:, t] + _matvec(R, h) + b  # [B, NH, 4, H]
        i, f, z, o = pre.unbind(2)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
        h = torch.sigmoid(o) * torch.tanh(c)
        hs.append(h)
    return {"h": _stack(hs)}, {"h": h, "c": c}


def elman(x, R, b, h0=None):
    """Elman RNN (tanh): h = tanh(x + R h + b); x [B,T,NH,H], R [NH,H,H], b [NH,H]."""
    B, T, NH, H = x.shape
    h = _init(h0, x, (B, NH, H))
    hs = []
    for t in range(T):
        h = torch.tanh(x[:, t] + _matvec(R, h) + b)
        hs.append(h)
    return {"h": _stack(hs)}, {"h": h}


def gru(x, R, b, h0=None):
    """GRU, PyTorch's variant (Cho et al. 2014 with the reset gate after the recurrent matmul).

    x [B,T,NH,3,H] holds the input projections (with input bias) for gates r, z, n;
    R [NH,3,H,H], b [NH,3,H] are the recurrent weight and bias for r, z, n.
    r = sig(x_r + R_r h + b_r); z = sig(x_z + R_z h + b_z); n = tanh(x_n + r * (R_n h + b_n));
    h' = (1 - z) n + z h.
    """
    B, T, NH, _, H = x.shape
    h = _init(h0, x, (B, NH, H))
    hs = []
    for t in range(T):
        xr, xz, xn = x[:, t].unbind(2)
        hr, hz, hn = (_matvec(R, h) + b).unbind(2)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = (1 - z) * n + z * h
        hs.append(h)
    return {"h": _stack(hs)}, {"h": h}


def slstm(x, R, b, h0=None, c0=None, n0=None, m0=None):
    """sLSTM (xLSTM, Beck et al. 2024) with exponential input gate, sigmoid forget gate in
    log space, stabiliser m and normaliser n.  Gates i, f, z, o.

    Per element: m' = where(n == 0, i, max(i, m + logsigmoid(f)));
    i_g = exp(i - m'); f_g = exp(m + logsigmoid(f) - m');
    c' = f_g c + i_g tanh(z); n' = f_g n + i_g; h' = sigmoid(o) c' / n'.
    """
    B, T, NH, _, H = x.shape
    h = _init(h0, x, (B, NH, H))
    c = _init(c0, x, (B, NH, H))
    n = _init(n0, x, (B, NH, H))
    m = _init(m0, x, (B, NH, H))
    hs = []
    for t in range(T):
        i, f, z, o = (x[:, t] + _matvec(R, h) + b).unbind(2)
        log_f_plus_m = m + F.logsigmoid(f)
        m = torch.where(n == 0, i, torch.maximum(i, log_f_plus_m))
        i_gate = torch.exp(i - m)
        f_gate = torch.exp(log_f_plus_m - m)
        c = f_gate * c + i_gate * torch.tanh(z)
        n = f_gate * n + i_gate
        h = torch.sigmoid(o) * c / n
        hs.append(h)
    return {"h": _stack(hs)}, {"h": h, "c": c, "n": n, "m": m}


# ----------------------------------------------------------------------------------------
# Elementwise linear recurrences
# ----------------------------------------------------------------------------------------


def hgrn(x, g, h0=None):
    """HGRN (Qin et al. 2023): h = exp(g) h + x, g <= 0 the log forget gate; x, g [B,T,NH,D]."""
    B, T, NH, D = x.shape
    h = _init(h0, x, (B, NH, D))
    hs = []
    for t in range(T):
        h = torch.exp(g[:, t]) * h + x[:, t]
        hs.append(h)
    return {"h": _stack(hs)}, {"h": h}


def mingru(gz, hc, h0=None):
    """minGRU (Feng et al. 2024): z = sigmoid(gz); h = (1 - z) h + z hc; gz, hc [B,T,NH,H]."""
    B, T, NH, H = gz.shape
    h = _init(h0, gz, (B, NH, H))
    hs = []
    for t in range(T):
        z = torch.sigmoid(gz[:, t])
        h = (1 - z) * h + z * hc[:, t]
        hs.append(h)
    return {"h": _stack(hs)}, {"h": h}


def mamba(u, dt, B, C, A, Dskip, S0=None):
    """Mamba's selective SSM (S6, Gu & Dao 2023): ZOH on A, Euler on B.

    u, dt [Bt,T,NH,D]; B, C [Bt,T,NH,N]; A [NH,D,N] (negative); Dskip [NH,D]; S [Bt,NH,D,N].
    S = exp(dt[:, None] A) S + (dt u)[:, None] B[None, :];  y = S @ C + Dskip u.
    """
    Bt, T, NH, D = u.shape
    N = B.shape[-1]
    S = _init(S0, u, (Bt, NH, D, N))
    ys = []
    for t in range(T):
        dt_t, u_t = dt[:, t], u[:, t]  # [Bt, NH, D]
        decay = torch.exp(dt_t.unsqueeze(-1) * A)  # [Bt, NH, D, N]
        S = decay * S + (dt_t * u_t).unsqueeze(-1) * B[:, t].unsqueeze(-2)
        y = (S * C[:, t].unsqueeze(-2)).sum(-1) + Dskip * u_t
        ys.append(y)
    return {"y": _stack(ys)}, {"S": S}


# ----------------------------------------------------------------------------------------
# Matrix-state linear recurrences (q, k [B,T,NH,K]; v [B,T,NH,V]; S [B,NH,K,V]; o = q @ S
# read after the update, no 1/sqrt(K) scale)
# ----------------------------------------------------------------------------------------


def _read(q_t: Tensor, S: Tensor) -> Tensor:
    return (q_t.unsqueeze(-1) * S).sum(-2)  # [B,NH,K] x [B,NH,K,V] -> [B,NH,V]


def _outer(k_t: Tensor, v_t: Tensor) -> Tensor:
    return k_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # [B,NH,K,V]


def _matrix_state(q, v, S0):
    B, T, NH, K = q.shape
    V = v.shape[-1]
    return _init(S0, q, (B, NH, K, V))


def linear_attention(q, k, v, S0=None):
    """Unnormalised linear attention (Katharopoulos et al. 2020): S = S + k v^T; o = q S."""
    S = _matrix_state(q, v, S0)
    os = []
    for t in range(q.shape[1]):
        S = S + _outer(k[:, t], v[:, t])
        os.append(_read(q[:, t], S))
    return {"o": _stack(os)}, {"S": S}


def retnet(q, k, v, log_gamma, S0=None):
    """RetNet retention, recurrent form (Sun et al. 2023): S = gamma S + k v^T, o = q S,
    with gamma = exp(log_gamma) one per head; log_gamma [NH]."""
    S = _matrix_state(q, v, S0)
    gamma = torch.exp(log_gamma)[None, :, None, None]
    os = []
    for t in range(q.shape[1]):
        S = gamma * S + _outer(k[:, t], v[:, t])
        os.append(_read(q[:, t], S))
    return {"o": _stack(os)}, {"S": S}


def simple_gla(q, k, v, g, S0=None):
    """Scalar data-dependent decay per head and step: S = exp(g) S + k v^T; g [B,T,NH] <= 0."""
    S = _matrix_state(q, v, S0)
    os = []
    for t in range(q.shape[1]):
        S = torch.exp(g[:, t])[..., None, None] * S + _outer(k[:, t], v[:, t])
        os.append(_read(q[:, t], S))
    return {"o": _stack(os)}, {"S": S}


def gla(q, k, v, g, S0=None):
    """Gated linear attention (Yang et al. 2024): S = diag(exp(g)) S + k v^T; g [B,T,NH,K]."""
    S = _matrix_state(q, v, S0)
    os = []
    for t in range(q.shape[1]):
        S = torch.exp(g[:, t]).unsqueeze(-1) * S + _outer(k[:, t], v[:, t])
        os.append(_read(q[:, t], S))
    return {"o": _stack(os)}, {"S": S}


def deltanet(q, k, v, beta, S0=None):
    """DeltaNet (Schlag et al. 2021; Yang et al. 2024): S = S + beta k (v - k^T S)^T; beta [B,T,NH]."""
    S = _matrix_state(q, v, S0)
    os = []
    for t in range(q.shape[1]):
        k_t = k[:, t]
        err = v[:, t] - _read(k_t, S)  # v - k @ S   [B,NH,V]
        S = S + beta[:, t][..., None, None] * _outer(k_t, err)
        os.append(_read(q[:, t], S))
    return {"o": _stack(os)}, {"S": S}


def gated_deltanet(q, k, v, g, beta, S0=None):
    """Gated DeltaNet (Yang et al. 2025): S = exp(g) (I - beta k k^T) S + beta k v^T;
    g, beta [B,T,NH]."""
    S = _matrix_state(q, v, S0)
    os = []
    for t in range(q.shape[1]):
        k_t = k[:, t]
        bt = beta[:, t][..., None, None]
        S = torch.exp(g[:, t])[..., None, None] * (S - bt * _outer(k_t, _read(k_t, S))) + bt * _outer(k_t, v[:, t])
        os.append(_read(q[:, t], S))
    return {"o": _stack(os)}, {"S": S}


# ----------------------------------------------------------------------------------------
# Dense linear time-invariant system
# ----------------------------------------------------------------------------------------


def lti(u, A, Bu, Cy, m0=None):
    """m = A m + Bu u; y = Cy * m (elementwise).  u [B,T,NH,M], A [NH,N,N], Bu [NH,N,M],
    Cy [NH,N], m [B,NH,N]."""
    B, T, NH, M = u.shape
    N = A.shape[-1]
    m = _init(m0, u, (B, NH, N))
    ys = []
    for t in range(T):
        m = _matvec(A, m) + _matvec(Bu, u[:, t])
        ys.append(Cy * m)
    return {"y": _stack(ys)}, {"m": m}


REFS = {
    "lstm": lstm,
    "elman": elman,
    "gru": gru,
    "slstm": slstm,
    "hgrn": hgrn,
    "mingru": mingru,
    "mamba": mamba,
    "linear_attention": linear_attention,
    "retnet": retnet,
    "simple_gla": simple_gla,
    "gla": gla,
    "deltanet": deltanet,
    "gated_deltanet": gated_deltanet,
    "lti": lti,
}


def run(cell: str, args: dict, state: dict | None = None):
    """Call the loop for ``cell`` with ``args`` keyed by the ``.rnn`` names (inputs and
    weights) and ``state`` keyed by state names (initial values; missing ones are zeros)."""
    kw = dict(args)
    for name, value in (state or {}).items():
        kw[name + "0"] = value
    return REFS[cell](**kw)
