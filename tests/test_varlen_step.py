"""Variable-length batches (``cu_seqlens``) and one-step decoding (``Cell.step``).

Packed calls are checked against the float64 paper loops (tests/refs/loops.py) run on each
sequence alone, outputs, final states and the gradients of a random functional of both with
respect to the packed inputs, the weights and every sequence's initial state. Lengths 1, 17 and
64 share one batch. Inputs are fresh random tensors each run (RNNC_REFS_SEED replays one).
"""

from __future__ import annotations

import pytest
import torch
from refs import data, loops
from refs.check import compare
from test_zoo import _cell, _seed  # one cache of compiled zoo cells, one seed rule

LENGTHS = (1, 17, 64)
TIGHT = 1e-9


def _packed_problem(name: str, lengths, seed: int, dtype=torch.float64, **dims):
    """(packed inputs, weights, initial states [N, ...], cu_seqlens): sequence b is the first
    lengths[b] steps of row b of a dense random call."""
    args, state = data.make(name, B=len(lengths), T=max(lengths), NH=2, seed=seed, requires_grad=False, **dims)
    inputs = {d: args[d] for d in data.SPECS[name].inputs}
    weights = {w: args[w] for w in data.SPECS[name].weights}
    packed = {n: torch.cat([x[b : b + 1, :L] for b, L in enumerate(lengths)], dim=1) for n, x in inputs.items()}
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    leaves = {**packed, **weights, **{k + "0": v for k, v in state.items()}}
    for t in leaves.values():
        t.data = t.data.to(dtype)
        t.requires_grad_(not (name == "slstm" and t is state.get("n") and bool((t == 0).all())))
    return packed, weights, state, cu, leaves


def _loops_each_sequence(name, packed, weights, state, cu):
    """The paper loop on every sequence alone, put back together in the packed layout."""
    bounds = cu.tolist()
    outputs, finals = {}, {}
    for b in range(len(bounds) - 1):
        args = {n: x[:, bounds[b] : bounds[b + 1]] for n, x in packed.items()}
        args.update(weights)
        rows = {k: v[b : b + 1] for k, v in state.items()}
        out, fin = loops.run(name, args, rows) if bounds[b + 1] > bounds[b] else ({}, rows)
        for k, v in out.items():
            outputs.setdefault(k, []).append(v)
        for k, v in fin.items():
            finals.setdefault(k, []).append(v)
    return {k: torch.cat(v, 1) for k, v in outputs.items()}, {k: torch.cat(v, 0) for k, v in finals.items()}


def _check_packed(name, backend, lengths=LENGTHS, tol=TIGHT, dtype=torch.float64, **dims):
    seed = _seed()
    packed, weights, state, cu, leaves = _packed_problem(name, lengths, seed, dtype, **dims)
    out = _cell(name, backend)(**packed, **weights, state=state, cu_seqlens=cu)
    theirs = _loops_each_sequence(name, packed, weights, state, cu)
    bad = compare((out.outputs, out.state), theirs, leaves, tol, seed=seed + 1)
    assert not bad, f"{name} ({backend}, seed={seed}) packed {lengths}:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("name", sorted(data.SPECS))
def test_packed_reference_equals_each_sequence_alone(name):
    _check_packed(name, "reference")


@pytest.mark.parametrize("name", ["lstm", "gla", "mamba"])
def test_packed_reference_bptt_equals_each_sequence_alone(name):
    _check_packed(name, "reference-bptt")


@pytest.mark.parametrize("name,dims", [("hgrn", {"D": 16}), ("lstm", {"H": 16}), ("gla", {"K": 16, "V": 16})])
def test_packed_triton_runs_each_sequence(name, dims):
    """Until the templates read per-sequence offsets, the Triton backend runs each sequence alone."""
    _check_packed(name, "triton", tol=1e-4, dtype=torch.float32, **dims)


def test_packed_int64_offsets_and_an_empty_sequence():
    seed = _seed()
    packed, weights, state, cu, leaves = _packed_problem("lstm", (3, 0, 5), seed)
    out = _cell("lstm")(**packed, **weights, state=state, cu_seqlens=cu.long())
    theirs = _loops_each_sequence("lstm", packed, weights, state, cu)
    assert not compare((out.outputs, out.state), theirs, leaves, TIGHT, seed=seed)
    torch.testing.assert_close(out.state["c"][1], state["c"][1], rtol=0, atol=0)  # nothing ran: initial state


def test_no_value_of_one_sequence_reaches_another():
    packed, weights, state, cu, _ = _packed_problem("gla", LENGTHS, _seed())
    cell = _cell("gla")
    base = cell(**packed, **weights, state=state, cu_seqlens=cu)
    bounds = cu.tolist()
    changed = {n: x.detach().clone() for n, x in packed.items()}
    for x in changed.values():
        x[:, bounds[1] : bounds[2]] = torch.randn_like(x[:, bounds[1] : bounds[2]])  # a new middle sequence
    other_state = {k: v.detach().clone() for k, v in state.items()}
    other_state["S"][1] = torch.randn_like(other_state["S"][1])
    again = cell(**changed, **weights, state=other_state, cu_seqlens=cu)
    for lo, hi, row in ((bounds[0], bounds[1], 0), (bounds[2], bounds[3], 2)):
        torch.testing.assert_close(again.o[:, lo:hi], base.o[:, lo:hi], rtol=0, atol=0)
        torch.testing.assert_close(again.state["S"][row], base.state["S"][row], rtol=0, atol=0)
    assert not torch.equal(again.o[:, bounds[1] : bounds[2]], base.o[:, bounds[1] : bounds[2]])
    # and backwards: the first sequence's outputs have no gradient on the others' inputs
    q = packed["q"]
    (grad,) = torch.autograd.grad(base.o[:, bounds[0] : bounds[1]].sum() + base.state["S"][0].sum(), q)
    assert grad[:, bounds[1] :].abs().max() == 0 and grad[:, : bounds[1]].abs().max() > 0


@pytest.mark.parametrize(
    "cu,message",
    [
        (torch.tensor([0.0, 3.0]), "int32 or int64"),
        (torch.tensor([[0, 3]]), r"\[N \+ 1\]"),
        (torch.tensor([0]), r"\[N \+ 1\]"),
        (torch.tensor([1, 3, 6]), "start at 0, starts at 1"),
        (torch.tensor([0, 4, 2, 6]), "non-decreasing"),
        (torch.tensor([0, 3, 5]), "end at the packed inputs' length T = 6"),
        ([0, 3, 6], "torch.Tensor"),
    ],
)
def test_bad_cu_seqlens_says_what_it_needs(cu, message):
    x = torch.randn(1, 6, 1, 4, 3)
    cell = _cell("lstm")
    n = 2 if isinstance(cu, list) or cu.dim() != 1 or cu.shape[0] < 2 else cu.shape[0] - 1
    with pytest.raises(ValueError, match=message):
        cell(x=x, R=torch.zeros(1, 4, 3, 3), b=torch.zeros(1, 4, 3), state={"h": torch.zeros(n, 1, 3)}, cu_seqlens=cu)


def test_packed_layout_errors_name_the_argument():
    cell, cu = _cell("lstm"), torch.tensor([0, 2, 6])
    R, b = torch.zeros(1, 4, 3, 3), torch.zeros(1, 4, 3)
    packed_x = r"^x: with cu_seqlens, inputs are packed \[1, total_T, NH, 4, H\]; has batch 2"
    with pytest.raises(ValueError, match=packed_x):
        cell(x=torch.randn(2, 6, 1, 4, 3), R=R, b=b, cu_seqlens=cu)
    state_h = r"^h: with cu_seqlens of 2 sequences, states are \[N, NH, H\] with N = 2; has 3"
    with pytest.raises(ValueError, match=state_h):
        cell(x=torch.randn(1, 6, 1, 4, 3), R=R, b=b, state={"h": torch.zeros(3, 1, 3)}, cu_seqlens=cu)


# --------------------------------------------------------------------------- one step at a time


def _stepwise(cell, args, state, names, T):
    inputs = {n: args[n] for n in names}
    weights = {n: v for n, v in args.items() if n not in names}
    outputs, current = {}, dict(state)
    for t in range(T):
        out = cell.step(**{n: x[:, t] for n, x in inputs.items()}, **weights, state=current)
        current = out.state
        for k, v in out.outputs.items():
            outputs.setdefault(k, []).append(v)
    return {k: torch.stack(v, 1) for k, v in outputs.items()}, current


@pytest.mark.parametrize("name", sorted(data.SPECS))
def test_step_by_step_equals_the_full_run(name):
    seed = _seed()
    args, state = data.make(name, B=3, T=6, NH=2, seed=seed)
    leaves = {**args, **{k + "0": v for k, v in state.items()}}
    cell = _cell(name)
    stepped = _stepwise(cell, args, state, data.SPECS[name].inputs, 6)
    theirs = loops.run(name, args, state)
    bad = compare(stepped, theirs, leaves, TIGHT, seed=seed + 1)
    assert not bad, f"{name} (seed={seed}):\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("name,dims", [("lstm", {"H": 16}), ("hgrn", {"D": 16}), ("gla", {"K": 16, "V": 16})])
def test_step_on_the_triton_kernels_equals_the_full_run(name, dims):
    seed = _seed()
    args, state = data.make(name, B=2, T=4, NH=1, seed=seed, dtype=torch.float32, **dims)
    stepped = _stepwise(_cell(name, "triton"), args, state, data.SPECS[name].inputs, 4)
    full = _cell(name, "reference")(**args, state=state)
    leaves = {**args, **{k + "0": v for k, v in state.items()}}
    bad = compare(stepped, (full.outputs, full.state), leaves, 1e-4, seed=seed + 1)
    assert not bad, f"{name} (seed={seed}):\n  " + "\n  ".join(bad)


def test_step_checks_its_layout():
    with pytest.raises(ValueError, match=r"^x: a step needs 4 axes \[B, NH, 4, H\], has 3 axes \[2, 4, 3\]"):
        _cell("lstm").step(x=torch.randn(2, 4, 3), R=torch.zeros(1, 4, 3, 3), b=torch.zeros(1, 4, 3))
