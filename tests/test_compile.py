"""``torch.compile(fullgraph=True)`` of functions and modules that call cells and layers.

Each compiled call is one ``rnnc::run`` custom op (its backward ``rnnc::run_backward``): Dynamo
must find one graph and no break, the compiled forward and gradients must equal eager ones, and
with ``dynamic=True`` a new sequence length must not compile again. The Triton backend runs in the
interpreter here. Most tests use the ``aot_eager`` backend (it runs the fake implementations, the
autograd registration and the custom ops exactly as inductor does, without generating C++);
two use inductor itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cells import random_call
from refs.check import rel_err

import rnnc
import rnnc.nn


def _loss(out) -> torch.Tensor:
    total = sum((v.double() ** 2).sum() for v in out.outputs.values())
    return total + sum(v.double().sum() for v in out.state.values())


def _cell_function(cell):
    def run(tensors, states, cu_seqlens=None):
        return _loss(cell(**tensors, state=states, cu_seqlens=cu_seqlens))

    return run


def _graphs(fn, *args) -> tuple[int, int]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    return explained.graph_count, explained.graph_break_count


def _agree(fn, compiled, make, lengths, tol):
    """Compiled and eager agree for every sequence length, and nothing compiles twice."""
    torch._dynamo.utils.counters.clear()
    for T in lengths:
        tensors, states = make(T)
        leaves = [*tensors.values(), *states.values()]
        eager = fn(tensors, states)
        eager_grads = torch.autograd.grad(eager, leaves)
        ours = compiled(tensors, states)
        grads = torch.autograd.grad(ours, leaves)
        assert rel_err(ours, eager) < tol
        for g, e in zip(grads, eager_grads):
            assert rel_err(g, e) < tol
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("name", ["lstm", "gla", "mamba"])
def test_compiled_reference_cell_equals_eager_in_one_graph(name):
    cell = rnnc.compile(f"examples/{name}.rnn", backend="reference")
    ir = cell.plan.ir

    def make(T):
        return random_call(ir, B=2, T=T, NH=2, dims={d: 3 for d in ir.dims}, positive=("dt",))

    fn = _cell_function(cell)
    assert _graphs(fn, *make(5)) == (1, 0)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    _agree(fn, compiled, make, (5, 8, 11), 1e-10)


@pytest.mark.parametrize("name", ["lstm", "hgrn", "gla"])
def test_compiled_triton_cell_equals_eager_in_one_graph(name):
    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    ir = cell.plan.ir

    def make(T):
        return random_call(ir, B=2, T=T, NH=1, dims={d: 16 for d in ir.dims}, dtype=torch.float32)

    fn = _cell_function(cell)
    assert _graphs(fn, *make(5)) == (1, 0)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    _agree(fn, compiled, make, (5, 7), 1e-6)  # no T equal to another size: Dynamo would duck-size them


def test_compiled_packed_call_equals_eager():
    cell = rnnc.compile("examples/lstm.rnn", backend="reference")
    fn = _cell_function(cell)
    x = torch.randn(1, 12, 1, 4, 3, dtype=torch.float64, requires_grad=True)
    R = (0.5 * torch.randn(1, 4, 3, 3, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(1, 4, 3, dtype=torch.float64, requires_grad=True)
    cu = torch.tensor([0, 1, 5, 12])
    tensors = {"x": x, "R": R, "b": b}
    assert _graphs(fn, tensors, {}, cu) == (1, 0)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager, ours = fn(tensors, {}, cu), compiled(tensors, {}, cu)
    assert rel_err(ours, eager) < 1e-10
    for g, e in zip(torch.autograd.grad(ours, [x, R]), torch.autograd.grad(eager, [x, R])):
        assert rel_err(g, e) < 1e-10


def test_compiled_layer_with_inductor_equals_eager():
    layer = rnnc.nn.Layer(
        "examples/gla.rnn",
        d_model=8,
        num_heads=2,
        dims={"K": 4, "V": 4},
        backend="reference",
        activations={"g": F.logsigmoid},
    ).double()

    def fn(x):
        y, state = layer(x)
        return (y**2).sum() + state["S"].sum()

    x = torch.randn(2, 6, 8, dtype=torch.float64)
    assert _graphs(fn, x) == (1, 0)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    params = list(layer.parameters())
    torch._dynamo.utils.counters.clear()
    for T in (6, 9):
        x = torch.randn(2, T, 8, dtype=torch.float64)
        eager = fn(x)
        eager_grads = torch.autograd.grad(eager, params)
        ours = compiled(x)
        assert rel_err(ours, eager) < 1e-10
        for g, e in zip(torch.autograd.grad(ours, params), eager_grads):
            assert rel_err(g, e) < 1e-10
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_compiled_step_with_inductor_equals_eager():
    cell = rnnc.compile("examples/lstm.rnn", backend="reference")
    x = torch.randn(3, 2, 4, 5)
    R, b = 0.3 * torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5)
    state = {"h": torch.randn(3, 2, 5), "c": torch.randn(3, 2, 5)}

    def fn(x, state):
        out = cell.step(x=x, R=R, b=b, state=state)
        return out.h, out.state["c"]

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    for ours, eager in zip(compiled(x, state), fn(x, state)):
        assert rel_err(ours, eager) < 1e-6


def test_compiled_packed_call_on_triton_equals_eager():
    """Packed inputs on kernels that do not read cu_seqlens: inside the op, one sequence at a time."""
    cell = rnnc.compile("examples/hgrn.rnn", backend="triton")
    fn = _cell_function(cell)
    x = torch.randn(1, 9, 1, 16, requires_grad=True)
    g = torch.nn.functional.logsigmoid(torch.randn(1, 9, 1, 16)).requires_grad_()
    cu = torch.tensor([0, 1, 4, 9], dtype=torch.int32)
    tensors = {"x": x, "g": g}
    assert _graphs(fn, tensors, {}, cu) == (1, 0)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager, ours = fn(tensors, {}, cu), compiled(tensors, {}, cu)
    assert rel_err(ours, eager) < 1e-6
    for a, b in zip(torch.autograd.grad(ours, [x, g]), torch.autograd.grad(eager, [x, g])):
        assert rel_err(a, b) < 1e-6
