"""A matrix state read with an earlier state as its query (``emit o = c @ S``, as Gated Slot Attention
reads its memory through a state): the vector state runs in a scan stage before the chunked one.

Before, the analysis put ``c`` in the chunked group, found ``c' @ S'`` to be no read of either and
fell back to a scan of the whole [K, V] state per step. Checked against a float64 loop written
from the equations: outputs, final states and every gradient, on the reference and the Triton
(interpreter) backends.
"""

import pytest
import torch
from cells import rel_err

import rnnc

CELL = """cell q_from_state(K, V) {
    input k: [K]
    input v: [V]
    input x: [K]
    input g: [K]
    state c: [K]
    state S: [K, V]
    c = sigmoid(g) * c + x
    S = S + outer(k, v)
    emit o = c @ S
}"""


def loop(k, v, x, g, c0, S0):
    """c_t = sigmoid(g_t) c_{t-1} + x_t, S_t = S_{t-1} + k_t v_t^T, o_t = c_t^T S_t."""
    c, S, outs = c0, S0, []
    for t in range(k.shape[1]):
        c = torch.sigmoid(g[:, t]) * c + x[:, t]
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", c, S))
    return torch.stack(outs, 1), c, S


def test_the_query_state_runs_in_a_scan_stage_before_the_chunked_one():
    plan = rnnc.compile(CELL, backend="reference").plan
    assert plan.strategy == "chunked"
    assert [(s.strategy, s.components) for s in plan.stages] == [("scan", (0,)), ("chunked", (1,))]


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_matches_the_loop_with_every_gradient(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    B, T, NH, K, V = 2, 37, 2, 24, 16
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    draw = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    k, x, gate = draw(B, T, NH, K), draw(B, T, NH, K), draw(B, T, NH, K)
    v = draw(B, T, NH, V)
    c0, S0 = draw(B, NH, K), draw(B, NH, K, V)
    out = rnnc.compile(CELL, backend=backend)(k=k, v=v, x=x, g=gate, state={"c": c0, "S": S0})
    want = loop(k, v, x, gate, c0, S0)
    got = (out.o, out.state["c"], out.state["S"])
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-9
    leaves = [k, v, x, gate, c0, S0]
    weights = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in want]
    ours = torch.autograd.grad(sum((a * w).sum() for a, w in zip(got, weights)), leaves)
    theirs = torch.autograd.grad(sum((b * w).sum() for b, w in zip(want, weights)), leaves)
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) < 1e-9
