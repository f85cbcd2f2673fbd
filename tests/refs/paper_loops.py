"""Float64 reference loops for the cells of recent papers (``examples/``, beyond the classic zoo).

Each loop is written from the paper's equations (cited in its docstring), not from the ``.rnn``
file and not from rnnc: one Python iteration per step, plain torch ops (autograd works through
them), vectorised over batch B and heads NH. Layout as in ``loops.py``: inputs
``[B, T, NH, *shape]``, weights ``[NH, *shape]``, initial / final states ``[B, NH, *shape]``
given as ``<state>0=`` (missing ones are zeros); each returns ``(outputs, final_states)`` keyed
by the ``.rnn`` names. Matrix-vector products are written with ``einsum`` so that the
orientation of every state is explicit. Nonlinear and elementwise cells are in
``paper_loops_vector.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def zeros_if_none(s0: Tensor | None, like: Tensor, *shape: int) -> Tensor:
    """The initial state, or zeros ``[B, NH, *shape]`` in ``like``'s dtype."""
    return like.new_zeros(like.shape[0], like.shape[2], *shape) if s0 is None else s0


def stack(xs: list[Tensor]) -> Tensor:
    """Per-step ``[B, NH, ...]`` values as ``[B, T, NH, ...]``."""
    return torch.stack(xs, dim=1)


def per_head(s: Tensor) -> Tensor:
    """A per-step scalar ``[B, NH]`` broadcast against ``[B, NH, X, Y]``."""
    return s[..., None, None]


def mlstm(q, k, v, i, f, o, C0=None, n0=None, m0=None):
    """xLSTM's mLSTM (Beck et al. 2024, eqs. 19-27 and the stabilised gates of App. A.2).

    C_t = f'_t C_{t-1} + i'_t v_t k_t^T with C [V, K]; n_t = f'_t n_{t-1} + i'_t k_t; k_t scaled
    by 1/sqrt(d_k); m_t = max(log sigma(f~_t) + m_{t-1}, i~_t), i'_t = exp(i~_t - m_t),
    f'_t = exp(log sigma(f~_t) + m_{t-1} - m_t); h_t = sigma(o~_t) * C_t q_t / max(|n_t^T q_t|, e^{-m_t}).
    """
    K, V = q.shape[-1], v.shape[-1]
    C, n = zeros_if_none(C0, q, V, K), zeros_if_none(n0, q, K)
    m = zeros_if_none(m0, q)
    hs = []
    for t in range(q.shape[1]):
        log_f = F.logsigmoid(f[:, t])
        m_new = torch.maximum(log_f + m, i[:, t])
        f_act, i_act = torch.exp(log_f + m - m_new), torch.exp(i[:, t] - m_new)
        k_t = k[:, t] / K**0.5
        C = per_head(f_act) * C + per_head(i_act) * torch.einsum("bhv,bhk->bhvk", v[:, t], k_t)
        n = f_act[..., None] * n + i_act[..., None] * k_t
        m = m_new
        num = torch.einsum("bhvk,bhk->bhv", C, q[:, t])
        den = torch.maximum(torch.einsum("bhk,bhk->bh", n, q[:, t]).abs(), torch.exp(-m))
        hs.append(torch.sigmoid(o[:, t]) * num / den[..., None])
    return {"h": stack(hs)}, {"C": C, "n": n, "m": m}


def mlstm_unstabilised(q, k, v, i, f, o, C0=None, n0=None):
    """mLSTM as eqs. 19-27 write it, without the stabiliser: i = exp(i~), f = sigma(f~),
    C_t = f C_{t-1} + i v k^T, n_t = f n_{t-1} + i k, h = sigma(o~) C_t q / max(|n_t^T q|, 1)."""
    K, V = q.shape[-1], v.shape[-1]
    C, n = zeros_if_none(C0, q, V, K), zeros_if_none(n0, q, K)
    hs = []
    for t in range(q.shape[1]):
        f_gate, i_gate, k_t = torch.sigmoid(f[:, t]), torch.exp(i[:, t]), k[:, t] / K**0.5
        C = per_head(f_gate) * C + per_head(i_gate) * torch.einsum("bhv,bhk->bhvk", v[:, t], k_t)
        n = f_gate[..., None] * n + i_gate[..., None] * k_t
        den = torch.einsum("bhk,bhk->bh", n, q[:, t]).abs().clamp_min(1.0)
        hs.append(torch.sigmoid(o[:, t]) * torch.einsum("bhvk,bhk->bhv", C, q[:, t]) / den[..., None])
    return {"h": stack(hs)}, {"C": C, "n": n}


def rwkv6(r, k, v, d, u, S0=None):
    """RWKV-6 (Peng et al. 2024, eqs. 17-20): o_t = r_t (S_{t-1} + diag(u) k_t^T v_t),
    S_t = diag(w_t) S_{t-1} + k_t^T v_t, w_t = exp(-exp(d_t)); S [K, V]."""
    S = zeros_if_none(S0, r, r.shape[-1], v.shape[-1])
    os = []
    for t in range(r.shape[1]):
        kv = torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        os.append(torch.einsum("bhk,bhkv->bhv", r[:, t], S + u[None, :, :, None] * kv))
        S = torch.exp(-torch.exp(d[:, t]))[..., None] * S + kv
    return {"o": stack(os)}, {"S": S}


def rwkv7(r, k, v, d, a, xi, alpha, S0=None):
    """RWKV-7 (Peng et al. 2025, Sec. 4) with the paper's [V, K] state:
    wkv_t = wkv_{t-1} (diag(w_t) - kh_t^T (a_t * kh_t)) + v_t^T kt_t, y_t = wkv_t r_t^T, where
    w_t = exp(-e^{-1/2} sigma(d_t)), kh = normalise(k * xi), kt = k * lerp(1, a, alpha)."""
    K, V = k.shape[-1], v.shape[-1]
    S = zeros_if_none(S0, k, V, K)
    ys = []
    for t in range(k.shape[1]):
        w = torch.exp(-torch.exp(torch.tensor(-0.5, dtype=k.dtype)) * torch.sigmoid(d[:, t]))
        kap = k[:, t] * xi
        kh = kap / kap.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        kt = k[:, t] * torch.lerp(torch.ones_like(a[:, t]), a[:, t], alpha)
        transition = torch.diag_embed(w) - torch.einsum("bhi,bhj->bhij", kh, a[:, t] * kh)  # [K, K]
        S = S @ transition + torch.einsum("bhv,bhk->bhvk", v[:, t], kt)
        ys.append(torch.einsum("bhvk,bhk->bhv", S, r[:, t]))
    return {"y": stack(ys)}, {"S": S}


def mamba2(x, dt, B, C, A, Dskip, h0=None):
    """Mamba-2 / SSD (Dao & Gu 2024): h_t = exp(Delta_t A) h_{t-1} + (Delta_t x_t) B_t^T, h [P, N],
    y_t = h_t C_t + D x_t, Delta_t = softplus(dt_t), A and D scalars per head."""
    h = zeros_if_none(h0, x, x.shape[-1], B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        delta = F.softplus(dt[:, t])  # [Bt, NH]
        h = per_head(torch.exp(delta * A)) * h + torch.einsum("bhp,bhn->bhpn", delta[..., None] * x[:, t], B[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]) + Dskip[:, None] * x[:, t])
    return {"y": stack(ys)}, {"h": h}


def hgrn2(q, fx, i, lb, S0=None):
    """HGRN2 (Qin et al. 2024): f_t = lb + (1 - lb) sigma(fx_t); S_t = diag(f_t) S_{t-1} + (1 - f_t) i_t^T;
    o_t = q_t S_t; S [K, V]."""
    S = zeros_if_none(S0, q, q.shape[-1], i.shape[-1])
    os = []
    for t in range(q.shape[1]):
        forget = lb + (1 - lb) * torch.sigmoid(fx[:, t])
        S = forget[..., None] * S + torch.einsum("bhk,bhv->bhkv", 1 - forget, i[:, t])
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return {"o": stack(os)}, {"S": S}


def titans(q, k, v, eta, theta, alpha, M0=None, S0=None):
    """Titans' linear memory with momentum (Behrouz et al. 2025, eqs. 9-13): with
    grad = d/dM ||M k_t - v_t||^2 = 2 (M_{t-1} k_t - v_t) k_t^T,  S_t = eta_t S_{t-1} - theta_t grad,
    M_t = (1 - alpha_t) M_{t-1} + S_t, y_t = M_t q_t; M, S [V, K]."""
    K, V = k.shape[-1], v.shape[-1]
    M, S = zeros_if_none(M0, k, V, K), zeros_if_none(S0, k, V, K)
    ys = []
    for t in range(k.shape[1]):
        residual = torch.einsum("bhvk,bhk->bhv", M, k[:, t]) - v[:, t]
        grad = 2 * torch.einsum("bhv,bhk->bhvk", residual, k[:, t])
        S = per_head(eta[:, t]) * S - per_head(theta[:, t]) * grad
        M = per_head(1 - alpha[:, t]) * M + S
        ys.append(torch.einsum("bhvk,bhk->bhv", M, q[:, t]))
    return {"y": stack(ys)}, {"M": M, "S": S}


def _householder(k: Tensor, beta: Tensor) -> Tensor:
    """I - beta k k^T per batch and head: [B, NH, K, K]."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    return eye - per_head(beta) * torch.einsum("bhi,bhj->bhij", k, k)


def gated_deltaproduct(q, k1, k2, v1, v2, b1, b2, g, S0=None):
    """Gated DeltaProduct, two Householder steps (Siems et al. 2025, Sec. 3), as matrices:
    A_t = (I - b2 k2 k2^T)(I - b1 k1 k1^T) exp(g_t), B_t = (I - b2 k2 k2^T) b1 k1 v1^T + b2 k2 v2^T,
    H_t = A_t H_{t-1} + B_t, o_t = H_t^T q_t; H [K, V]."""
    S = zeros_if_none(S0, q, q.shape[-1], v1.shape[-1])
    os = []
    for t in range(q.shape[1]):
        h1, h2 = _householder(k1[:, t], b1[:, t]), _householder(k2[:, t], b2[:, t])
        w1 = per_head(b1[:, t]) * torch.einsum("bhk,bhv->bhkv", k1[:, t], v1[:, t])
        w2 = per_head(b2[:, t]) * torch.einsum("bhk,bhv->bhkv", k2[:, t], v2[:, t])
        S = h2 @ h1 @ (per_head(torch.exp(g[:, t])) * S) + h2 @ w1 + w2
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return {"o": stack(os)}, {"S": S}


def kda(q, k, v, alpha, beta, S0=None):
    """Kimi Delta Attention (Kimi Linear, eq. 1): S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1}
    + beta_t k_t v_t^T, o_t = S_t^T q_t; S [K, V]."""
    S = zeros_if_none(S0, q, q.shape[-1], v.shape[-1])
    os = []
    for t in range(q.shape[1]):
        S = _householder(k[:, t], beta[:, t]) @ torch.diag_embed(alpha[:, t]) @ S + per_head(beta[:, t]) * torch.einsum(
            "bhk,bhv->bhkv", k[:, t], v[:, t]
        )
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return {"o": stack(os)}, {"S": S}


def gated_deltanet_matrix(q, k, v, g, beta, S0=None):
    """Gated DeltaNet (Yang et al. 2025, eq. 10) as a product of matrices:
    S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t."""
    S = zeros_if_none(S0, q, q.shape[-1], v.shape[-1])
    os = []
    for t in range(q.shape[1]):
        decayed = per_head(torch.exp(g[:, t])) * (_householder(k[:, t], beta[:, t]) @ S)
        S = decayed + per_head(beta[:, t]) * torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return {"o": stack(os)}, {"S": S}


def deltanet_matrix(q, k, v, beta, S0=None):
    """DeltaNet (Schlag et al. 2021): S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
    o_t = S_t^T q_t (any K, V; the square-state cell takes K = V = D)."""
    g = beta.new_zeros(beta.shape)
    return gated_deltanet_matrix(q, k, v, g, beta, S0)


def linear_attention_normalised(q, k, v, S0=None, z0=None):
    """Linear attention with its normaliser (Katharopoulos et al. 2020, eqs. 18-20):
    phi = elu + 1, S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t),
    o_t = phi(q_t)^T S_t / phi(q_t)^T z_t."""
    S, z = zeros_if_none(S0, q, q.shape[-1], v.shape[-1]), zeros_if_none(z0, q, q.shape[-1])
    os = []
    for t in range(q.shape[1]):
        fq, fk = F.elu(q[:, t]) + 1, F.elu(k[:, t]) + 1
        S = S + torch.einsum("bhk,bhv->bhkv", fk, v[:, t])
        z = z + fk
        os.append(torch.einsum("bhk,bhkv->bhv", fq, S) / torch.einsum("bhk,bhk->bh", fq, z)[..., None])
    return {"o": stack(os)}, {"S": S, "z": z}


def ema_gla(q, k, v, g, a, c0=None, S0=None):
    """An EMA of the values, c_t = r_t c_{t-1} + (1 - r_t) v_t with r = sigma(a), written into a GLA
    memory (Yang et al. 2024): S_t = diag(exp(g_t)) S_{t-1} + k_t c_t^T, o_t = q_t S_t."""
    c, S = zeros_if_none(c0, v, v.shape[-1]), zeros_if_none(S0, q, q.shape[-1], v.shape[-1])
    os, cs = [], []
    for t in range(q.shape[1]):
        r = torch.sigmoid(a[:, t])
        c = r * c + (1 - r) * v[:, t]
        S = torch.exp(g[:, t])[..., None] * S + torch.einsum("bhk,bhv->bhkv", k[:, t], c)
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
        cs.append(c)
    return {"o": stack(os), "c": stack(cs)}, {"c": c, "S": S}


def delta_monitor(q, k, v, beta, S0=None):
    """DeltaNet that also emits the prediction error of the memory before the update,
    e_t = v_t - S_{t-1}^T k_t; S_t = S_{t-1} + beta_t k_t e_t^T; o_t = S_t^T q_t."""
    S = zeros_if_none(S0, q, q.shape[-1], v.shape[-1])
    errs, os = [], []
    for t in range(q.shape[1]):
        err = v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)
        S = S + per_head(beta[:, t]) * torch.einsum("bhk,bhv->bhkv", k[:, t], err)
        errs.append(err)
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return {"err": stack(errs), "o": stack(os)}, {"S": S}


def eagle(r, k, v, omega, u, S0=None):
    """RWKV-5 Eagle (Peng et al. 2024, the Eagle time mixing) as the paper's sum over the prefix, not as a
    recurrence: with the static decay w = exp(-exp(omega)) per key channel,
    wkv_t = diag(u) k_t^T v_t + sum_{i<t} diag(w)^{t-1-i} k_i^T v_i + diag(w)^t S_0, o_t = r_t wkv_t,
    and the final state S_T = sum_{i<T} diag(w)^{T-1-i} k_i^T v_i + diag(w)^T S_0; S [K, V]."""
    T = r.shape[1]
    S0 = zeros_if_none(S0, r, r.shape[-1], v.shape[-1])
    log_w = -torch.exp(omega)  # [NH, K]
    kv = torch.einsum("bthk,bthv->bthkv", k, v)

    def prefix(t):  # sum_{i<t} diag(w)^{t-1-i} k_i^T v_i + diag(w)^t S_0
        powers = (t - 1 - torch.arange(t, dtype=r.dtype))[None, :, None, None, None]
        decay = torch.exp(powers * log_w[None, None, :, :, None])  # [1, t, NH, K, 1]
        return (decay * kv[:, :t]).sum(1) + torch.exp(t * log_w)[None, :, :, None] * S0

    os = [torch.einsum("bhk,bhkv->bhv", r[:, t], prefix(t) + u[None, :, :, None] * kv[:, t]) for t in range(T)]
    return {"o": stack(os)}, {"S": prefix(T)}


def deltanet_l2(q, k, v, b, S0=None):
    """DeltaNet with L2-normalised keys and queries (Yang et al. 2024, Sec. 2.2, 3.3), in the
    product form S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T, o_t = S_t q_t, S [V, K],
    beta = sigma(b); the normalisation is fla's l2norm, x / sqrt(||x||^2 + 1e-6)."""
    S = zeros_if_none(S0, q, v.shape[-1], q.shape[-1])
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    os = []
    for t in range(q.shape[1]):
        kn = k[:, t] * torch.rsqrt((k[:, t] ** 2).sum(-1, keepdim=True) + 1e-6)
        qn = q[:, t] * torch.rsqrt((q[:, t] ** 2).sum(-1, keepdim=True) + 1e-6)
        beta = per_head(torch.sigmoid(b[:, t]))
        S = S @ (eye - beta * torch.einsum("bhi,bhj->bhij", kn, kn)) + beta * torch.einsum("bhv,bhk->bhvk", v[:, t], kn)
        os.append(torch.einsum("bhvk,bhk->bhv", S, qn))
    return {"o": stack(os)}, {"S": S}


def ttt_linear(q, k, v, lr, W0=None):
    """TTT-Linear's inner loop (Sun et al. 2024, Sec. 2.1-2.3), one step of gradient descent on
    l(W) = ||W k_t - v_t||^2 per token, the gradient taken by autograd (not by hand):
    W_t = W_{t-1} - eta_t grad l(W_{t-1}), eta_t = sigma(lr_t) / 2, z_t = W_t q_t; W [V, K]."""
    W = zeros_if_none(W0, q, v.shape[-1], q.shape[-1])
    zs = []
    for t in range(q.shape[1]):
        W_in = W if W.requires_grad else W.detach().requires_grad_()
        loss = ((torch.einsum("bhvk,bhk->bhv", W_in, k[:, t]) - v[:, t]) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, W_in, create_graph=True)  # per batch and head: the sum separates
        W = W_in - per_head(0.5 * torch.sigmoid(lr[:, t])) * grad
        zs.append(torch.einsum("bhvk,bhk->bhv", W, q[:, t]))
    return {"z": stack(zs)}, {"W": W}


def mamba2_ssd(x, B, C, dt, A_log, dt_bias, D, h0=None):
    """Mamba-2 (Dao & Gu 2024, Sec. 3) in its quadratic "attention" form, not as a recurrence:
    y = (L o C B^T) (Delta x) + D x with L_{ts} = exp(sum_{s<r<=t} Delta_r A) for s <= t, plus
    the initial state's term C_t^T exp(sum_{r<=t} Delta_r A) h_0; Delta = softplus(dt + dt_bias),
    A = -exp(A_log); h_T = exp(cum_T) h_0 + sum_s exp(cum_T - cum_s) Delta_s B_s x_s^T, h [N, P]."""
    T = x.shape[1]
    h0 = zeros_if_none(h0, x, B.shape[-1], x.shape[-1])
    delta = F.softplus(dt + dt_bias)  # [Bt, T, NH]
    cum = torch.cumsum(delta * -torch.exp(A_log), dim=1)  # sum_{r<=t} Delta_r A
    seg = cum[:, :, None] - cum[:, None, :]  # [Bt, t, s, NH]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, :, :, None]
    L = torch.where(causal, torch.exp(torch.where(causal, seg, 0.0)), 0.0)
    scores = L * torch.einsum("bthn,bshn->btsh", C, B)
    y = torch.einsum("btsh,bshp->bthp", scores, delta[..., None] * x) + D * x
    y = y + torch.exp(cum)[..., None] * torch.einsum("bthn,bhnp->bthp", C, h0)
    last = torch.exp(cum[:, -1:] - cum)  # [Bt, T, NH]
    hT = torch.exp(cum[:, -1])[..., None, None] * h0 + torch.einsum("bsh,bshn,bshp->bhnp", last * delta, B, x)
    return {"y": y}, {"h": hT}


def mlstm_plain(q, k, v, it, ft, ot, C0=None, n0=None):
    """mLSTM without the stabiliser (xLSTM eqs. 19-27): ``mlstm_unstabilised`` with the cell's names
    for the gate pre-activations (i~, f~, o~)."""
    return mlstm_unstabilised(q, k, v, it, ft, ot, C0, n0)


def hedgehog(q, k, v, W, Sp0=None, Sm0=None, zp0=None, zm0=None):
    """Hedgehog linear attention (Zhang et al. 2024, Sec. 4.1) in its quadratic form:
    phi(x) = [softmax(W x), softmax(-W x)], o_t = sum_{i<=t} phi(q_t).phi(k_i) v_i / sum_{i<=t} phi(q_t).phi(k_i),
    with the initial memories S_0 = [S+_0; S-_0] and normalisers z_0 = [z+_0; z-_0] added to the sums."""
    F_, V = W.shape[-2], v.shape[-1]

    def phi(x):
        wx = torch.einsum("hfk,bthk->bthf", W, x)
        return torch.cat([torch.softmax(wx, -1), torch.softmax(-wx, -1)], -1)  # [B, T, NH, 2F]

    fq, fk = phi(q), phi(k)
    S0 = torch.cat([zeros_if_none(Sp0, q, F_, V), zeros_if_none(Sm0, q, F_, V)], -2)  # [B, NH, 2F, V]
    z0 = torch.cat([zeros_if_none(zp0, q, F_), zeros_if_none(zm0, q, F_)], -1)
    scores = torch.tril(torch.ones(q.shape[1], q.shape[1], dtype=q.dtype))[None, :, :, None] * torch.einsum(
        "bthf,bshf->btsh", fq, fk
    )
    num = torch.einsum("btsh,bshv->bthv", scores, v) + torch.einsum("bthf,bhfv->bthv", fq, S0)
    den = scores.sum(2) + torch.einsum("bthf,bhf->bth", fq, z0)
    S = S0 + torch.einsum("bthf,bthv->bhfv", fk, v)
    z = z0 + fk.sum(1)
    return {"o": num / den[..., None]}, {
        "Sp": S[..., :F_, :],
        "Sm": S[..., F_:, :],
        "zp": z[..., :F_],
        "zm": z[..., F_:],
    }


LOOPS = {
    "mlstm": mlstm,
    "rwkv6": rwkv6,
    "rwkv7": rwkv7,
    "mamba2": mamba2,
    "hgrn2": hgrn2,
    "titans": titans,
    "gated_deltaproduct": gated_deltaproduct,
    "kda": kda,
    "gated_deltanet_decay_first": gated_deltanet_matrix,
    "deltanet_square": deltanet_matrix,
    "linear_attention_normalised": linear_attention_normalised,
    "ema_gla": ema_gla,
    "delta_monitor": delta_monitor,
    "eagle": eagle,
    "deltanet_l2": deltanet_l2,
    "ttt_linear": ttt_linear,
    "mamba2_ssd": mamba2_ssd,
    "mlstm_plain": mlstm_plain,
    "hedgehog": hedgehog,
}
