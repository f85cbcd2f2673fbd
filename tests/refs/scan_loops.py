"""Float64 reference loops for the scan cells of ``tests/scan_cells.py``, written from the papers.

Nothing here imports ``rnnc``. Layout as in ``loops.py``: inputs ``[B, T, NH, *shape]``, weights
``[NH, *shape]``, initial states ``[B, NH, *shape]`` (keyword ``<state>0``, zeros if missing);
each function returns ``(outputs, final_states)`` keyed by the ``.rnn`` names.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _init(s0, like: Tensor, shape) -> Tensor:
    return s0 if s0 is not None else like.new_zeros(shape)


def _stack(xs: list[Tensor], like: Tensor, shape) -> Tensor:
    return torch.stack(xs, dim=1) if xs else like.new_zeros((shape[0], 0, *shape[1:]))


def chained(x, f, h0=None, s0=None):
    """Two chained scans: h = exp(f) h + x, then a running sum s = s + h; y = h s."""
    B, T, NH, D = x.shape
    h, s = _init(h0, x, (B, NH, D)), _init(s0, x, (B, NH, D))
    ys = []
    for t in range(T):
        h = torch.exp(f[:, t]) * h + x[:, t]
        s = s + h
        ys.append(h * s)
    return {"y": _stack(ys, x, (B, NH, D))}, {"h": h, "s": s}


def lru_pair(u, l_re, l_im, B_re, B_im, C_re, C_im, D, x_re0=None, x_im0=None):
    """LRU (Orvieto et al. 2023, eqs. 3-7) with the diagonal complex lambda given as (re, im) weights:
    x = lambda x + B u (complex), y = Re(C x) + D u, computed in complex arithmetic."""
    Bt, T, NH, H = u.shape
    N = l_re.shape[-1]
    lam = torch.complex(l_re, l_im)  # [NH, N]
    Bc, Cc = torch.complex(B_re, B_im), torch.complex(C_re, C_im)  # [NH, N, H], [NH, H, N]
    x = torch.complex(_init(x_re0, u, (Bt, NH, N)), _init(x_im0, u, (Bt, NH, N)))
    ys = []
    for t in range(T):
        ut = u[:, t].to(Bc.dtype)
        x = lam * x + (Bc * ut.unsqueeze(-2)).sum(-1)
        ys.append((Cc * x.unsqueeze(-2)).sum(-1).real + D * u[:, t])
    return {"y": _stack(ys, u, (Bt, NH, H))}, {"x_re": x.real, "x_im": x.imag}


def ema(x, beta, m0=None, p0=None):
    """Adam's bias-corrected moving average (Kingma & Ba 2015, Alg. 1) of a scalar per step:
    m = beta m + (1 - beta) x, p = beta p (p0 = 1 gives beta^t), y = m / (1 - p)."""
    B, T, NH = x.shape
    m, p = _init(m0, x, (B, NH)), _init(p0, x, (B, NH))
    ys = []
    for t in range(T):
        m = beta * m + (1 - beta) * x[:, t]
        p = beta * p
        ys.append(m / (1 - p))
    return {"y": _stack(ys, x, (B, NH))}, {"m": m, "p": p}


def leaky_readout(x, g, h0=None):
    """An output of the previous state: y = 2 h_{t-1} + x, then h = sigmoid(g) h + x."""
    B, T, NH, D = x.shape
    h = _init(h0, x, (B, NH, D))
    ys = []
    for t in range(T):
        ys.append(2 * h + x[:, t])
        h = torch.sigmoid(g[:, t]) * h + x[:, t]
    return {"y": _stack(ys, x, (B, NH, D))}, {"h": h}


LOOPS = {
    "chained": chained,
    "lru_pair": lru_pair,
    "ema": ema,
    "leaky_readout": leaky_readout,
}


def run(cell: str, args: dict, state: dict | None = None):
    """Call the loop of ``cell`` with ``.rnn``-named inputs, weights and initial states."""
    return LOOPS[cell](**args, **{f"{k}0": v for k, v in (state or {}).items()})
