"""Float64 reference loops for the nonlinear and the elementwise cells of recent papers.

Same conventions as ``paper_loops.py`` (written from the papers' equations, layout
``[B, T, NH, *shape]``, ``<state>0=`` initial states, ``(outputs, final_states)``). Where a paper
gives a second, independent form of the same map (RWKV-4's and Aaren's sums over the prefix,
LRU's complex numbers) the loop uses it, or the test compares both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refs.paper_loops import stack, zeros_if_none


def rwkv4(r, k, v, w, u, a0=None, b0=None, p0=None):
    """RWKV-4's WKV (Peng et al. 2023, eqs. 14-16) in the stable recurrent form of the official
    kernel: a, b are the numerator and denominator of wkv scaled by e^{-p}, p the largest exponent
    so far. Output o_t = sigma(r_t) wkv_t reads the state before the update."""
    D = k.shape[-1]
    a, b, p = (zeros_if_none(s, k, D) for s in (a0, b0, p0))
    os = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]
        top = torch.maximum(p, u + kt)
        e_old, e_new = torch.exp(p - top), torch.exp(u + kt - top)
        os.append(torch.sigmoid(r[:, t]) * (e_old * a + e_new * vt) / (e_old * b + e_new))
        top = torch.maximum(p - w, kt)
        e_old, e_new = torch.exp(p - w - top), torch.exp(kt - top)
        a, b, p = e_old * a + e_new * vt, e_old * b + e_new, top
    return {"o": stack(os)}, {"a": a, "b": b, "p": p}


def rwkv4_sum(r, k, v, w, u):
    """RWKV-4's eq. 14 as written, from a zero state: the weighted average over the prefix,
    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same weights summed)."""
    T = k.shape[1]
    os = []
    for t in range(T):
        past = torch.arange(t, dtype=k.dtype)  # i = 0 .. t-1
        logits = -(t - 1 - past)[None, :, None, None] * w + k[:, :t]  # [B, t, NH, D]
        logits = torch.cat([logits, (u + k[:, t])[:, None]], dim=1)
        weights = torch.softmax(logits, dim=1)  # the common factor cancels in the ratio
        os.append(torch.sigmoid(r[:, t]) * (weights * v[:, : t + 1]).sum(1))
    return {"o": stack(os)}


def aaren(k, v, q, m0=None, c0=None, a0=None):
    """Aaren (Feng et al. 2024, Sec. 3.1): s_k = q . k_k, m_k = max(m_{k-1}, s_k),
    c_k = c_{k-1} e^{m_{k-1} - m_k} + e^{s_k - m_k}, a_k = a_{k-1} e^{m_{k-1} - m_k} + v_k e^{s_k - m_k},
    o_k = a_k / c_k."""
    m, c, a = zeros_if_none(m0, k), zeros_if_none(c0, k), zeros_if_none(a0, v, v.shape[-1])
    os = []
    for t in range(k.shape[1]):
        s = torch.einsum("hk,bhk->bh", q, k[:, t])
        m_new = torch.maximum(m, s)
        c = c * torch.exp(m - m_new) + torch.exp(s - m_new)
        a = a * torch.exp(m - m_new)[..., None] + v[:, t] * torch.exp(s - m_new)[..., None]
        m = m_new
        os.append(a / c[..., None])
    return {"o": stack(os)}, {"m": m, "c": c, "a": a}


def aaren_attention(k, v, q):
    """Aaren's output as attention itself (from an empty state): o_k = softmax_i(q . k_i) v_i, i <= k."""
    scores = torch.einsum("hk,bthk->bth", q, k)
    os = [(torch.softmax(scores[:, : t + 1], dim=1)[..., None] * v[:, : t + 1]).sum(1) for t in range(k.shape[1])]
    return {"o": stack(os)}


def _matvec(W, x):
    """W x per head: W [NH, I, J], x [B, NH, J] -> [B, NH, I]."""
    return torch.einsum("hij,bhj->bhi", W, x)


def lmu(x, ex, eh, em, A, Bm, Wx, Wh, Wm, h0=None, m0=None):
    """Legendre Memory Unit (Voelker et al. 2019, eqs. 17-20): u_t = e_x.x_t + e_h.h_{t-1} + e_m.m_{t-1},
    m_t = A m_{t-1} + B u_t, h_t = tanh(W_x x_t + W_h h_{t-1} + W_m m_t)."""
    h, m = zeros_if_none(h0, x, Wh.shape[-1]), zeros_if_none(m0, x, A.shape[-1])
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        u = (ex * xt).sum(-1) + (eh * h).sum(-1) + (em * m).sum(-1)  # [B, NH]
        m = _matvec(A, m) + Bm * u[..., None]
        h = torch.tanh(_matvec(Wx, xt) + _matvec(Wh, h) + _matvec(Wm, m))
        hs.append(h)
    return {"h": stack(hs)}, {"h": h, "m": m}


def m2rnn(q, k, v, f, W, H0=None):
    """M²RNN (Mishra et al. 2026): Z_t = tanh(H_{t-1} W + k_t v_t^T), H_t = f_t H_{t-1} + (1 - f_t) Z_t,
    y_t = q_t^T H_t; H [K, V], W [V, V]."""
    H = zeros_if_none(H0, q, q.shape[-1], v.shape[-1])
    ys = []
    for t in range(q.shape[1]):
        Z = torch.tanh(torch.einsum("bhkv,hvw->bhkw", H, W) + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t]))
        ft = f[:, t][..., None, None]
        H = ft * H + (1 - ft) * Z
        ys.append(torch.einsum("bhk,bhkv->bhv", q[:, t], H))
    return {"y": stack(ys)}, {"H": H}


def lru(u, nu, theta, gamma_log, B_re, B_im, C_re, C_im, D, x_re0=None, x_im0=None):
    """LRU (Orvieto et al. 2023, eqs. 3-7) in complex arithmetic: lambda = exp(-e^nu + i e^theta),
    x_k = lambda x_{k-1} + e^gamma_log (B u_k), y_k = Re(C x_k) + D u_k."""
    N = nu.shape[-1]
    x = torch.complex(zeros_if_none(x_re0, u, N), zeros_if_none(x_im0, u, N))
    lam = torch.exp(torch.complex(-torch.exp(nu), torch.exp(theta)))  # [NH, N]
    Bc, Cc = torch.complex(B_re, B_im), torch.complex(C_re, C_im)  # [NH, N, H], [NH, H, N]
    ys = []
    for t in range(u.shape[1]):
        bu = torch.einsum("hnj,bhj->bhn", Bc, u[:, t].to(Bc.dtype))
        x = lam * x + torch.exp(gamma_log) * bu
        ys.append(torch.einsum("hin,bhn->bhi", Cc, x).real + D * u[:, t])
    return {"y": stack(ys)}, {"x_re": x.real, "x_im": x.imag}


def indrnn(x, u, b, h0=None):
    """IndRNN (Li et al. 2018, eq. 2): h_t = relu(W x_t + u * h_{t-1} + b), x = W x_t given."""
    h = zeros_if_none(h0, x, x.shape[-1])
    hs = []
    for t in range(x.shape[1]):
        h = torch.relu(x[:, t] + u * h + b)
        hs.append(h)
    return {"h": stack(hs)}, {"h": h}


def tanh_accumulator(x, h0=None):
    """h_t = tanh(h_{t-1} + x_t)."""
    h = zeros_if_none(h0, x, x.shape[-1])
    hs = []
    for t in range(x.shape[1]):
        h = torch.tanh(h + x[:, t])
        hs.append(h)
    return {"h": stack(hs)}, {"h": h}


def longhorn(x, dt, k, q, Dskip, S0=None):
    """Longhorn (Liu et al. 2024): beta = sigma(dt), eps = beta / (1 + beta ||k||^2),
    S_t = S_{t-1} * (1 - eps k^2^T) + (eps x_t) k_t^T, y_t = S_t q_t + D x_t; S [D, N]."""
    S = zeros_if_none(S0, x, x.shape[-1], k.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        beta, kt = torch.sigmoid(dt[:, t]), k[:, t]
        eps = beta / (1 + beta * (kt**2).sum(-1, keepdim=True))
        S = S * (1 - eps[..., :, None] * (kt**2)[..., None, :]) + (eps * x[:, t])[..., :, None] * kt[..., None, :]
        ys.append(torch.einsum("bhdn,bhn->bhd", S, q[:, t]) + Dskip * x[:, t])
    return {"y": stack(ys)}, {"S": S}


def expgate(i, f, z, o, c0=None, n0=None, m0=None):
    """Stabilised exponential gating without recurrent matrices (sLSTM's gates, Beck et al. 2024):
    m_t = max(log sigma(f_t) + m_{t-1}, i_t); c_t, n_t decayed by exp(log sigma(f_t) + m_{t-1} - m_t) and
    fed by exp(i_t - m_t) z_t, exp(i_t - m_t); h_t = sigma(o_t) c_t / n_t."""
    H = i.shape[-1]
    c, n, m = (zeros_if_none(s, i, H) for s in (c0, n0, m0))
    hs = []
    for t in range(i.shape[1]):
        log_f = F.logsigmoid(f[:, t])
        m_new = torch.maximum(log_f + m, i[:, t])
        decay, gate = torch.exp(log_f + m - m_new), torch.exp(i[:, t] - m_new)
        c, n, m = decay * c + gate * z[:, t], decay * n + gate, m_new
        hs.append(torch.sigmoid(o[:, t]) * c / n)
    return {"h": stack(hs)}, {"c": c, "n": n, "m": m}


def gated_accumulator(x, u, R, h0=None, c0=None):
    """h_t = tanh(R h_{t-1} + x_t), c_t = sigma(h_t) c_{t-1} + u_t, y_t = h_t c_t."""
    h, c = zeros_if_none(h0, x, x.shape[-1]), zeros_if_none(c0, x, x.shape[-1])
    hs, ys = [], []
    for t in range(x.shape[1]):
        h = torch.tanh(_matvec(R, h) + x[:, t])
        c = torch.sigmoid(h) * c + u[:, t]
        hs.append(h)
        ys.append(h * c)
    return {"h": stack(hs), "y": stack(ys)}, {"h": h, "c": c}


def energy_norm(x, g, e0=None, s0=None):
    """e_t = exp(g_t) e_{t-1} + ||x_t||^2 / H, s_t = exp(g_t) s_{t-1} + x_t, y_t = s_t / sqrt(e_t + 1e-6)."""
    e, s = zeros_if_none(e0, x), zeros_if_none(s0, x, x.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        decay = torch.exp(g[:, t])
        e = decay * e + (x[:, t] ** 2).mean(-1)
        s = decay[..., None] * s + x[:, t]
        ys.append(s / torch.sqrt(e + 1e-6)[..., None])
    return {"y": stack(ys)}, {"e": e, "s": s}


def ntm_memory(wl, rl, e, a, Mem0=None):
    """A Neural Turing Machine's memory (Graves et al. 2014, eqs. 2-4) with softmax addresses:
    M_t(i) = M_{t-1}(i) (1 - w_t(i) e_t) + w_t(i) a_t, e_t = sigma(e~_t), read_t = sum_i r_t(i) M_t(i)."""
    Mem = zeros_if_none(Mem0, wl, wl.shape[-1], a.shape[-1])
    reads = []
    for t in range(wl.shape[1]):
        w, r = torch.softmax(wl[:, t], dim=-1), torch.softmax(rl[:, t], dim=-1)
        erase = w[..., :, None] * torch.sigmoid(e[:, t])[..., None, :]
        Mem = Mem * (1 - erase) + w[..., :, None] * a[:, t][..., None, :]
        reads.append(torch.einsum("bhm,bhmv->bhv", r, Mem))
    return {"read": stack(reads)}, {"Mem": Mem}


def qrnn(x, Wz, Wf, Wo, c0=None):
    """QRNN with width-1 filters and fo-pooling (Bradbury et al. 2017, eqs. 1, 3): Z = tanh(W_z X),
    F = sigma(W_f X), O = sigma(W_o X) for the whole sequence first, then c_t = f_t c_{t-1} + (1 - f_t) z_t,
    h_t = o_t c_t."""

    def conv1(W):  # a masked convolution of width 1 over the whole sequence
        return torch.einsum("hij,bthj->bthi", W, x)

    Z, Fg, Og = torch.tanh(conv1(Wz)), torch.sigmoid(conv1(Wf)), torch.sigmoid(conv1(Wo))
    c = zeros_if_none(c0, x, Wz.shape[1])
    hs = []
    for t in range(x.shape[1]):
        c = Fg[:, t] * c + (1 - Fg[:, t]) * Z[:, t]
        hs.append(Og[:, t] * c)
    return {"h": stack(hs)}, {"c": c}


def sru(x, W, Wf, bf, Wr, br, c0=None):
    """SRU (Lei et al. 2017, arXiv:1709.02755v1, Sec. 2): x~ = W x, f = sigma(W_f x + b_f),
    r = sigma(W_r x + b_r), c_t = f c_{t-1} + (1 - f) x~, h_t = r tanh(c_t) + (1 - r) x_t."""
    c = zeros_if_none(c0, x, x.shape[-1])
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        f, r = torch.sigmoid(_matvec(Wf, xt) + bf), torch.sigmoid(_matvec(Wr, xt) + br)
        c = f * c + (1 - f) * _matvec(W, xt)
        hs.append(r * torch.tanh(c) + (1 - r) * xt)
    return {"h": stack(hs)}, {"c": c}


def sru_2018(x, W, Wf, vf, bf, Wr, vr, br, c0=None):
    """SRU as published (Lei et al. 2018, EMNLP, Sec. 2): f_t = sigma(W_f x_t + v_f c_{t-1} + b_f),
    c_t = f_t c_{t-1} + (1 - f_t) W x_t, r_t = sigma(W_r x_t + v_r c_{t-1} + b_r), h_t = r_t c_t + (1 - r_t) x_t."""
    c = zeros_if_none(c0, x, x.shape[-1])
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        f = torch.sigmoid(_matvec(Wf, xt) + vf * c + bf)
        r = torch.sigmoid(_matvec(Wr, xt) + vr * c + br)  # reads c_{t-1}
        c = f * c + (1 - f) * _matvec(W, xt)
        hs.append(r * c + (1 - r) * xt)
    return {"h": stack(hs)}, {"c": c}


def rglru(x, Wa, ba, Wx, bx, Lambda, h0=None):
    """RG-LRU (De et al. 2024, Griffin, eqs. 1-4) with the power taken literally, not in log space:
    r = sigma(W_a x + b_a), i = sigma(W_x x + b_x), a_t = sigma(Lambda)^(c r_t), c = 8,
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)."""
    h = zeros_if_none(h0, x, x.shape[-1])
    hs = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r, i = torch.sigmoid(_matvec(Wa, xt) + ba), torch.sigmoid(_matvec(Wx, xt) + bx)
        a = torch.pow(torch.sigmoid(Lambda), 8 * r)
        h = a * h + torch.sqrt(1 - a**2) * (i * xt)
        hs.append(h)
    return {"h": stack(hs)}, {"h": h}


def ligru(x, Wz, Uz, Wh, Uh, h0=None):
    """Light GRU (Ravanelli et al. 2018, Sec. 3, no batch norm): z_t = sigma(W_z x_t + U_z h_{t-1}),
    h~_t = ReLU(W_h x_t + U_h h_{t-1}), h_t = z_t h_{t-1} + (1 - z_t) h~_t."""
    h = zeros_if_none(h0, x, Uz.shape[-1])
    hs = []
    for t in range(x.shape[1]):
        z = torch.sigmoid(_matvec(Wz, x[:, t]) + _matvec(Uz, h))
        candidate = torch.relu(_matvec(Wh, x[:, t]) + _matvec(Uh, h))
        h = z * h + (1 - z) * candidate
        hs.append(h)
    return {"h": stack(hs)}, {"h": h}


def mega_ema(x, alpha_p, delta_p, beta, eta, h0=None):
    """Mega's multi-dimensional damped EMA (Ma et al. 2023, Sec. 3.1), per channel j:
    u^(j) = beta_j x_j, h^(j)_t = alpha_j u^(j)_t + (1 - alpha_j delta_j) h^(j)_{t-1}, y_j = eta_j^T h^(j)_t."""
    alpha, delta = torch.sigmoid(alpha_p), torch.sigmoid(delta_p)  # [NH, D, N]
    h = zeros_if_none(h0, x, *alpha.shape[-2:])
    ys = []
    for t in range(x.shape[1]):
        u = torch.einsum("hdn,bhd->bhdn", beta, x[:, t])
        h = alpha * u + (1 - alpha * delta) * h
        ys.append(torch.einsum("hdn,bhdn->bhd", eta, h))
    return {"y": stack(ys)}, {"h": h}


def minlstm(x, Wf, bf, Wi, bi, Wh, bh, h0=None):
    """minLSTM (Feng et al. 2024, Sec. 3.2): f = sigma(Linear(x)), i = sigma(Linear(x)), h~ = Linear(x),
    h_t = f/(f + i) h_{t-1} + i/(f + i) h~_t."""
    h = zeros_if_none(h0, x, Wf.shape[1])
    hs = []
    for t in range(x.shape[1]):
        f, i = torch.sigmoid(_matvec(Wf, x[:, t]) + bf), torch.sigmoid(_matvec(Wi, x[:, t]) + bi)
        h = f / (f + i) * h + i / (f + i) * (_matvec(Wh, x[:, t]) + bh)
        hs.append(h)
    return {"h": stack(hs)}, {"h": h}


def s4d(u, log_dt, A_log, B, C, D, x0=None):
    """S4D-Real with zero-order hold (Gu et al. 2022, Sec. 3, Listing 1) as the paper computes it: a
    causal convolution with the SSM kernel K_l = sum_n C_n B_bar_n A_bar_n^l, A_bar = exp(Delta A),
    B_bar = (A_bar - 1) / A * B, A = -exp(A_log), Delta = exp(log_dt); y = K * u + D u, plus the
    initial state's term sum_n C_n A_bar_n^(t+1) x_0; x_T = A_bar^T x_0 + sum_s A_bar^(T-1-s) B_bar u_s."""
    T = u.shape[1]
    A = -torch.exp(A_log)  # [NH, H, N]
    dtA = torch.exp(log_dt)[..., None] * A
    B_bar = (torch.exp(dtA) - 1) / A * B
    powers = torch.exp(torch.arange(T + 1, dtype=u.dtype)[:, None, None, None] * dtA)  # A_bar^l, [T+1, NH, H, N]
    kernel = torch.einsum("hdn,lhdn->lhd", C * B_bar, powers[:T])  # [T, NH, H]
    lags = torch.arange(T)[:, None] - torch.arange(T)[None, :]  # t - s
    conv = torch.where((lags >= 0)[..., None, None], kernel[lags.clamp_min(0)], 0.0)  # [t, s, NH, H]
    y = torch.einsum("tshd,bshd->bthd", conv, u) + D * u
    x0 = zeros_if_none(x0, u, *A.shape[-2:])
    y = y + torch.einsum("hdn,thdn,bhdn->bthd", C, powers[1:], x0)
    xT = powers[T] * x0 + torch.einsum("shdn,bshd->bhdn", powers[:T].flip(0) * B_bar, u)
    return {"y": y}, {"x": xT}


def cema(x, alpha_p, delta_p, theta, beta, eta, h_re0=None, h_im0=None):
    """Megalodon's complex EMA (Ma et al. 2024, Sec. 3.1) in complex arithmetic:
    h_t = alpha e^{i theta} (beta x_t) + (1 - alpha delta) e^{i theta} h_{t-1}, y_t = Re(eta^T h_t)."""
    alpha, delta = torch.sigmoid(alpha_p), torch.sigmoid(delta_p)
    rotation = torch.exp(torch.complex(torch.zeros_like(theta), theta))  # e^{i theta}, [NH, D, N]
    shape = theta.shape[-2:]
    h = torch.complex(zeros_if_none(h_re0, x, *shape), zeros_if_none(h_im0, x, *shape))
    ys = []
    for t in range(x.shape[1]):
        u = beta * x[:, t][..., None]
        h = alpha * rotation * u + (1 - alpha * delta) * rotation * h
        ys.append(torch.einsum("hdn,bhdn->bhd", eta, h.real))
    return {"y": stack(ys)}, {"h_re": h.real, "h_im": h.imag}


def linoss(u, A_hat, dt_hat, B, C, D, y0=None, z0=None):
    """LinOSS-IMEX (Rusch & Rus 2025, Sec. 2.2) in the paper's matrix form, per channel:
    [z_n; y_n] = M [z_{n-1}; y_{n-1}] + F_n, M = [[1, -dt A], [dt, 1 - dt^2 A]], F_n = [dt (B u_n); dt^2 (B u_n)],
    A = relu(A^), dt = sigma(dt^); x_n = C y_n + D u_n."""
    A, dt = torch.relu(A_hat), torch.sigmoid(dt_hat)  # [NH, M]
    transition = torch.stack([torch.stack([torch.ones_like(A), -dt * A], -1), torch.stack([dt, 1 - dt**2 * A], -1)], -2)
    zy = torch.stack([zeros_if_none(z0, u, A.shape[-1]), zeros_if_none(y0, u, A.shape[-1])], -1)  # [B, NH, M, 2]
    xs = []
    for t in range(u.shape[1]):
        Bu = _matvec(B, u[:, t])
        zy = torch.einsum("hmij,bhmj->bhmi", transition, zy) + torch.stack([dt * Bu, dt**2 * Bu], -1)
        xs.append(_matvec(C, zy[..., 1]) + D * u[:, t])
    return {"x": stack(xs)}, {"y": zy[..., 1], "z": zy[..., 0]}


LOOPS = {
    "rwkv4": rwkv4,
    "aaren": aaren,
    "lmu": lmu,
    "m2rnn": m2rnn,
    "lru": lru,
    "indrnn": indrnn,
    "tanh_accumulator": tanh_accumulator,
    "longhorn": longhorn,
    "expgate": expgate,
    "gated_accumulator": gated_accumulator,
    "energy_norm": energy_norm,
    "ntm_memory": ntm_memory,
    "qrnn": qrnn,
    "sru": sru,
    "sru_2018": sru_2018,
    "rglru": rglru,
    "ligru": ligru,
    "mega_ema": mega_ema,
    "minlstm": minlstm,
    "s4d": s4d,
    "cema": cema,
    "linoss": linoss,
}
