"""Chunked cells for the chunked kernels' tests: sources, their pieces built by hand, and inputs in each domain.

The pieces are what the analysis hands a chunked stage (``rnnc/compiler/components.py``), written
here from each cell's equations until the analysis builds them (then this file's ``PIECES`` go and
the tests take the Plan's). The float64 oracles live in ``tests/refs/loops.py`` (zoo) and
``tests/refs/chunked_loops.py`` (the rest), written from the papers, not from these pieces.
"""

from __future__ import annotations

import math

import sympy
import torch
import torch.nn.functional as F
from refs import chunked_loops, loops

from rnnc.compiler import lower_source
from rnnc.compiler.components import Factor, LinearState, OutputPiece, RankOne, Read, Write, new_value_symbol
from rnnc.compiler.nested import Matmul
from rnnc.compiler.shapes import dim_symbol
from rnnc.compiler.symbols import logsigmoid, maximum, sigmoid
from rnnc.compiler.symbols import tensor_symbol as t

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


def _read(symbol, state, new, query):
    return Read(t(symbol), state, new, query)


def _plain(state, key_dim, value_dim, factor, writes):
    return LinearState(state, 0, key_dim, value_dim, (factor,), tuple(writes))


def pieces(name: str) -> tuple[tuple[LinearState, ...], tuple[OutputPiece, ...]]:
    """The linear states and output pieces of a cell, from its equations."""
    K, V = dim_symbol("K"), dim_symbol("V")
    identity = Factor("identity", None, True)
    if name == "linear_attention":
        return (_plain("S", K, V, identity, [Write(1, t("k"), t("v"))]),), (
            OutputPiece("o", (V,), t("r0"), (_read("r0", "S", True, t("q")),)),
        )
    if name in ("retnet", "simple_gla", "gla"):
        kind, log = {
            "retnet": ("scalar", t("log_gamma")),
            "simple_gla": ("scalar", t("g")),
            "gla": ("diagonal", t("g")),
        }[name]
        return (_plain("S", K, V, Factor(kind, log, True), [Write(1, t("k"), t("v"))]),), (
            OutputPiece("o", (V,), t("r0"), (_read("r0", "S", True, t("q")),)),
        )
    if name in ("deltanet", "gated_deltanet"):
        if name == "deltanet":
            factor = Factor("identity", None, True, (RankOne(-t("beta"), t("k"), t("k")),))
        else:
            factor = Factor("scalar", t("g"), True, (RankOne(-t("beta") * sympy.exp(t("g")), t("k"), t("k")),))
        return (_plain("S", K, V, factor, [Write(t("beta"), t("k"), t("v"))]),), (
            OutputPiece("o", (V,), t("r0"), (_read("r0", "S", True, t("q")),)),
        )
    if name == "la_norm":
        states = (
            _plain("S", K, V, identity, [Write(1, t("k"), t("v"))]),
            LinearState("z", 0, K, None, (identity,), (Write(1, t("k"), None),)),
        )
        reads = (_read("rS", "S", True, t("q")), _read("rz", "z", True, t("q")))
        return states, (OutputPiece("o", (V,), t("rS") / t("rz"), reads),)
    if name == "mlstm":
        m, m_new = t("m"), new_value_symbol("m")
        log_decay = logsigmoid(t("f")) + m - m_new
        write_scale = sympy.exp(t("i") - m_new)
        states = (
            _plain("C", K, V, Factor("scalar", log_decay, True), [Write(write_scale, t("k"), t("v"))]),
            LinearState("n", 0, K, None, (Factor("scalar", log_decay, True),), (Write(write_scale, t("k"), None),)),
        )
        reads = (_read("rC", "C", True, t("q")), _read("rn", "n", True, t("q")))
        h = sigmoid(t("go")) * t("rC") / maximum(sympy.Abs(t("rn")), sympy.exp(-m_new))
        return states, (OutputPiece("h", (V,), h, reads),)
    if name == "rwkv6":
        state = _plain("S", K, V, Factor("diagonal", -sympy.exp(t("w")), True), [Write(1, t("k"), t("v"))])
        o = t("r0") + Matmul(t("r"), t("u") * t("k")) * t("v")
        return (state,), (OutputPiece("o", (V,), o, (_read("r0", "S", False, t("r")),)),)
    if name == "mamba2":
        N, P = dim_symbol("N"), dim_symbol("P")
        decay = Factor("scalar", -sympy.exp(t("A_log")) * t("dt"), True)
        state = _plain("S", N, P, decay, [Write(t("dt"), t("B"), t("x"))])
        return (state,), (OutputPiece("y", (P,), t("r0") + t("D") * t("x"), (_read("r0", "S", True, t("C")),)),)
    if name == "hgrn2":
        gate = t("lb") + (1 - t("lb")) * sigmoid(t("f"))
        state = _plain("S", K, V, Factor("diagonal", sympy.log(gate), True), [Write(1, 1 - gate, t("v"))])
        return (state,), (OutputPiece("o", (V,), t("r0"), (_read("r0", "S", True, t("q")),)),)
    if name == "square":
        D = dim_symbol("D")
        state = _plain("S", D, D, Factor("diagonal", t("g"), True), [Write(1, t("k"), t("v"))])
        return (state,), (OutputPiece("o", (D,), t("r0") + t("v"), (_read("r0", "S", True, t("q")),)),)
    if name == "rwkv7":
        log_w = -math.exp(-0.5) * sigmoid(t("w"))
        factor = Factor("diagonal", log_w, True, (RankOne(-1, t("a") * t("kk"), t("kk")),))
        state = _plain("S", K, V, factor, [Write(1, t("k"), t("v"))])
        o = t("r0") + Matmul(t("r"), t("rk") * t("k")) * t("v")
        return (state,), (OutputPiece("o", (V,), o, (_read("r0", "S", True, t("r")),)),)
    if name == "gated_deltaproduct":
        b1, b2, k1, k2 = t("b1"), t("b2"), t("k1"), t("k2")
        first = Factor("scalar", t("g"), True, (RankOne(-b1 * sympy.exp(t("g")), k1, k1),))
        second = Factor("identity", None, True, (RankOne(-b2, k2, k2),))
        # the first write passes through the second factor: (I - b2 k2 k2^T) b1 k1 v1^T
        writes = (Write(b1, k1, t("v1")), Write(-b1 * b2 * Matmul(k2, k1), k2, t("v1")), Write(b2, k2, t("v2")))
        state = LinearState("S", 0, K, V, (first, second), writes)
        return (state,), (OutputPiece("o", (V,), t("r0"), (_read("r0", "S", True, t("q")),)),)
    if name == "kda":
        factor = Factor("diagonal", t("g"), True, (RankOne(-t("beta"), t("k"), sympy.exp(t("g")) * t("k")),))
        state = _plain("S", K, V, factor, [Write(t("beta"), t("k"), t("v"))])
        return (state,), (OutputPiece("o", (V,), t("r0"), (_read("r0", "S", True, t("q")),)),)
    raise KeyError(name)


def ir_of(name: str):
    """The cell's IR (its declarations are the leaves' shapes)."""
    return lower_source(SOURCES[name])


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


def earlier_states(name: str, leaves: dict, states: dict) -> tuple[dict, dict]:
    """The earlier components' trajectories a chunked stage reads (old and new values), and their finals.

    mLSTM's stabiliser ``m' = max(logsigmoid(f) + m, i)`` is a max-plus component before ``C`` and ``n``.
    """
    if name != "mlstm":
        return {}, {}
    f, i = leaves["f"], leaves["i"]
    m = states.get("m")
    m = torch.zeros_like(i[:, 0]) if m is None else m
    olds, news = [], []
    for step in range(i.shape[1]):
        olds.append(m)
        m = torch.maximum(F.logsigmoid(f[:, step]) + m, i[:, step])
        news.append(m)
    return {"m": torch.stack(olds, 1), "m'": torch.stack(news, 1)}, {"m": m}
