"""The paper cells of examples/ on rnnc's reference backend against float64 loops written from the
papers (tests/refs/paper_loops*.py): outputs, final states, and the gradients of a random linear
functional of all of them with respect to every input, weight and initial state, in both reference
modes (autograd through the generated step, and backpropagation from the sympy derivatives).

Fresh random inputs each run, drawn where the cell needs it from its domain (tests/refs/paper_data.py
says why per cell); set RNNC_REFS_SEED to replay the seed a failure prints.
"""

from __future__ import annotations

import functools
import os
import re

import pytest
import torch
from conftest import EXAMPLES, PAPER_CELLS, ZOO
from refs import paper_data, paper_loops, paper_loops_vector
from refs.check import compare

import rnnc

LOOPS = {**paper_loops.LOOPS, **paper_loops_vector.LOOPS}
TOL = 1e-9


def _seed() -> int:
    env = os.environ.get("RNNC_REFS_SEED")
    return int(env) if env else paper_data.fresh_seed()


@functools.cache
def _compiled(cell: str, backend: str):
    return rnnc.compile(f"examples/{cell}.rnn", backend=backend)


def run_oracle(cell: str, args: dict, state: dict):
    """The paper loop of ``cell`` on ``.rnn``-named arguments and initial states."""
    return LOOPS[cell](**args, **{f"{name}0": value for name, value in state.items()})


def run_reference(cell: str, backend: str, args: dict, state: dict):
    out = _compiled(cell, backend)(state=state, **args)
    return out.outputs, out.state


def _declarations(path):
    text = path.read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    head = re.search(r"cell\s+(\w+)\s*\(([^)]*)\)", code)
    decl = {"input": {}, "weight": {}, "state": {}}
    for kind, name, shape in re.findall(r"\b(input|weight|state)\s+(\w+)\s*:\s*\[([^\]]*)\]", code):
        decl[kind][name] = tuple(s.strip() for s in shape.split(",") if s.strip())
    outputs = re.findall(r"\bemit\s+(\w+)", code)
    return head.group(1), tuple(d.strip() for d in head.group(2).split(",")), decl, outputs


def test_examples_are_the_zoo_and_the_paper_cells():
    found = sorted(p.stem for p in EXAMPLES.glob("*.rnn"))
    assert found == sorted(ZOO + PAPER_CELLS)
    assert sorted(PAPER_CELLS) == sorted(paper_data.SPECS) == sorted(LOOPS)


@pytest.mark.parametrize("cell", PAPER_CELLS)
def test_specs_match_the_rnn_files(cell):
    name, dims, decl, outputs = _declarations(EXAMPLES / f"{cell}.rnn")
    spec = paper_data.SPECS[cell]
    assert (name, dims) == (cell, spec.dims)
    assert decl["input"] == spec.inputs and decl["weight"] == spec.weights and decl["state"] == spec.states
    assert outputs == list(spec.outputs)


@pytest.mark.parametrize("backend", ["reference", "reference-bptt"])
@pytest.mark.parametrize("T", [1, 19, 37])
@pytest.mark.parametrize("cell", PAPER_CELLS)
def test_reference_matches_the_paper_oracle(cell, T, backend):
    seed = _seed()
    args, state = paper_data.make(cell, B=2, T=T, NH=2, seed=seed)
    leaves = {**args, **{f"{name}0": value for name, value in state.items()}}
    ours = run_reference(cell, backend, args, state)
    theirs = run_oracle(cell, args, state)
    bad = compare(ours, theirs, leaves, TOL, seed=seed + 1)
    assert not bad, f"{cell} {backend} (seed={seed}, T={T}):\n  " + "\n  ".join(bad)


@pytest.mark.parametrize("cell", PAPER_CELLS)
def test_every_gradient_is_exercised(cell):
    """The comparison above proves something only if every leaf has a nonzero gradient."""
    args, state = paper_data.make(cell, B=2, T=5, NH=2, seed=_seed())
    out, fin = run_oracle(cell, args, state)
    total = sum((v * torch.randn_like(v)).sum() for v in [*out.values(), *fin.values()])
    leaves = {**args, **state}
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    dead = [name for name, g in zip(leaves, grads) if g is None or g.norm() == 0]
    assert not dead, f"{cell}: no gradient reaches {dead}"


@pytest.mark.parametrize("cell", ["mlstm", "rwkv7", "lmu", "titans", "ntm_memory"])
def test_larger_odd_dims(cell):
    dims = {d: 7 + 2 * i for i, d in enumerate(paper_data.SPECS[cell].dims)}
    seed = _seed()
    args, state = paper_data.make(cell, B=3, T=11, NH=1, seed=seed, **dims)
    leaves = {**args, **{f"{name}0": value for name, value in state.items()}}
    bad = compare(run_reference(cell, "reference", args, state), run_oracle(cell, args, state), leaves, TOL, seed=seed)
    assert not bad, f"{cell} (seed={seed}, dims={dims}):\n  " + "\n  ".join(bad)
