"""Fresh random float64 inputs for every zoo cell, in the rnnc layout.

``SPECS[cell]`` mirrors the declarations of ``examples/<cell>.rnn`` (checked against the
files by ``tests/test_refs_agree.py``).  ``make(cell, ...)`` returns ``(args, state)``:
``args`` keyed by the input / weight names, ``state`` keyed by the state names (initial
values, ``[B, NH, *shape]``), all leaves with ``requires_grad=True`` unless told otherwise.

Ranges are chosen so that every cell is well conditioned over a few dozen steps:
log decays ``g = logsigmoid(randn)`` (so ``g <= 0``), Mamba's ``dt = softplus(randn)`` and
``A = -exp(...) < 0``, DeltaNet keys L2-normalised per step and ``beta = sigmoid(randn)``,
recurrent matrices scaled by ``1/sqrt(H)``, the LTI transition scaled to be stable, and the
sLSTM normaliser ``n0`` all zero or all ``>= 1`` (FlashRNN tests ``n == 0`` on the whole tensor).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Shape = tuple  # of dim names (str) and integers


@dataclass(frozen=True)
class Spec:
    dims: tuple[str, ...]
    inputs: dict[str, Shape]
    weights: dict[str, Shape]
    states: dict[str, Shape]
    outputs: dict[str, Shape]
    default_dims: dict[str, int]


def _s(*xs):
    return tuple(xs)


_RNN_SEQ = dict(default_dims={"H": 5})
SPECS: dict[str, Spec] = {
    "lstm": Spec(
        ("H",),
        {"x": _s(4, "H")},
        {"R": _s(4, "H", "H"), "b": _s(4, "H")},
        {"h": _s("H"), "c": _s("H")},
        {"h": _s("H")},
        **_RNN_SEQ,
    ),
    "elman": Spec(
        ("H",), {"x": _s("H")}, {"R": _s("H", "H"), "b": _s("H")}, {"h": _s("H")}, {"h": _s("H")}, **_RNN_SEQ
    ),
    "gru": Spec(
        ("H",), {"x": _s(3, "H")}, {"R": _s(3, "H", "H"), "b": _s(3, "H")}, {"h": _s("H")}, {"h": _s("H")}, **_RNN_SEQ
    ),
    "slstm": Spec(
        ("H",),
        {"x": _s(4, "H")},
        {"R": _s(4, "H", "H"), "b": _s(4, "H")},
        {"h": _s("H"), "c": _s("H"), "n": _s("H"), "m": _s("H")},
        {"h": _s("H")},
        **_RNN_SEQ,
    ),
    "hgrn": Spec(("D",), {"x": _s("D"), "g": _s("D")}, {}, {"h": _s("D")}, {"h": _s("D")}, default_dims={"D": 5}),
    "mingru": Spec(("H",), {"gz": _s("H"), "hc": _s("H")}, {}, {"h": _s("H")}, {"h": _s("H")}, **_RNN_SEQ),
    "mamba": Spec(
        ("D", "N"),
        {"u": _s("D"), "dt": _s("D"), "B": _s("N"), "C": _s("N")},
        {"A": _s("D", "N"), "Dskip": _s("D")},
        {"S": _s("D", "N")},
        {"y": _s("D")},
        default_dims={"D": 5, "N": 3},
    ),
    "linear_attention": Spec(
        ("K", "V"),
        {"q": _s("K"), "k": _s("K"), "v": _s("V")},
        {},
        {"S": _s("K", "V")},
        {"o": _s("V")},
        default_dims={"K": 5, "V": 3},
    ),
    "retnet": Spec(
        ("K", "V"),
        {"q": _s("K"), "k": _s("K"), "v": _s("V")},
        {"log_gamma": _s()},
        {"S": _s("K", "V")},
        {"o": _s("V")},
        default_dims={"K": 5, "V": 3},
    ),
    "simple_gla": Spec(
        ("K", "V"),
        {"q": _s("K"), "k": _s("K"), "v": _s("V"), "g": _s()},
        {},
        {"S": _s("K", "V")},
        {"o": _s("V")},
        default_dims={"K": 5, "V": 3},
    ),
    "gla": Spec(
        ("K", "V"),
        {"q": _s("K"), "k": _s("K"), "v": _s("V"), "g": _s("K")},
        {},
        {"S": _s("K", "V")},
        {"o": _s("V")},
        default_dims={"K": 5, "V": 3},
    ),
    "deltanet": Spec(
        ("K", "V"),
        {"q": _s("K"), "k": _s("K"), "v": _s("V"), "beta": _s()},
        {},
        {"S": _s("K", "V")},
        {"o": _s("V")},
        default_dims={"K": 5, "V": 3},
    ),
    "gated_deltanet": Spec(
        ("K", "V"),
        {"q": _s("K"), "k": _s("K"), "v": _s("V"), "g": _s(), "beta": _s()},
        {},
        {"S": _s("K", "V")},
        {"o": _s("V")},
        default_dims={"K": 5, "V": 3},
    ),
    "lti": Spec(
        ("N", "M"),
        {"u": _s("M")},
        {"A": _s("N", "N"), "Bu": _s("N", "M"), "Cy": _s("N")},
        {"m": _s("N")},
        {"y": _s("N")},
        default_dims={"N": 4, "M": 3},
    ),
}

CELLS = tuple(SPECS)


def concrete(shape: Shape, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims[d] for d in shape)


def fresh_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def make(
    cell: str,
    *,
    B: int = 3,
    T: int = 7,
    NH: int = 2,
    seed: int | None = None,
    zero_state: bool = False,
    requires_grad: bool = True,
    dtype: torch.dtype = torch.float64,
    **dims: int,
):
    """Random arguments and initial states for ``cell`` in the rnnc layout.

    ``dims`` bind the cell's symbolic sizes (defaults in ``SPECS[cell].default_dims``).
    ``zero_state=True`` gives all-zero initial states (still passed explicitly).  The sLSTM
    normaliser ``n`` is all ``>= 1`` (or all zero with ``zero_state``); an all-zero ``n0``
    never requires grad: ``where(n == 0, ...)`` is discontinuous there, and FlashRNN's
    ``max(n, 1)`` clamp splits the gradient at the tie ``n = 1``.
    Returns ``(args, state)``.
    """
    spec = SPECS[cell]
    d = dict(spec.default_dims)
    unknown = set(dims) - set(spec.dims)
    if unknown:
        raise TypeError(f"{cell} has dims {spec.dims}, got {sorted(unknown)}")
    d.update(dims)
    gen = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    def inp(name):
        return (B, T, NH, *concrete(spec.inputs[name], d))

    def wt(name):
        return (NH, *concrete(spec.weights[name], d))

    def st(name):
        return (B, NH, *concrete(spec.states[name], d))

    args: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if cell in ("lstm", "elman", "gru", "slstm"):
            H = d["H"]
            args["x"] = randn(*inp("x"))
            args["R"] = randn(*wt("R")) / math.sqrt(H)
            args["b"] = 0.5 * randn(*wt("b"))
            state["h"] = torch.tanh(randn(*st("h")))
            if cell in ("lstm", "slstm"):
                state["c"] = randn(*st("c"))
            if cell == "slstm":
                state["n"] = 1.0 + 2.0 * rand(*st("n"))
                state["m"] = randn(*st("m"))
        elif cell == "hgrn":
            args["x"] = randn(*inp("x"))
            args["g"] = F.logsigmoid(randn(*inp("g")) + 1.0)
            state["h"] = randn(*st("h"))
        elif cell == "mingru":
            args["gz"] = randn(*inp("gz"))
            args["hc"] = randn(*inp("hc"))
            state["h"] = randn(*st("h"))
        elif cell == "mamba":
            args["u"] = randn(*inp("u"))
            args["dt"] = F.softplus(randn(*inp("dt")))
            args["B"] = randn(*inp("B"))
            args["C"] = randn(*inp("C"))
            args["A"] = -torch.exp(0.5 * randn(*wt("A")))
            args["Dskip"] = randn(*wt("Dskip"))
            state["S"] = randn(*st("S"))
        elif cell == "lti":
            N, M = d["N"], d["M"]
            args["u"] = randn(*inp("u"))
            args["A"] = 0.6 * randn(*wt("A")) / math.sqrt(N)
            args["Bu"] = randn(*wt("Bu")) / math.sqrt(M)
            args["Cy"] = randn(*wt("Cy"))
            state["m"] = randn(*st("m"))
        else:  # matrix-state cells
            K = d["K"]
            args["q"] = randn(*inp("q"))
            args["k"] = randn(*inp("k"))
            args["v"] = randn(*inp("v"))
            if cell in ("linear_attention", "retnet", "simple_gla", "gla"):
                args["q"] /= math.sqrt(K)
                args["k"] /= math.sqrt(K)
            if cell in ("simple_gla", "gla", "gated_deltanet"):
                args["g"] = F.logsigmoid(randn(*inp("g")) + 1.0)
            if cell == "retnet":
                args["log_gamma"] = F.logsigmoid(randn(*wt("log_gamma")) + 2.0)
            if cell in ("deltanet", "gated_deltanet"):
                args["k"] = F.normalize(args["k"], dim=-1)
                args["beta"] = torch.sigmoid(randn(*inp("beta")))
            state["S"] = randn(*st("S"))
        if zero_state:
            state = {k: torch.zeros_like(v) for k, v in state.items()}

    # keep the declaration order of the .rnn file
    args = {k: args[k] for k in (*spec.inputs, *spec.weights)}
    state = {k: state[k] for k in spec.states}
    for name, t in (*args.items(), *state.items()):
        grad = requires_grad and not (cell == "slstm" and name == "n" and bool((t == 0).all()))
        t.requires_grad_(grad)
    return args, state


def fla_dims(cell: str, big: bool) -> dict[str, int]:
    """Dims for comparisons with fla's naive references: odd and small, or a little larger."""
    if cell in ("hgrn", "mingru"):
        return {"D" if cell == "hgrn" else "H": 24 if big else 5}
    if cell == "mamba":
        return {"D": 6, "N": 5} if big else {"D": 5, "N": 3}
    return {"K": 16, "V": 24} if big else {"K": 5, "V": 3}
