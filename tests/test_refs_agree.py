"""The independent references agree with each other.

``tests/refs/loops.py`` (float64 loops written from the papers and the .rnn files) is checked
against torch.nn, FlashRNN's vanilla backend and flash-linear-attention's naive recurrences:
outputs, final states, and the gradients of a random linear functional of all of them with
respect to every input, weight and initial state.  Set RNNC_REFS_SEED to replay a failure.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch

if str(Path(__file__).resolve().parent) not in sys.path:  # tests/ is not a package
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ZOO
from refs import data, loops, third_party
from refs.check import compare, rel_err

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TIGHT = 1e-10  # float64 against float64 (torch.nn, FlashRNN vanilla, own reformulations)
FLA_TOL = 1e-6  # fla's naive references compute in float32
# RetNet runs through fla's simple GLA with g = log_gamma at every step, and gamma is close
# to 1 (long memory), so float32 rounding accumulates more (outputs and most gradients up to
# ~7e-7 over hundreds of seeds); the gradient of the per-head log_gamma sums B*T per-step
# float32 gradients of both signs, and the cancellation lifts its relative error to ~2e-6.
CELL_TOL = {"retnet": 2e-6}
GRAD_TOL = {"retnet": {"log_gamma": 1e-5}}


def _seed() -> int:
    env = os.environ.get("RNNC_REFS_SEED")
    return int(env) if env else data.fresh_seed()


def _agree(cell, other, tol, *, seed=None, B=3, T=7, NH=2, zero_state=False, **dims):
    seed = _seed() if seed is None else seed
    args, state = data.make(cell, B=B, T=T, NH=NH, seed=seed, zero_state=zero_state, **dims)
    leaves = {**args, **{k + "0": v for k, v in state.items()}}
    ours = loops.run(cell, args, state)
    theirs = other(**leaves)
    bad = compare(ours, theirs, leaves, tol, seed=seed + 1, grad_tols=GRAD_TOL.get(cell))
    assert not bad, (
        f"{cell} vs {other.__module__}.{other.__name__} "
        f"(seed={seed}, B={B}, T={T}, NH={NH}, dims={dims}, "
        f"zero_state={zero_state}):\n  " + "\n  ".join(bad)
    )


# ------------------------------------------------------------------------------------------
# torch.nn: float64, long and short sequences, odd sizes

SEQ_CONFIGS = [
    dict(T=1, H=5),
    dict(T=37, H=24),
    dict(T=7, H=5, zero_state=True),
]


@pytest.mark.parametrize("cfg", SEQ_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("cell", sorted(third_party.TORCH_NN))
def test_loops_match_torch_nn(cell, cfg):
    _agree(cell, third_party.TORCH_NN[cell], TIGHT, **cfg)


# ------------------------------------------------------------------------------------------
# FlashRNN vanilla: float64, T <= 16 (its backward is a slow Python loop)

FLASH_CONFIGS = [
    dict(T=1, H=5),
    dict(T=16, H=24),
    dict(T=7, H=5, zero_state=True),
]


@pytest.mark.parametrize("cfg", FLASH_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("cell", sorted(third_party.FLASHRNN))
def test_loops_match_flashrnn(cell, cfg):
    _agree(cell, third_party.FLASHRNN[cell], TIGHT, **cfg)


def test_slstm_stabiliser_start_is_per_element():
    """Our sLSTM tests n == 0 per element; FlashRNN tests it over the whole tensor.  Give
    head 0 an all-zero n0 and head 1 an n0 >= 1, and compare with FlashRNN run on each head
    alone (where its whole-tensor test is exact)."""
    seed = _seed()
    args, state = data.make("slstm", B=3, T=9, NH=2, H=6, seed=seed)
    with torch.no_grad():
        n0 = state["n"].detach().clone()
        n0[:, 0] = 0.0
        state["m"][:, 0] = 0.0  # irrelevant where n0 == 0, as in a fresh start
    state["n"] = n0  # no grad: see data.make
    assert bool((n0[:, 0] == 0).all()) and bool((n0[:, 1] >= 1).all())
    leaves = {**args, **{k + "0": v for k, v in state.items()}}
    ours = loops.run("slstm", args, state)

    per_head = []
    for hd in range(2):
        sub = {
            k: (v[:, :, hd : hd + 1] if k == "x" else v[hd : hd + 1] if k in ("R", "b") else v[:, hd : hd + 1])
            for k, v in leaves.items()
        }
        per_head.append(third_party.flashrnn_slstm(**sub))
    theirs = (
        {"h": torch.cat([p[0]["h"] for p in per_head], 2)},
        {k: torch.cat([p[1][k] for p in per_head], 1) for k in "hcnm"},
    )
    bad = compare(ours, theirs, leaves, TIGHT, seed=seed + 1)
    assert not bad, f"seed={seed}:\n  " + "\n  ".join(bad)


# ------------------------------------------------------------------------------------------
# flash-linear-attention naive recurrences (float32 inside)

FLA_CONFIGS = [
    dict(T=1),
    dict(T=37),
    dict(T=7, zero_state=True),
]


@pytest.mark.parametrize("cfg", FLA_CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("cell", sorted(third_party.FLA))
def test_loops_match_fla(cell, cfg):
    _agree(cell, third_party.FLA[cell], FLA_TOL, **cfg, **data.fla_dims(cell, cfg["T"] > 10))


@pytest.mark.parametrize("cfg", FLA_CONFIGS[:2], ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("cell", sorted(third_party.FLA_REDUCED))
def test_loops_match_fla_reductions(cell, cfg):
    """Cells without their own third-party reference, rewritten exactly as one that has."""
    _agree(
        cell, third_party.FLA_REDUCED[cell], CELL_TOL.get(cell, FLA_TOL), **cfg, **data.fla_dims(cell, cfg["T"] > 10)
    )


# ------------------------------------------------------------------------------------------
# The LTI cell: against its closed form m_t = A^t m_0 + sum_{s<=t} A^(t-s) Bu u_s


def _lti_closed_form(u, A, Bu, Cy, m0):
    B, T, NH, M = u.shape
    N = A.shape[-1]
    powers = [torch.eye(N, dtype=A.dtype).expand(NH, N, N)]
    for _ in range(T):
        powers.append(powers[-1] @ A)  # A^p, [NH, N, N]
    P = torch.stack(powers, 0)  # [T+1, NH, N, N]
    Bu_u = torch.einsum("hnm,bthm->bthn", Bu, u)  # [B, T, NH, N]
    t = torch.arange(T)
    lag = t[:, None] - t[None, :]  # t - s
    Pl = P[lag.clamp(min=0)] * (lag >= 0)[..., None, None, None]  # [T, T, NH, N, N]
    m = torch.einsum("tshij,bshj->bthi", Pl, Bu_u) + torch.einsum("thij,bhj->bthi", P[1:], m0)
    return {"y": Cy * m}, {"m": m[:, -1]}


@pytest.mark.parametrize("T,N,M", [(1, 4, 3), (37, 5, 3)])
def test_lti_loop_matches_closed_form(T, N, M):
    seed = _seed()
    args, state = data.make("lti", B=3, T=T, NH=2, N=N, M=M, seed=seed)
    leaves = {**args, "m0": state["m"]}
    bad = compare(loops.run("lti", args, state), _lti_closed_form(**leaves), leaves, TIGHT, seed=seed + 1)
    assert not bad, f"seed={seed}:\n  " + "\n  ".join(bad)


# ------------------------------------------------------------------------------------------
# The references' own contract


def _parse_decls(path: Path):
    """Declarations of a one-cell .rnn file, by regex (independent of rnnc's parser)."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    head = re.search(r"cell\s+(\w+)\s*\(([^)]*)\)", text)
    dims = tuple(d.strip() for d in head.group(2).split(",") if d.strip())
    decl = {"input": {}, "weight": {}, "state": {}}
    for kind, name, shape in re.findall(r"\b(input|weight|state)\s+(\w+)\s*:\s*\[([^\]]*)\]", text):
        decl[kind][name] = tuple(int(s) if s.strip().isdigit() else s.strip() for s in shape.split(",") if s.strip())
    outputs = re.findall(r"\bemit\s+(\w+)", text)
    return head.group(1), dims, decl, outputs


def test_specs_match_examples():
    """The classic zoo's declarations (the paper cells have theirs in refs/paper_data.py)."""
    files = [EXAMPLES / f"{cell}.rnn" for cell in ZOO]
    assert {f.stem for f in files} == set(data.SPECS), "a cell lacks a reference or vice versa"
    assert set(loops.REFS) == set(data.SPECS)
    for f in files:
        name, dims, decl, outputs = _parse_decls(f)
        spec = data.SPECS[name]
        assert dims == spec.dims, name
        assert decl["input"] == spec.inputs, name
        assert decl["weight"] == spec.weights, name
        assert decl["state"] == spec.states, name
        assert outputs == list(spec.outputs), name


@pytest.mark.parametrize("cell", data.CELLS)
def test_loop_layout_and_zero_default(cell):
    """Shapes follow the contract, and missing initial states are zeros."""
    B, T, NH = 2, 3, 2
    spec = data.SPECS[cell]
    dims = spec.default_dims
    args, state = data.make(cell, B=B, T=T, NH=NH, zero_state=True, requires_grad=False)
    out, fin = loops.run(cell, args)
    for name, shape in spec.outputs.items():
        assert out[name].shape == (B, T, NH, *data.concrete(shape, dims)), (cell, name)
        assert out[name].dtype == torch.float64
    for name, shape in spec.states.items():
        assert fin[name].shape == (B, NH, *data.concrete(shape, dims)), (cell, name)
    out2, fin2 = loops.run(cell, args, state)
    for k in out:
        assert torch.equal(out[k], out2[k]), (cell, k)
    for k in fin:
        assert torch.equal(fin[k], fin2[k]), (cell, k)


def test_heads_and_batch_are_independent():
    """Head n of a multi-head call equals a one-head call on head n's slice (catches a
    transposed R or a mixed-up head axis in the loops)."""
    for cell in data.CELLS:
        args, state = data.make(cell, B=2, T=4, NH=3, requires_grad=False)
        out, fin = loops.run(cell, args, state)
        spec = data.SPECS[cell]
        hd = 1
        sub = {k: (v[:, :, hd : hd + 1] if k in spec.inputs else v[hd : hd + 1]) for k, v in args.items()}
        sst = {k: v[:, hd : hd + 1] for k, v in state.items()}
        out1, fin1 = loops.run(cell, sub, sst)
        for k in out:
            assert rel_err(out[k][:, :, hd : hd + 1], out1[k]) < 1e-13, (cell, k)
        for k in fin:
            assert rel_err(fin[k][:, hd : hd + 1], fin1[k]) < 1e-13, (cell, k)
