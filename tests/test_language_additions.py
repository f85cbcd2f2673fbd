"""cos, sin and the reductions max(x, axis=k) / min(x, axis=k) / max(x): values and gradients against torch,
in both reference modes, and the located errors for malformed uses. Two positional arguments are always the
elementwise max(a, b) of the language's first version, integer or not."""

import pytest
import torch
from cells import rel_err

import rnnc
from rnnc.compiler import analyse_source
from rnnc.errors import AnalysisError

# every new function, with reductions over an axis, over all axes, of a state and of a matmul
CELL = """
cell extras(H, K) {
    input x: [K, H]
    input y: [H]
    weight W: [H, H]
    state h: [H]
    state s: []
    m = max(x, axis=0)           # [H]: the largest of K entries per channel
    n = min(x, axis=-1)          # [K]
    u = cos(y) * h + sin(m) - min(n) + max(W @ h)
    h = tanh(u + max(y, 0.0) + min(h, 1.0))
    s = 0.5 * s + max(x) * sin(s)
    emit h
    emit z = s * cos(sum(h))
}
"""


def torch_loop(x, y, W, h, s):
    """The same cell written directly in torch (amax/amin split ties evenly, as rnnc promises)."""
    hs, zs = [], []
    for t in range(x.shape[1]):
        xt, yt = x[:, t], y[:, t]  # [B, NH, K, H], [B, NH, H]
        m = xt.amax(dim=-2)
        n = xt.amin(dim=-1)
        wh = (W.unsqueeze(0) * h.unsqueeze(-2)).sum(-1)  # W @ h: [B, NH, H]
        u = torch.cos(yt) * h + torch.sin(m) - n.amin(dim=-1, keepdim=True) + wh.amax(dim=-1, keepdim=True)
        h = torch.tanh(u + torch.clamp(yt, min=0.0) + torch.clamp(h, max=1.0))
        s = 0.5 * s + xt.amax(dim=(-2, -1)) * torch.sin(s)
        hs.append(h)
        zs.append(s * torch.cos(h.sum(-1)))
    return {"h": torch.stack(hs, 1), "z": torch.stack(zs, 1)}, {"h": h, "s": s}


def _draw(B=2, T=7, NH=2, H=5, K=3, ties=False):
    x = torch.randn(B, T, NH, K, H, dtype=torch.float64)
    if ties:  # exact ties inside every reduction: the subgradient must split evenly
        x = x.round()
        x[..., 1, :] = x[..., 0, :]
    leaves = {
        "x": x,
        "y": torch.randn(B, T, NH, H, dtype=torch.float64),
        "W": torch.randn(NH, H, H, dtype=torch.float64) / H**0.5,
    }
    states = {"h": torch.randn(B, NH, H, dtype=torch.float64), "s": torch.randn(B, NH, dtype=torch.float64)}
    return {k: v.requires_grad_() for k, v in leaves.items()}, {k: v.requires_grad_() for k, v in states.items()}


@pytest.mark.parametrize("backend", ["reference", "reference-bptt"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_new_functions_match_torch_in_value_and_gradient(backend, ties):
    cell = rnnc.compile(CELL, backend=backend)
    tensors, states = _draw(ties=ties)
    ours = cell(state=states, **tensors)
    truth_out, truth_fin = torch_loop(**tensors, **states)
    leaves = [*tensors.values(), *states.values()]
    pairs = [(ours.outputs[k], truth_out[k]) for k in truth_out] + [(ours.state[k], truth_fin[k]) for k in truth_fin]
    for a, b in pairs:
        assert rel_err(a, b) < 1e-12
    cotangents = [torch.randn_like(b) for _, b in pairs]
    mine = torch.autograd.grad([a for a, _ in pairs], leaves, cotangents)
    theirs = torch.autograd.grad([b for _, b in pairs], leaves, cotangents)
    for name, a, b in zip([*tensors, *states], mine, theirs):
        assert b.norm() > 0, name
        assert rel_err(a, b) < 1e-10, (name, rel_err(a, b))


def test_ties_split_the_gradient_evenly():
    """max over an axis with a two-way tie gives each entry half, as max(a, b) does."""
    cell = rnnc.compile(
        "cell c(K) { input x: [K]; state h: []; h = h + max(x, axis=0); emit h }", backend="reference-bptt"
    )
    x = torch.tensor([[[[1.0, 3.0, 3.0, -2.0]]]], dtype=torch.float64, requires_grad=True)  # [B, T, NH, K]
    out = cell(x=x)
    (grad,) = torch.autograd.grad(out.h.sum(), [x])
    assert grad.flatten().tolist() == [0.0, 0.5, 0.5, 0.0]


def test_reduction_and_elementwise_are_told_apart():
    plan = analyse_source(
        "cell c(H) { input x: [H]; input a: []; state h: [H]\nh = max(x, axis=0) * h + max(x, 0) + max(a, 1) }"
    )
    shown = plan.explain()
    assert "max(x, axis=0)*h" in shown.replace(" ", "") or "h*max(x, axis=0)" in shown  # the reduction
    assert "max(x, 0.0)" in shown  # two positional arguments: elementwise with the number zero, as in version 0
    assert "max(a, 1.0)" in shown
    assert plan.transitions[0].structure == "scalar"  # the reduction is one number per step


def test_max_with_zero_stays_the_elementwise_relu_of_version_0():
    cell = rnnc.compile("cell c(H) { input x: [H]; state h: [H]; h = max(h + x, 0); emit h }", backend="reference")
    x = torch.tensor([[[[-1.0, 2.0, -3.0]]]], dtype=torch.float64)
    assert cell(x=x).h.flatten().tolist() == [0.0, 2.0, 0.0]


@pytest.mark.parametrize(
    "text,where,says",
    [
        ("h = max(x, axis=2) * h", "2)", "axis 2 is out of range for [H]"),
        ("h = max(x, axis=0.5) * h", "0.5", "needs an integer literal as its axis"),
        ("h = max(x, 0, 1) * h", "max(x, 0, 1)", "(a, b), (x, axis=k) or (x)"),
        ("h = max(x, 0, axis=0) * h", "max(x, 0, axis=0)", "needs exactly one positional argument"),
        ("h = max(x, ax=0) * h", "ax=0", "takes only the keyword axis="),
        ("h = tanh(x, axis=0) * h", "axis=0", "takes no keyword arguments"),
        ("h = max() * h", "max()", "needs 2 arguments"),
    ],
)
def test_ambiguous_or_malformed_uses_are_located_errors(text, where, says):
    source = f"cell c(H) {{ input x: [H]; state h: [H]\n{text} }}"
    with pytest.raises(AnalysisError) as info:
        analyse_source(source, "c.rnn")
    message = str(info.value)
    assert message.startswith("c.rnn:2:") and says in message, message
    column = message.splitlines()[-1].index("^") - 4  # the source line is shown indented by four spaces
    assert text[column:].startswith(where), message


def test_a_reduction_of_inputs_is_a_known_coefficient():
    """max(x, axis=1) of a [K, V] input is a [K] vector: as a decay of S [K, V] it is diagonal along the keys."""
    plan = analyse_source(
        "cell c(K, V) { input x: [K, V]; input k: [K]; input v: [V]; input q: [K]; state S: [K, V]\n"
        "S = exp(-abs(max(x, axis=1)))[:, None] * S + outer(k, v); emit o = q @ S }"
    )
    assert (plan.transitions[0].structure, plan.transitions[0].axis) == ("diagonal", -2)


@pytest.mark.parametrize(
    "text",
    [
        "cell c(H) { input x: [H]; weight R: [H, H]; state h: [H]; h = tanh(R @ h + cos(x) * sin(h)); emit h }",
        "cell c(H) { input x: [H]; state h: [H]; h = cos(x) * h + sin(x); emit h }",
    ],
    ids=["sequential", "scan"],
)
def test_cos_and_sin_run_in_triton_kernels(text):
    from cells import all_gradients, random_call

    kernels, reference = rnnc.compile(text, backend="triton"), rnnc.compile(text, backend="reference")
    tensors, states = random_call(reference.plan.ir, T=6, dims={"H": 24})
    leaves = [*tensors.values(), *states.values()]
    ours, truth = kernels(state=states, **tensors), reference(state=states, **tensors)
    assert kernels.last_backend == "triton"
    assert rel_err(ours.h, truth.h) < 1e-12
    mine, theirs = all_gradients(ours.outputs, ours.state, leaves), all_gradients(truth.outputs, truth.state, leaves)
    assert all(rel_err(a, b) < 1e-12 for a, b in zip(mine, theirs))
