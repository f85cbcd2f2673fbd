"""The paper cells on the Triton backend (interpreter on CPU) against their float64 paper oracles.

Where a template covers a paper cell, its kernels must match the oracle forward and in every
gradient: 1e-9 in float64 at T = 1, 19, 37 and 1e-4 in float32 at T = 19, odd dims (the defaults of
tests/refs/paper_data.py), the draws of paper_data (each cell's domain). Where no template covers it
yet, the test is skipped with the BackendError's reason: this file grows with the templates by
itself. A template that crashes instead of refusing is a failure.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import PAPER_CELLS
from interpreter_scan import fast_scan
from refs import paper_data, paper_loops, paper_loops_vector
from refs.check import functional_grads, functional_weights, rel_err

import rnnc

pytest.importorskip("triton")

LOOPS = {**paper_loops.LOOPS, **paper_loops_vector.LOOPS}
CASES = [(1, torch.float64, 1e-9), (19, torch.float64, 1e-9), (37, torch.float64, 1e-9), (19, torch.float32, 1e-4)]


@pytest.fixture(autouse=True)
def _fast_interpreter_scan():
    with fast_scan():  # the scan kernels' arithmetic, slice by slice (tests/interpreter_scan.py)
        yield


@functools.cache
def _kernels(cell: str):
    try:
        return rnnc.compile(f"examples/{cell}.rnn", backend="triton"), None
    except rnnc.BackendError as exc:
        return None, str(exc).splitlines()[0]


def _cases():
    for cell in PAPER_CELLS:
        for T, dtype, tol in CASES:
            yield pytest.param(cell, T, dtype, tol, id=f"{cell}-T{T}-{str(dtype)[6:]}")


@pytest.mark.parametrize("cell,T,dtype,tol", list(_cases()))
def test_triton_matches_the_paper_oracle(cell, T, dtype, tol):
    kernels, reason = _kernels(cell)
    if kernels is None:
        pytest.skip(f"reference only: {reason}")
    seed = paper_data.fresh_seed()
    args, state = paper_data.make(cell, B=2, T=T, NH=2, seed=seed)  # float64 leaves: the oracle's
    leaves = {**args, **{f"{name}0": value for name, value in state.items()}}
    low = {k: v.detach().to(dtype).requires_grad_() for k, v in leaves.items()}
    names = paper_data.SPECS[cell]
    out = kernels(state={k: low[f"{k}0"] for k in names.states}, **{k: low[k] for k in (*names.inputs, *names.weights)})
    assert kernels.last_backend == "triton"
    for value in [*out.outputs.values(), *out.state.values()]:
        assert value.dtype == dtype and not torch.isnan(value).any()
    oracle_out, oracle_fin = LOOPS[cell](**leaves)
    forward = _forward_errors(out, oracle_out, oracle_fin)
    bad = [f"{kind} {k}: rel err {e:.2e}" for kind, k, e in forward if not e < tol]
    weights = functional_weights(oracle_out, oracle_fin, seed + 1)
    mine = functional_grads(out.outputs, out.state, low, weights)
    truth = functional_grads(oracle_out, oracle_fin, leaves, weights)
    grads = {k: rel_err(mine[k], truth[k]) for k in truth}
    bad += [f"grad {k}: rel err {e:.2e}" for k, e in grads.items() if not e < tol]
    assert not bad, f"{cell} on Triton, {dtype} (seed={seed}, T={T}):\n  " + "\n  ".join(bad)


def _forward_errors(out, oracle_out, oracle_fin):
    yield from (("output", k, rel_err(out.outputs[k], v)) for k, v in oracle_out.items())
    yield from (("final state", k, rel_err(out.state[k], v)) for k, v in oracle_fin.items())
