"""Adapters that run third-party implementations in the rnnc layout.

Every adapter takes the same arguments as the loop of the same cell in ``loops.py``
(inputs ``[B, T, NH, *shape]``, weights ``[NH, *shape]``, initial states ``[B, NH, *shape]``,
missing ones zero) and returns ``(outputs, final_states)`` keyed by the ``.rnn`` names.
Gradients reach every argument through the third party's own autograd graph.

* ``torch_lstm`` / ``torch_gru`` / ``torch_elman``: ``torch.nn.LSTM`` / ``GRU`` / ``RNN(tanh)``,
  float64, one module per head (block-diagonal R), called with ``torch.func.functional_call``
  so that our tensors *are* its parameters: ``weight_ih = I`` (so its input is our ``x``),
  ``weight_hh = R[head]`` flattened gate-major, our ``b`` as one of the two biases.
* ``flashrnn_lstm`` / ``flashrnn_gru`` / ``flashrnn_slstm`` / ``flashrnn_elman``: FlashRNN's
  pure-PyTorch ``vanilla`` backend in float64.
* ``fla_gla`` / ``fla_simple_gla`` / ``fla_hgrn`` / ``fla_deltanet`` / ``fla_gated_deltanet``:
  the recurrent naive references of flash-linear-attention, loaded by file path (importing
  ``fla`` or ``fla.ops`` pulls in every Triton kernel).  They compute in float32.
* ``fla_retnet`` / ``fla_linear_attention`` / ``fla_mingru`` / ``fla_mamba``: cells without
  a reference of their own, reduced exactly to one of the fla references above.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os

import torch
import torch.nn.functional as F
from torch.func import functional_call

Tensor = torch.Tensor


def _zeros(s0, shape, like):
    return like.new_zeros(shape) if s0 is None else s0


# ----------------------------------------------------------------------------------------
# torch.nn
# ----------------------------------------------------------------------------------------


def _torch_rnn(kind: str, G: int, x: Tensor, R: Tensor, b: Tensor, h0: Tensor, c0=None):
    """One ``nn.<kind>`` per head.  x [B,T,NH,G,H] (G=1: [B,T,NH,H]) is fed as the module's
    input through an identity ``weight_ih``; ``b`` goes into ``bias_ih`` (LSTM, Elman: the two
    biases are simply summed) or ``bias_hh`` (GRU: b is the recurrent bias b_hn that the reset
    gate scales, and our x already carries the input-side bias)."""
    B, T, NH = x.shape[:3]
    H = x.shape[-1]
    dt = x.dtype
    if kind == "LSTM":
        mod = torch.nn.LSTM(G * H, H, batch_first=True, dtype=dt)
    elif kind == "GRU":
        mod = torch.nn.GRU(G * H, H, batch_first=True, dtype=dt)
    else:
        mod = torch.nn.RNN(G * H, H, nonlinearity="tanh", batch_first=True, dtype=dt)
    eye = torch.eye(G * H, dtype=dt)
    zero = x.new_zeros(G * H)
    hs, hT, cT = [], [], []
    for n in range(NH):
        params = {
            "weight_ih_l0": eye,
            "weight_hh_l0": R[n].reshape(G * H, H),  # row g*H + i = R[n, g, i, :]
            "bias_ih_l0": zero if kind == "GRU" else b[n].reshape(G * H),
            "bias_hh_l0": b[n].reshape(G * H) if kind == "GRU" else zero,
        }
        inp = x[:, :, n].reshape(B, T, G * H)
        hx = h0[:, n].unsqueeze(0)
        if kind == "LSTM":
            y, (h_n, c_n) = functional_call(mod, params, (inp, (hx, c0[:, n].unsqueeze(0))))
            cT.append(c_n[0])
        else:
            y, h_n = functional_call(mod, params, (inp, hx))
        hs.append(y)
        hT.append(h_n[0])
    final = {"h": torch.stack(hT, 1)}
    if kind == "LSTM":
        final["c"] = torch.stack(cT, 1)
    return {"h": torch.stack(hs, 2)}, final


def torch_lstm(x, R, b, h0=None, c0=None):
    """torch.nn.LSTM; gates i, f, g(=z), o in both."""
    B, T, NH, G, H = x.shape
    return _torch_rnn("LSTM", 4, x, R, b, _zeros(h0, (B, NH, H), x), _zeros(c0, (B, NH, H), x))


def torch_gru(x, R, b, h0=None):
    """torch.nn.GRU; gates r, z, n in both, reset gate applied to W_hn h + b_hn."""
    B, T, NH, G, H = x.shape
    return _torch_rnn("GRU", 3, x, R, b, _zeros(h0, (B, NH, H), x))


def torch_elman(x, R, b, h0=None):
    """torch.nn.RNN(nonlinearity="tanh")."""
    B, T, NH, H = x.shape
    return _torch_rnn("RNN", 1, x, R, b, _zeros(h0, (B, NH, H), x))


# ----------------------------------------------------------------------------------------
# FlashRNN, vanilla backend
#   Wx [B, T, G, NH, D]; R [G, NH, D_out, D_in] (Ry[g, d] = sum_p R[g, d, p] y[p]);
#   b [G, NH, D]; states [S, B, 1, NH, D]; returns ([S, B, T, NH, D], [S, B, 1, NH, D]).
# ----------------------------------------------------------------------------------------


def _flashrnn(function, Wx, R, b, states):
    from flashrnn import flashrnn  # noqa: PLC0415  (slow import, only when used)

    st = torch.stack(states, 0).unsqueeze(2)  # [S, B, 1, NH, D]
    allst, last = flashrnn(
        Wx,
        R,
        b,
        states=st,
        function=function,
        backend="vanilla",
        dtype="float64" if Wx.dtype == torch.float64 else "float32",
    )
    return allst, last[:, :, 0]


def _gates_first(x):  # [B, T, NH, G, H] -> [B, T, G, NH, H]
    return x.transpose(2, 3)


def flashrnn_lstm(x, R, b, h0=None, c0=None):
    B, T, NH, _, H = x.shape
    s = [_zeros(h0, (B, NH, H), x), _zeros(c0, (B, NH, H), x)]
    allst, last = _flashrnn("lstm", _gates_first(x), R.transpose(0, 1), b.transpose(0, 1), s)
    return {"h": allst[0]}, {"h": last[0], "c": last[1]}


def flashrnn_slstm(x, R, b, h0=None, c0=None, n0=None, m0=None):
    """FlashRNN's sLSTM.  It differs from the .rnn semantics in two ways that do not matter
    for valid inputs: it tests ``all(n == 0)`` over the whole tensor (give an n0 that is all
    zero or all >= 1), and it clamps ``n' = max(f n + i, 1)`` (inactive once n >= 1 or at
    the first step, where n' = 1 exactly -- but the tie halves the gradient of n0 there)."""
    B, T, NH, _, H = x.shape
    s = [_zeros(v, (B, NH, H), x) for v in (h0, c0, n0, m0)]
    allst, last = _flashrnn("slstm", _gates_first(x), R.transpose(0, 1), b.transpose(0, 1), s)
    return {"h": allst[0]}, dict(zip("hcnm", last.unbind(0)))


def flashrnn_gru(x, R, b, h0=None):
    """FlashRNN's GRU: Wx gates (r, z, n); R gates (g, r, z) with g the recurrent term of the
    candidate; b has four entries (g, r, z, n), n the input-side candidate bias (zero here:
    our x carries it).  h' = z h + (1 - z) tanh(Wx_n + b_n + r (R_g h + b_g))."""
    B, T, NH, _, H = x.shape
    Rt, bt = R.transpose(0, 1), b.transpose(0, 1)  # [3, NH, ...] gates r, z, n
    R_f = torch.stack([Rt[2], Rt[0], Rt[1]], 0)  # g(=n), r, z
    b_f = torch.stack([bt[2], bt[0], bt[1], torch.zeros_like(bt[0])], 0)
    allst, last = _flashrnn("gru", _gates_first(x), R_f, b_f, [_zeros(h0, (B, NH, H), x)])
    return {"h": allst[0]}, {"h": last[0]}


def flashrnn_elman(x, R, b, h0=None):
    B, T, NH, H = x.shape
    allst, last = _flashrnn("elman", x.unsqueeze(2), R.unsqueeze(0), b.unsqueeze(0), [_zeros(h0, (B, NH, H), x)])
    return {"h": allst[0]}, {"h": last[0]}


# ----------------------------------------------------------------------------------------
# flash-linear-attention naive references (float32 inside)
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def fla_naive(family: str, file: str = "naive"):
    """``fla/ops/<family>/<file>.py`` as a stand-alone module, without importing ``fla``."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("fla (fla-core) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "ops", family, f"{file}.py")
    module = f"_rnnc_refs_fla_{family.replace('/', '_')}_{file}"
    mspec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod


def _S0(S0, q, v):
    B, T, NH, K = q.shape
    S0 = _zeros(S0, (B, NH, K, v.shape[-1]), q)
    return S0.float()


def _back(o, S, dtype):
    return {"o": o.to(dtype)}, {"S": S.to(dtype)}


def fla_gla(q, k, v, g, S0=None):
    """naive_recurrent_gla: [B,T,H,K] layout, scale fixed to K^-0.5, so q is pre-multiplied
    by sqrt(K)."""
    K = q.shape[-1]
    o, S = fla_naive("gla").naive_recurrent_gla(
        q * math.sqrt(K), k, v, g, initial_state=_S0(S0, q, v), output_final_state=True
    )
    return _back(o, S, q.dtype)


def fla_simple_gla(q, k, v, g, S0=None):
    """naive_recurrent_simple_gla with scale=1; g [B,T,H] the log decay."""
    o, S = fla_naive("simple_gla").naive_recurrent_simple_gla(
        q, k, v, g, scale=1.0, initial_state=_S0(S0, q, v), output_final_state=True
    )
    return _back(o, S, q.dtype)


def fla_hgrn(x, g, h0=None):
    """naive_recurrent_hgrn: x, g [B, T, D] without heads, so heads are folded into D."""
    B, T, NH, D = x.shape
    h0 = _zeros(h0, (B, NH, D), x).reshape(B, NH * D).float()
    o, hT = fla_naive("hgrn").naive_recurrent_hgrn(
        x.reshape(B, T, NH * D), g.reshape(B, T, NH * D), initial_state=h0, output_final_state=True
    )
    return {"h": o.reshape(B, T, NH, D).to(x.dtype)}, {"h": hT.reshape(B, NH, D).to(x.dtype)}


def fla_deltanet(q, k, v, beta, S0=None):
    """delta_rule_recurrence: head-first [B, H, T, D], scale fixed to K^-0.5 (q pre-multiplied
    by sqrt(K)), beta [B, H, T]."""
    K = q.shape[-1]
    hf = lambda t: t.transpose(1, 2)  # noqa: E731
    o, S = fla_naive("delta_rule").delta_rule_recurrence(
        hf(q * math.sqrt(K)), hf(k), hf(v), hf(beta), initial_state=_S0(S0, q, v), output_final_state=True
    )
    return _back(hf(o), S, q.dtype)


def fla_gated_deltanet(q, k, v, g, beta, S0=None):
    """naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=1): note beta before g."""
    o, S = fla_naive("gated_delta_rule").naive_recurrent_gated_delta_rule(
        q, k, v, beta, g, scale=1.0, initial_state=_S0(S0, q, v), output_final_state=True
    )
    return _back(o, S, q.dtype)


# Cells without a reference of their own, reduced exactly to an fla reference.


def fla_retnet(q, k, v, log_gamma, S0=None):
    """RetNet = simple GLA with g = log_gamma at every step."""
    B, T, NH, _ = q.shape
    return fla_simple_gla(q, k, v, log_gamma.expand(B, T, NH), S0)


def fla_linear_attention(q, k, v, S0=None):
    """Linear attention = simple GLA with g = 0."""
    return fla_simple_gla(q, k, v, q.new_zeros(q.shape[:3]), S0)


def fla_mingru(gz, hc, h0=None):
    """minGRU = HGRN with g = log(1 - z) = logsigmoid(-gz) and x = z * hc."""
    return fla_hgrn(torch.sigmoid(gz) * hc, F.logsigmoid(-gz), h0)


def fla_mamba(u, dt, B, C, A, Dskip, S0=None):
    """Mamba's S6 = HGRN over the D*N state entries with g = dt A and x = (dt u) B, then
    y = S @ C + Dskip u.  Only the final state and the read-out need the per-step states."""
    Bt, T, NH, D = u.shape
    N = B.shape[-1]
    g = dt.unsqueeze(-1) * A  # [Bt,T,NH,D,N]
    x = (dt * u).unsqueeze(-1) * B.unsqueeze(-2)  # [Bt,T,NH,D,N]
    S0 = _zeros(S0, (Bt, NH, D, N), u)
    out, fin = fla_hgrn(x.reshape(Bt, T, NH, D * N), g.reshape(Bt, T, NH, D * N), S0.reshape(Bt, NH, D * N))
    S = out["h"].reshape(Bt, T, NH, D, N)
    y = (S * C.unsqueeze(-2)).sum(-1) + Dskip * u
    return {"y": y}, {"S": fin["h"].reshape(Bt, NH, D, N)}


TORCH_NN = {"lstm": torch_lstm, "gru": torch_gru, "elman": torch_elman}
FLASHRNN = {"lstm": flashrnn_lstm, "gru": flashrnn_gru, "slstm": flashrnn_slstm, "elman": flashrnn_elman}
FLA = {
    "gla": fla_gla,
    "simple_gla": fla_simple_gla,
    "hgrn": fla_hgrn,
    "deltanet": fla_deltanet,
    "gated_deltanet": fla_gated_deltanet,
}
FLA_REDUCED = {"retnet": fla_retnet, "linear_attention": fla_linear_attention, "mingru": fla_mingru, "mamba": fla_mamba}
