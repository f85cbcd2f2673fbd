"""Scan cells of the scan kernels' tests beside examples/ (which has the papers' Aaren, RWKV-4, LRU,
Longhorn...), and fresh inputs for any of them within each cell's domain.

Each cell here has a float64 loop in ``tests/refs/scan_loops.py``; the zoo's are ``tests/refs/loops.py``,
the paper cells' ``tests/refs/paper_loops*.py``.
"""

import torch
from cells import random_call
from refs import data, paper_data

ZOO = ("hgrn", "mingru", "mamba")
PAPER = ("aaren", "rwkv4", "longhorn", "lru", "ntm_memory", "expgate", "energy_norm")

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
    "lru_pair": """
cell lru_pair(H, N) {
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


def source(cell: str) -> str:
    """The cell's text: one of SOURCES, or its file in examples/."""
    return SOURCES[cell] if cell in SOURCES else open(f"examples/{cell}.rnn").read()


def make(cell, ir, B, T, NH, dims, dtype):
    """Fresh random inputs within each cell's domain (the zoo's and paper cells' own draws;
    here: decays below 1, EMA's p0 = 1)."""
    if cell in ZOO or cell in PAPER:
        dims = {k: v for k, v in dims.items() if k in ir.dims}
        maker = data.make if cell in ZOO else paper_data.make
        tensors, states = maker(cell, B=B, T=T, NH=NH, dtype=torch.float64, **dims)
        low = lambda x: x.detach().to(dtype).requires_grad_()  # noqa: E731
        return {k: low(v) for k, v in tensors.items()}, {k: low(v) for k, v in states.items()}
    tensors, states = random_call(ir, B=B, T=T, NH=NH, dims=dims, dtype=dtype)
    with torch.no_grad():
        if cell == "ema":
            tensors["beta"].copy_(0.5 + 0.4 * torch.rand_like(tensors["beta"]))
            states["p"].copy_(0.5 + 0.5 * torch.rand_like(states["p"]))
        if cell == "lru_pair":  # |lambda| < 1
            radius = 0.5 + 0.4 * torch.rand_like(tensors["l_re"])
            angle = 6.0 * torch.rand_like(tensors["l_re"])
            tensors["l_re"].copy_(radius * torch.cos(angle))
            tensors["l_im"].copy_(radius * torch.sin(angle))
        if cell == "chained":
            tensors["f"].copy_(torch.nn.functional.logsigmoid(tensors["f"]))
    return tensors, states
