"""The paper oracles agree with independent references: fla-core's naive recurrences (float32 inside,
so 1e-5), torch.nn.RNN and FlashRNN's vanilla backend (float64, 1e-10), and second forms of the same
map that the papers give (RWKV-4's and Aaren's weighted sums over the prefix, mLSTM without its
stabiliser), all in float64.

What exists where (fla-core 0.6.0): naive recurrences for gla, simple_gla, hgrn, delta_rule,
gated_delta_rule, gated_delta_product, kda, linear_attn, rwkv6 (recurrent_naive), generalized_delta_rule
(dplr: RWKV-7) and titans (a layer-normed mini-batch variant, not the paper's plain linear memory: no
cross-check), ttt (with the paper's LayerNorm and residual, not the plain linear inner model: the
delta rule checks TTT-Linear instead); rwkv4 and rwkv7 have Triton kernels only. No third-party
reference here for mLSTM, Aaren, LMU, M²RNN, LRU, Longhorn, Titans, SRU, Light GRU or the cells of
rnnc's own. Set RNNC_REFS_SEED to replay.
"""

from __future__ import annotations

import os

import pytest
import torch
from refs import paper_data, paper_loops, paper_loops_vector, paper_third_party
from refs.check import compare, rel_err

LOOPS = {**paper_loops.LOOPS, **paper_loops_vector.LOOPS}
# fla computes in float32: 1e-6 failed 1 draw in 400 (mamba2's grad of the scalar weight A, a sum over
# every entry with cancellation, at 1.6e-6); 1e-5 is still 100x below an error in the oracle's math
FLA_TOL = 1e-5
TIGHT = 1e-10

pytest.importorskip("fla", reason="fla-core is a test extra")


def _seed() -> int:
    env = os.environ.get("RNNC_REFS_SEED")
    return int(env) if env else paper_data.fresh_seed()


def _agree(cell, other, tol, T, zero_state=False, **dims):
    seed = _seed()
    args, state = paper_data.make(cell, B=2, T=T, NH=2, seed=seed, zero_state=zero_state, **dims)
    leaves = {**args, **{f"{k}0": v for k, v in state.items()}}
    ours = LOOPS[cell](**leaves)
    bad = compare(ours, other(**leaves), leaves, tol, seed=seed + 1)
    assert not bad, f"{cell} vs {other.__name__} (seed={seed}, T={T}, dims={dims}):\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("cell", sorted(paper_third_party.FLA))
def test_paper_loops_match_fla_naive(cell, T):
    _agree(cell, paper_third_party.FLA[cell], FLA_TOL, T)


@pytest.mark.parametrize("cell", sorted(paper_third_party.FLA))
def test_paper_loops_match_fla_naive_at_wider_dims(cell):
    dims = {d: 16 if i == 0 else 24 for i, d in enumerate(paper_data.SPECS[cell].dims)}
    _agree(cell, paper_third_party.FLA[cell], FLA_TOL, 9, **dims)


@pytest.mark.parametrize("cell", sorted(paper_third_party.FLOAT64))
def test_paper_loops_match_torch_nn(cell):
    _agree(cell, paper_third_party.FLOAT64[cell], TIGHT, 37)


@pytest.mark.parametrize("cell", sorted(paper_third_party.FLASHRNN))
def test_paper_loops_match_flashrnn_vanilla(cell):
    pytest.importorskip("flashrnn")
    _agree(cell, paper_third_party.FLASHRNN[cell], TIGHT, 16)


def test_rwkv4_stable_form_is_the_weighted_sum_of_eq_14():
    """From an empty state the stable recurrence gives the paper's eq. 14 exactly (in float64)."""
    args, _ = paper_data.make("rwkv4", T=23, seed=_seed())
    ours, _ = paper_loops_vector.rwkv4(**args)
    assert rel_err(ours["o"], paper_loops_vector.rwkv4_sum(**args)["o"]) < 1e-12


def test_rwkv4_stable_form_survives_large_keys():
    """Keys of 800 overflow e^k in float64; the running maximum keeps every output finite."""
    args, _ = paper_data.make("rwkv4", T=9, seed=_seed(), requires_grad=False)
    args["k"] = args["k"] + 800.0
    ours, fin = paper_loops_vector.rwkv4(**args)
    assert torch.isfinite(ours["o"]).all() and torch.isfinite(fin["a"]).all()
    assert rel_err(ours["o"], paper_loops_vector.rwkv4_sum(**args)["o"]) < 1e-12


def test_aaren_recurrence_is_attention_over_the_prefix():
    args, state = paper_data.make("aaren", T=23, seed=_seed())
    ours, _ = paper_loops_vector.aaren(**args, m0=state["m"])  # an empty state with any running maximum
    assert rel_err(ours["o"], paper_loops_vector.aaren_attention(**args)["o"]) < 1e-12


def test_mlstm_stabiliser_changes_nothing():
    """xLSTM's stabilised mLSTM is its plain form rescaled by e^{-m}: same outputs, C = C_plain e^{-m}."""
    args, state = paper_data.make("mlstm", T=23, seed=_seed())
    ours, fin = paper_loops.mlstm(**args, **{f"{k}0": v for k, v in state.items()})
    scale = torch.exp(state["m"])
    plain, plain_fin = paper_loops.mlstm_unstabilised(
        **args, C0=state["C"] * scale[..., None, None], n0=state["n"] * scale[..., None]
    )
    assert rel_err(ours["h"], plain["h"]) < 1e-12
    assert rel_err(fin["C"], plain_fin["C"] * torch.exp(-fin["m"])[..., None, None]) < 1e-12
