"""Scan cells written as their papers write them, for the scan kernels' tests, with their inputs.

Each has a float64 loop in ``tests/refs/scan_loops.py`` (or ``tests/refs/loops.py`` for the zoo).
"""

import torch
from cells import random_call

SOURCES = {
    # two chained scans: the second reads the first's new value
    "chained": """
cell chained(D) {
    input x: [D]
    input f: [D]
    state h: [D]
    state s: [D]
    h = exp(f) * h + x
    s = s + h
    emit y = h * s
}""",
    # LRU (Orvieto et al. 2023) with the complex diagonal lambda as a (re, im) pair of weights
    "lru": """
cell lru(H, N) {
    input u: [H]
    weight l_re: [N]
    weight l_im: [N]
    weight B_re: [N, H]
    weight B_im: [N, H]
    weight C_re: [H, N]
    weight C_im: [H, N]
    weight D: [H]
    state x_re: [N]
    state x_im: [N]
    re = l_re * x_re - l_im * x_im + B_re @ u
    im = l_im * x_re + l_re * x_im + B_im @ u
    x_re = re
    x_im = im
    emit y = C_re @ x_re - C_im @ x_im + D * u
}""",
    # Aaren (Feng et al. 2024): a running maximum, then two sums rescaled by exp(m - m')
    "aaren": """
cell aaren(K, V) {
    input k: [K]
    input v: [V]
    weight q: [K]
    state m: []
    state c: []
    state a: [V]
    s = q @ k
    m_new = max(m, s)
    c = c * exp(m - m_new) + exp(s - m_new)
    a = a * exp(m - m_new) + v * exp(s - m_new)
    m = m_new
    emit o = a / c
}""",
    # RWKV-4 (Peng et al. 2023), the official kernel's stable form; the output reads the old state
    "rwkv4": """
cell rwkv4(D) {
    input r: [D]
    input k: [D]
    input v: [D]
    weight w: [D]
    weight u: [D]
    state a: [D]
    state b: [D]
    state p: [D]
    uk = u + k
    q = max(p, uk)
    wkv = (exp(p - q) * a + exp(uk - q) * v) / (exp(p - q) * b + exp(uk - q))
    emit o = sigmoid(r) * wkv
    pw = p - w
    p_new = max(pw, k)
    a = exp(pw - p_new) * a + exp(k - p_new) * v
    b = exp(pw - p_new) * b + exp(k - p_new)
    p = p_new
}""",
    # Longhorn (Liu et al. 2024): a reduction of the inputs inside the step
    "longhorn": """
cell longhorn(D, N) {
    input x: [D]
    input dt: [D]
    input k: [N]
    input q: [N]
    weight Dskip: [D]
    state S: [D, N]
    beta = sigmoid(dt)
    eps = beta / (1 + beta * sum(k * k))
    S = (1 - outer(eps, k * k)) * S + outer(eps * x, k)
    emit y = S @ q + Dskip * x
}""",
    # scalar states: Adam's bias-corrected moving average (Kingma & Ba 2015)
    "ema": """
cell ema() {
    input x: []
    weight beta: []
    state m: []
    state p: []
    m = beta * m + (1 - beta) * x
    p = beta * p
    emit y = m / (1 - p)
}""",
    # an output of the previous state
    "leaky_readout": """
cell leaky_readout(D) {
    input x: [D]
    input g: [D]
    state h: [D]
    emit y = 2 * h + x
    h = sigmoid(g) * h + x
}""",
}


def make(cell, ir, B, T, NH, dims, dtype):
    """Fresh random inputs within each cell's domain (decays below 1, RWKV's w >= 0, EMA's p0 = 1)."""
    tensors, states = random_call(ir, B=B, T=T, NH=NH, dims=dims, dtype=dtype)
    with torch.no_grad():
        if cell == "rwkv4":
            tensors["w"].abs_()
        if cell == "ema":
            tensors["beta"].copy_(0.5 + 0.4 * torch.rand_like(tensors["beta"]))
            states["p"].copy_(0.5 + 0.5 * torch.rand_like(states["p"]))
        if cell == "lru":  # |lambda| < 1
            radius = 0.5 + 0.4 * torch.rand_like(tensors["l_re"])
            angle = 6.0 * torch.rand_like(tensors["l_re"])
            tensors["l_re"].copy_(radius * torch.cos(angle))
            tensors["l_im"].copy_(radius * torch.sin(angle))
        if cell == "chained":
            tensors["f"].copy_(torch.nn.functional.logsigmoid(tensors["f"]))
    return tensors, states
