"""The chunked stage in PyTorch (the CPU path) against float64 loops of the papers' equations.

Every cell of ``chunked_cells``: outputs, final states and the gradients of every input, weight
and initial state, float64 to 1e-9 and float32 to 1e-4, T crossing several chunks; a NaN at one
step leaves every earlier output finite; extreme constant log decays and a -inf reset stay finite
and match the loop.
"""

import pytest
import torch
from chunked_cells import NEW, ZOO, make_call, oracle, plan_of, poisoned, with_log_decay
from chunked_harness import errors, torch_cell
from refs.check import rel_err

from rnnc.runtime.chunked_torch import ChunkedTorch
from rnnc.runtime.scan_stage import ScanStage
from rnnc.templates.chunked_spec import stage_spec

CELLS = ZOO + NEW


@pytest.mark.parametrize(
    "size,chunk,dtype,tol",
    [
        ((2, 37, 2, 24, 20), 16, torch.float64, 1e-9),
        ((1, 100, 2, 48, 24), 64, torch.float64, 1e-9),
        ((2, 100, 1, 24, 48), 32, torch.float32, 1e-4),
        ((3, 1, 1, 16, 16), 64, torch.float64, 1e-9),
    ],
    ids=["T37-chunk16", "T100-chunk64", "float32-T100", "T1"],
)
@pytest.mark.parametrize("name", CELLS)
def test_chunked_torch_matches_the_loop(name, size, chunk, dtype, tol):
    found = errors(torch_cell(name, chunk), name, size, dtype, seed=size[1] + chunk)
    worst = max(found, key=found.get)
    assert found[worst] < tol, (worst, found)


@pytest.mark.parametrize("name", CELLS)
def test_a_nan_reaches_no_earlier_output(name):
    """NaN in every input at step 23 (inside the second 16-step chunk): outputs before it stay finite."""
    leaves, states, dims = poisoned(name, 23)
    outputs, _ = torch_cell(name, 16)(leaves, states, dims)
    for key, value in outputs.items():
        assert torch.isfinite(value[:, :23]).all(), f"{key}: a NaN at step 23 reached an earlier output"
        assert torch.isnan(value[:, 23:]).any(), f"{key}: the NaN vanished"


DECAY_INPUT = {
    "gla": "g",
    "simple_gla": "g",
    "gated_deltanet": "g",
    "kda": "g",
    "square": "g",
    "gated_deltaproduct": "g",
}


@pytest.mark.parametrize("value", [-5.6, -12.0, -1e4, "reset"])
@pytest.mark.parametrize("name", sorted(DECAY_INPUT))
def test_extreme_log_decays_stay_finite_and_exact(name, value):
    """A constant log decay (or a -inf reset at one step) in float32: finite and within 1e-4 of the loop."""
    leaves, states, dims = with_log_decay(name, DECAY_INPUT[name], value, B=2, T=100, reset=37)
    reference, _ = oracle(name, leaves, states)
    single = {k: v.float() for k, v in leaves.items()}
    ours, _ = torch_cell(name, 64)(single, {k: v.float() for k, v in states.items()}, dims)
    for out, ref in reference.items():
        assert torch.isfinite(ref).all()
        assert torch.isfinite(ours[out]).all(), f"{out}: non-finite with log decay {value}"
        assert rel_err(ours[out], ref) < 1e-4, (out, rel_err(ours[out], ref))


def test_earlier_states_reach_the_stage_as_inputs():
    """mLSTM's stabiliser is a scan component before the chunked stage: the stage reads m and m' per step, and
    the gradients of i and f flow back through them."""
    plan = plan_of("mlstm")
    stage = ChunkedTorch(stage_spec(plan))
    assert {leaf.name for leaf in stage.spec.leaves if leaf.role == "earlier"} == {"m", "m'"}
    leaves, states, dims = make_call("mlstm", 1, 5, 1, 16, 16)
    values, finals = ScanStage(plan)(leaves, states, dims)
    assert torch.equal(values["m"][:, 1:], values["m'"][:, :-1]) and torch.equal(finals["m"], values["m'"][:, -1])
    outputs, _ = stage({**leaves, **values}, {"C": states["C"], "n": states["n"]}, dims)
    (grad,) = torch.autograd.grad(outputs["h"].sum(), [leaves["i"]])
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
