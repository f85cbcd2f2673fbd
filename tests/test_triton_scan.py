"""The scan strategy's Triton kernels (interpreter on CPU) against the reference backend.

Forward and backward, every input, weight and initial state, float64 to 1e-9 and
float32 to 1e-4 (relative, by norm), odd and power-of-two sizes, fresh random
inputs; outputs start as NaN so anything a kernel fails to write shows.
The interpreter's associative scan runs slice by slice (tests/interpreter_scan.py, checked
bitwise against the interpreter's own below): element by element, Mamba's cases take minutes.
"""

import pytest
import torch
from cells import all_gradients, assert_agree, random_call, rel_err
from interpreter_scan import fast_scan, interpreter_scan
from refs import data

import rnnc

pytest.importorskip("triton")


@pytest.fixture(autouse=True)
def _fast_interpreter_scan():
    with fast_scan():
        yield


CELLS = {
    "hgrn": "examples/hgrn.rnn",
    "mingru": "examples/mingru.rnn",
    # scalar input and weight, a state-shaped weight, two states, an output that is a function of both
    "two_states": "cell two(D) { input x: [D]; input f: []; weight w: [D]; weight s: []\n"
    "state h: [D]; state c: [D]\n"
    "h = sigmoid(f) * h + (1 - sigmoid(f)) * tanh(x * w)\n"
    "c = exp(-softplus(s)) * c + h * 0 + x\n"
    "emit y = sigmoid(h) * c }",
    # a scalar output per step: a dot product of the new state with an input
    "dot_output": "cell dot(D) { input x: [D]; input q: [D]; weight w: []; state h: [D]\n"
    "h = sigmoid(q + w) * h + x\nemit y = tanh(h @ q / sqrt(D)) + w }",
}
# (B, T, NH, D): odd sizes and powers of two; small, because the interpreter runs the scan element by element
SIZES = [(3, 1, 2, 24), (3, 37, 1, 24), (1, 5, 2, 48), (1, 16, 1, 16)]


def _call(name, B, T, NH, D, dtype, N=None):
    """The Triton and reference cells and fresh inputs; Mamba's from tests/refs/data.py (dt > 0, A < 0)."""
    source = "examples/mamba.rnn" if name == "mamba" else CELLS[name]
    triton_cell = rnnc.compile(source, backend="triton")
    reference = rnnc.compile(source, backend="reference")
    ir = triton_cell.plan.ir
    if name == "mamba":
        tensors, states = data.make("mamba", B=B, T=T, NH=NH, D=D, N=N, dtype=dtype)
        return triton_cell, reference, tensors, states
    tensors, states = random_call(ir, B=B, T=T, NH=NH, dims={d: D for d in ir.dims}, dtype=dtype)
    if "g" in tensors and name == "hgrn":  # a log forget gate is <= 0
        tensors["g"] = torch.nn.functional.logsigmoid(tensors["g"].detach()).requires_grad_()
    return triton_cell, reference, tensors, states


CASES = [(name, size, torch.float64, 1e-9) for name in sorted(CELLS) for size in SIZES]
CASES += [(name, (3, 37, 1, 24), torch.float32, 1e-4) for name in sorted(CELLS)]
# Mamba (B, T, NH, D, N): a state [D, N] whose program owns all of N and a block of D
MAMBA_SIZES = [(3, 1, 2, 24, 16), (3, 37, 1, 24, 16), (1, 5, 2, 16, 24), (2, 16, 1, 64, 16), (1, 19, 1, 5, 3)]
CASES += [("mamba", size, torch.float64, 1e-9) for size in MAMBA_SIZES] + [
    ("mamba", (3, 37, 1, 24, 16), torch.float32, 1e-4)
]


def _case_id(name, size, dtype):
    dims = "-".join(f"{k}{v}" for k, v in zip(("B", "T", "NH", "D", "N"), size))
    return f"{name}-{str(dtype)[6:]}-{dims}"


@pytest.mark.parametrize("name,size,dtype,tol", CASES, ids=[_case_id(n, s, d) for n, s, d, _ in CASES])
def test_triton_scan_matches_reference(name, size, dtype, tol):
    B, T, NH, D, *N = size
    triton_cell, reference, tensors, states = _call(name, B, T, NH, D, dtype, *N)
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


def test_fast_scan_is_bitwise_the_interpreters():
    """The slice-by-slice scan of tests/interpreter_scan.py gives the interpreter's own results, bit for bit."""
    triton_cell, _, tensors, states = _call("mamba", 2, 19, 1, 5, torch.float32, N=3)
    leaves = [*tensors.values(), *states.values()]
    fast = triton_cell(state=states, **tensors)
    fast_grads = all_gradients(fast.outputs, fast.state, leaves)
    with interpreter_scan():
        slow = triton_cell(state=states, **tensors)
        slow_grads = all_gradients(slow.outputs, slow.state, leaves)
    assert torch.equal(fast.y, slow.y) and torch.equal(fast.state["S"], slow.state["S"])
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, slow_grads))


# Cells the first scan template refused: views along permuted axes, reductions of the state and
# matmuls of inputs inside a step. The tile space covers them now.
FORMERLY_REFUSED = {
    "sum of the state over D": "cell m(D, N) { input x: [D, N]\nstate S: [D, N]\nS = 0.5 * S + x\nemit y = sum(S, 0) }",
    "a transposed input": "cell m(D) { input x: [D, D]; state S: [D, D]\nS = 0.5 * S + x.T\nemit S }",
    "a matmul placed by a view": "cell m(D, N) { input x: [D, N]; input u: [D]; weight W: [D, D]\n"
    "state S: [D, N]\nS = 0.5 * S + (W @ u)[:, None] * x\nemit S }",
    "a matmul of an input": "cell m(D) { input u: [D]; weight W: [D, D]; state h: [D]\nh = 0.5 * h + W @ u\nemit h }",
}


@pytest.mark.parametrize("what", sorted(FORMERLY_REFUSED))
def test_cells_the_first_template_refused_now_run(what):
    text = FORMERLY_REFUSED[what]
    triton_cell, reference = rnnc.compile(text, backend="triton"), rnnc.compile(text, backend="reference")
    tensors, states = random_call(
        triton_cell.plan.ir, B=2, T=5, NH=1, dims={d: 3 + i for i, d in enumerate(["D", "N"])}
    )
    leaves = [*tensors.values(), *states.values()]
    assert_agree(triton_cell(state=states, **tensors), reference(state=states, **tensors), leaves, 1e-9)


def test_the_scan_template_refuses_other_strategies():
    from rnnc.compiler import analyse_source
    from rnnc.templates.scan_codegen import render_scan

    with pytest.raises(rnnc.BackendError, match="does not run cell lstm: its strategy is sequential"):
        render_scan(analyse_source(open("examples/lstm.rnn").read()))


def test_generated_module_is_deterministic_and_readable():
    first = rnnc.compile("examples/hgrn.rnn", backend="triton").source
    second = rnnc.compile(open("examples/hgrn.rnn").read(), backend="triton").source
    assert first == second
    assert "def forward_kernel(" in first and "tl.associative_scan" in first and "tl.exp(x_g)" in first
    mamba = rnnc.compile("examples/mamba.rnn", backend="triton").source
    assert "# y = Dskip*u + S' @ C" in mamba and "tl.exp(wt_A * x_dt)" in mamba
    assert "x_B = tl.load(in_B + row * size_B + offs_B" in mamba  # B is read as a row of N, not per entry of S
    assert "offs_B = i_ax1[None, None, :]" in mamba and "i_ax1 = tl.arange(0, BLOCK_ax1)  # all of ax1 (N)" in mamba


@pytest.mark.parametrize("name", sorted(CELLS))
def test_inference_moves_each_byte_about_once(name):
    """Forward at inference: inputs, weights and initial states read once, outputs and final states
    written once, within 5 % (weights are read once per batch row)."""
    from interpreter_bytes import inference_traffic

    triton_cell, _, tensors, states = _call(name, 2, 20, 2, 24, torch.float32)
    moved, read, written = inference_traffic(triton_cell, tensors, states)
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


def test_dims_read_as_numbers_over_a_matrix_state():
    text = (
        "cell s(D, N) { input x: [D]; input c: [N]; weight A: [D, N]; state S: [D, N]\n"
        "S = sigmoid(A) * S + x[:, None] * c[None, :] / N\nemit y = S @ c / sqrt(N) + D }"
    )
    triton_cell, reference = rnnc.compile(text, backend="triton"), rnnc.compile(text, backend="reference")
    tensors, states = random_call(triton_cell.plan.ir, B=2, T=5, NH=1, dims={"D": 3, "N": 5})
    leaves = [*tensors.values(), *states.values()]
    ours, theirs = triton_cell(state=states, **tensors), reference(state=states, **tensors)
    assert rel_err(ours.y, theirs.y) < 1e-9 and rel_err(ours.state["S"], theirs.state["S"]) < 1e-9
    for mine, ref in zip(
        all_gradients(ours.outputs, ours.state, leaves), all_gradients(theirs.outputs, theirs.state, leaves)
    ):
        assert rel_err(mine, ref) < 1e-9


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


@pytest.mark.parametrize("D,N", [(64, 16), (24, 16)])
def test_mamba_inference_reads_b_and_c_once(D, N):
    """One program owns all of D and N here, so it reads each step's B and C rows once; splitting D
    into blocks of 16 would re-read them per block (1.4 times the ideal bytes at D = 64, N = 16).
    Exactly: inputs and initial states once, weights once per batch row (each (batch, head) program
    loads its head's A and Dskip), outputs and final states written once. At T = 64 the weights'
    second read is under 5 % of the ideal, every byte read once."""
    from interpreter_bytes import inference_traffic, nbytes

    B, T, NH = 2, 64, 2
    triton_cell, _, tensors, states = _call("mamba", B, T, NH, D, torch.float32, N=N)
    moved, ideal, written = inference_traffic(triton_cell, tensors, states)  # written: y and the final S
    weights = nbytes([tensors["A"], tensors["Dskip"]])
    assert moved["load"] == ideal + (B - 1) * weights, (moved, ideal)
    assert moved["load"] <= 1.05 * ideal, moved["load"] / ideal
    assert moved["store"] == written


def test_what_the_template_cannot_lower_is_a_located_error_naming_the_piece():
    """A part of a state has no tile form (Triton cannot slice a tile): the error points at the
    output that reads it, names the piece, and says why."""
    text = "cell halves(D) {\n    input x: [2, D]\n    state h: [2, D]\n    lo, hi = h\n    emit y = lo * hi\n"
    text += "    h = 0.5 * h + x\n}\n"
    with pytest.raises(rnnc.errors.LocatedBackendError) as caught:
        rnnc.compile(text, backend="triton")
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("<string>:5:5: error: the Triton scan template cannot run cell halves (output y = ")
    assert lines[0].endswith("h[0]: only parts of inputs and weights have a tile form here")
    assert lines[1:] == ["        emit y = lo * hi", "        ^^^^^^^^^^^^^^^^"]


def test_several_components_render_deterministically():
    for name in ("aaren", "rwkv4", "lru"):
        first = rnnc.compile(f"examples/{name}.rnn", backend="triton").source
        assert first == rnnc.compile(open(f"examples/{name}.rnn").read(), backend="triton").source
        compile(first, f"<{name}>", "exec")  # the module parses


def test_a_fused_projection_split_into_gates_runs():
    """``z, c = W @ x`` splits a matmul: each part is a matmul of a part of W."""
    text = "cell split(D) { input x: [D]; weight W: [2 * D, D]; state h: [D]\nz, c = W @ x\n"
    text += "h = sigmoid(z) * h + c\nemit h }"
    triton_cell, reference = rnnc.compile(text, backend="triton"), rnnc.compile(text, backend="reference")
    tensors, states = random_call(triton_cell.plan.ir, B=2, T=5, NH=2, dims={"D": 3})
    leaves = [*tensors.values(), *states.values()]
    assert_agree(triton_cell(state=states, **tensors), reference(state=states, **tensors), leaves, 1e-9)


def test_state_free_reductions_run_before_the_kernel_and_wide_outputs_after_it():
    """Reductions that read no state become inputs (or weights) computed first; an output over an axis
    no state has is computed from the carried trajectories after the kernel: the kernels' tiles
    span the states' axes only. Both agree with the reference, forward and every gradient."""
    text = "cell wide(D, H) { input x: [D]; input u: [H]; weight w: [D]; weight W: [D, H]; weight C: [H, D]\n"
    text += "state h: [D]\nh = sigmoid(sum(w * w)) * h + (W @ u) * x\nemit y = C @ h + u\nemit z = h * sum(w) }"
    triton_cell, reference = rnnc.compile(text, backend="triton"), rnnc.compile(text, backend="reference")
    module = triton_cell._triton.module
    assert [(h.kind, str(h.expr)) for h in module.hoisted] == [
        ("weight", "ReduceSum(w**2, -1)"),
        ("input", "Matmul(W, u)"),
        ("weight", "ReduceSum(w, -1)"),
    ]
    assert [name for name, _ in module.post] == ["y"] and module.outputs == ["z"] and module.carries == ["h"]
    assert [str(a.dim) for a in module.axes] == ["D"]
    tensors, states = random_call(triton_cell.plan.ir, B=2, T=19, NH=2, dims={"D": 5, "H": 3})
    leaves = [*tensors.values(), *states.values()]
    assert_agree(triton_cell(state=states, **tensors), reference(state=states, **tensors), leaves, 1e-9)
