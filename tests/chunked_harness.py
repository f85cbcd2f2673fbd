"""Running a chunked stage (PyTorch or Triton) on a cell of ``chunked_cells`` and comparing it with the float64 loop."""

from __future__ import annotations

import torch
from chunked_cells import earlier_states, ir_of, make_call, oracle, pieces
from refs.check import rel_err

from rnnc.templates.chunked_spec import build_spec


def spec_of(name: str):
    """The chunked spec of a cell, from its hand-built pieces."""
    states, outputs = pieces(name)
    return build_spec(ir_of(name), states, outputs)


def run_stage(stage, name: str, leaves: dict, states: dict, dims: dict):
    """(outputs, finals) of the whole cell: earlier components in PyTorch, then the chunked stage."""
    early, early_finals = earlier_states(name, leaves, states)
    own = {s.name for s in stage.spec.states}
    outputs, finals = stage({**leaves, **early}, {k: v for k, v in states.items() if k in own}, dims)
    return outputs, {**finals, **early_finals}


def functional(outputs: dict, finals: dict, seed: int) -> torch.Tensor:
    """A fixed random linear functional of every output and final state."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for key in sorted(outputs):
        total = (
            total + (outputs[key].double() * torch.randn(outputs[key].shape, generator=gen, dtype=torch.float64)).sum()
        )
    for key in sorted(finals):
        total = (
            total + (finals[key].double() * torch.randn(finals[key].shape, generator=gen, dtype=torch.float64)).sum()
        )
    return total


def errors(stage, name: str, size: tuple, dtype: torch.dtype, seed: int = 0) -> dict[str, float]:
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
    outputs, finals = run_stage(stage, name, ours_leaves, ours_states, dims)
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
