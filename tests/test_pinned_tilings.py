"""A GPU's tiling, pinned with ``Cell.use_tiling``, runs in the interpreter as it would on that GPU.

For each strategy the tiling model's choice for an H100 at a benchmark shape (bf16) is pinned on
the cell and run on small float32 inputs in the interpreter; the launches are recorded while they
run (``rnnc.runtime.dry_run.recording``) to show that the kernels got the pinned constexprs and
``num_warps``/``num_stages``, and outputs and every gradient are checked against the float64
reference backend to 1e-4.
"""

import pytest
import torch
from cells import all_gradients, random_call, rel_err

import rnnc
from rnnc.runtime.dry_run import recording

pytest.importorskip("triton")

BENCH = {  # (cell, the benchmark shape the GPU tiling is taken at, the small shape run here)
    "scan": ("hgrn", {"B": 8, "T": 2048, "NH": 1, "D": 1024}, {"B": 2, "T": 37, "NH": 1, "D": 24}),
    "chunked": (
        "simple_gla",
        {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128},
        {"B": 1, "T": 37, "NH": 2, "K": 24, "V": 40},
    ),
    "sequential": ("lstm", {"B": 16, "T": 1024, "NH": 12, "H": 64}, {"B": 3, "T": 5, "NH": 2, "H": 24}),
    "sequential-split": ("lstm", {"B": 16, "T": 1024, "NH": 1, "H": 768}, {"B": 3, "T": 4, "NH": 1, "H": 48}),
}


def _run(name, gpu_shape, small, pinned=None):
    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    tiling = rnnc.compile(f"examples/{name}.rnn").tiling(gpu="h100", dtype="bfloat16", **gpu_shape).params
    cell.use_tiling(pinned or tiling)
    ir = cell.plan.ir
    dims = {d: small[d] for d in ir.dims}
    tensors, states = random_call(ir, B=small["B"], T=small["T"], NH=small["NH"], dims=dims, dtype=torch.float32)
    if name == "hgrn":
        tensors["g"] = torch.nn.functional.logsigmoid(tensors["g"].detach()).requires_grad_()
    if name == "simple_gla":
        tensors["g"] = torch.nn.functional.logsigmoid(tensors["g"].detach() + 1.0).requires_grad_()
    with recording(cell._triton, run=True, compiled=False) as launches:
        ours = cell(state=states, **tensors)
        leaves = [*tensors.values(), *states.values()]
        ours_grads = all_gradients(ours.outputs, ours.state, leaves)
    reference = rnnc.compile(f"examples/{name}.rnn", backend="reference")
    doubled = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    doubled_states = {k: v.detach().double().requires_grad_() for k, v in states.items()}
    theirs = reference(state=doubled_states, **doubled)
    theirs_grads = all_gradients(theirs.outputs, theirs.state, [*doubled.values(), *doubled_states.values()])
    for key in ours.outputs:
        assert rel_err(ours.outputs[key], theirs.outputs[key]) < 1e-4, key
    for key in ours.state:
        assert rel_err(ours.state[key], theirs.state[key]) < 1e-4, key
    for mine, ref in zip(ours_grads, theirs_grads):
        assert rel_err(mine, ref) < 1e-4
    return tiling, {launch.name: launch for launch in launches}


def test_scan_runs_the_h100_tiling():
    tiling, launches = _run(*BENCH["scan"])
    for name in ("forward_kernel", "backward_kernel"):
        meta = launches[name].meta
        assert meta["BLOCK_T"] == tiling["BLOCK_T"]
        assert meta["num_warps"] == tiling["num_warps"] and meta["num_stages"] == tiling["num_stages"]
        assert meta["BLOCK_ax0"] == min(32, tiling["BLOCK_C"])  # D = 24 pads to 32 at most


def test_chunked_runs_the_h100_tiling():
    tiling, launches = _run(*BENCH["chunked"])
    for name in ("forward_kernel", "backward_kernel"):
        meta = launches[name].meta
        assert meta["CHUNK"] == max(16, tiling["CHUNK"]) and meta["BK"] == 32  # the key dimension stays whole
        assert meta["BV"] == max(16, min(tiling["BV"], 64))  # V = 40 pads to 64
        assert meta["num_warps"] == tiling["num_warps"] and meta["num_stages"] == tiling["num_stages"]


def test_chunked_runs_a_pinned_tiling_unlike_the_interpreter_default():
    """CHUNK 32 and BV 16: neither is what the interpreter picks by itself (16 and the whole V)."""
    pinned = {"CHUNK": 32, "BV": 16, "num_warps": 8, "num_stages": 2}
    _, launches = _run(*BENCH["chunked"], pinned=pinned)
    meta = launches["forward_kernel"].meta
    assert (meta["CHUNK"], meta["BV"], meta["num_warps"], meta["num_stages"]) == (32, 16, 8, 2)
    assert launches["forward_kernel"].grid[0] == 3  # V = 40 in blocks of 16


def test_sequential_runs_the_h100_tiling():
    tiling, launches = _run(*BENCH["sequential"])
    for name in ("forward_kernel", "backward_kernel"):
        meta = launches[name].meta
        assert meta["BLOCK_B"] == tiling["BLOCK_B"] and meta["num_warps"] == tiling["num_warps"]


def test_sequential_runs_the_h100_split_tiling():
    """The model splits H = 768 over programs on an H100; at H = 48 the split is cut to three slices of 16."""
    tiling, launches = _run(*BENCH["sequential-split"])
    assert tiling["SPLIT"] > 1
    step = launches["forward_step_kernel"]
    assert step.grid[2] == 3 and step.count == 4  # one launch per step
    assert launches["backward_step_kernel"].count == 4
