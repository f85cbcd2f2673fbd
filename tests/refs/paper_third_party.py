"""Adapters that run third-party references for the paper cells, in the rnnc layout.

Same contract as ``third_party.py`` (arguments as the loop of the same cell, ``(outputs,
final_states)`` keyed by the ``.rnn`` names, gradients through the third party's own graph). The
fla ``naive.py`` recurrences are loaded by path and compute in float32; where fla orients a state
``[K, V]`` and the paper ``[V, K]`` (RWKV-7) or ``[P, N]`` (Mamba-2), the adapter transposes.

* ``fla_rwkv6``: ``rwkv6/recurrent_naive.py`` (head-first, ``w`` the log decay, ``scale=1``).
* ``fla_rwkv7``: ``generalized_delta_rule/dplr/naive.py``: ``S' = S diag(exp(gk)) + k v^T +
  beta (alpha^T S)`` in fla's ``[K, V]``; RWKV-7 is ``alpha = kh``, ``beta = -a * kh``,
  ``gk = log w``, ``k = kt``; its ``q`` scale is fixed to ``K^-1/2``, so ``r`` is pre-multiplied.
* ``fla_mamba2``: simple GLA with ``q = C``, ``k = B``, ``v = Delta x``, ``g = Delta A``, plus ``D x``.
* ``fla_hgrn2``: GLA with ``g = log f``, ``k = 1 - f``, ``v = i`` (as fla's HGRN2 layer calls it).
* ``fla_gated_deltaproduct``: ``naive_recurrent_gated_delta_product`` with two Householder steps
  (keys, values and betas interleaved along time).
* ``fla_kda``: ``naive_recurrent_kda`` with ``g = log alpha``, ``scale=1``.
* ``fla_linear_attention_normalised``: ``naive_recurrent_linear_attn(normalize=True)`` on
  ``phi(q)``, ``phi(k)`` (its denominator adds 1e-10).
* ``fla_eagle``: RWKV-5 as fla's rwkv6 with the static decay ``d = omega`` at every step.
* ``fla_deltanet_l2``, ``fla_ttt_linear``: ``delta_rule`` (TTT-Linear's gradient step on
  ``||W k - v||^2`` is the delta rule with ``beta = 2 eta``); both transpose the paper's ``[V, K]``.
* ``fla_mamba2_ssd``: simple GLA as for ``fla_mamba2``, with ``A = -exp(A_log)`` and fla's
  ``[K, V]`` our ``[N, P]``.
* ``fla_qrnn``, ``fla_rglru``, ``fla_minlstm``, ``fla_mega_ema``: HGRN (``h = exp(g) h + x``) with
  the cell's decay as ``g`` and its input term as ``x`` (Mega's and S4D's over the ``D*N`` entries).
* ``fla_hedgehog``: ``naive_recurrent_linear_attn(normalize=True)`` on the softmax features, the
  two memories and normalisers stacked along the feature axis.
* ``torch_tanh_accumulator``, ``flashrnn_tanh_accumulator``: Elman with ``R = I``, ``b = 0``;
  ``torch_indrnn``: ``nn.RNN(nonlinearity="relu")`` with ``weight_hh = diag(u)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from refs import third_party
from refs.third_party import fla_naive


def _hf(t: torch.Tensor) -> torch.Tensor:  # [B, T, NH, ...] <-> [B, NH, T, ...]
    return t.transpose(1, 2)


def _state(s0, shape, like):
    return (like.new_zeros(shape) if s0 is None else s0).float()


def fla_rwkv6(r, k, v, d, u, S0=None):
    B, T, NH, K = r.shape
    o, S = fla_naive("rwkv6", "recurrent_naive").naive_recurrent_rwkv6(
        _hf(r), _hf(k), _hf(v), _hf(-torch.exp(d)), u, scale=1.0,
        initial_state=_state(S0, (B, NH, K, v.shape[-1]), r), output_final_state=True,
    )  # fmt: skip
    return {"o": _hf(o).to(r.dtype)}, {"S": S.to(r.dtype)}


def fla_rwkv7(r, k, v, d, a, xi, alpha, S0=None):
    B, T, NH, K = r.shape
    V = v.shape[-1]
    log_w = -math.exp(-0.5) * torch.sigmoid(d)
    kap = k * xi
    kh = kap / kap.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    kt = k * (1 + (a - 1) * alpha)
    S0 = _state(None if S0 is None else S0.transpose(-1, -2), (B, NH, K, V), r)
    o, S = fla_naive("generalized_delta_rule/dplr").dplr_recurrence(
        _hf(r * math.sqrt(K)), _hf(kt), _hf(v), _hf(kh).float(), _hf(-a * kh), _hf(log_w), initial_state=S0
    )  # (it casts every operand to float32 but alpha)
    return {"y": _hf(o).to(r.dtype)}, {"S": S.transpose(-1, -2).to(r.dtype)}


def fla_mamba2(x, dt, B, C, A, Dskip, h0=None):
    delta = F.softplus(dt)  # [Bt, T, NH]
    h0 = None if h0 is None else h0.transpose(-1, -2)  # ours [P, N], fla's [K=N, V=P]
    out, fin = third_party.fla_simple_gla(C, B, delta[..., None] * x, delta * A, h0)
    return {"y": out["o"] + Dskip[:, None] * x}, {"h": fin["S"].transpose(-1, -2)}


def fla_hgrn2(q, fx, i, lb, S0=None):
    f = lb + (1 - lb) * torch.sigmoid(fx)
    out, fin = third_party.fla_gla(q, 1 - f, i, torch.log(f), S0)
    return out, fin


def fla_gated_deltaproduct(q, k1, k2, v1, v2, b1, b2, g, S0=None):
    B, T, NH, K = q.shape
    V = v1.shape[-1]

    def interleave(x1, x2):  # step t's two Householder steps at 2t, 2t + 1
        return torch.stack([x1, x2], dim=2).reshape(B, 2 * T, NH, *x1.shape[3:])

    o, S = fla_naive("gated_delta_product").naive_recurrent_gated_delta_product(
        q, interleave(k1, k2), interleave(v1, v2), g, interleave(b1, b2), scale=1.0,
        initial_state=_state(S0, (B, NH, K, V), q), output_final_state=True, num_householder=2,
    )  # fmt: skip
    return {"o": o.to(q.dtype)}, {"S": S.to(q.dtype)}


def fla_kda(q, k, v, alpha, beta, S0=None):
    B, T, NH, K = q.shape
    o, S = fla_naive("kda").naive_recurrent_kda(
        q, k, v, torch.log(alpha), beta, scale=1.0,
        initial_state=_state(S0, (B, NH, K, v.shape[-1]), q), output_final_state=True,
    )  # fmt: skip
    return {"o": o.to(q.dtype)}, {"S": S.to(q.dtype)}


def fla_linear_attention_normalised(q, k, v, S0=None, z0=None):
    B, T, NH, K = q.shape
    S0 = _state(S0, (B, NH, K, v.shape[-1]), q)
    z0 = _state(z0, (B, NH, K), q)[:, None]  # fla adds it to the running sum of keys, [B, 1, NH, K]
    o, (S, z) = fla_naive("linear_attn").naive_recurrent_linear_attn(
        F.elu(q) + 1, F.elu(k) + 1, v, scale=1.0, initial_state=(S0, z0), output_final_state=True, normalize=True
    )
    return {"o": o.to(q.dtype)}, {"S": S.to(q.dtype), "z": z[:, 0].to(q.dtype)}


def _identity_elman(x):
    NH, H = x.shape[2], x.shape[3]
    return torch.eye(H, dtype=x.dtype).expand(NH, H, H), x.new_zeros(NH, H)


def torch_tanh_accumulator(x, h0=None):
    """h = tanh(h + x) is torch.nn.RNN(tanh) with an identity recurrent weight and no bias."""
    return third_party.torch_elman(x, *_identity_elman(x), h0)


def flashrnn_tanh_accumulator(x, h0=None):
    return third_party.flashrnn_elman(x, *_identity_elman(x), h0)


def torch_indrnn(x, u, b, h0=None):
    """IndRNN is torch.nn.RNN(nonlinearity="relu") with a diagonal recurrent weight, one module per head."""
    B, T, NH, H = x.shape
    mod = torch.nn.RNN(H, H, nonlinearity="relu", batch_first=True, dtype=x.dtype)
    h0 = x.new_zeros(B, NH, H) if h0 is None else h0
    hs, finals = [], []
    for n in range(NH):
        params = {
            "weight_ih_l0": torch.eye(H, dtype=x.dtype),
            "weight_hh_l0": torch.diag(u[n]),
            "bias_ih_l0": b[n],
            "bias_hh_l0": x.new_zeros(H),
        }
        y, h_n = functional_call(mod, params, (x[:, :, n], h0[:, n].unsqueeze(0)))
        hs.append(y)
        finals.append(h_n[0])
    return {"h": torch.stack(hs, 2)}, {"h": torch.stack(finals, 1)}


def fla_eagle(r, k, v, omega, u, S0=None):
    """RWKV-5 is RWKV-6 with a decay that does not depend on the data: fla's rwkv6 with d = omega."""
    return fla_rwkv6(r, k, v, omega.expand_as(k), u, S0)


def _l2norm(x):  # fla's l2norm: x / sqrt(sum(x^2) + 1e-6)
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def _transposed(s):
    return None if s is None else s.transpose(-1, -2)


def fla_deltanet_l2(q, k, v, b, S0=None):
    """fla's delta rule on the normalised q, k with beta = sigma(b); ours S [V, K], fla's [K, V]."""
    out, fin = third_party.fla_deltanet(_l2norm(q), _l2norm(k), v, torch.sigmoid(b), _transposed(S0))
    return out, {"S": fin["S"].transpose(-1, -2)}


def fla_ttt_linear(q, k, v, lr, W0=None):
    """One gradient step on ||W k - v||^2 is the delta rule with beta = 2 eta = sigma(lr) (fla's [K, V] = W^T)."""
    out, fin = third_party.fla_deltanet(q, k, v, torch.sigmoid(lr), _transposed(W0))
    return {"z": out["o"]}, {"W": fin["S"].transpose(-1, -2)}


def fla_mamba2_ssd(x, B, C, dt, A_log, dt_bias, D, h0=None):
    """Simple GLA with q = C, k = B, v = Delta x, g = Delta A (fla's [K, V] is our [N, P]), plus D x."""
    delta = F.softplus(dt + dt_bias)
    out, fin = third_party.fla_simple_gla(C, B, delta[..., None] * x, -delta * torch.exp(A_log), h0)
    return {"y": out["o"] + D * x}, {"h": fin["S"]}


def _matvec_seq(W, x):  # W [NH, I, J], x [B, T, NH, J]
    return torch.einsum("hij,bthj->bthi", W, x)


def fla_qrnn(x, Wz, Wf, Wo, c0=None):
    """fo-pooling is HGRN with g = log f, x = (1 - f) z; then h = o c."""
    f = torch.sigmoid(_matvec_seq(Wf, x))
    out, fin = third_party.fla_hgrn((1 - f) * torch.tanh(_matvec_seq(Wz, x)), torch.log(f), c0)
    return {"h": torch.sigmoid(_matvec_seq(Wo, x)) * out["h"]}, {"c": fin["h"]}


def fla_rglru(x, Wa, ba, Wx, bx, Lambda, h0=None):
    """RG-LRU is HGRN with g = log a_t = -8 r_t softplus(-Lambda), x = sqrt(1 - a_t^2) i_t x_t."""
    r, i = torch.sigmoid(_matvec_seq(Wa, x) + ba), torch.sigmoid(_matvec_seq(Wx, x) + bx)
    log_a = -8 * r * F.softplus(-Lambda)
    return third_party.fla_hgrn(torch.sqrt(1 - torch.exp(2 * log_a)) * i * x, log_a, h0)


def fla_minlstm(x, Wf, bf, Wi, bi, Wh, bh, h0=None):
    """minLSTM is HGRN with g = log f', x = i' h~."""
    f, i = torch.sigmoid(_matvec_seq(Wf, x) + bf), torch.sigmoid(_matvec_seq(Wi, x) + bi)
    return third_party.fla_hgrn(i / (f + i) * (_matvec_seq(Wh, x) + bh), torch.log(f / (f + i)), h0)


def fla_mega_ema(x, alpha_p, delta_p, beta, eta, h0=None):
    """Mega's EMA is HGRN over the D*N entries with g = log(1 - alpha delta), x = alpha beta x; y = eta^T h."""
    Bt, T, NH, Dm = x.shape
    N = beta.shape[-1]
    alpha, delta = torch.sigmoid(alpha_p), torch.sigmoid(delta_p)
    inp = (alpha * beta * x[..., None]).reshape(Bt, T, NH, Dm * N)
    g = torch.log(1 - alpha * delta).expand(Bt, T, NH, Dm, N).reshape(Bt, T, NH, Dm * N)
    out, fin = third_party.fla_hgrn(inp, g, None if h0 is None else h0.reshape(Bt, NH, Dm * N))
    y = (eta * out["h"].reshape(Bt, T, NH, Dm, N)).sum(-1)
    return {"y": y}, {"h": fin["h"].reshape(Bt, NH, Dm, N)}


def fla_s4d(u, log_dt, A_log, B, C, D, x0=None):
    """S4D's recurrence is HGRN over the H*N entries with g = Delta A, x = B_bar u; y = sum_n C x + D u."""
    Bt, T, NH, H = u.shape
    N = A_log.shape[-1]
    A = -torch.exp(A_log)
    dtA = torch.exp(log_dt)[..., None] * A
    inp = ((torch.exp(dtA) - 1) / A * B * u[..., None]).reshape(Bt, T, NH, H * N)
    g = dtA.expand(Bt, T, NH, H, N).reshape(Bt, T, NH, H * N)
    out, fin = third_party.fla_hgrn(inp, g, None if x0 is None else x0.reshape(Bt, NH, H * N))
    y = (C * out["h"].reshape(Bt, T, NH, H, N)).sum(-1) + D * u
    return {"y": y}, {"x": fin["h"].reshape(Bt, NH, H, N)}


def fla_hedgehog(q, k, v, W, Sp0=None, Sm0=None, zp0=None, zm0=None):
    """Hedgehog is normalised linear attention (fla's linear_attn, normalize=True) on the features
    phi(x) = [softmax(W x), softmax(-W x)], the two memories stacked along the feature axis."""
    B, T, NH, K = q.shape
    F_, V = W.shape[-2], v.shape[-1]

    def phi(x):
        wx = torch.einsum("hfk,bthk->bthf", W, x)
        return torch.cat([torch.softmax(wx, -1), torch.softmax(-wx, -1)], -1)

    S0 = torch.cat([_state(Sp0, (B, NH, F_, V), q), _state(Sm0, (B, NH, F_, V), q)], -2)
    z0 = torch.cat([_state(zp0, (B, NH, F_), q), _state(zm0, (B, NH, F_), q)], -1)[:, None]
    o, (S, z) = fla_naive("linear_attn").naive_recurrent_linear_attn(
        phi(q), phi(k), v, scale=1.0, initial_state=(S0, z0), output_final_state=True, normalize=True
    )
    S, z = S.to(q.dtype), z[:, 0].to(q.dtype)
    return {"o": o.to(q.dtype)}, {"Sp": S[..., :F_, :], "Sm": S[..., F_:, :], "zp": z[..., :F_], "zm": z[..., F_:]}


FLA = {
    "rwkv6": fla_rwkv6,
    "rwkv7": fla_rwkv7,
    "mamba2": fla_mamba2,
    "hgrn2": fla_hgrn2,
    "gated_deltaproduct": fla_gated_deltaproduct,
    "kda": fla_kda,
    "linear_attention_normalised": fla_linear_attention_normalised,
    "gated_deltanet_decay_first": third_party.fla_gated_deltanet,
    "deltanet_square": third_party.fla_deltanet,
    "eagle": fla_eagle,
    "deltanet_l2": fla_deltanet_l2,
    "ttt_linear": fla_ttt_linear,
    "mamba2_ssd": fla_mamba2_ssd,
    "qrnn": fla_qrnn,
    "rglru": fla_rglru,
    "minlstm": fla_minlstm,
    "mega_ema": fla_mega_ema,
    "s4d": fla_s4d,
    "hedgehog": fla_hedgehog,
}
FLOAT64 = {"tanh_accumulator": torch_tanh_accumulator, "indrnn": torch_indrnn}
FLASHRNN = {"tanh_accumulator": flashrnn_tanh_accumulator}
