"""Random nonlinear cells on the sequential kernels, against the reference backend.

Each cell is built from typed pieces, so it always analyses: a vector state ``h: [K]``, a matrix
state ``S: [K, V]`` and a scalar state ``m: []``, each updated through a nonlinearity of random
terms of its shape: weight matrices on either side of a state, vector-vector products to a
scalar, reads of the matrix state along either axis, ``outer``, ``sum`` over an axis or all of
them, inserted and swapped axes, scalar inputs and weights, and several outputs.
"""

import random

import pytest
import torch
from test_triton_sequential import _check

import rnnc

pytest.importorskip("triton")

DECLS = (
    "input a: [K]; input b: [V]; input c: []; weight Wk: [K, K]; weight Wv: [V, V]; weight wk: [K]; "
    "weight s: []; state h: [K]; state S: [K, V]; state m: []"
)
# leaf terms by shape; "K" is [K], "V" is [V], "KV" is [K, V], "" is a scalar
TERMS = {
    "K": ["a", "h", "wk * h", "Wk @ h", "h @ Wk", "S @ b / 4", "sum(S, 1) / 4", "(S @ Wv) @ b / 4", "S @ (Wv @ b) / 4"],
    "V": ["b", "h @ S / 4", "a @ S / 4", "sum(S, 0) / 4", "Wv @ b", "S.T @ a / 4", "(Wk @ S).T @ h / 4"],
    # sums over a dim are scaled to about one entry's size: a sum of 19 * 17 entries saturates the tanh
    # around it, and a gradient of 1e-15 then measures float64 rounding, not the kernel
    "": ["c", "m", "s", "wk @ h", "sum(a * h)", "(b @ b) / 8", "sum(S) / 64", "(a @ S @ b) / 8"],
    "KV": ["S", "outer(a, b)", "outer(h, b)", "h[:, None] * b[None, :]", "S @ Wv", "Wk @ S", "sigmoid(a)[:, None] * S"],
}
UNARY = ["tanh", "sigmoid", "softplus", "logsigmoid"]


def _term(rng: random.Random, shape: str, depth: int = 0) -> str:
    choice = rng.random()
    if depth > 1 or choice < 0.4:
        leaf = rng.choice(TERMS[shape])
        return f"({leaf})" if " " in leaf else leaf  # '*' and '@' bind alike: a product stays one term
    if choice < 0.6:
        inner = _term(rng, shape, depth + 1)
        return f"{rng.choice(UNARY)}({inner})" if rng.random() < 0.5 else f"tanh({inner})"
    if choice < 0.8:  # a scalar broadcast into the shape
        return f"({_term(rng, shape, depth + 1)} * {_term(rng, '', depth + 1)})"
    return f"({_term(rng, shape, depth + 1)} {rng.choice(['+', '-', '*'])} {_term(rng, shape, depth + 1)})"


def random_cell(rng: random.Random) -> str:
    """A random sequential cell over dims K and V."""
    h = f"h = tanh(0.5 * h + {_term(rng, 'K')})"
    S = f"S = tanh(0.5 * S + {_term(rng, 'KV')})"
    m = f"m = tanh(0.5 * m + {_term(rng, '')})"
    emits = [f"emit y = {_term(rng, 'V')}", f"emit z = {_term(rng, '')}"]
    body = [h, S, m]
    rng.shuffle(body)
    return "cell fuzz(K, V) { " + DECLS + "\n" + "\n".join(body + emits) + " }"


@pytest.mark.parametrize("seed", range(6))
def test_random_nonlinear_cell_matches_the_reference(seed):
    text = random_cell(random.Random(seed))
    assert rnnc.compile(text, backend="reference").strategy == "sequential", text
    _check(text, 2, 3, 1, {"K": 17, "V": 19}, torch.float64, 1e-9, seed=seed)
