"""Scan kernels on cells beside the paper cells (which tests/test_paper_cells_triton.py checks):
two chained scans, LRU's (re, im) pair with lambda given as weights, scalar states, an output of
the previous state, and the zoo's HGRN, minGRU and Mamba.

Under the interpreter, the Triton backend against float64 loops (tests/refs/scan_loops.py,
tests/refs/loops.py) and against the reference backend: outputs, final states and the gradient
of every input, weight and initial state, 1e-9 in float64 and 1e-4 in float32 (against the
float64 loop on the same values), at T = 1, 19, 37 and odd dims.
"""

import pytest
import torch
from interpreter_scan import fast_scan
from refs import loops, scan_loops
from refs.check import functional_weights, rel_err
from scan_cells import SOURCES, make, source

import rnnc

pytest.importorskip("triton")

DIMS = {"D": 5, "H": 5, "N": 3, "K": 5, "V": 3}
ZOO = {"hgrn": "examples/hgrn.rnn", "mingru": "examples/mingru.rnn", "mamba": "examples/mamba.rnn"}
CASES = [(c, T, torch.float64, 1e-9) for c in [*sorted(SOURCES), *sorted(ZOO)] for T in (1, 19, 37)]
CASES += [(c, 19, torch.float32, 1e-4) for c in [*sorted(SOURCES), *sorted(ZOO)]]


@pytest.fixture(autouse=True)
def _fast_interpreter_scan():
    with fast_scan():
        yield


def _inputs(cell, ir, T, dtype):
    return make(cell, ir, B=2, T=T, NH=2, dims={d: DIMS[d] for d in ir.dims}, dtype=dtype)


def _oracle(cell, tensors, states):
    """The float64 loop on float64 copies of the same values (fresh leaves)."""
    args = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    state = {k: v.detach().double().requires_grad_() for k, v in states.items()}
    outputs, finals = (loops if cell in ZOO else scan_loops).run(cell, args, state)
    return (outputs, finals), {**args, **{f"initial {k}": v for k, v in state.items()}}


def _grads(result, leaves: dict, weights: dict) -> dict:
    outputs, finals = result
    total = sum(
        (w.to(y.dtype) * y).sum() for (kind, n), w in weights.items() for y in [(finals, outputs)[kind == "out"][n]]
    )
    found = torch.autograd.grad(total, list(leaves.values()), allow_unused=True, retain_graph=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(leaves, found)}


def _check(result, leaves, expected, expected_leaves, tol, what):
    (out, fin), (want_out, want_fin) = result, expected
    assert set(out) == set(want_out) and set(fin) == set(want_fin), what
    for name, value in [*out.items(), *fin.items()]:
        assert not torch.isnan(value).any(), f"{what}: {name} has entries no kernel wrote"
    for name in out:
        assert rel_err(out[name], want_out[name]) < tol, (what, name, rel_err(out[name], want_out[name]))
    for name in fin:
        assert rel_err(fin[name], want_fin[name]) < tol, (what, "final", name, rel_err(fin[name], want_fin[name]))
    weights = functional_weights(out, fin, seed=len(leaves))
    mine, theirs = _grads(result, leaves, weights), _grads(expected, expected_leaves, weights)
    for name in leaves:
        assert not torch.isnan(mine[name]).any(), (what, name)
        assert rel_err(mine[name], theirs[name]) < tol, (what, "gradient", name, rel_err(mine[name], theirs[name]))


def _case_id(cell, T, dtype):
    return f"{cell}-T{T}-{str(dtype)[6:]}"


@pytest.mark.parametrize("cell,T,dtype,tol", CASES, ids=[_case_id(*c[:3]) for c in CASES])
def test_scan_kernels_match_the_papers_loops(cell, T, dtype, tol):
    source = ZOO.get(cell) or SOURCES[cell]
    triton_cell = rnnc.compile(source, backend="triton")
    assert triton_cell.strategy == "scan"
    tensors, states = _inputs(cell, triton_cell.plan.ir, T, dtype)
    leaves = {**tensors, **{f"initial {k}": v for k, v in states.items()}}
    ours = triton_cell(state=states, **tensors)
    assert triton_cell.last_backend == "triton"
    assert all(v.dtype == dtype for v in ours.outputs.values())
    result = (ours.outputs, ours.state)
    expected, expected_leaves = _oracle(cell, tensors, states)
    _check(result, leaves, expected, expected_leaves, tol, f"{cell} against its loop")
    if dtype == torch.float64:
        reference = rnnc.compile(source, backend="reference")
        theirs = reference(state=states, **tensors)
        _check(result, leaves, (theirs.outputs, theirs.state), leaves, tol, f"{cell} against the reference")


def test_components_run_in_one_kernel_in_their_order():
    """Aaren's three components (max-plus, then two elementwise) are one kernel, the running max
    first; its q @ k reads no state, so it is computed once for every step before the kernel."""
    triton_cell = rnnc.compile(source("aaren"), backend="triton")
    text = triton_cell.source
    kernel = text[text.index("def forward_kernel(") : text.index("def backward_kernel(")]
    order = [kernel.index(f"new_{s} = ") for s in ("m", "c", "a")]
    assert order == sorted(order)
    assert "_maxplus_prev" in kernel
    (hoisted,) = triton_cell._triton.module.hoisted  # q @ k, once for all three pieces
    assert (hoisted.kind, hoisted.shape) == ("input", ()) and "pre_0_x = tl.load(pre_0_in" in kernel
    assert [str(a.dim) for a in triton_cell._triton.module.axes] == ["V"]  # no tile axis for K
    assert "i_ax0 = tl.arange(0, BLOCK_ax0)  # all of ax0 (V)" in kernel  # scalar states: no axis to split


def test_max_plus_ties_split_the_gradient_evenly():
    """m' = max(m + a, b) at a tie gives half the cotangent to each side, as torch.maximum does."""
    source = "cell tie() { input a: []; input b: []; state m: []\nm = max(m + a, b)\nemit m }"
    triton_cell, reference = rnnc.compile(source, backend="triton"), rnnc.compile(source, backend="reference")
    a = torch.tensor([[[1.0], [0.5], [-2.0]]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[[1.0], [1.5], [0.0]]], dtype=torch.float64, requires_grad=True)
    m0 = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)  # step 1: m + a = 1 = b, a tie
    leaves = [a, b, m0]
    ours = triton_cell(a=a, b=b, state={"m": m0})
    theirs = reference(a=a, b=b, state={"m": m0})
    assert torch.equal(ours.m, theirs.m)
    mine_all = torch.autograd.grad(ours.m.sum(), leaves, retain_graph=True)
    for mine, ref in zip(mine_all, torch.autograd.grad(theirs.m.sum(), leaves)):
        assert torch.allclose(mine, ref, rtol=0, atol=1e-15)
    assert torch.autograd.grad(ours.m[0, 0, 0], m0)[0].item() == 0.5
