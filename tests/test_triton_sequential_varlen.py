"""Variable-length batches on the sequential kernels: a packed call equals each sequence run alone.

Inputs are packed ``[1, total_T, NH, ...]`` with ``cu_seqlens`` (int64 ``[N + 1]``), initial and final
states are ``[N, NH, ...]``, as in flash-linear-attention. The kernels are called through the
launcher (``cell._triton(tensors, state, cu_seqlens=...)``); the oracle is the reference backend
on each sequence alone, forward and every gradient, in float64. Lengths include 1 and 0 (a
sequence with no step keeps its initial state), in one batch block with sequences of other lengths.
"""

import pytest
import torch
from cells import random_call, rel_err
from test_triton_sequential_cells import CELLS

import rnnc

pytest.importorskip("triton")

PAPER = ["lmu", "m2rnn", "scalar_state", "indrnn"]
LENGTHS = [[5, 1, 17, 0], [3]]


def _packed(cell, lengths, dims):
    """Random packed inputs, weights, initial states (float64, requiring grad) and the offsets."""
    total = sum(lengths)
    tensors, _ = random_call(cell.plan.ir, B=1, T=total, NH=2, dims=dims, dtype=torch.float64)
    _, states = random_call(cell.plan.ir, B=len(lengths), T=1, NH=2, dims=dims, dtype=torch.float64)
    for decl in cell.plan.ir.weights:  # matrices at torch.nn's scale, as the other kernel tests draw them
        if len(decl.shape) >= 2:
            tensors[decl.name] = (tensors[decl.name].detach() / tensors[decl.name].shape[-1] ** 0.5).requires_grad_()
    starts = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int64)
    return tensors, states, starts


def _alone(reference, tensors, states, starts, ir):
    """Outputs (packed) and final states of each sequence run alone by the reference."""
    outputs = {o.name: [] for o in ir.outputs}
    finals = {d.name: [] for d in ir.states}
    inputs = {d.name for d in ir.inputs}
    for b in range(len(starts) - 1):
        lo, hi = int(starts[b]), int(starts[b + 1])
        initial = {k: v[b : b + 1] for k, v in states.items()}
        if hi == lo:  # no step: the state is the initial one
            for k, v in initial.items():
                finals[k].append(v)
            continue
        args = {k: (v[:, lo:hi] if k in inputs else v) for k, v in tensors.items()}
        out = reference(state=initial, **args)
        for k in outputs:
            outputs[k].append(out.outputs[k])
        for k in finals:
            finals[k].append(out.state[k])
    return {k: torch.cat(v, dim=1) for k, v in outputs.items()}, {k: torch.cat(v, dim=0) for k, v in finals.items()}


def _loss(outputs, finals, seed):
    gen = torch.Generator().manual_seed(seed)
    return sum(
        (v * torch.randn(v.shape, generator=gen, dtype=v.dtype)).sum() for v in (*outputs.values(), *finals.values())
    )


def _check_packed(source, dims, lengths, seed=0):
    cell = rnnc.compile(source, backend="triton")
    reference = rnnc.compile(source, backend="reference")
    ir = cell.plan.ir
    tensors, states, starts = _packed(cell, lengths, dims)
    ours, our_finals = cell._triton(tensors, states, cu_seqlens=starts)
    theirs, their_finals = _alone(reference, tensors, states, starts, ir)
    for k in ours:
        assert not torch.isnan(ours[k]).any(), f"output {k} has entries no kernel wrote"
        assert rel_err(ours[k], theirs[k]) < 1e-9, (k, rel_err(ours[k], theirs[k]))
    for k in our_finals:
        assert rel_err(our_finals[k], their_finals[k]) < 1e-9, (k, rel_err(our_finals[k], their_finals[k]))
    leaves = [*tensors.values(), *states.values()]
    mine = torch.autograd.grad(_loss(ours, our_finals, seed), leaves, allow_unused=True)
    truth = torch.autograd.grad(_loss(theirs, their_finals, seed), leaves, allow_unused=True)
    for name, a, b, leaf in zip([*tensors, *states], mine, truth, leaves):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        assert not torch.isnan(a).any(), name
        assert rel_err(a, b) < 1e-9, (name, rel_err(a, b))


@pytest.mark.parametrize("lengths", LENGTHS, ids=["5-1-17-0", "3"])
@pytest.mark.parametrize("name", ["lstm", "gru", "slstm", "lti"])
def test_packed_zoo_cell_equals_each_sequence_alone(name, lengths):
    dims = {"H": 19} if name != "lti" else {"N": 19, "M": 7}
    _check_packed(f"examples/{name}.rnn", dims, lengths)


@pytest.mark.parametrize("name", PAPER)
def test_packed_new_cell_equals_each_sequence_alone(name):
    text, dims = CELLS[name]
    _check_packed(text, dims, [4, 1, 9, 0])


def test_offsets_that_do_not_cover_the_packed_inputs_are_refused():
    cell = rnnc.compile("examples/elman.rnn", backend="triton")
    tensors, _, _ = _packed(cell, [2, 3], {"H": 16})
    with pytest.raises(ValueError, match="cu_seqlens: needs to end at the packed inputs' length T = 5"):
        cell._triton(tensors, None, cu_seqlens=torch.tensor([0, 3, 4]))
    with pytest.raises(ValueError, match="int32 or int64"):
        cell._triton(tensors, None, cu_seqlens=torch.tensor([0.0, 5.0]))


def test_packed_calls_run_the_varlen_kernels_not_one_sequence_at_a_time(monkeypatch):
    from rnnc.runtime import custom_ops

    def refuse(*args, **kwargs):
        raise AssertionError("ran one sequence at a time")

    monkeypatch.setattr(custom_ops.PerSequence, "forward", refuse)
    _check_packed("examples/lstm.rnn", {"H": 19}, [5, 1, 17, 0])


def test_a_packed_call_on_the_step_kernels_runs_one_sequence_at_a_time():
    """The step kernels (SPLIT, STREAM) take no cu_seqlens: each sequence runs alone through them."""
    source = "examples/lstm.rnn"
    cell = rnnc.compile(source, backend="triton")
    cell.use_tiling({"STREAM": 1, "BLOCK_K": 16})
    reference = rnnc.compile(source, backend="reference")
    tensors, states, starts = _packed(cell, [3, 1, 0], {"H": 20})
    ours, finals = cell._triton(tensors, states, cu_seqlens=starts)
    theirs, their_finals = _alone(reference, tensors, states, starts, cell.plan.ir)
    assert rel_err(ours["h"], theirs["h"]) < 1e-9 and rel_err(finals["c"], their_finals["c"]) < 1e-9
