"""The reference loop's structure: a real module, no sympy on a warm call, the per-strategy hook,
and the phases it sorts values into (checked on its generated text)."""

from __future__ import annotations

import sys

import pytest
import sympy
import torch
from refs import data, loops
from refs.check import compare
from test_zoo import _seed

import rnnc
from rnnc.runtime import reference


def test_generated_loop_is_a_real_module():
    cell = rnnc.compile("examples/lstm.rnn", backend="reference")
    module = cell._runner.loop
    assert module.__name__ in sys.modules and module.__file__.endswith(".py")
    assert "def step(consts, seqs, states, batch, like):" in cell.source


def test_a_warm_call_runs_no_sympy(monkeypatch):
    cell = rnnc.compile("examples/gla.rnn", backend="reference")
    args, state = data.make("gla", B=2, T=3, NH=1)
    cell(**args, state=state)

    def forbidden(*args, **kwargs):
        raise AssertionError("sympy on the call path")

    for name in ("solve", "sympify", "expand", "Poly"):
        monkeypatch.setattr(sympy, name, forbidden)
    cell(**args, state=state)
    cell.step(**{n: args[n][:, 0] for n in ("q", "k", "v", "g")}, state=state)


def test_phases_of_lstm_and_gla():
    lstm = rnnc.compile("examples/lstm.rnn", backend="reference").source
    prologue, step = lstm.split("def step(")
    assert "gemm.weight_matrix(w_R" in prologue.split("def prologue(")[0]  # once per call
    assert "ops.parts(in_x" in prologue and "in_x" not in step  # x + b for all steps at once
    assert step.count("gemm.per_head_gemm(") == 1 and step.count("torch.tanh(") == 2  # c' computed once
    gla = rnnc.compile("examples/gla.rnn", backend="reference").source
    prologue, step = gla.split("def step(")
    assert "torch.exp(" in prologue and "ops.outer(" in step  # outer(k, v) would be T states


def test_a_registered_fast_path_runs_first_and_may_decline(monkeypatch):
    cell = rnnc.compile("examples/hgrn.rnn", backend="reference")
    seed = _seed()
    args, state = data.make("hgrn", B=2, T=5, NH=1, seed=seed)
    seen = []

    def declines(runner, call):
        seen.append(call.T)
        return None

    monkeypatch.setitem(reference.FAST_PATHS, "scan", declines)
    out = cell(**args, state=state)
    assert seen == [5]
    leaves = {**args, **{k + "0": v for k, v in state.items()}}
    assert not compare((out.outputs, out.state), loops.run("hgrn", args, state), leaves, 1e-10, seed=seed)

    def answers(runner, call):
        return {"h": torch.zeros_like(args["x"])}, {"h": torch.zeros_like(state["h"])}

    monkeypatch.setitem(reference.FAST_PATHS, "scan", answers)
    assert torch.count_nonzero(cell(**args, state=state).h) == 0


@pytest.mark.parametrize("name", ["gru", "mamba", "slstm"])
def test_float32_loop_agrees_with_the_float64_paper_loop(name):
    seed = _seed()
    args, state = data.make(name, B=3, T=9, NH=2, seed=seed, dtype=torch.float32)
    out = rnnc.compile(f"examples/{name}.rnn", backend="reference")(**args, state=state)
    wide = {k: v.detach().double().requires_grad_() for k, v in args.items()}
    theirs = loops.run(name, wide, {k: v.detach().double() for k, v in state.items()})
    for key, value in theirs[0].items():
        assert (out.outputs[key].double() - value).norm() <= 1e-4 * value.norm()
