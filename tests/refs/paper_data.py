"""Declarations and well-conditioned random draws for the paper cells of ``examples/``.

``SPECS[cell]`` mirrors the declarations of ``examples/<cell>.rnn`` (checked against the files by
``tests/test_paper_cells.py``); ``DRAWS[cell]`` names how each input, weight and initial state is
drawn when plain ``randn`` would not be the paper's domain or would be ill-conditioned:

* ``unit``: in (0, 1) (gates, decays, step sizes, lower bounds: the cells are written for them);
* ``step2``: in (0, 2) (DeltaProduct's beta, which may flip the sign of an eigenvalue);
* ``logdecay``: ``logsigmoid(randn + 1) <= 0`` (log decays);
* ``negative``: ``-exp(randn / 2)`` (Mamba-2's A);
* ``positive``: ``softplus(randn) + 0.5`` (normalisers' initial values, RWKV-4's denominator:
  a normaliser drawn around zero divides by almost nothing and measures conditioning, not code);
* ``unitkey``: L2-normalised along the last axis (delta-rule keys, as the papers normalise them:
  with ``beta ||k||^2 > 2`` the delta rule diverges);
* ``matrix``: ``randn / sqrt(fan-in)``; ``stable``: ``0.6 randn / sqrt(n)`` (LMU's A);
* ``bounded``: ``tanh(randn)`` (IndRNN's recurrent weight, |u| < 1).

Anything not named is ``randn``. ``make(cell, ...)`` returns ``(args, state)`` like ``data.make``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from refs.data import Spec, concrete, fresh_seed

_QKV = {"q": ("K",), "k": ("K",), "v": ("V",)}
_KV = {"K": 5, "V": 3}
_HD = {"H": 5, "D": 3}


def _gate_weights(*names: str) -> dict[str, tuple[str, ...]]:
    return {n: ("H", "D") for n in names}


SPECS: dict[str, Spec] = {
    "mlstm": Spec(
        ("K", "V"),
        {**_QKV, "i": (), "f": (), "o": ("V",)},
        {},
        {"C": ("V", "K"), "n": ("K",), "m": ()},
        {"h": ("V",)},
        _KV,
    ),
    "rwkv4": Spec(
        ("D",),
        {"r": ("D",), "k": ("D",), "v": ("D",)},
        {"w": ("D",), "u": ("D",)},
        {"a": ("D",), "b": ("D",), "p": ("D",)},
        {"o": ("D",)},
        {"D": 5},
    ),
    "rwkv6": Spec(
        ("K", "V"),
        {"r": ("K",), "k": ("K",), "v": ("V",), "d": ("K",)},
        {"u": ("K",)},
        {"S": ("K", "V")},
        {"o": ("V",)},
        _KV,
    ),
    "rwkv7": Spec(
        ("K", "V"),
        {"r": ("K",), "k": ("K",), "v": ("V",), "d": ("K",), "a": ("K",)},
        {"xi": ("K",), "alpha": ("K",)},
        {"S": ("V", "K")},
        {"y": ("V",)},
        _KV,
    ),
    "mamba2": Spec(
        ("P", "N"),
        {"x": ("P",), "dt": (), "B": ("N",), "C": ("N",)},
        {"A": (), "Dskip": ()},
        {"h": ("P", "N")},
        {"y": ("P",)},
        {"P": 5, "N": 3},
    ),
    "hgrn2": Spec(
        ("K", "V"), {"q": ("K",), "fx": ("K",), "i": ("V",)}, {"lb": ("K",)}, {"S": ("K", "V")}, {"o": ("V",)}, _KV
    ),
    "aaren": Spec(
        ("K", "V"), {"k": ("K",), "v": ("V",)}, {"q": ("K",)}, {"m": (), "c": (), "a": ("V",)}, {"o": ("V",)}, _KV
    ),
    "lmu": Spec(
        ("X", "H", "D"),
        {"x": ("X",)},
        {
            "ex": ("X",),
            "eh": ("H",),
            "em": ("D",),
            "A": ("D", "D"),
            "Bm": ("D",),
            "Wx": ("H", "X"),
            "Wh": ("H", "H"),
            "Wm": ("H", "D"),
        },
        {"h": ("H",), "m": ("D",)},
        {"h": ("H",)},
        {"X": 3, "H": 5, "D": 7},
    ),
    "m2rnn": Spec(("K", "V"), {**_QKV, "f": ()}, {"W": ("V", "V")}, {"H": ("K", "V")}, {"y": ("V",)}, _KV),
    "titans": Spec(
        ("K", "V"),
        {**_QKV, "eta": (), "theta": (), "alpha": ()},
        {},
        {"M": ("V", "K"), "S": ("V", "K")},
        {"y": ("V",)},
        _KV,
    ),
    "gated_deltaproduct": Spec(
        ("K", "V"),
        {"q": ("K",), "k1": ("K",), "k2": ("K",), "v1": ("V",), "v2": ("V",), "b1": (), "b2": (), "g": ()},
        {},
        {"S": ("K", "V")},
        {"o": ("V",)},
        _KV,
    ),
    "kda": Spec(("K", "V"), {**_QKV, "alpha": ("K",), "beta": ()}, {}, {"S": ("K", "V")}, {"o": ("V",)}, _KV),
    "lru": Spec(
        ("H", "N"),
        {"u": ("H",)},
        {
            "nu": ("N",),
            "theta": ("N",),
            "gamma_log": ("N",),
            "B_re": ("N", "H"),
            "B_im": ("N", "H"),
            "C_re": ("H", "N"),
            "C_im": ("H", "N"),
            "D": ("H",),
        },
        {"x_re": ("N",), "x_im": ("N",)},
        {"y": ("H",)},
        {"H": 3, "N": 5},
    ),
    "indrnn": Spec(("H",), {"x": ("H",)}, {"u": ("H",), "b": ("H",)}, {"h": ("H",)}, {"h": ("H",)}, {"H": 5}),
    "longhorn": Spec(
        ("D", "N"),
        {"x": ("D",), "dt": ("D",), "k": ("N",), "q": ("N",)},
        {"Dskip": ("D",)},
        {"S": ("D", "N")},
        {"y": ("D",)},
        {"D": 5, "N": 3},
    ),
    "linear_attention_normalised": Spec(("K", "V"), _QKV, {}, {"S": ("K", "V"), "z": ("K",)}, {"o": ("V",)}, _KV),
    "gated_deltanet_decay_first": Spec(
        ("K", "V"), {**_QKV, "g": (), "beta": ()}, {}, {"S": ("K", "V")}, {"o": ("V",)}, _KV
    ),
    "deltanet_square": Spec(
        ("D",), {"q": ("D",), "k": ("D",), "v": ("D",), "beta": ()}, {}, {"S": ("D", "D")}, {"o": ("D",)}, {"D": 5}
    ),
    "expgate": Spec(
        ("H",),
        {"i": ("H",), "f": ("H",), "z": ("H",), "o": ("H",)},
        {},
        {"c": ("H",), "n": ("H",), "m": ("H",)},
        {"h": ("H",)},
        {"H": 5},
    ),
    "tanh_accumulator": Spec(("H",), {"x": ("H",)}, {}, {"h": ("H",)}, {"h": ("H",)}, {"H": 5}),
    "ema_gla": Spec(
        ("K", "V"),
        {**_QKV, "g": ("K",), "a": ("V",)},
        {},
        {"c": ("V",), "S": ("K", "V")},
        {"o": ("V",), "c": ("V",)},
        _KV,
    ),
    "delta_monitor": Spec(("K", "V"), {**_QKV, "beta": ()}, {}, {"S": ("K", "V")}, {"err": ("V",), "o": ("V",)}, _KV),
    "gated_accumulator": Spec(
        ("H",),
        {"x": ("H",), "u": ("H",)},
        {"R": ("H", "H")},
        {"h": ("H",), "c": ("H",)},
        {"h": ("H",), "y": ("H",)},
        {"H": 5},
    ),
    "energy_norm": Spec(("H",), {"x": ("H",), "g": ()}, {}, {"e": (), "s": ("H",)}, {"y": ("H",)}, {"H": 5}),
    "ntm_memory": Spec(
        ("M", "V"),
        {"wl": ("M",), "rl": ("M",), "e": ("V",), "a": ("V",)},
        {},
        {"Mem": ("M", "V")},
        {"read": ("V",)},
        {"M": 5, "V": 3},
    ),
    "qrnn": Spec(("H", "D"), {"x": ("D",)}, _gate_weights("Wz", "Wf", "Wo"), {"c": ("H",)}, {"h": ("H",)}, _HD),
    "sru": Spec(
        ("D",),
        {"x": ("D",)},
        {"W": ("D", "D"), "Wf": ("D", "D"), "bf": ("D",), "Wr": ("D", "D"), "br": ("D",)},
        {"c": ("D",)},
        {"h": ("D",)},
        {"D": 5},
    ),
    "sru_2018": Spec(
        ("D",),
        {"x": ("D",)},
        {
            "W": ("D", "D"),
            "Wf": ("D", "D"),
            "vf": ("D",),
            "bf": ("D",),
            "Wr": ("D", "D"),
            "vr": ("D",),
            "br": ("D",),
        },
        {"c": ("D",)},
        {"h": ("D",)},
        {"D": 5},
    ),
    "rglru": Spec(
        ("D",),
        {"x": ("D",)},
        {"Wa": ("D", "D"), "ba": ("D",), "Wx": ("D", "D"), "bx": ("D",), "Lambda": ("D",)},
        {"h": ("D",)},
        {"h": ("D",)},
        {"D": 5},
    ),
    "ligru": Spec(
        ("H", "D"),
        {"x": ("D",)},
        {"Wz": ("H", "D"), "Uz": ("H", "H"), "Wh": ("H", "D"), "Uh": ("H", "H")},
        {"h": ("H",)},
        {"h": ("H",)},
        _HD,
    ),
    "eagle": Spec(
        ("K", "V"),
        {"r": ("K",), "k": ("K",), "v": ("V",)},
        {"omega": ("K",), "u": ("K",)},
        {"S": ("K", "V")},
        {"o": ("V",)},
        _KV,
    ),
    "deltanet_l2": Spec(("K", "V"), {**_QKV, "b": ()}, {}, {"S": ("V", "K")}, {"o": ("V",)}, _KV),
    "mega_ema": Spec(
        ("D", "N"),
        {"x": ("D",)},
        {n: ("D", "N") for n in ("alpha_p", "delta_p", "beta", "eta")},
        {"h": ("D", "N")},
        {"y": ("D",)},
        {"D": 5, "N": 3},
    ),
    "minlstm": Spec(
        ("H", "D"),
        {"x": ("D",)},
        {"Wf": ("H", "D"), "bf": ("H",), "Wi": ("H", "D"), "bi": ("H",), "Wh": ("H", "D"), "bh": ("H",)},
        {"h": ("H",)},
        {"h": ("H",)},
        _HD,
    ),
    "ttt_linear": Spec(("K", "V"), {**_QKV, "lr": ()}, {}, {"W": ("V", "K")}, {"z": ("V",)}, _KV),
    "mamba2_ssd": Spec(
        ("N", "P"),
        {"x": ("P",), "B": ("N",), "C": ("N",), "dt": ()},
        {"A_log": (), "dt_bias": (), "D": ("P",)},
        {"h": ("N", "P")},
        {"y": ("P",)},
        {"N": 3, "P": 5},
    ),
    "mlstm_plain": Spec(
        ("K", "V"),
        {**_QKV, "it": (), "ft": (), "ot": ("V",)},
        {},
        {"C": ("V", "K"), "n": ("K",)},
        {"h": ("V",)},
        _KV,
    ),
    "s4d": Spec(
        ("H", "N"),
        {"u": ("H",)},
        {"log_dt": ("H",), "A_log": ("H", "N"), "B": ("H", "N"), "C": ("H", "N"), "D": ("H",)},
        {"x": ("H", "N")},
        {"y": ("H",)},
        {"H": 5, "N": 3},
    ),
    "cema": Spec(
        ("D", "N"),
        {"x": ("D",)},
        {n: ("D", "N") for n in ("alpha_p", "delta_p", "theta", "beta", "eta")},
        {"h_re": ("D", "N"), "h_im": ("D", "N")},
        {"y": ("D",)},
        {"D": 5, "N": 3},
    ),
    "linoss": Spec(
        ("P", "M"),
        {"u": ("P",)},
        {"A_hat": ("M",), "dt_hat": ("M",), "B": ("M", "P"), "C": ("P", "M"), "D": ("P",)},
        {"y": ("M",), "z": ("M",)},
        {"x": ("P",)},
        {"P": 3, "M": 5},
    ),
    "hedgehog": Spec(
        ("K", "F", "V"),
        {"q": ("K",), "k": ("K",), "v": ("V",)},
        {"W": ("F", "K")},
        {"Sp": ("F", "V"), "Sm": ("F", "V"), "zp": ("F",), "zm": ("F",)},
        {"o": ("V",)},
        {"K": 5, "F": 7, "V": 3},
    ),
}

DRAWS: dict[str, dict[str, str]] = {
    "mlstm": {},
    "rwkv4": {"w": "positive", "b": "positive"},  # the paper's decay e^{-w} has w >= 0
    "rwkv6": {},
    "rwkv7": {"a": "unit"},
    "mamba2": {"A": "negative"},
    "hgrn2": {"lb": "unit"},
    "aaren": {"c": "positive"},
    "lmu": {"A": "stable", "Wx": "matrix", "Wh": "matrix", "Wm": "matrix"},
    "m2rnn": {"f": "unit", "W": "matrix"},
    # Titans normalises keys (and queries); a learning rate theta in (0, 1) keeps 2 theta ||k||^2 < 2
    "titans": {"k": "unitkey", "q": "unitkey", "eta": "unit", "theta": "unit", "alpha": "unit"},
    "gated_deltaproduct": {"k1": "unitkey", "k2": "unitkey", "b1": "step2", "b2": "step2", "g": "logdecay"},
    "kda": {"k": "unitkey", "alpha": "unit", "beta": "unit"},
    "lru": {"B_re": "matrix", "B_im": "matrix", "C_re": "matrix", "C_im": "matrix"},
    "indrnn": {"u": "bounded"},
    "longhorn": {},
    "linear_attention_normalised": {"z": "positive"},  # phi > 0, so z stays away from 0 when it starts so
    "gated_deltanet_decay_first": {"k": "unitkey", "g": "logdecay", "beta": "unit"},
    "deltanet_square": {"k": "unitkey", "beta": "unit"},
    "expgate": {"n": "positive"},
    "tanh_accumulator": {},
    "ema_gla": {"g": "logdecay"},
    "delta_monitor": {"k": "unitkey", "beta": "unit"},
    "gated_accumulator": {"R": "matrix"},
    "energy_norm": {"g": "logdecay", "e": "positive"},
    "ntm_memory": {},
    "qrnn": {"Wz": "matrix", "Wf": "matrix", "Wo": "matrix"},
    "sru": {"W": "matrix", "Wf": "matrix", "Wr": "matrix"},
    "sru_2018": {"W": "matrix", "Wf": "matrix", "Wr": "matrix"},
    "rglru": {"Wa": "matrix", "Wx": "matrix"},
    "ligru": {"Wz": "matrix", "Uz": "matrix", "Wh": "matrix", "Uh": "matrix"},
    "eagle": {},
    "deltanet_l2": {},  # the cell normalises its keys and queries itself
    "mega_ema": {},
    "minlstm": {"Wf": "matrix", "Wi": "matrix", "Wh": "matrix"},
    # unit keys and eta = sigma(lr) / 2 keep the inner step 2 eta ||k||^2 < 2 a contraction
    "ttt_linear": {"k": "unitkey"},
    "mamba2_ssd": {},
    "mlstm_plain": {},
    "s4d": {},
    "cema": {},
    # A = relu(A^) >= 0 as the paper initialises it (in [0, 1]): A^ drawn where relu is active (a draw with
    # every A^ < 0 leaves it without a gradient)
    "linoss": {"A_hat": "positive", "B": "matrix", "C": "matrix"},
    "hedgehog": {"W": "matrix", "zp": "positive", "zm": "positive"},  # softmax features > 0, as z0 should be
}

CELLS = tuple(SPECS)


def _draw(kind: str, shape: tuple[int, ...], gen: torch.Generator, dtype) -> torch.Tensor:
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    if kind == "normal":
        return x
    if kind == "unit":
        return torch.sigmoid(x)
    if kind == "step2":
        return 2 * torch.sigmoid(x)
    if kind == "logdecay":
        return F.logsigmoid(x + 1.0)
    if kind == "negative":
        return -torch.exp(0.5 * x)
    if kind == "positive":
        return F.softplus(x) + 0.5
    if kind == "unitkey":
        return F.normalize(x, dim=-1)
    if kind == "matrix":
        return x / math.sqrt(shape[-1])
    if kind == "stable":
        return 0.6 * x / math.sqrt(shape[-1])
    if kind == "bounded":
        return torch.tanh(x)
    raise ValueError(f"unknown draw {kind!r}")


def make(cell, *, B=2, T=7, NH=2, seed=None, zero_state=False, requires_grad=True, dtype=torch.float64, **dims):
    """Fresh random ``(args, state)`` for ``cell`` in the rnnc layout (leaves require grad)."""
    spec, draws = SPECS[cell], DRAWS[cell]
    d = {**spec.default_dims, **dims}
    gen = torch.Generator().manual_seed(fresh_seed() if seed is None else seed)
    args = {n: _draw(draws.get(n, "normal"), (B, T, NH, *concrete(s, d)), gen, dtype) for n, s in spec.inputs.items()}
    args.update({n: _draw(draws.get(n, "normal"), (NH, *concrete(s, d)), gen, dtype) for n, s in spec.weights.items()})
    state = {n: _draw(draws.get(n, "normal"), (B, NH, *concrete(s, d)), gen, dtype) for n, s in spec.states.items()}
    if zero_state:
        state = {n: torch.zeros_like(s) for n, s in state.items()}
    for t in (*args.values(), *state.values()):
        t.requires_grad_(requires_grad)
    return args, state
