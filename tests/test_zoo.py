"""Every zoo cell on backend="reference" against independent references.

Outputs, final states and the gradients of a random linear functional of all of
them with respect to every input, weight and initial state:
* to 1e-10 against float64 loops written from the papers (tests/refs/loops.py),
  torch.nn (LSTM, GRU, RNN) and FlashRNN's vanilla backend;
* to 1e-6 against flash-linear-attention's naive recurrences (float32 inside).
Inputs are fresh random tensors on every run (RNNC_REFS_SEED replays a failure).
"""

from __future__ import annotations

import os

import pytest
from refs import data, loops, third_party
from refs.check import compare

import rnnc

TIGHT = 1e-10
FLA_TOL = 1e-6
# see tests/test_refs_agree.py: fla computes RetNet's long-memory decay in float32
CELL_TOL = {"retnet": 2e-6}
GRAD_TOL = {"retnet": {"log_gamma": 1e-5}}

CELLS = sorted(data.SPECS)
COMPILED: dict[tuple[str, str], rnnc.api.Cell] = {}


def _cell(name: str, backend: str = "reference"):
    if (name, backend) not in COMPILED:
        COMPILED[(name, backend)] = rnnc.compile(f"examples/{name}.rnn", backend=backend)
    return COMPILED[(name, backend)]


def _seed() -> int:
    env = os.environ.get("RNNC_REFS_SEED")
    return int(env) if env else data.fresh_seed()


def _ours(name, args, state, backend="reference"):
    out = _cell(name, backend)(state=state, **args)
    return out.outputs, out.state


def _agree(name, reference, tol, backend="reference", **config):
    seed = _seed()
    args, state = data.make(name, seed=seed, **config)
    leaves = {**args, **{k + "0": v for k, v in state.items()}}
    ours = _ours(name, args, state, backend)
    theirs = reference(**leaves)
    bad = compare(ours, theirs, leaves, tol, seed=seed + 1, grad_tols=GRAD_TOL.get(name) if tol > TIGHT else None)
    assert not bad, f"{name} ({backend}) vs {reference.__name__} (seed={seed}, {config}):\n  " + "\n  ".join(bad)


EXPECTED_STRATEGY = {
    "lstm": "sequential",
    "gru": "sequential",
    "slstm": "sequential",
    "elman": "sequential",
    "lti": "sequential",
    "hgrn": "scan",
    "mingru": "scan",
    "mamba": "scan",
    "linear_attention": "chunked",
    "retnet": "chunked",
    "simple_gla": "chunked",
    "gla": "chunked",
    "deltanet": "chunked",
    "gated_deltanet": "chunked",
}


def test_every_zoo_cell_has_an_expected_strategy():
    assert set(EXPECTED_STRATEGY) == set(CELLS)


@pytest.mark.parametrize("name", CELLS)
def test_strategy(name):
    assert _cell(name).strategy == EXPECTED_STRATEGY[name]


def _dims(name, big):
    spec = data.SPECS[name]
    if not big:
        return {}
    return {d: (24 if i == 0 else 48) for i, d in enumerate(spec.dims)} if len(spec.dims) > 1 else {spec.dims[0]: 24}


CONFIGS = [dict(T=1, B=3, NH=2), dict(T=37, B=3, NH=2, big=True), dict(T=8, B=2, NH=1, zero_state=True)]


@pytest.mark.parametrize("config", CONFIGS, ids=["T1", "T37-dims24-48", "T8-zero-state"])
@pytest.mark.parametrize("name", CELLS)
def test_reference_matches_paper_loops(name, config):
    config = dict(config)
    dims = _dims(name, config.pop("big", False))
    if name in ("lstm", "gru", "slstm") and dims:
        dims = {"H": 24}
    _agree(name, lambda **leaves: loops.run(name, *_split(name, leaves)), TIGHT, **config, **dims)


def _split(name, leaves):
    spec = data.SPECS[name]
    args = {k: v for k, v in leaves.items() if k in spec.inputs or k in spec.weights}
    state = {k[:-1]: v for k, v in leaves.items() if k[:-1] in spec.states}
    return args, state


@pytest.mark.parametrize("name", CELLS)
def test_derivative_backward_matches_paper_loops(name):
    _agree(
        name, lambda **leaves: loops.run(name, *_split(name, leaves)), TIGHT, backend="reference-bptt", T=6, B=2, NH=2
    )


@pytest.mark.parametrize("T,H", [(1, 5), (37, 24)])
@pytest.mark.parametrize("name", sorted(third_party.TORCH_NN))
def test_reference_matches_torch_nn(name, T, H):
    _agree(name, third_party.TORCH_NN[name], TIGHT, T=T, H=H, B=3, NH=2)


@pytest.mark.parametrize("T,H", [(1, 5), (12, 24)])
@pytest.mark.parametrize("name", sorted(third_party.FLASHRNN))
def test_reference_matches_flashrnn_vanilla(name, T, H):
    _agree(name, third_party.FLASHRNN[name], TIGHT, T=T, H=H, B=3, NH=2)


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("name", sorted(third_party.FLA))
def test_reference_matches_fla_naive(name, T):
    _agree(name, third_party.FLA[name], FLA_TOL, T=T, B=3, NH=2, **data.fla_dims(name, T > 10))


@pytest.mark.parametrize("name", sorted(third_party.FLA_REDUCED))
def test_reference_matches_fla_naive_rewritten(name):
    _agree(
        name, third_party.FLA_REDUCED[name], CELL_TOL.get(name, FLA_TOL), T=37, B=3, NH=2, **data.fla_dims(name, True)
    )
