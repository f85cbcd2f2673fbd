"""The sequential strategy's Triton kernels (interpreter on CPU) against the reference backend.

Forward and backward, every input, weight and initial state, float64 to 1e-9 and
float32 to 1e-4 (relative, by norm), odd and power-of-two sizes, fresh random
inputs; outputs start as NaN so anything a kernel fails to write shows.
"""

import random

import pytest
import torch
from cells import all_gradients, random_call, rel_err

import rnnc

pytest.importorskip("triton")

ZOO = ["elman", "gru", "lstm", "lti", "slstm"]
# sLSTM's normaliser n is positive (it starts at 0 and grows by positive gates); an initial n drawn
# around 0 divides h by almost nothing, and float32 then measured the conditioning (errors up to
# 2e-4 on m in one run of fifty), not the kernel
POSITIVE = {"slstm": ("n",)}
# (B, T, NH, head dim): odd sizes and powers of two; B = 20 spans two batch blocks of 16, whose
# weight gradients meet in an atomic add
SIZES = [(3, 1, 2, 24), (3, 37, 1, 24), (1, 5, 2, 48), (2, 16, 1, 16), (20, 3, 1, 16)]
CASES = [(size, torch.float64, 1e-9) for size in SIZES] + [((3, 37, 1, 24), torch.float32, 1e-4)]


def _check(text_or_path, B, T, NH, dims, dtype, tol, seed=0, split=1, positive=(), tiling=None):
    triton_cell = rnnc.compile(text_or_path, backend="triton")
    if split > 1 or tiling:
        triton_cell.use_tiling({**({"SPLIT": split} if split > 1 else {}), **(tiling or {})})
    reference = rnnc.compile(text_or_path, backend="reference")
    tensors, states = random_call(triton_cell.plan.ir, B=B, T=T, NH=NH, dims=dims, dtype=dtype, positive=positive)
    for decl in triton_cell.plan.ir.weights:  # matrices at torch.nn's scale, 1/sqrt(fan-in): gradients that
        if len(decl.shape) >= 2:  # explode over T = 37 would test the conditioning, not the kernel
            fan_in = tensors[decl.name].shape[-1]
            tensors[decl.name] = (tensors[decl.name].detach() * 2 / fan_in**0.5).requires_grad_()
    leaves = [*tensors.values(), *states.values()]
    ours = triton_cell(state=states, **tensors)
    assert triton_cell.last_backend == "triton"
    # the reference runs in float64 on the same values: float32 kernels are compared with the truth
    tensors64 = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    states64 = {k: v.detach().double().requires_grad_() for k, v in states.items()}
    leaves64 = [*tensors64.values(), *states64.values()]
    theirs = reference(state=states64, **tensors64)
    pairs = [(f"output {k}", v, theirs.outputs[k]) for k, v in ours.outputs.items()]
    pairs += [(f"final {k}", v, theirs.state[k]) for k, v in ours.state.items()]
    for label, value, expected in pairs:
        assert not torch.isnan(value).any(), f"{label} has entries no kernel wrote"
        assert rel_err(value, expected) < tol, (label, rel_err(value, expected))
    for value in ours.outputs.values():
        assert value.dtype == dtype
    mine_all = all_gradients(ours.outputs, ours.state, leaves, seed=seed)
    theirs_all = all_gradients(theirs.outputs, theirs.state, leaves64, seed=seed)
    names = [*tensors, *(f"initial {n}" for n in states)]
    for label, leaf, mine, ref in zip(names, leaves, mine_all, theirs_all):
        mine = torch.zeros_like(leaf) if mine is None else mine  # a leaf a random cell does not use
        ref = torch.zeros_like(leaf) if ref is None else ref
        assert not torch.isnan(mine).any(), label
        assert rel_err(mine, ref) < tol, (label, rel_err(mine, ref))


@pytest.mark.parametrize(
    "size,dtype,tol", CASES, ids=[f"{str(d)[6:]}-B{b}-T{t}-NH{n}-D{e}" for (b, t, n, e), d, _ in CASES]
)
@pytest.mark.parametrize("name", ZOO)
def test_triton_sequential_matches_reference(name, size, dtype, tol):
    B, T, NH, D = size
    dims = {"H": D} if name != "lti" else {"N": D, "M": D // 2 + 1}  # lti: two dims of different sizes
    _check(f"examples/{name}.rnn", B, T, NH, dims, dtype, tol, seed=B * T, positive=POSITIVE.get(name, ()))


# Heads split over programs that exchange the states every step (one launch per step here):
# (B, T, NH, head dim, SPLIT); a 24-wide head in two slices of 16 leaves the second half empty,
# 48 in three, B = 20 has two batch blocks adding into the same weight gradients
SPLIT_CASES = [
    ((3, 1, 2, 24, 2), torch.float64, 1e-9),
    ((1, 5, 2, 48, 3), torch.float64, 1e-9),
    ((20, 3, 1, 64, 4), torch.float64, 1e-9),
    ((3, 37, 1, 24, 2), torch.float32, 1e-4),
]


@pytest.mark.parametrize(
    "size,dtype,tol",
    SPLIT_CASES,
    ids=[f"{str(d)[6:]}-B{b}-T{t}-NH{n}-D{e}-S{s}" for (b, t, n, e, s), d, _ in SPLIT_CASES],
)
@pytest.mark.parametrize("name", ZOO)
def test_split_heads_match_reference(name, size, dtype, tol):
    B, T, NH, D, split = size
    dims = {"H": D} if name != "lti" else {"N": D, "M": D // 2 + 1}
    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    assert cell._triton.module.split.supported
    _check(f"examples/{name}.rnn", B, T, NH, dims, dtype, tol, seed=B * T, split=split, positive=POSITIVE.get(name, ()))


# The step kernels with a whole head (STREAM: weights read from memory each step instead of kept on
# chip), contractions in several BLOCK_K pieces, and a GPU-like tiling pinned in the interpreter
STREAM_CASES = [
    ((3, 5, 2, 48), {"STREAM": 1, "BLOCK_K": 16}),  # three pieces of 16
    ((2, 4, 1, 40), {"SPLIT": 2, "BLOCK_K": 16}),  # two slices of 32, three pieces (the last one short)
    ((20, 3, 1, 24), {"STREAM": 1, "BLOCK_B": 32, "num_warps": 8, "num_stages": 2}),
]


@pytest.mark.parametrize("size,tiling", STREAM_CASES, ids=["stream-K16", "split-K16", "stream-B32-w8"])
@pytest.mark.parametrize("name", ZOO)
def test_step_kernels_streaming_the_weights_match_reference(name, size, tiling):
    B, T, NH, D = size
    dims = {"H": D} if name != "lti" else {"N": D, "M": D // 2 + 1}
    _check(
        f"examples/{name}.rnn",
        B,
        T,
        NH,
        dims,
        torch.float64,
        1e-9,
        seed=T,
        tiling=tiling,
        positive=POSITIVE.get(name, ()),
    )


def test_pinned_tiling_reaches_the_launch_in_the_interpreter():
    from rnnc.runtime.arguments import bind

    cell = rnnc.compile("examples/lstm.rnn", backend="triton")
    cell.use_tiling({"STREAM": 1, "BLOCK_K": 32, "BLOCK_B": 32, "num_warps": 8, "num_stages": 3})
    tensors, _ = random_call(cell.plan.ir, B=2, T=2, NH=1, dims={"H": 40}, dtype=torch.float64)
    tiles = cell._triton.tiles(bind(cell.plan.ir, tensors, None))
    assert {k: tiles[k] for k in ("STREAM", "BLOCK_K", "BLOCK_B", "num_warps", "num_stages")} == {
        "STREAM": 1,
        "BLOCK_K": 32,
        "BLOCK_B": 32,
        "num_warps": 8,
        "num_stages": 3,
    }
    cell.use_tiling({"STREAM": 1, "BLOCK_K": 24})
    with pytest.raises(rnnc.BackendError, match="BLOCK_K needs a power of two, has 24"):
        cell(**tensors)


def test_generated_module_is_deterministic_and_reads_like_the_cell():
    first = rnnc.compile("examples/lstm.rnn", backend="triton").source
    second = rnnc.compile(open("examples/lstm.rnn").read(), backend="triton").source
    assert first == second
    # four gates, in the forward and the recomputing backward
    assert first.count("tl.dot(s_h.to(DOT_DTYPE), r_R_") == 2 * 4
    assert "for k in range(0, steps):" in first
    # R's and b's gradients are contractions after the kernel: R @ h's cotangent is x's, which the
    # kernel stores anyway, so nothing else is stored or accumulated on chip
    assert "tl.atomic_add(grad_ptr_R" not in first and "acc_" not in first and "_cotangent_ptr" not in first


def test_weight_gradients_come_from_stored_cotangents_where_no_input_has_them():
    gru = rnnc.compile("examples/gru.rnn", backend="triton")._triton.module
    assert [d.cotangent for d in gru.dots] == ["stored"]  # r * hn: the matmul's cotangent is not x's
    assert gru.weight_sums == {"b": "dot 7"} and "tl.store(a7_cotangent_ptr" in gru.text
    lstm = rnnc.compile("examples/lstm.rnn", backend="triton")._triton.module
    assert [d.cotangent for d in lstm.dots] == ["input x"] and lstm.weight_sums == {"b": "input x"}


def test_matrix_weight_used_pointwise_and_in_a_matmul_matches_the_reference():
    text = "cell c(H) { input x: [H]; weight R: [H, H]; state h: [H]\nh = tanh(x + R @ h + sum(R, 0))\nemit h }"
    _check(text, 3, 5, 1, {"H": 19}, torch.float64, 1e-9)


@pytest.mark.parametrize("name", ["lstm", "slstm"])
def test_inference_moves_each_byte_about_once(name):
    """Forward at inference: inputs, weights and initial states read once, outputs and final states
    written once, within 5 %."""
    from interpreter_bytes import inference_traffic

    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    tensors, states = random_call(cell.plan.ir, B=3, T=9, NH=2, dims={"H": 24}, dtype=torch.float32)
    moved, read, written = inference_traffic(cell, tensors, states)
    assert read <= moved["load"] <= 1.05 * read, (moved, read)
    assert written <= moved["store"] <= 1.05 * written, (moved, written)


# Random sequential cells: the template must be right for any pointwise math around the matmul,
# scalar inputs and weights included, not only the zoo's.
UNARY = ["sigmoid", "tanh", "exp", "softplus", "logsigmoid", "relu", "abs"]


def _random_cell(rng, contracted: str = "h * sigmoid(w)") -> str:
    def term(depth=0):
        choice = rng.random()
        if depth > 1 or choice < 0.35:
            return rng.choice(["a", "z", "u", "w", "k", "c", "0.5"])
        if choice < 0.7:
            return f"{rng.choice(UNARY)}({term(depth + 1)})"
        return f"({term(depth + 1)} {rng.choice(['+', '-', '*'])} {term(depth + 1)})"

    return (
        "cell rnd(H) { input x: [2, H]; input u: []; weight R: [2, H, H]; weight w: [H]; weight k: []\n"
        "state h: [H]; state c: [H]\n"
        f"a, z = x + R @ ({contracted})\n"
        f"c = sigmoid({term()} + a) * c + tanh({term()})\n"  # a and z always reach the states
        f"h = tanh(c) * sigmoid({term()} + z)\nemit y = h * {term()} + max(c, u) }}"
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_sequential_cells_match_the_reference(seed):
    text = _random_cell(random.Random(seed))
    _check(text, 3, 4, 1, {"H": 20}, torch.float64, 1e-9)


def test_dims_read_as_numbers_are_exact_in_float64():
    text = "cell c(H) { input x: [H]; weight R: [H, H]; state h: [H]\nh = tanh(x + R @ h / sqrt(H))\nemit y = h * H }"
    _check(text, 3, 4, 1, {"H": 20}, torch.float64, 1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_random_cells_with_split_heads_match_the_reference(seed):
    """Split heads with scalar inputs and weights: each program adds its part of their gradients."""
    text = _random_cell(random.Random(100 + seed), contracted="h")
    _check(text, 3, 3, 1, {"H": 40}, torch.float64, 1e-9, split=3)


def test_split_head_whose_matmul_contracts_a_computed_vector_is_refused_with_the_reason():
    cell = rnnc.compile(_random_cell(random.Random(0)), backend="triton")
    cell.use_tiling({"SPLIT": 2})
    tensors, states = random_call(cell.plan.ir, B=2, T=2, NH=1, dims={"H": 40}, dtype=torch.float64)
    with pytest.raises(rnnc.BackendError, match="needs its heads split over 2 programs.*contract a state or an input"):
        cell(state=states, **tensors)
    cell.use_tiling({"SPLIT": 1})  # a whole head still runs
    assert not torch.isnan(cell(state=states, **tensors).y).any()


def test_a_model_split_of_a_cell_the_split_kernels_do_not_cover_falls_back_to_the_whole_head(monkeypatch):
    cell = rnnc.compile(_random_cell(random.Random(0)), backend="triton")
    monkeypatch.setattr(cell._triton, "model_params", lambda call: {"SPLIT": 2})  # as the GPU's model might say
    tensors, _ = random_call(cell.plan.ir, B=2, T=2, NH=1, dims={"H": 40}, dtype=torch.float64)
    from rnnc.runtime.arguments import bind

    assert cell._triton.tiles(bind(cell.plan.ir, tensors, None))["SPLIT"] == 1


def test_a_split_that_one_slice_covers_runs_the_whole_head_kernel():
    cell = rnnc.compile("examples/lstm.rnn", backend="triton")
    cell.use_tiling({"SPLIT": 4})
    tensors, _ = random_call(cell.plan.ir, B=2, T=2, NH=1, dims={"H": 16}, dtype=torch.float64)
    from rnnc.runtime.arguments import bind

    assert cell._triton.tiles(bind(cell.plan.ir, tensors, None))["SPLIT"] == 1
