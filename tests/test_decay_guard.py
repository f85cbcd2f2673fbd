"""Decays the analysis cannot prove positive (HGRN2's forget gate with a lower bound given as a weight).

The chunked forms take each decay's log. A negative decay is legal arithmetic for the recurrence,
so the reference backend must still match the float64 loop of the paper's equations (it runs its
plain loop), and the Triton backend refuses the call with a message naming the decay rather than
returning NaN. A positive decay of the same cell keeps the chunked forms.
"""

import pytest
import torch
from refs.check import rel_err
from refs.chunked_loops import hgrn2 as hgrn2_loop

import rnnc
from rnnc.compiler import analyse_source
from rnnc.runtime.decay_guard import DecayGuard, unproved_decays
from rnnc.templates.chunked_spec import stage_spec

HGRN2 = open("examples/hgrn2.rnn").read()


def draw(lb_sign: float, T=37, K=24, V=16):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    q, fx = (torch.randn(2, T, 2, K, generator=g, dtype=torch.float64) for _ in range(2))
    i = torch.randn(2, T, 2, V, generator=g, dtype=torch.float64)
    lb = lb_sign * torch.rand(2, K, generator=g, dtype=torch.float64)  # lb in (-1, 0) or (0, 1)
    return {"q": q, "fx": fx, "i": i, "lb": lb}


def test_only_decays_without_a_proof_are_checked():
    assert unproved_decays(stage_spec(analyse_source(HGRN2)))
    for name in ("gla", "simple_gla", "retnet", "gated_deltanet", "mlstm"):
        assert unproved_decays(stage_spec(analyse_source(open(f"examples/{name}.rnn").read()))) == [], name


def test_a_negative_decay_runs_the_reference_loop_exactly():
    x = draw(-1.0)
    assert DecayGuard(stage_spec(analyse_source(HGRN2))).first_negative(x, {"K": 24, "V": 16}) is not None
    out = rnnc.compile(HGRN2, backend="reference")(**x)
    want, _ = hgrn2_loop(x["q"], x["fx"], x["i"], x["lb"])
    assert torch.isfinite(out.o).all()
    assert rel_err(out.o, want["o"]) < 1e-9


def test_a_positive_decay_keeps_the_chunked_form():
    x = draw(1.0)
    assert DecayGuard(stage_spec(analyse_source(HGRN2))).first_negative(x, {"K": 24, "V": 16}) is None
    out = rnnc.compile(HGRN2, backend="reference")(**x)
    want, _ = hgrn2_loop(x["q"], x["fx"], x["i"], x["lb"])
    assert rel_err(out.o, want["o"]) < 1e-9


def test_the_triton_backend_refuses_a_negative_decay_by_name():
    pytest.importorskip("triton")
    cell = rnnc.compile(HGRN2, backend="triton")
    with pytest.raises(ValueError, match=r"log of the decay of S: .*lb.* has a negative one"):
        cell(**draw(-1.0, T=5))
