"""Chunked cells for the chunked kernels' tests: their sources and inputs in each cell's domain.

The zoo's six chunked cells and nine written here from the papers (the ``cells`` helper's versions,
in the papers' own spelling, are in ``examples/`` and checked by ``test_paper_cells_triton.py``).
The float64 oracles live in ``tests/refs/loops.py`` (zoo) and ``tests/refs/chunked_loops.py`` (the
rest), written from the papers' equations.
"""

from __future__ import annotations

import functools
import math

import sympy
import torch
import torch.nn.functional as F
from refs import chunked_loops, loops

from rnnc.compiler import analyse_source, lower_source
from rnnc.compiler.shapes import dim_symbol

ZOO = ["linear_attention", "retnet", "simple_gla", "gla", "deltanet", "gated_deltanet"]

SOURCES = {name: open(f"examples/{name}.rnn").read() for name in ZOO}
SOURCES.update(
    {
        "la_norm": """cell la_norm(K, V) {
    input q: [K]
    input k: [K]
    input v: [V]
    state S: [K, V]
    state z: [K]
    S = S + outer(k, v)
    z = z + k
    emit o = (q @ S) / (q @ z)
}""",
        "mlstm": """cell mlstm(K, V) {
    input q: [K]
    input k: [K]
    input v: [V]
    input i: []
    input f: []
    input go: [V]
    state C: [K, V]
    state n: [K]
    state m: []
    log_f = logsigmoid(f)
    m_new = max(log_f + m, i)
    i_gate = exp(i - m_new)
    f_gate = exp(log_f + m - m_new)
    C = f_gate * C + i_gate * outer(k, v)
    n = f_gate * n + i_gate * k
    m = m_new
    emit h = sigmoid(go) * (q @ C) / max(abs(q @ n), exp(-m))
}""",
        "rwkv6": """cell rwkv6(K, V) {
    input r: [K]
    input k: [K]
    input v: [V]
    input w: [K]
    weight u: [K]
    state S: [K, V]
    emit o = r @ S + (r @ (u * k)) * v
    S = exp(-exp(w))[:, None] * S + outer(k, v)
}""",
        "mamba2": """cell mamba2(N, P) {
    input x: [P]
    input dt: []
    input B: [N]
    input C: [N]
    weight A_log: []
    weight D: []
    state S: [N, P]
    S = exp(-exp(A_log) * dt) * S + dt * outer(B, x)
    emit y = C @ S + D * x
}""",
        "hgrn2": """cell hgrn2(K, V) {
    input q: [K]
    input f: [K]
    input v: [V]
    weight lb: [K]
    state S: [K, V]
    a = lb + (1 - lb) * sigmoid(f)
    S = a[:, None] * S + outer(1 - a, v)
    emit o = q @ S
}""",
        "square": """cell square(D) {
    input q: [D]
    input k: [D]
    input v: [D]
    input g: [D]
    state S: [D, D]
    S = exp(g)[:, None] * S + outer(k, v)
    emit o = q @ S + v
}""",
        "rwkv7": """cell rwkv7(K, V) {
    input r: [K]
    input w: [K]
    input k: [K]
    input v: [V]
    input kk: [K]
    input a: [K]
    weight rk: [K]
    state S: [K, V]
    S = exp(-exp(-0.5) * sigmoid(w))[:, None] * S - outer(a * kk, kk @ S) + outer(k, v)
    emit o = r @ S + (r @ (rk * k)) * v
}""",
        "gated_deltaproduct": """cell gated_deltaproduct(K, V) {
    input q: [K]
    input k1: [K]
    input k2: [K]
    input v1: [V]
    input v2: [V]
    input b1: []
    input b2: []
    input g: []
    state S: [K, V]
    S0 = exp(g) * S
    S1 = S0 + b1 * outer(k1, v1 - k1 @ S0)
    S = S1 + b2 * outer(k2, v2 - k2 @ S1)
    emit o = q @ S
}""",
        "kda": """cell kda(K, V) {
    input q: [K]
    input k: [K]
    input v: [V]
    input g: [K]
    input beta: []
    state S: [K, V]
    Sd = exp(g)[:, None] * S
    S = Sd + beta * outer(k, v - k @ Sd)
    emit o = q @ S
}""",
    }
)
NEW = [name for name in SOURCES if name not in ZOO]
DIMS = {"mamba2": ("N", "P"), "square": ("D", "D")}


def dims_of(name: str, key: int, value: int) -> dict[str, int]:
    """The cell's dims for a key size and a value size (a square state takes the key size)."""
    names = DIMS.get(name, ("K", "V"))
    return {names[0]: key, names[1]: value} if names[0] != names[1] else {names[0]: key}


def ir_of(name: str):
    """The cell's IR (its declarations are the leaves' shapes)."""
    return lower_source(SOURCES[name])


@functools.cache
def plan_of(name: str):
    """The cell's Plan (what the analysis hands the chunked kernels)."""
    return analyse_source(SOURCES[name])


def oracle(name: str, leaves: dict, states: dict):
    """The float64 loop of the cell."""
    module = loops if name in ZOO else chunked_loops
    return module.run(name, leaves, states)


def _unit(x):
    return F.normalize(x, dim=-1)


# per cell, what keeps the inputs in the cell's domain (log decays <= 0, strengths in (0, 1), unit keys)
DOMAIN = {
    "g": lambda x: F.logsigmoid(x + 1.0),
    "log_gamma": lambda x: F.logsigmoid(x + 2.0),
    "beta": torch.sigmoid,
    "b1": torch.sigmoid,
    "b2": torch.sigmoid,
    "a": torch.sigmoid,
    "lb": torch.sigmoid,
    "dt": F.softplus,
    "kk": _unit,
}
UNIT_KEYS = {"deltanet": ("k",), "gated_deltanet": ("k",), "kda": ("k",), "gated_deltaproduct": ("k1", "k2")}
POSITIVE = {"la_norm": ("q", "k", "z")}


def make_call(name: str, B: int, T: int, NH: int, key: int, value: int, dtype=torch.float64, seed: int = 0):
    """(leaves, initial states, dims): fresh random tensors in the cell's domain, requiring grad."""
    ir = ir_of(name)
    dims = dims_of(name, key, value)
    gen = torch.Generator().manual_seed(seed)
    subs = {dim_symbol(d): n for d, n in dims.items()}

    def shape(decl):
        return [int(sympy.sympify(s).subs(subs)) for s in decl.shape]

    def fix(decl, x):
        if decl.name in POSITIVE.get(name, ()):
            x = x.abs() + 0.2
        if decl.name in UNIT_KEYS.get(name, ()):
            return _unit(x)
        return DOMAIN[decl.name](x) if decl.name in DOMAIN else x

    def draw(*size):
        return 0.5 * torch.randn(*size, generator=gen, dtype=torch.float64)

    leaves = {d.name: fix(d, draw(B, T, NH, *shape(d))) for d in ir.inputs}
    leaves.update({d.name: fix(d, draw(NH, *shape(d))) for d in ir.weights})
    states = {d.name: fix(d, draw(B, NH, *shape(d))) for d in ir.states}
    leaves = {k: v.to(dtype).requires_grad_() for k, v in leaves.items()}
    states = {k: v.to(dtype).requires_grad_() for k, v in states.items()}
    return leaves, states, dims


def poisoned(name: str, step: int, T: int = 40):
    """(leaves, states, dims) with every input NaN at ``step`` (weights and initial states untouched)."""
    leaves, states, dims = make_call(name, 1, T, 1, 24, 20)
    leaves = {k: v.detach().clone() for k, v in leaves.items()}
    inputs = {d.name for d in ir_of(name).inputs}
    for key, x in leaves.items():
        if key in inputs:
            x[:, step] = float("nan")
    return leaves, {k: v.detach() for k, v in states.items()}, dims


def with_log_decay(name: str, key: str, value, B: int, T: int, reset: int):
    """(leaves, states, dims) of a float64 call whose log decay input ``key`` is the constant ``value``, or
    (``value`` "reset") its random draw with ``-inf`` at step ``reset``."""
    leaves, states, dims = make_call(name, B, T, 1, 24, 20)
    leaves = {k: v.detach() for k, v in leaves.items()}
    if value == "reset":
        leaves[key] = leaves[key].clone()
        leaves[key][:, reset] = -math.inf
    else:
        leaves[key] = torch.full_like(leaves[key], value)
    return leaves, {k: v.detach() for k, v in states.items()}, dims
