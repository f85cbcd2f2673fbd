"""The chunked strategy's Triton kernels (interpreter on CPU) against float64 loops of the papers' equations.

Every cell of ``chunked_cells`` (the zoo's six and nine more: linear attention with its normaliser,
stabilised mLSTM, RWKV-6 with its bonus, Mamba-2 with its skip, HGRN2, a square state, RWKV-7,
gated DeltaProduct, KDA): outputs, final states and the gradients of every input, weight and
initial state, float64 to 1e-9 and float32 to 1e-4, T crossing several chunks, odd dims; outputs
and the gradients a kernel owns start as NaN, so anything it fails to write shows. Then: a NaN at
one step reaches no earlier output; extreme log decays stay finite; several value blocks; pinned
tilings; packed variable-length batches; bytes moved at inference.
"""

import pytest
import torch
from chunked_cells import NEW, ZOO, make_call, oracle, poisoned, with_log_decay
from chunked_harness import errors, functional, triton_cell
from refs.check import rel_err

import rnnc

pytest.importorskip("triton")
# rows past a sequence's end are computed and never stored: an output like q @ S / (q @ z) is 0 / 0 there
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

CELLS = ZOO + NEW


CASES = [((2, 37, 1, 24, 20), torch.float64, 1e-9), ((1, 100, 1, 24, 48), torch.float32, 1e-4)]


@pytest.mark.parametrize("size,dtype,tol", CASES, ids=["float64-T37", "float32-T100"])
@pytest.mark.parametrize("name", CELLS)
def test_chunked_kernels_match_the_loop(name, size, dtype, tol):
    found = errors(triton_cell(name), name, size, dtype, seed=size[1])
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


@pytest.mark.parametrize("name", CELLS)
def test_a_nan_reaches_no_earlier_output(name):
    """NaN in every input at step 20 (inside the second 16-step chunk): every earlier output stays finite."""
    leaves, states, dims = poisoned(name, 20)
    outputs, _ = triton_cell(name)(leaves, states, dims)
    for key, value in outputs.items():
        assert torch.isfinite(value[:, :20]).all(), f"{key}: a NaN at step 20 reached an earlier output"
        assert torch.isnan(value[:, 20:]).any(), f"{key}: the NaN vanished"


DECAYS = {"gla": "g", "simple_gla": "g", "gated_deltanet": "g", "kda": "g"}


@pytest.mark.parametrize("value", [-5.6, -12.0, -1e4, "reset"])
@pytest.mark.parametrize("name", sorted(DECAYS))
def test_extreme_log_decays_stay_finite_and_exact(name, value):
    """A constant log decay (or -inf at one step) in float32: outputs and gradients finite, outputs within 1e-4."""
    key = DECAYS[name]
    leaves, states, dims = with_log_decay(name, key, value, B=1, T=40, reset=21)
    reference, _ = oracle(name, leaves, states)
    single = {k: v.float().requires_grad_() for k, v in leaves.items()}
    ours, finals = triton_cell(name)(single, {k: v.float() for k, v in states.items()}, dims)
    grads = torch.autograd.grad(ours["o"].sum() + finals["S"].sum(), [x for k, x in single.items() if k != key])
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(ours["o"]).all(), f"non-finite outputs with log decay {value}"
    assert rel_err(ours["o"], reference["o"]) < 1e-4


@pytest.mark.parametrize("name", ["gla", "gated_deltanet", "la_norm", "mlstm"])
def test_several_value_blocks_add_their_shared_gradients(name):
    """V = 48 in blocks of 16: three programs per head share the key-side pieces (and a vector state)."""
    run = triton_cell(name)
    run.kernels.pinned = {"BV": 16}
    found = errors(run, name, (2, 19, 1, 24, 48), torch.float64, seed=3)
    worst = max(found, key=found.get)
    assert found[worst] < 1e-9, (worst, found)


def test_a_pinned_tiling_is_used_in_the_interpreter(monkeypatch):
    """Cell.use_tiling reaches the launch: BV = 16 runs two value blocks, CHUNK = 32 two chunks of 32 steps."""
    from rnnc.runtime.triton_chunked import ChunkedStage

    cell = rnnc.compile("examples/simple_gla.rnn", backend="triton")
    cell.use_tiling({"BV": 16, "CHUNK": 32})
    launched = []
    original = ChunkedStage._launch

    def recording(self, *args):
        grid, sizes, meta, tiles = original(self, *args)
        launched.append((grid, tiles))
        return grid, sizes, meta, tiles

    monkeypatch.setattr(ChunkedStage, "_launch", recording)
    leaves, states, _ = make_call("simple_gla", 1, 40, 1, 16, 32, torch.float64)
    ours = cell(state=states, **leaves)
    grid, tiles = launched[0]
    assert grid[0] == 2 and tiles["BV"] == 16 and tiles["CHUNK"] == 32
    theirs, _ = oracle("simple_gla", leaves, states)
    assert rel_err(ours.o, theirs["o"]) < 1e-9


@pytest.mark.parametrize("name", ["gla", "simple_gla", "rwkv6", "mlstm", "gated_deltanet", "kda"])
def test_backward_with_its_products_transposed_is_exact(name):
    """ALIGN (the launcher's choice before sm_90: backward's products across the orientation of its last one
    computed as their transposes) is exact: pinned here, seen by the launch, every gradient matches the loop."""
    run = triton_cell(name)
    run.kernels.pinned = {"ALIGN": True}
    module = run.kernels.stage.kernels
    real, seen = module.backward_kernel, []

    class Recording:
        def __getitem__(self, grid):
            def launch(*args, **meta):
                seen.append(meta["ALIGN"])
                return real[grid](*args, **meta)

            return launch

    module.backward_kernel = Recording()
    try:
        found = errors(run, name, (2, 37, 1, 24, 20), torch.float64, seed=37)
    finally:
        module.backward_kernel = real
    assert seen == [True]
    worst = max(found, key=found.get)
    assert found[worst] < 1e-9, (worst, found)


@pytest.mark.parametrize("name", ["gated_deltanet", "gla", "mlstm"])
def test_packed_sequences_equal_separate_runs(name):
    """seq_starts: lengths 1, 17 and 40 on one time axis give each sequence its own outputs, finals, gradients."""
    lengths = [1, 17, 40]
    bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    run = triton_cell(name)
    per_step = {d.name for d in run.kernels.plan.ir.inputs}
    leaves, _, dims = make_call(name, 1, bounds[-1], 2, 16, 16, torch.float64, seed=5)
    _, states, _ = make_call(name, len(lengths), 1, 2, 16, 16, torch.float64, seed=6)
    leaves_in = [*leaves.values(), *states.values()]

    def sequence(n):  # sequence n's own leaves and initial states
        mine = {k: v[:, bounds[n] : bounds[n + 1]] if k in per_step else v for k, v in leaves.items()}
        return mine, {k: v[n : n + 1] for k, v in states.items()}

    separate = [run(*sequence(n), dims) for n in range(len(lengths))]
    outputs, finals = run(leaves, states, dims, seq_starts=torch.tensor(bounds, dtype=torch.int64))
    packed_total = separate_total = 0
    for n, (theirs_out, theirs_fin) in enumerate(separate):
        mine_out = {k: v[:, bounds[n] : bounds[n + 1]] for k, v in outputs.items()}
        mine_fin = {k: v[n : n + 1] for k, v in finals.items()}
        for key, value in {**mine_out, **mine_fin}.items():
            assert rel_err(value, {**theirs_out, **theirs_fin}[key]) < 1e-12, (key, n)
        packed_total = packed_total + _weighted(mine_out, mine_fin, n)
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
    assert "s0_lam0 = tl.where(mask_t, sc_in_g, 0.0)" in first  # the log decay, printed from exp(g)
    assert "_unit_lower_inverse(s0_M, CHUNK)" in first  # the correction's UT form
    rwkv6 = triton_cell("rwkv6").kernels.source
    assert rwkv6.count("_diagonal_scores(qr0, s0_A0, s0_lam, CHUNK, True)") == 2  # a read of the old state


def _chunked_examples() -> list[str]:
    from conftest import PAPER_CELLS

    from rnnc.compiler import analyse_source

    def strategy(name):
        return analyse_source(open(f"examples/{name}.rnn").read()).strategy

    return ZOO + [name for name in PAPER_CELLS if strategy(name) == "chunked"]


@pytest.mark.parametrize("name", _chunked_examples())
def test_inference_moves_each_byte_about_once(name):
    """Forward at inference: inputs, weights and the initial states read once, the outputs and the final
    states written once, within 30 % (weights are read once per program; nothing per chunk is stored).
    A scan stage before the chunked stage runs in PyTorch, which the counter does not see."""
    from interpreter_bytes import inference_traffic
    from refs import paper_data

    try:
        cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    except rnnc.BackendError as exc:
        pytest.skip(f"no chunked kernel: {str(exc).splitlines()[0]}")
    if name in ZOO:
        leaves, states, _ = make_call(name, 2, 37, 2, 24, 20, torch.float32)
    else:
        leaves, states = paper_data.make(name, B=2, T=37, NH=2, seed=1)
        leaves, states = {k: v.float() for k, v in leaves.items()}, {k: v.float() for k, v in states.items()}
    moved, read, written = inference_traffic(cell, leaves, states)
    assert moved["store"] <= 1.3 * written, (moved, written)
    assert moved["load"] <= 1.3 * read, (moved, read)
    if not any(s.strategy == "scan" for s in cell.plan.stages):
        assert moved["load"] >= read and moved["store"] >= written  # the counter sees every byte
