"""Running a chunked cell (PyTorch or Triton) from ``chunked_cells`` and comparing it with the float64 loop."""

from __future__ import annotations

import torch
from chunked_cells import make_call, oracle, plan_of
from refs.check import rel_err

from rnnc.runtime.chunked_torch import ChunkedCell
from rnnc.runtime.triton_chunked import ChunkedKernels


def torch_cell(name: str, chunk: int = 64):
    """The cell in PyTorch: (leaves, states, dims) -> (outputs, finals)."""
    return ChunkedCell(plan_of(name), chunk)


def triton_cell(name: str):
    """The cell's Triton kernels: (leaves, states, dims) -> (outputs, finals)."""
    kernels = ChunkedKernels(plan_of(name))

    def run(leaves, states, dims, seq_starts=None):
        return kernels(leaves, states, seq_starts)

    run.kernels = kernels
    return run


def functional(outputs: dict, finals: dict, seed: int) -> torch.Tensor:
    """A fixed random linear functional of every output and final state."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for value in [*(outputs[k] for k in sorted(outputs)), *(finals[k] for k in sorted(finals))]:
        total = total + (value.double() * torch.randn(value.shape, generator=gen, dtype=torch.float64)).sum()
    return total


def errors(run, name: str, size: tuple, dtype: torch.dtype, seed: int = 0) -> dict[str, float]:
    """Relative errors (by norm) of every output, final state and gradient against the float64 loop.

    ``size`` is (B, T, NH, key, value). The float32 run sees the float64 inputs rounded; the loop
    runs on those rounded values in float64.
    """
    B, T, NH, key, value = size
    leaves, states, dims = make_call(name, B, T, NH, key, value, torch.float64, seed)
    ours_leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in leaves.items()}
    ours_states = {k: v.detach().to(dtype).requires_grad_() for k, v in states.items()}
    ref_leaves = {k: v.detach().to(dtype).double().requires_grad_() for k, v in leaves.items()}
    ref_states = {k: v.detach().to(dtype).double().requires_grad_() for k, v in states.items()}
    outputs, finals = run(ours_leaves, ours_states, dims)
    ref_outputs, ref_finals = oracle(name, ref_leaves, ref_states)
    found = {}
    for key_ in ref_outputs:
        assert outputs[key_].dtype == dtype, (key_, outputs[key_].dtype)
        found[key_] = rel_err(outputs[key_], ref_outputs[key_])
    for key_ in ref_finals:
        found[f"final {key_}"] = rel_err(finals[key_], ref_finals[key_])
    mine = torch.autograd.grad(
        functional(outputs, finals, seed), [*ours_leaves.values(), *ours_states.values()], allow_unused=True
    )
    theirs = torch.autograd.grad(
        functional(ref_outputs, ref_finals, seed), [*ref_leaves.values(), *ref_states.values()], allow_unused=True
    )
    labels = [*(f"d{k}" for k in leaves), *(f"d initial {k}" for k in states)]
    for label, a, b in zip(labels, mine, theirs):
        assert a is not None, f"{label}: no gradient"
        assert torch.isfinite(a).all(), f"{label}: non-finite gradient"
        found[label] = rel_err(a, b)
    return found
