"""The strategy every cell of examples/ should get, and the kind of each of its components, per the
components table (docs/components.md, section 1): the ground truth the components analysis of issue
10 is checked against.

Components are the strongly connected components of the state dependency graph; their kinds are
``elementwise``, ``coupled``, ``maxplus``, ``matrix``, ``coupled-linear``, ``dense`` (affine with a
dense transition, e.g. ``A @ m``: no scan exists for it yet) and ``nonlinear``. A vector state read
through a contraction beside a matrix state on the same key dim (linear attention's ``z``, mLSTM's
``n``) joins the chunked group with one value column: it is listed as ``matrix`` (components.md:
"joins that chunked group as a state with one value column (V = 1)").
A cell with a ``nonlinear`` or ``dense`` component is ``sequential``; else one with a ``matrix`` or
``coupled-linear`` component is ``chunked``; else ``scan``.

Before the components analysis (issue 10) eleven of these cells got a worse strategy (sequential):
mlstm, rwkv4, rwkv7, aaren, titans, gated_deltaproduct, kda, lru, gated_deltanet_decay_first,
expgate and ema_gla.
"""

from __future__ import annotations

import functools

import pytest
from conftest import PAPER_CELLS, ZOO

import rnnc

# cell: (strategy, {states of a component: kind})
EXPECTED = {
    # --- the classic zoo ---
    "lstm": ("sequential", {("c", "h"): "nonlinear"}),
    "elman": ("sequential", {("h",): "nonlinear"}),
    "gru": ("sequential", {("h",): "nonlinear"}),
    "slstm": ("sequential", {("c", "h", "m", "n"): "nonlinear"}),
    "lti": ("sequential", {("m",): "dense"}),  # affine, but a dense A @ m
    "hgrn": ("scan", {("h",): "elementwise"}),
    "mingru": ("scan", {("h",): "elementwise"}),
    "mamba": ("scan", {("S",): "elementwise"}),  # exp(dt[:, None] * A) varies along both axes
    "linear_attention": ("chunked", {("S",): "matrix"}),
    "retnet": ("chunked", {("S",): "matrix"}),
    "simple_gla": ("chunked", {("S",): "matrix"}),
    "gla": ("chunked", {("S",): "matrix"}),
    "deltanet": ("chunked", {("S",): "matrix"}),
    "gated_deltanet": ("chunked", {("S",): "matrix"}),
    # --- paper cells ---
    "mlstm": ("chunked", {("m",): "maxplus", ("C",): "matrix", ("n",): "matrix"}),
    "rwkv4": ("scan", {("p",): "maxplus", ("a",): "elementwise", ("b",): "elementwise"}),
    "rwkv6": ("chunked", {("S",): "matrix"}),  # diagonal decay; the bonus reads the old state
    "rwkv7": ("chunked", {("S",): "matrix"}),  # diagonal minus rank one, key axis 1 ([V, K])
    "mamba2": ("chunked", {("h",): "matrix"}),  # scalar decay, key axis 1 ([P, N]), D skip
    "hgrn2": ("chunked", {("S",): "matrix"}),  # decay lb + (1 - lb) * sigmoid(x), along keys
    "aaren": ("scan", {("m",): "maxplus", ("c",): "elementwise", ("a",): "elementwise"}),
    "lmu": ("sequential", {("h", "m"): "nonlinear"}),
    "m2rnn": ("sequential", {("H",): "nonlinear"}),
    "titans": ("chunked", {("M", "S"): "coupled-linear"}),
    "gated_deltaproduct": ("chunked", {("S",): "matrix"}),  # two rank-one factors and a scalar one
    "kda": ("chunked", {("S",): "matrix"}),  # identity minus rank one after a diagonal decay
    "lru": ("scan", {("x_im", "x_re"): "coupled"}),
    "indrnn": ("sequential", {("h",): "nonlinear"}),
    "longhorn": ("scan", {("S",): "elementwise"}),  # 1 - outer(eps, k * k) varies along both axes
    "linear_attention_normalised": ("chunked", {("S",): "matrix", ("z",): "matrix"}),
    "gated_deltanet_decay_first": ("chunked", {("S",): "matrix"}),
    "deltanet_square": ("chunked", {("S",): "matrix"}),
    "expgate": ("scan", {("m",): "maxplus", ("c",): "elementwise", ("n",): "elementwise"}),
    "tanh_accumulator": ("sequential", {("h",): "nonlinear"}),
    "ema_gla": ("chunked", {("c",): "elementwise", ("S",): "matrix"}),
    "delta_monitor": ("chunked", {("S",): "matrix"}),
    "gated_accumulator": ("sequential", {("h",): "nonlinear", ("c",): "elementwise"}),
    "energy_norm": ("scan", {("e",): "elementwise", ("s",): "elementwise"}),
    "ntm_memory": ("scan", {("Mem",): "elementwise"}),  # NTM's erase is a Hadamard product
    # --- paper cells written as their papers write them (gates from x_t only are scans) ---
    "qrnn": ("scan", {("c",): "elementwise"}),
    "sru": ("scan", {("c",): "elementwise"}),
    "sru_2018": ("sequential", {("c",): "nonlinear"}),  # v_f . c_{t-1} inside the gate's sigmoid
    "rglru": ("scan", {("h",): "elementwise"}),
    "ligru": ("sequential", {("h",): "nonlinear"}),
    "minlstm": ("scan", {("h",): "elementwise"}),
    "mega_ema": ("scan", {("h",): "elementwise"}),
    "eagle": ("chunked", {("S",): "matrix"}),  # a static diagonal decay from a weight
    "deltanet_l2": ("chunked", {("S",): "matrix"}),  # [V, K], keys normalised in the cell
    "ttt_linear": ("chunked", {("W",): "matrix"}),  # the gradient step is identity minus rank one
    "mamba2_ssd": ("chunked", {("h",): "matrix"}),  # [N, P], key axis 0
    "mlstm_plain": ("chunked", {("C",): "matrix", ("n",): "matrix"}),
    "s4d": ("scan", {("x",): "elementwise"}),  # zero-order hold on a diagonal A, per channel
    "cema": ("scan", {("h_im", "h_re"): "coupled"}),  # a rotation per entry: 2 x 2 blocks
    "linoss": ("scan", {("y", "z"): "coupled"}),  # the IMEX step mixes y and z per channel
    "hedgehog": ("chunked", {("Sp",): "matrix", ("Sm",): "matrix", ("zp",): "matrix", ("zm",): "matrix"}),
}


@functools.cache
def _plan(cell: str):
    return rnnc.compile(f"examples/{cell}.rnn", backend="reference").plan


def test_the_table_covers_every_cell():
    assert sorted(EXPECTED) == sorted(ZOO + PAPER_CELLS)
    for strategy, components in EXPECTED.values():
        kinds = set(components.values())
        chunked = "chunked" if kinds & {"matrix", "coupled-linear"} else "scan"
        implied = "sequential" if kinds & {"nonlinear", "dense"} else chunked
        assert strategy == implied, (strategy, components)


@pytest.mark.parametrize("cell", sorted(EXPECTED))
def test_strategy(cell):
    assert _plan(cell).strategy == EXPECTED[cell][0]


@pytest.mark.parametrize("cell", sorted(EXPECTED))
def test_components(cell):
    found = {tuple(sorted(c.states)): c.kind for c in _plan(cell).components}
    assert found == EXPECTED[cell][1]
