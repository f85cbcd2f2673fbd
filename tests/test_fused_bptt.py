"""The reference's fused BPTT (the default backward of sequential cells with a GEMM in the step).

Against independent references first: torch.nn.LSTM / GRU / RNN and the float64 loops written from
the papers (tests/refs), outputs, final states and the gradients of a random linear functional of
all of them with respect to every input, weight and initial state, fresh random inputs each run,
at T = 1 and T = 37 with dims 24 and 48, in float64 (1e-10) and in float32 (1e-4 against float64);
each call checked to have run through the fused node. Then against the plain autograd loop
(``backend="reference-autograd"``) to 1e-12 on every sequential cell, the generator on every other
cell too (forced, since it is not their default); its structure; where it does not run; and what it
refuses.
"""

from __future__ import annotations

import pytest
import torch
from cells import all_gradients, random_call, rel_err
from conftest import PAPER_CELLS, ZOO
from refs import data, loops, paper_data, paper_loops_vector, third_party
from refs.check import compare, functional_grads, functional_weights

import rnnc
from rnnc.runtime import fused_bptt
from rnnc.runtime.reference import run_dense

FUSED = ["elman", "gated_accumulator", "gru", "ligru", "lmu", "lstm", "lti", "slstm"]  # fusion_pays: the default
SEQUENTIAL_UNFUSED = ["indrnn", "m2rnn", "sru_2018", "tanh_accumulator"]
TIGHT = 1e-12
REF_TOL = 1e-10  # against an independent float64 implementation (other rounding)
FLOAT32_TOL = 1e-4
SIZES = [dict(T=1, big=False), dict(T=37, big=True)]


def _fused_node(out) -> bool:
    return any(type(v.grad_fn).__name__ == "FusedBackpropBackward" for v in out.outputs.values())


def _independent(name: str, big: bool):
    """(make, reference, dims) for a fused cell: the float64 loop of tests/refs (torch.nn's in third_party)."""
    if name in paper_data.SPECS:
        dims = {d: (24 if i == 0 else 48) for i, d in enumerate(paper_data.SPECS[name].dims)} if big else {}
        loop = paper_loops_vector.LOOPS[name]
        return paper_data.make, lambda args, state: loop(**args, **{f"{k}0": v for k, v in state.items()}), dims
    dims = {d: (24 if i == 0 else 48) for i, d in enumerate(data.SPECS[name].dims)} if big else {}
    if dims.keys() == {"H"}:
        dims = {"H": 48}
    return data.make, lambda args, state: loops.run(name, args, state), dims


def _ours(name: str, args: dict, state: dict):
    out = rnnc.compile(f"examples/{name}.rnn", backend="reference")(state=state, **args)
    assert _fused_node(out), f"{name}: the call did not run through the fused BPTT"
    return out.outputs, out.state


@pytest.mark.parametrize("size", SIZES, ids=["T1", "T37-dims24-48"])
@pytest.mark.parametrize("name", FUSED)
def test_fused_matches_the_papers_float64_loops(name, size):
    make, reference, dims = _independent(name, size["big"])
    seed = data.fresh_seed()
    args, state = make(name, B=3, T=size["T"], NH=2, seed=seed, **dims)
    leaves = {**args, **{f"{k}0": v for k, v in state.items()}}
    bad = compare(_ours(name, args, state), reference(args, state), leaves, REF_TOL, seed=seed + 1)
    assert not bad, f"{name} (seed={seed}, {size}, {dims}):\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("T,H", [(1, 24), (37, 48)])
@pytest.mark.parametrize("name", sorted(third_party.TORCH_NN))
def test_fused_matches_torch_nn(name, T, H):
    seed = data.fresh_seed()
    args, state = data.make(name, B=3, T=T, NH=2, H=H, seed=seed)
    leaves = {**args, **{f"{k}0": v for k, v in state.items()}}
    bad = compare(_ours(name, args, state), third_party.TORCH_NN[name](**leaves), leaves, REF_TOL, seed=seed + 1)
    assert not bad, f"{name} vs torch.nn (seed={seed}, T={T}, H={H}):\n  " + "\n  ".join(bad)


# LMU's memory grows over time (to 1e48 at D = 48, T = 37): in float32 the autograd loop itself is
# 1.3e-4 off float64 at its default dims, so float32 proves nothing about the fused backward there
@pytest.mark.parametrize("name", [n for n in FUSED if n != "lmu"])
def test_fused_in_float32_matches_float64_loops(name):
    make, reference, dims = _independent(name, True)
    seed = data.fresh_seed()
    args, state = make(name, B=3, T=37, NH=2, seed=seed, **dims)
    single = {k: v.detach().float().requires_grad_() for k, v in {**args, **state}.items()}
    ours = _ours(name, {k: single[k] for k in args}, {k: single[k] for k in state})
    theirs = reference(args, state)
    for kind, a, b in (("output", ours[0], theirs[0]), ("final state", ours[1], theirs[1])):
        for key in b:
            assert a[key].dtype == torch.float32 and rel_err(a[key], b[key]) < FLOAT32_TOL, (name, seed, kind, key)
    weights = functional_weights(*theirs, seed + 1)
    got = functional_grads(*ours, single, weights)
    want = functional_grads(*theirs, {**args, **state}, weights)
    for key in want:
        assert want[key].norm() > 0, f"{name}: the gradient of {key} is zero, the check would prove nothing"
        assert rel_err(got[key], want[key]) < FLOAT32_TOL, (name, seed, key, rel_err(got[key], want[key]))


def _pair(name: str):
    return (
        rnnc.compile(f"examples/{name}.rnn", backend="reference-autograd"),
        rnnc.compile(f"examples/{name}.rnn", backend="reference"),
    )


def _draw(cell, seed: int, **config):
    torch.manual_seed(seed)
    tensors, states = random_call(cell.plan.ir, positive=("dt", "e"), **config)
    if cell.name == "slstm":  # the normaliser state must start positive
        states["n"] = (states["n"].detach().abs() + 1).requires_grad_()
    return tensors, states


class _Result:
    def __init__(self, outputs, state):
        self.outputs, self.state = outputs, state


def _run(cell, tensors, states, force: bool):
    """The cell's call; forced: the autograd loop itself (on reference-autograd) or the fused BPTT,
    where the strategy's own whole-sequence form runs by default (scan, chunked)."""
    if not force:
        return cell(state=states, **tensors)
    runner = cell._runner
    call = runner.bind(tensors, states)
    if runner.mode == "autograd":
        return _Result(*run_dense(runner, call))
    runner._fused = None
    return _Result(*fused_bptt.run_fused(runner, call))


def _compare(plain, fused, seed: int, force: bool = False, **config) -> None:
    tensors, states = _draw(plain, seed, **config)
    leaves = [*tensors.values(), *states.values()]
    results = []
    for cell, forced in ((plain, force), (fused, force)):
        out = _run(cell, tensors, states, forced)
        finals = {name: out.state[name] for name in states}  # one order: the functional's weights follow it
        results.append((out, all_gradients(out.outputs, finals, leaves, seed)))
    (ours_plain, grads_plain), (ours, grads) = results
    assert _fused_node(ours), "did not fuse"
    where = f"{plain.name}, seed {seed}, {config}"
    for key in ours_plain.outputs:
        assert rel_err(ours.outputs[key], ours_plain.outputs[key]) < TIGHT, (where, key)
    for key in ours_plain.state:
        assert rel_err(ours.state[key], ours_plain.state[key]) < TIGHT, (where, key)
    for name, expected, got in zip([*tensors, *(f"state {s}" for s in states)], grads_plain, grads):
        assert expected is not None and got is not None, (where, name)
        assert expected.norm() > 0, f"{where}: the gradient of {name} is zero, the check would prove nothing"
        assert rel_err(got, expected) < TIGHT, (where, name, rel_err(got, expected))


@pytest.mark.parametrize("name", ["lstm", "gru", "lmu", "slstm", "lru", "gla"])
def test_the_backward_in_pieces_of_time(name, monkeypatch):
    # pieces of 5 steps (the last of 2) and of 1: linearise per piece, its rows time-major
    for span in (5, 1):
        monkeypatch.setattr(fused_bptt, "piece_steps", lambda history, saved, span=span: span)
        _compare(*_pair(name), data.fresh_seed(), force=name not in FUSED, B=3, T=37, NH=2)


def test_the_lists_are_the_sequential_cells_and_the_default():
    sequential = {n for n in ZOO + PAPER_CELLS if _pair(n)[0].strategy == "sequential"}
    assert sequential == set(FUSED) | set(SEQUENTIAL_UNFUSED)
    assert {n for n in sequential if _pair(n)[1]._runner._fused is not False} == set(FUSED)


@pytest.mark.parametrize("name", FUSED)
def test_fused_matches_the_autograd_loop_at_one_step(name):
    _compare(*_pair(name), data.fresh_seed(), B=3, T=1, NH=2)


@pytest.mark.parametrize("name", FUSED)
def test_fused_matches_the_autograd_loop_at_37_steps_and_odd_dims(name):
    plain, fused = _pair(name)
    dims = {d: (24 if i == 0 else 48) for i, d in enumerate(plain.plan.ir.dims)}
    _compare(plain, fused, data.fresh_seed(), B=3, T=37, NH=2, dims=dims, scale=0.3)


@pytest.mark.parametrize("name", [n for n in ZOO + PAPER_CELLS if n not in FUSED])
def test_the_generator_is_right_where_it_is_not_the_default(name):
    _compare(*_pair(name), data.fresh_seed(), force=True, B=2, T=5, NH=2)


def test_lstm_backward_has_one_gemm_per_step_and_one_for_the_weight():
    cell = rnnc.compile("examples/lstm.rnn", backend="reference")
    text = cell._runner.fused_text if cell._runner.fused is not None else ""
    forward = text[text.index("def forward(") : text.index("def linearise(")]
    loop = text[text.index("def backward(") : text.index("def reverse_all(")]
    after = text[text.index("def reverse_all(") :]
    assert forward.count("gemm.per_head_gemm_add(") == 1 and "in_x" not in forward  # x + b inside the GEMM
    assert loop.count("gemm.per_head_gemm_backward(") == 1 and "weight_cotangent" not in loop
    assert after.count("gemm.weight_cotangent(") == 1  # R's cotangent: one GEMM over all B * T rows
    # the GEMM result's cotangent kept by the backward, every step: nothing computed again for x, R, b
    assert "kept0[t] = " in loop and "ALL_CARRIES = ()" in text and "join_parts" not in after
    assert "autograd" not in text.replace("no autograd", "")


def test_where_it_does_not_run():
    cell = rnnc.compile("examples/lstm.rnn", backend="reference")
    tensors, states = _draw(cell, data.fresh_seed(), B=2, T=4, NH=1)
    with torch.no_grad():
        assert cell(state=states, **tensors).h.grad_fn is None
    frozen = {k: v.detach() for k, v in tensors.items()}
    assert cell(state={k: v.detach() for k, v in states.items()}, **frozen).h.grad_fn is None
    for name in SEQUENTIAL_UNFUSED:
        other = rnnc.compile(f"examples/{name}.rnn", backend="reference")
        out = other(state=_draw(other, 1, B=2, T=3, NH=1)[1], **_draw(other, 1, B=2, T=3, NH=1)[0])
        assert all(type(v.grad_fn).__name__ != "FusedBackpropBackward" for v in out.outputs.values())


def test_only_the_initial_state_needs_a_gradient():
    plain, fused = _pair("gru")
    tensors, states = _draw(plain, data.fresh_seed(), B=3, T=6, NH=2)
    tensors = {k: v.detach() for k, v in tensors.items()}
    grads = []
    for cell in (plain, fused):
        out = cell(state=states, **tensors)
        grads.append(torch.autograd.grad((out.h**2).sum() + out.state["h"].sum(), states["h"]))
    assert rel_err(grads[1][0], grads[0][0]) < TIGHT


def test_retain_graph_backward_twice_and_outputs_changed_in_place():
    plain, cell = _pair("lstm")
    tensors, states = _draw(cell, data.fresh_seed(), B=2, T=5, NH=1)
    out = cell(state=states, **tensors)
    loss = (out.h**2).sum()
    first = torch.autograd.grad(loss, tensors["R"], retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad(loss, tensors["R"])[0], first)
    leaves = [*tensors.values(), *states.values()]
    grads = []
    for each in (plain, cell):  # the tape holds no tensor the caller gets: changing them changes nothing
        out = each(state=states, **tensors)
        out.h.mul_(2)
        out.state["c"].add_(1)
        grads.append(torch.autograd.grad((out.h**2).sum() + (out.state["c"] ** 2).sum(), leaves))
    assert all(rel_err(a, b) < TIGHT for a, b in zip(*grads))


def test_a_second_derivative_is_refused_not_wrong():
    cell = rnnc.compile("examples/elman.rnn", backend="reference")
    tensors, states = _draw(cell, data.fresh_seed(), B=2, T=3, NH=1)
    (g,) = torch.autograd.grad((cell(state=states, **tensors).h ** 2).sum(), tensors["x"], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
    plain = rnnc.compile("examples/elman.rnn", backend="reference-autograd")  # has second derivatives
    (g,) = torch.autograd.grad((plain(state=states, **tensors).h ** 2).sum(), tensors["x"], create_graph=True)
    g.sum().backward()


def test_the_compiled_custom_op_backward_is_the_fused_one(monkeypatch):
    cell = rnnc.compile("examples/lstm.rnn", backend="reference")
    tensors, states = _draw(cell, data.fresh_seed(), B=2, T=4, NH=1)
    calls = []
    original = fused_bptt.fused_gradients
    monkeypatch.setattr(fused_bptt, "fused_gradients", lambda *a: calls.append(1) or original(*a))

    def loss(tensors, states):
        out = cell(state=states, **tensors)
        return (out.h.double() ** 2).sum() + out.state["c"].double().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves = [*tensors.values(), *states.values()]
    grads = torch.autograd.grad(compiled(tensors, states), leaves)
    eager = torch.autograd.grad(loss(tensors, states), leaves)
    assert calls and all(rel_err(g, e) < 1e-10 for g, e in zip(grads, eager))
