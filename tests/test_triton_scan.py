"""The scan strategy's Triton kernels (interpreter on CPU) against the reference backend.

Forward and backward, every input, weight and initial state, float64 to 1e-9 and
float32 to 1e-4 (relative, by norm), odd and power-of-two sizes, fresh random
inputs; outputs start as NaN so anything a kernel fails to write shows.
"""

import pytest
import torch
from cells import all_gradients, random_call, rel_err

import rnnc

pytest.importorskip("triton")

CELLS = {
    "hgrn": "examples/hgrn.rnn",
    "mingru": "examples/mingru.rnn",
    # scalar input and weight, a state-shaped weight, two states, an output that is a function of both
    "two_states": "cell two(D) { input x: [D]; input f: []; weight w: [D]; weight s: []\n"
    "state h: [D]; state c: [D]\n"
    "h = sigmoid(f) * h + (1 - sigmoid(f)) * tanh(x * w)\n"
    "c = exp(-softplus(s)) * c + h * 0 + x\n"
    "emit y = sigmoid(h) * c }",
}
# (B, T, NH, D): odd sizes and powers of two; small, because the interpreter runs the scan element by element
SIZES = [(3, 1, 2, 24), (3, 37, 1, 24), (1, 5, 2, 48), (1, 16, 1, 16)]


def _call(name, B, T, NH, D, dtype):
    triton_cell = rnnc.compile(CELLS[name], backend="triton")
    reference = rnnc.compile(CELLS[name], backend="reference")
    ir = triton_cell.plan.ir
    tensors, states = random_call(ir, B=B, T=T, NH=NH, dims={d: D for d in ir.dims}, dtype=dtype)
    if "g" in tensors and name == "hgrn":  # a log forget gate is <= 0
        tensors["g"] = torch.nn.functional.logsigmoid(tensors["g"].detach()).requires_grad_()
    return triton_cell, reference, tensors, states


CASES = [(size, torch.float64, 1e-9) for size in SIZES] + [((3, 37, 1, 24), torch.float32, 1e-4)]


@pytest.mark.parametrize(
    "size,dtype,tol", CASES, ids=[f"{str(d)[6:]}-B{b}-T{t}-NH{n}-D{e}" for (b, t, n, e), d, _ in CASES]
)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_triton_scan_matches_reference(name, size, dtype, tol):
    B, T, NH, D = size
    triton_cell, reference, tensors, states = _call(name, B, T, NH, D, dtype)
    leaves = [*tensors.values(), *states.values()]
    ours = triton_cell(state=states, **tensors)
    assert triton_cell.last_backend == "triton"
    theirs = reference(state=states, **tensors)
    for key, value in ours.outputs.items():
        assert not torch.isnan(value).any(), f"output {key} has entries no kernel wrote"
        assert value.dtype == dtype
        assert rel_err(value, theirs.outputs[key]) < tol, key
    for key, value in ours.state.items():
        assert not torch.isnan(value).any()
        assert rel_err(value, theirs.state[key]) < tol, key
    ours_grads = all_gradients(ours.outputs, ours.state, leaves, seed=B * T)
    their_grads = all_gradients(theirs.outputs, theirs.state, leaves, seed=B * T)
    names = [*tensors, *(f"initial {n}" for n in states)]
    for label, mine, ref in zip(names, ours_grads, their_grads):
        assert mine is not None and not torch.isnan(mine).any(), label
        assert rel_err(mine, ref) < tol, (label, rel_err(mine, ref))


def test_cells_the_template_does_not_cover_say_why():
    with pytest.raises(rnnc.BackendError, match="mamba.*S @ C"):
        rnnc.compile("examples/mamba.rnn", backend="triton")
    with pytest.raises(rnnc.BackendError, match="sequential template is not built yet"):
        rnnc.compile("examples/lstm.rnn", backend="triton")


def test_generated_module_is_deterministic_and_readable():
    first = rnnc.compile("examples/hgrn.rnn", backend="triton").source
    second = rnnc.compile(open("examples/hgrn.rnn").read(), backend="triton").source
    assert first == second
    assert "def forward_kernel(" in first and "tl.associative_scan" in first and "tl.exp(x_g)" in first


@pytest.mark.parametrize("name", sorted(CELLS))
def test_inference_moves_each_byte_about_once(name):
    """Forward at inference: inputs, weights and initial states read once, outputs and final states
    written once, within 5 % (weights are read once per batch row)."""
    from interpreter_bytes import count_bytes

    triton_cell, _, tensors, states = _call(name, 2, 20, 2, 24, torch.float32)
    tensors = {k: v.detach() for k, v in tensors.items()}
    states = {k: v.detach() for k, v in states.items()}
    with torch.no_grad(), count_bytes() as moved:
        out = triton_cell(state=states, **tensors)
    read = sum(t.numel() * t.element_size() for t in [*tensors.values(), *states.values()])
    written = sum(t.numel() * t.element_size() for t in [*out.outputs.values(), *out.state.values()])
    assert moved["store"] <= 1.05 * written, (moved, written)
    assert moved["load"] <= 1.05 * read, (moved, read)
    assert moved["load"] >= read and moved["store"] >= written  # the counter sees every byte


# Random scan cells: the template must be right for any pointwise a(x) and b(x), not only the zoo's.
UNARY = ["sigmoid", "tanh", "exp", "softplus", "logsigmoid", "relu", "abs"]


def _random_cell(rng) -> str:
    def term(depth=0):
        choice = rng.random()
        if depth > 1 or choice < 0.35:
            return rng.choice(["x", "u", "w", "k", "0.5", "2"])
        if choice < 0.7:
            return f"{rng.choice(UNARY)}({term(depth + 1)})"
        return f"({term(depth + 1)} {rng.choice(['+', '-', '*'])} {term(depth + 1)})"

    decay = f"sigmoid({term()})"  # |a| < 1 keeps the scan stable
    return (
        "cell rnd(D) { input x: [D]; input u: []; weight w: [D]; weight k: []; state h: [D]\n"
        f"h = {decay} * h + {term()} + x\nemit y = h * {term()} + max(h, u) }}"
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_scan_cells_match_the_reference(seed):
    import random

    text = _random_cell(random.Random(seed))
    triton_cell = rnnc.compile(text, backend="triton")
    reference = rnnc.compile(text, backend="reference")
    tensors, states = random_call(triton_cell.plan.ir, B=2, T=5, NH=1, dims={"D": 4}, dtype=torch.float64)
    leaves = [*tensors.values(), *states.values()]
    ours, theirs = triton_cell(state=states, **tensors), reference(state=states, **tensors)
    assert rel_err(ours.y, theirs.y) < 1e-9 and rel_err(ours.state["h"], theirs.state["h"]) < 1e-9, text
    mine_all = all_gradients(ours.outputs, ours.state, leaves)
    theirs_all = all_gradients(theirs.outputs, theirs.state, leaves)
    for leaf, mine, ref in zip(leaves, mine_all, theirs_all):
        mine = torch.zeros_like(leaf) if mine is None else mine  # a leaf the random cell does not use
        ref = torch.zeros_like(leaf) if ref is None else ref
        assert rel_err(mine, ref) < 1e-9, text
