"""The chunked strategy's Triton kernels (interpreter on CPU) against the reference backend.

Forward and backward for the zoo's matrix-state cells (linear attention, RetNet, simple GLA,
GLA, DeltaNet, gated DeltaNet) and cells outside the zoo: every input, weight and initial
state, float64 to 1e-9 and float32 to 1e-4 (relative, by norm), odd and power-of-two sizes,
T not a multiple of the chunk, and several value blocks per head; outputs and the initial
state's gradient start as NaN so anything a kernel fails to write shows.
"""

import pytest
import torch
from cells import all_gradients, random_call, rel_err

import rnnc

pytest.importorskip("triton")

ZOO = ["linear_attention", "retnet", "simple_gla", "gla", "deltanet", "gated_deltanet"]
OTHERS = {
    # a scale c(u) on the write, a key weight, a decay through softplus, a dim read as a number
    "scaled_write": "cell scaled(K, V) { input q: [K]; input k: [K]; input v: [V]; input f: []; input u: []\n"
    "weight w: [K]; state S: [K, V]\n"
    "S = exp(-softplus(f)) * S + sigmoid(u) * outer(k * w, tanh(v))\n"
    "emit o = (q / K) @ S }",
    # a sigmoid decay (its log printed as logsigmoid) and a value weight
    "sigmoid_decay": "cell sig(K, V) { input q: [K]; input k: [K]; input v: [V]; input f: []; weight w: [V]\n"
    "state S: [K, V]\nS = sigmoid(f) * S + outer(k, v * w)\nemit o = q @ S }",
    # the delta rule with beta and the decay computed from the inputs
    "computed_delta": "cell gdn(K, V) { input q: [K]; input k: [K]; input v: [V]; input f: []; input b: []\n"
    "state S: [K, V]\nS = exp(logsigmoid(f)) * (S - sigmoid(b) * outer(k, k @ S)) + sigmoid(b) * outer(k, v)\n"
    "emit o = q @ S }",
}


def _source(name: str) -> str:
    return OTHERS.get(name, f"examples/{name}.rnn")


def _call(name, B, T, NH, K, V, dtype):
    """The two backends and inputs in each cell's domain: log decays <= 0, beta in (0, 1), unit keys."""
    triton_cell = rnnc.compile(_source(name), backend="triton")
    reference = rnnc.compile(_source(name), backend="reference")
    ir = triton_cell.plan.ir
    tensors, states = random_call(ir, B=B, T=T, NH=NH, dims={"K": K, "V": V}, dtype=dtype)
    fixes = {
        "g": lambda g: torch.nn.functional.logsigmoid(g + 1.0),
        "beta": torch.sigmoid,
        "k": lambda k: torch.nn.functional.normalize(k, dim=-1),  # the delta rule is stable for |k| = 1
    }
    for arg, fix in fixes.items():
        if arg in tensors:
            tensors[arg] = fix(tensors[arg].detach()).requires_grad_()
    return triton_cell, reference, tensors, states


def _check(triton_cell, reference, tensors, states, dtype, tol, seed):
    leaves = [*tensors.values(), *states.values()]
    ours = triton_cell(state=states, **tensors)
    assert triton_cell.last_backend == "triton"
    theirs = reference(state=states, **tensors)
    errors = {}
    for key, value in ours.outputs.items():
        assert not torch.isnan(value).any(), f"output {key} has entries no kernel wrote"
        assert value.dtype == dtype
        errors[key] = rel_err(value, theirs.outputs[key])
    for key, value in ours.state.items():
        assert not torch.isnan(value).any(), f"final {key} has entries no kernel wrote"
        errors[f"final {key}"] = rel_err(value, theirs.state[key])
    ours_grads = all_gradients(ours.outputs, ours.state, leaves, seed=seed)
    their_grads = all_gradients(theirs.outputs, theirs.state, leaves, seed=seed)
    names = [*(f"d{n}" for n in tensors), *(f"d initial {n}" for n in states)]
    for label, mine, ref in zip(names, ours_grads, their_grads):
        assert mine is not None and not torch.isnan(mine).any(), label
        assert mine.dtype == ref.dtype, label
        errors[label] = rel_err(mine, ref)
    worst = max(errors, key=lambda k: errors[k])
    assert errors[worst] < tol, (worst, errors)


# (B, T, NH, K, V): one step; T = 37 is not a multiple of the chunk (16); K = V = 48; powers of two
SIZES = [(3, 1, 2, 24, 24), (3, 37, 1, 24, 24), (1, 21, 2, 48, 48), (2, 32, 1, 32, 16)]
CASES = [(size, torch.float64, 1e-9) for size in SIZES] + [((3, 37, 1, 48, 24), torch.float32, 1e-4)]


@pytest.mark.parametrize(
    "size,dtype,tol", CASES, ids=[f"{str(d)[6:]}-B{b}-T{t}-NH{n}-K{k}-V{v}" for (b, t, n, k, v), d, _ in CASES]
)
@pytest.mark.parametrize("name", ZOO)
def test_triton_chunked_matches_reference(name, size, dtype, tol):
    triton_cell, reference, tensors, states = _call(name, *size, dtype)
    _check(triton_cell, reference, tensors, states, dtype, tol, seed=size[0] * size[1])


@pytest.mark.parametrize("name", ZOO)
def test_several_value_blocks_add_their_shared_gradients(name, monkeypatch):
    """V = 48 in blocks of 16: three programs per head share q, k, g and beta, whose gradients they add."""
    from rnnc.runtime.triton_chunked import ChunkedKernels

    tiles = ChunkedKernels.tiles
    monkeypatch.setattr(ChunkedKernels, "tiles", lambda self, call: {**tiles(self, call), "BV": 16})
    triton_cell, reference, tensors, states = _call(name, 2, 19, 1, 24, 48, torch.float64)
    _check(triton_cell, reference, tensors, states, torch.float64, 1e-9, seed=3)


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_cells_outside_the_zoo_match_reference(name):
    """Pieces that are expressions (scales, weights, dims, computed decays and betas), not bare inputs."""
    triton_cell, reference, tensors, states = _call(name, 2, 21, 2, 20, 12, torch.float64)
    _check(triton_cell, reference, tensors, states, torch.float64, 1e-9, seed=5)


@pytest.mark.parametrize(
    "text,why",
    [
        (
            "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; state S: [K, V]\n"
            "S = S + outer(k, v)\nemit o = q @ S\nemit p = k @ S }",
            "needs one output, has 2",
        ),
        (
            "cell c(K) { input q: [K]; input k: [K]; input v: [K]; state S: [K, K]\n"
            "S = S + outer(k, v)\nemit o = q @ S }",
            r"needs a state \[K, V\] of two distinct dims, has \[K, K\]",
        ),
        (
            "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; state S: [K, V]\n"
            "S = S + outer(k, v)\nemit o = q @ (S - outer(k, v)) }",
            "needs the output to read the updated state",
        ),
        (
            "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; input f: []; state S: [K, V]\n"
            "S = (f * f + 1) * S + outer(k, v)\nemit o = q @ S }",
            r"needs the decay written as exp\(log decay\) or sigmoid\(x\), has f\*\*2 \+ 1",
        ),
    ],
    ids=["two outputs", "square state", "previous state", "decay not exp"],
)
def test_cells_the_template_does_not_cover_say_why(text, why):
    assert rnnc.compile(text, backend="reference").strategy == "chunked"
    with pytest.raises(rnnc.BackendError, match="chunked template does not cover cell c yet: " + why):
        rnnc.compile(text, backend="triton")


def test_generated_module_is_deterministic_and_readable():
    first = rnnc.compile("examples/gated_deltanet.rnn", backend="triton").source
    second = rnnc.compile(open("examples/gated_deltanet.rnn").read(), backend="triton").source
    assert first == second
    assert "def forward_kernel(" in first and "def backward_kernel(" in first
    assert "log_decay = tl.where(mask_t, x_g, 0.0)" in first  # the log decay, printed from exp(g)
    assert "beta = tl.where(mask_t, x_beta, 0.0)" in first and "_unit_lower_inverse" in first
    gla = rnnc.compile("examples/gla.rnn", backend="triton").source
    assert "log_decay = tl.where(mask_tk, x_g, 0.0)" in gla and "_unit_lower_inverse" not in gla
    retnet = rnnc.compile("examples/retnet.rnn", backend="triton").source
    assert "tl.where(mask_t, zero_c + (wt_log__gamma), 0.0)" in retnet  # a weight broadcast over the chunk


@pytest.mark.parametrize("name", ZOO)
def test_inference_moves_each_byte_about_once(name):
    """Forward at inference: inputs, weights and the initial state read once, the output and the final
    state written once, within 30 % (weights are read once per program; nothing per chunk is stored)."""
    from interpreter_bytes import inference_traffic

    triton_cell, _, tensors, states = _call(name, 2, 37, 2, 24, 20, torch.float32)
    moved, read, written = inference_traffic(triton_cell, tensors, states)
    assert moved["store"] <= 1.3 * written, (moved, written)
    assert moved["load"] <= 1.3 * read, (moved, read)
    assert moved["load"] >= read and moved["store"] >= written  # the counter sees every byte
