"""The chunked strategy's Triton kernels (interpreter on CPU) against float64 loops of the papers' equations.

Every cell of ``chunked_cells`` (the zoo's six and nine more: linear attention with its normaliser,
stabilised mLSTM, RWKV-6 with its bonus, Mamba-2 with its skip, HGRN2, a square state, RWKV-7,
gated DeltaProduct, KDA): outputs, final states and the gradients of every input, weight and
initial state, float64 to 1e-9 and float32 to 1e-4, T crossing several chunks, odd dims; outputs
and the gradients a kernel owns start as NaN, so anything it fails to write shows. Then: a NaN at
one step reaches no earlier output; extreme log decays stay finite; several value blocks; pinned
tilings; packed variable-length batches; bytes moved at inference.
"""

import math

import pytest
import torch
from chunked_cells import NEW, ZOO, earlier_states, make_call, oracle
from chunked_harness import errors, functional, run_stage, spec_of
from refs.check import rel_err

import rnnc
from rnnc.runtime.triton_chunked import ChunkedStage

pytest.importorskip("triton")
# rows past a sequence's end are computed and never stored: an output like q @ S / (q @ z) is 0 / 0 there
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

CELLS = ZOO + NEW
KEY = "0" * 16  # the stages here are built from hand-written pieces, not a Plan


def _stage(name):
    return ChunkedStage(spec_of(name), KEY)


CASES = [((2, 37, 1, 24, 20), torch.float64, 1e-9), ((1, 100, 1, 24, 48), torch.float32, 1e-4)]


@pytest.mark.parametrize("size,dtype,tol", CASES, ids=["float64-T37", "float32-T100"])
@pytest.mark.parametrize("name", CELLS)
def test_chunked_kernels_match_the_loop(name, size, dtype, tol):
    found = errors(_stage(name), name, size, dtype, seed=size[1])
    worst = max(found, key=found.get)
    assert found[worst] < tol, (worst, found)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_cells_run_on_the_triton_backend(name):
    """Through rnnc.compile: argument binding, the launcher and the kernels, one step and several chunks."""
    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    for T in (1, 21):
        leaves, states, dims = make_call(name, 2, T, 2, 16, 24, torch.float64, seed=T)
        ours = cell(state=states, **leaves)
        assert cell.last_backend == "triton"
        theirs, finals = oracle(name, leaves, states)
        assert rel_err(ours.o, theirs["o"]) < 1e-9
        assert rel_err(ours.state["S"], finals["S"]) < 1e-9


def _poisoned(name: str, step: int):
    leaves, states, dims = make_call(name, 1, 40, 1, 24, 20)
    leaves = {k: v.detach().clone() for k, v in leaves.items()}
    for x in leaves.values():
        if x.dim() >= 3 and x.shape[1] == 40:  # an input (not a weight)
            x[:, step] = float("nan")
    return leaves, {k: v.detach() for k, v in states.items()}, dims


@pytest.mark.parametrize("name", CELLS)
def test_a_nan_reaches_no_earlier_output(name):
    """NaN in every input at step 20 (inside the second 16-step chunk): every earlier output stays finite."""
    leaves, states, dims = _poisoned(name, 20)
    outputs, _ = run_stage(_stage(name), name, leaves, states, dims)
    for key, value in outputs.items():
        assert torch.isfinite(value[:, :20]).all(), f"{key}: a NaN at step 20 reached an earlier output"
        assert torch.isnan(value[:, 20:]).any(), f"{key}: the NaN vanished"


DECAYS = {"gla": "g", "simple_gla": "g", "gated_deltanet": "g", "kda": "g"}


@pytest.mark.parametrize("value", [-5.6, -12.0, -1e4, "reset"])
@pytest.mark.parametrize("name", sorted(DECAYS))
def test_extreme_log_decays_stay_finite_and_exact(name, value):
    """A constant log decay (or -inf at one step) in float32: outputs and gradients finite, outputs within 1e-4."""
    leaves, states, dims = make_call(name, 1, 40, 1, 24, 20)
    leaves = {k: v.detach() for k, v in leaves.items()}
    states = {k: v.detach() for k, v in states.items()}
    key = DECAYS[name]
    if value == "reset":
        leaves[key] = leaves[key].clone()
        leaves[key][:, 21] = -math.inf
    else:
        leaves[key] = torch.full_like(leaves[key], value)
    reference, _ = oracle(name, leaves, states)
    single = {k: v.float().requires_grad_() for k, v in leaves.items()}
    ours, finals = run_stage(_stage(name), name, single, {k: v.float() for k, v in states.items()}, dims)
    grads = torch.autograd.grad(ours["o"].sum() + finals["S"].sum(), [x for k, x in single.items() if k != key])
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(ours["o"]).all(), f"non-finite outputs with log decay {value}"
    assert rel_err(ours["o"], reference["o"]) < 1e-4


@pytest.mark.parametrize("name", ["gla", "gated_deltanet", "la_norm", "mlstm"])
def test_several_value_blocks_add_their_shared_gradients(name):
    """V = 48 in blocks of 16: three programs per head share the key-side pieces (and a vector state)."""
    stage = _stage(name)
    pinned = stage.tiles
    stage.tiles = lambda dims, params=None: pinned(dims, {**(params or {}), "BV": 16})
    assert stage.tiles({"K": 24, "V": 48})["BV"] == 16
    found = errors(stage, name, (2, 19, 1, 24, 48), torch.float64, seed=3)
    worst = max(found, key=found.get)
    assert found[worst] < 1e-9, (worst, found)


def test_a_pinned_tiling_is_used_in_the_interpreter(monkeypatch):
    """Cell.use_tiling reaches the launch: BV = 16 runs two value blocks, CHUNK = 32 two chunks of 32 steps."""
    from rnnc.runtime import triton_chunked

    cell = rnnc.compile("examples/simple_gla.rnn", backend="triton")
    cell.use_tiling({"BV": 16, "CHUNK": 32})
    launched = []
    original = triton_chunked._launch

    def recording(*args):
        grid, sizes, meta, tiles = original(*args)
        launched.append((grid, tiles))
        return grid, sizes, meta, tiles

    monkeypatch.setattr(triton_chunked, "_launch", recording)
    leaves, states, _ = make_call("simple_gla", 1, 40, 1, 16, 32, torch.float64)
    ours = cell(state=states, **leaves)
    grid, tiles = launched[0]
    assert grid[0] == 2 and tiles["BV"] == 16 and tiles["CHUNK"] == 32
    theirs, _ = oracle("simple_gla", leaves, states)
    assert rel_err(ours.o, theirs["o"]) < 1e-9


@pytest.mark.parametrize("name", ["gated_deltanet", "gla", "mlstm"])
def test_packed_sequences_equal_separate_runs(name):
    """seq_starts: lengths 1, 17 and 40 on one time axis give each sequence its own outputs, finals, gradients."""
    lengths = [1, 17, 40]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    stage = _stage(name)
    own = {s.name for s in stage.spec.states}
    per_step = {x.name for x in stage.spec.leaves if x.role == "input"}
    leaves, _, dims = make_call(name, 1, bounds[-1], 2, 16, 16, torch.float64, seed=5)
    _, states, _ = make_call(name, len(lengths), 1, 2, 16, 16, torch.float64, seed=6)
    leaves_in = [*leaves.values(), *states.values()]

    def sequence(n):  # sequence n's own leaves and initial states
        mine = {k: v[:, bounds[n] : bounds[n + 1]] if k in per_step else v for k, v in leaves.items()}
        return mine, {k: v[n : n + 1] for k, v in states.items()}

    separate = [run_stage(stage, name, *sequence(n), dims) for n in range(len(lengths))]
    early = [earlier_states(name, *sequence(n)) for n in range(len(lengths))]
    trajectories = {k: torch.cat([e[0][k] for e in early], dim=1) for k in early[0][0]}
    starts = torch.tensor(bounds, dtype=torch.int64)
    initial = {k: v for k, v in states.items() if k in own}
    outputs, finals = stage({**leaves, **trajectories}, initial, dims, seq_starts=starts)
    for out, value in outputs.items():
        for n, (theirs, _) in enumerate(separate):
            assert rel_err(value[:, bounds[n] : bounds[n + 1]], theirs[out]) < 1e-12, (out, n)
    for state in own:
        for n, (_, theirs) in enumerate(separate):
            assert rel_err(finals[state][n : n + 1], theirs[state]) < 1e-12, (state, n)
    finals.update({k: torch.cat([e[1][k] for e in early], dim=0) for k in early[0][1]})
    packed_total = separate_total = 0
    for n, (theirs_out, theirs_fin) in enumerate(separate):
        mine_out = {k: v[:, bounds[n] : bounds[n + 1]] for k, v in outputs.items()}
        packed_total = packed_total + _weighted(mine_out, {k: v[n : n + 1] for k, v in finals.items()}, n)
        separate_total = separate_total + _weighted(theirs_out, theirs_fin, n)
    mine = torch.autograd.grad(packed_total, leaves_in)
    theirs = torch.autograd.grad(separate_total, leaves_in)
    for a, b in zip(mine, theirs):
        assert rel_err(a, b) < 1e-12


def _weighted(outputs: dict, finals: dict, n: int) -> torch.Tensor:
    """A fixed random linear functional of sequence n's outputs and final states."""
    return functional(outputs, finals, 100 + n)


def test_generated_module_is_deterministic_and_readable():
    first = rnnc.compile("examples/gated_deltanet.rnn", backend="triton").source
    second = rnnc.compile(open("examples/gated_deltanet.rnn").read(), backend="triton").source
    assert first == second
    assert "def forward_kernel(" in first and "def backward_kernel(" in first
    assert "s0_lam0 = tl.where(mask_t, u3_g_sc, 0.0)" in first  # the log decay, printed from exp(g)
    assert "_unit_lower_inverse(s0_M, CHUNK)" in first  # the correction's UT form
    assert _stage("rwkv6").source.count("_diagonal_scores(qr0, s0_A0, s0_lam, CHUNK, True)") == 2  # old state


@pytest.mark.parametrize("name", ZOO)
def test_inference_moves_each_byte_about_once(name):
    """Forward at inference: inputs, weights and the initial state read once, the output and the final
    state written once, within 30 % (weights are read once per program; nothing per chunk is stored)."""
    from interpreter_bytes import inference_traffic

    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    leaves, states, _ = make_call(name, 2, 37, 2, 24, 20, torch.float32)
    moved, read, written = inference_traffic(cell, leaves, states)
    assert moved["store"] <= 1.3 * written, (moved, written)
    assert moved["load"] <= 1.3 * read, (moved, read)
    assert moved["load"] >= read and moved["store"] >= written  # the counter sees every byte
