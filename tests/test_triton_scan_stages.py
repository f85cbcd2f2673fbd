"""Scan kernels as one stage of a cell (the per-step values a later stage reads, and their cotangents),
and on packed variable-length batches (cu_seqlens), in the interpreter.
"""

import pytest
import torch
from cells import random_call
from interpreter_scan import fast_scan
from refs.check import rel_err
from scan_cells import make, source

import rnnc
from rnnc.compiler import analyse_source
from rnnc.runtime.arguments import bind

pytest.importorskip("triton")

from rnnc.runtime.triton_scan import ScanKernels, ScanStageKernels, previous_values  # noqa: E402


@pytest.fixture(autouse=True)
def _fast_interpreter_scan():
    with fast_scan():
        yield


def _mlstm_stabiliser(i, f, m0):
    """The stabiliser of xLSTM's mLSTM (Beck et al. 2024, App. A.2): m_t = max(log sigmoid(f_t) + m_{t-1}, i_t)."""
    m, ms = m0, []
    for t in range(i.shape[1]):
        m = torch.maximum(torch.nn.functional.logsigmoid(f[:, t]) + m, i[:, t])
        ms.append(m)
    return torch.stack(ms, dim=1), m


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_the_stage_before_mlstms_chunked_stage_carries_m_per_step(dtype, tol):
    plan = analyse_source(open("examples/mlstm.rnn").read())
    stage = plan.stages[0]
    assert stage.strategy == "scan" and stage.carries == ("m",)
    kernels = ScanStageKernels(plan, stage)
    tensors, states = random_call(plan.ir, B=2, T=19, NH=3, dims={"K": 4, "V": 3}, dtype=dtype)
    call = bind(plan.ir, tensors, {"m": states["m"]})
    outputs, carried, finals = kernels.run(call, kernels.flat_arguments(call))
    assert outputs == {} and set(carried) == {"m"} and set(finals) == {"m"}
    assert carried["m"].shape == (2, 19, 3) and carried["m"].dtype == dtype
    leaves = [tensors["i"], tensors["f"], states["m"]]
    double = [x.detach().double().requires_grad_() for x in leaves]
    want_traj, want_final = _mlstm_stabiliser(*double)
    assert rel_err(carried["m"], want_traj) < tol and rel_err(finals["m"], want_final) < tol
    old = previous_values(carried["m"], states["m"])
    assert rel_err(old[:, 1:], want_traj[:, :-1]) < tol and torch.equal(old[:, 0], states["m"].to(old.dtype))
    # cotangents reach i, f and m0 through the trajectory (what a chunked stage hands back), its
    # previous values and the final state
    w = [torch.randn(t.shape, dtype=torch.float64) for t in (want_traj, want_traj, want_final)]
    mine = (carried["m"] * w[0]).sum() + (old * w[1]).sum() + (finals["m"] * w[2]).sum()
    theirs = (want_traj * w[0]).sum() + (previous_values(want_traj, double[2]) * w[1]).sum() + (want_final * w[2]).sum()
    for a, b in zip(torch.autograd.grad(mine, leaves), torch.autograd.grad(theirs, double)):
        assert rel_err(a, b) < tol


def test_a_stage_of_a_chunked_cell_refuses_to_run_as_the_whole_cell():
    plan = analyse_source(open("examples/mlstm.rnn").read())
    with pytest.raises(rnnc.BackendError, match="its strategy is chunked"):
        ScanKernels(plan)
    with pytest.raises(rnnc.BackendError, match="the stage runs chunked"):
        ScanStageKernels(plan, plan.stages[1])


@pytest.mark.parametrize("cell", ["aaren", "hgrn", "lru", "mamba", "rwkv4"])
def test_packed_sequences_run_as_if_alone(cell):
    """Lengths 1, 17, 0 and 9 packed into one batch equal each sequence run alone from its own
    initial state (the kernels read cu_seqlens), forward and every gradient; no value crosses."""
    lengths = [1, 17, 0, 9]
    triton_cell = rnnc.compile(source(cell), backend="triton")
    ir = triton_cell.plan.ir
    dims = {"D": 5, "N": 3, "K": 4, "V": 3, "H": 5}
    tensors, states = make(cell, ir, B=1, T=sum(lengths), NH=2, dims=dims, dtype=torch.float64)
    initial = {
        k: torch.randn(len(lengths), *v.shape[1:], dtype=torch.float64, requires_grad=True) for k, v in states.items()
    }
    seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    kernels = ScanKernels(triton_cell.plan)
    packed_out, packed_fin = kernels({k: v for k, v in tensors.items()}, initial, cu_seqlens=seqlens)
    inputs = {d.name for d in ir.inputs}
    alone_out, alone_fin = {k: [] for k in packed_out}, {k: [] for k in packed_fin}
    for n, (start, end) in enumerate(zip(seqlens[:-1].tolist(), seqlens[1:].tolist())):
        piece = {k: (v[:, start:end] if k in inputs else v) for k, v in tensors.items()}
        own = {k: v[n : n + 1] for k, v in initial.items()}
        if end == start:  # nothing to run: the final state is the initial one
            for k in alone_fin:
                alone_fin[k].append(own[k])
            continue
        out, fin = kernels(piece, own)
        for k in alone_out:
            alone_out[k].append(out[k])
        for k in alone_fin:
            alone_fin[k].append(fin[k])
    alone_out = {k: torch.cat(v, dim=1) for k, v in alone_out.items()}
    alone_fin = {k: torch.cat(v, dim=0) for k, v in alone_fin.items()}
    for k in packed_out:
        assert not torch.isnan(packed_out[k]).any()
        assert rel_err(packed_out[k], alone_out[k]) < 1e-12, k
    for k in packed_fin:
        assert rel_err(packed_fin[k], alone_fin[k]) < 1e-12, k
    leaves = [*tensors.values(), *initial.values()]
    gen = torch.Generator().manual_seed(0)
    w = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in {**packed_out, **packed_fin}.items()}

    def loss(outputs, finals):
        return sum((w[k] * v).sum() for k, v in {**outputs, **finals}.items())

    mine = torch.autograd.grad(loss(packed_out, packed_fin), leaves, allow_unused=True)
    theirs = torch.autograd.grad(loss(alone_out, alone_fin), leaves, allow_unused=True)
    for leaf, a, b in zip(leaves, mine, theirs):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        assert rel_err(a, b) < 1e-12


def test_the_kernels_check_the_offsets_they_trust():
    kernels = ScanKernels(analyse_source(open("examples/hgrn.rnn").read()))
    x = torch.zeros(1, 6, 1, 3)
    with pytest.raises(
        ValueError, match="needs to end at the packed inputs' length T = 6 \\(their axis 1\\), ends at 5"
    ):
        kernels({"x": x, "g": x}, None, cu_seqlens=torch.tensor([0, 2, 5]))


@pytest.mark.parametrize("cell", ["mamba", "longhorn", "rwkv4"])
def test_a_pinned_tiling_splits_the_parallel_axis_over_programs(cell):
    """With BLOCK_C pinned small, programs split the parallel axis (D); inputs that span it are
    stored, the others (Mamba's B and C, Longhorn's k and q) are added atomically across programs."""
    text = source(cell)
    triton_cell, reference = rnnc.compile(text, backend="triton"), rnnc.compile(text, backend="reference")
    triton_cell.use_tiling({"BLOCK_C": 4, "BLOCK_T": 8})
    ir = triton_cell.plan.ir
    tensors, states = make(cell, ir, B=2, T=19, NH=2, dims={"D": 7, "N": 3}, dtype=torch.float64)
    module = triton_cell._triton.module
    assert module.parallel is not None and str(module.axes[module.parallel].dim) == "D"
    programs = triton_cell._triton._launch(bind(ir, tensors, states))[2]
    assert programs == (7 if cell != "rwkv4" else 2)
    leaves = [*tensors.values(), *states.values()]
    ours, theirs = triton_cell(state=states, **tensors), reference(state=states, **tensors)
    for k in theirs.outputs:
        assert rel_err(ours.outputs[k], theirs.outputs[k]) < 1e-9, k
    w = {k: torch.randn(v.shape, dtype=torch.float64) for k, v in {**theirs.outputs, **theirs.state}.items()}

    def loss(out):
        return sum((w[k] * v).sum() for k, v in {**out.outputs, **out.state}.items())

    mine = torch.autograd.grad(loss(ours), leaves, allow_unused=True)
    want = torch.autograd.grad(loss(theirs), leaves, allow_unused=True)
    for leaf, a, b in zip(leaves, mine, want):
        assert rel_err(torch.zeros_like(leaf) if a is None else a, torch.zeros_like(leaf) if b is None else b) < 1e-9
