"""Random tensors for any cell, in rnnc's layout, for tests that need no domain knowledge."""

import sympy
import torch
from refs.check import rel_err  # noqa: F401 - one definition of relative error for all tests

from rnnc.compiler.ir import IR


def sizes(ir: IR, shape, dims: dict[str, int]) -> list[int]:
    """Concrete sizes of a declared shape."""
    subs = {sympy.Symbol(d, positive=True, integer=True): dims[d] for d in ir.dims}
    return [int(sympy.sympify(s).subs(subs)) for s in shape]


def random_call(ir: IR, B=2, T=5, NH=2, dims=None, dtype=torch.float64, scale=0.5, positive=()):
    """(tensors, states): fresh random inputs, weights and initial states, requiring grad."""
    dims = dims or {d: 3 + i for i, d in enumerate(ir.dims)}

    def make(*shape, name):
        x = scale * torch.randn(*shape, dtype=dtype)
        if name in positive:
            x = x.abs() + 0.5
        return x.requires_grad_()

    tensors = {d.name: make(B, T, NH, *sizes(ir, d.shape, dims), name=d.name) for d in ir.inputs}
    tensors.update({d.name: make(NH, *sizes(ir, d.shape, dims), name=d.name) for d in ir.weights})
    states = {d.name: make(B, NH, *sizes(ir, d.shape, dims), name=d.name) for d in ir.states}
    return tensors, states


def all_gradients(outputs: dict, finals: dict, leaves: list[torch.Tensor], seed: int = 0):
    """Gradients of a fixed random linear functional of all outputs and final states."""
    gen = torch.Generator().manual_seed(seed)
    total = 0
    for value in [*outputs.values(), *finals.values()]:
        weights = torch.randn(value.shape, generator=gen, dtype=torch.float64).to(value.dtype)
        total = total + (value * weights).sum()
    return torch.autograd.grad(total, leaves, allow_unused=True)


def assert_agree(ours, theirs, leaves: list[torch.Tensor], tol: float, grad_tol: float | None = None) -> None:
    """Two runs of a cell (``Output``s) agree: every output and final state, and the gradients of a
    fixed random functional of all of them with respect to ``leaves``, by relative error."""
    for key in theirs.outputs:
        assert rel_err(ours.outputs[key], theirs.outputs[key]) < tol, key
    for key in theirs.state:
        assert rel_err(ours.state[key], theirs.state[key]) < tol, f"final {key}"
    mine = all_gradients(ours.outputs, ours.state, leaves)
    want = all_gradients(theirs.outputs, theirs.state, leaves)
    for leaf, a, b in zip(leaves, mine, want):
        a = torch.zeros_like(leaf) if a is None else a
        b = torch.zeros_like(leaf) if b is None else b
        assert rel_err(a, b) < (grad_tol or tol)
