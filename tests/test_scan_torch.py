"""The CPU path of scan cells: the PyTorch scans (both forms) against plain loops, and the reference
backend's whole-sequence form against its step-by-step loop."""

import pytest
import torch
from cells import assert_agree, rel_err
from scan_cells import PAPER, SOURCES, ZOO, make, source

import rnnc
import rnnc.runtime.scan_torch as scan_torch
from rnnc.compiler import analyse_source
from rnnc.runtime.arguments import bind
from rnnc.runtime.cell import Output
from rnnc.runtime.reference_scan import ScanReference, expands


@pytest.fixture(params=["two-level", "loop"])
def form(request, monkeypatch):
    """Each test runs with the small-problem form (two levels) and the large-problem one (a loop)."""
    monkeypatch.setattr(scan_torch, "TWO_LEVEL_MAX", 1 << 30 if request.param == "two-level" else 0)
    return request.param


def _loop_affine(m, b, s0):
    n, x, out = len(b), list(s0), [[] for _ in b]
    for t in range(b[0].shape[1]):
        x = [sum(m[i][j][:, t] * x[j] for j in range(n)) + b[i][:, t] for i in range(n)]
        for i in range(n):
            out[i].append(x[i])
    return [torch.stack(o, 1) if o else b[0][:, :0] for o in out]


def _fresh(*shape):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("T", [0, 1, 19, 37])
@pytest.mark.parametrize("n", [1, 2])
def test_affine_scan_matches_a_loop(form, T, n):
    B, D = 3, 5
    m = [[(0.6 * _fresh(B, T, D)).detach().requires_grad_() for _ in range(n)] for _ in range(n)]
    b = [_fresh(B, T, D) for _ in range(n)]
    s0 = [_fresh(B, D) for _ in range(n)]
    leaves = [*(x for row in m for x in row), *b, *s0]
    ours, theirs = scan_torch.linear_scan(m, b, s0), _loop_affine(m, b, s0)
    for a, c in zip(ours, theirs):
        assert rel_err(a, c) < 1e-12
    if T:
        w = [torch.randn(B, T, D, dtype=torch.float64) for _ in range(n)]
        mine = torch.autograd.grad(sum((x * y).sum() for x, y in zip(ours, w)), leaves)
        want = torch.autograd.grad(sum((x * y).sum() for x, y in zip(theirs, w)), leaves)
        assert all(rel_err(x, y) < 1e-12 for x, y in zip(mine, want))


@pytest.mark.parametrize("T", [1, 19, 37])
def test_maxplus_scan_matches_a_loop_and_splits_ties(form, T):
    B, D = 3, 4
    a, b, m0 = _fresh(B, T, D), _fresh(B, T, D), _fresh(B, D)
    with torch.no_grad():
        b[:, 0, 0] = m0[:, 0] + a[:, 0, 0]  # a tie at the first step
    m, ms = m0, []
    for t in range(T):
        m = torch.maximum(m + a[:, t], b[:, t])
        ms.append(m)
    theirs = torch.stack(ms, 1)
    ours = scan_torch.maxplus_scan(a, b, m0)
    assert rel_err(ours, theirs) < 1e-12
    w = torch.randn(B, T, D, dtype=torch.float64)
    mine = torch.autograd.grad((ours * w).sum(), [a, b, m0])
    want = torch.autograd.grad((theirs * w).sum(), [a, b, m0])
    assert all(rel_err(x, y) < 1e-12 for x, y in zip(mine, want))


@pytest.mark.parametrize("cell", sorted([*SOURCES, *ZOO, *PAPER]))
def test_the_reference_runs_scan_cells_whole_and_agrees_with_its_step_loop(form, cell):
    text = source(cell)
    loop = rnnc.compile(text, backend="reference-bptt")  # the step loop, with the sympy partials
    fast = ScanReference(loop.plan)  # the whole-sequence form
    ir = loop.plan.ir
    dims = {d: 3 + i for i, d in enumerate(ir.dims)}
    tensors, states = make(cell, ir, B=2, T=19, NH=2, dims=dims, dtype=torch.float64)
    leaves = [*tensors.values(), *states.values()]
    assert_agree(Output(*fast(tensors, states)), loop(state=states, **tensors), leaves, 1e-12, grad_tol=1e-10)


def test_the_reference_takes_the_whole_sequence_form_unless_the_pieces_expand():
    """Mamba's decay exp(dt[:, None] * A) is [D, N] per step from [D] inputs: for all steps at once
    that is T times the state, so the reference's loop runs it; HGRN's pieces are its inputs' size."""
    mamba = analyse_source(open("examples/mamba.rnn").read())
    hgrn = analyse_source(open("examples/hgrn.rnn").read())
    x = torch.zeros(1, 2, 1, 64)
    small = torch.zeros(1, 2, 1, 16)
    mamba_call = bind(
        mamba.ir, {"u": x, "dt": x, "B": small, "C": small, "A": torch.zeros(1, 64, 16), "Dskip": x[0, 0]}, None
    )
    assert expands(mamba, mamba_call)
    assert not expands(hgrn, bind(hgrn.ir, {"x": x, "g": x}, None))
    cell = rnnc.compile("examples/hgrn.rnn", backend="reference")
    cell(x=x, g=x)
    assert cell._runner.scan_reference is not None  # the fast path ran
