"""Fuzzing the front end: whatever the input, only an RnncError may escape, never a crash.

Inputs are random bytes, random strings over the language's own alphabet and
tokens, and random mutations of the zoo's cells. When a mutant still analyses,
it is also compiled and run on tiny tensors by the reference executor.
"""

import random

import pytest
import torch
from conftest import EXAMPLES, ZOO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnc
from rnnc import RnncError
from rnnc.compiler import analyse_source

SOURCES = {name: (EXAMPLES / f"{name}.rnn").read_text() for name in ZOO}
TOKENS = [
    "cell",
    "input",
    "weight",
    "state",
    "emit",
    "None",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "+",
    "-",
    "*",
    "/",
    "@",
    "**",
    ".T",
    "<",
    "==",
    "\n",
    ";",
    " ",
    "h",
    "x",
    "S",
    "H",
    "K",
    "0",
    "1",
    "2.5",
    "1e-6",
    "sigmoid(",
    "tanh(",
    "exp(",
    "where(",
    "outer(",
    "sum(",
    "max(",
    "min(",
    "cos(",
    "sin(",
    "#",
]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_rnnc_errors(text) -> object:
    """Analyse ``text``; return the Plan, or None when it raised an RnncError."""
    try:
        return analyse_source(text, "fuzz.rnn")
    except RnncError:
        return None


def run_tiny(text: str) -> None:
    """Compile and run a cell that analysed, on tiny random tensors (dims 2, B 1, T 2, NH 1)."""
    try:
        cell = rnnc.compile(text, backend="reference")
    except RnncError:
        return
    ir = cell.plan.ir
    import sympy

    def sizes(shape):
        subs = {sympy.Symbol(d, positive=True, integer=True): 2 for d in ir.dims}
        return [int(sympy.sympify(s).subs(subs)) for s in shape]

    tensors = {d.name: torch.randn(1, 2, 1, *sizes(d.shape)) for d in ir.inputs}
    tensors.update({d.name: torch.randn(1, *sizes(d.shape)) for d in ir.weights})
    try:
        cell(**tensors)
    except ValueError as exc:  # e.g. a cell without inputs: a clear message is the contract
        assert str(exc)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data):
    only_rnnc_errors(data)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60))
def test_random_token_strings(tokens):
    only_rnnc_errors("".join(tokens))


@FUZZ
@given(st.sampled_from(ZOO), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_mutated_zoo_cells(name, seed, edits):
    rng = random.Random(seed)
    text = SOURCES[name]
    for _ in range(edits):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.randrange(1, 12))
        kind = rng.randrange(4)
        if kind == 0:
            text = text[:i] + text[j:]
        elif kind == 1:
            text = text[:i] + rng.choice(TOKENS) + text[i:]
        elif kind == 2:
            text = text[:i] + text[i:j] + text[i:]
        else:
            k = rng.randrange(len(text) + 1)
            text = text[:i] + text[k : k + rng.randrange(1, 8)] + text[j:]
    if only_rnnc_errors(text) is not None:
        run_tiny(text)


@pytest.mark.parametrize(
    "text",
    [
        "cell c(H) { input x: [H]; state h: [H]; h = relu(x) * abs(h) + sqrt(exp(x)) - log(1 + exp(h)) }",
        "cell c(H) { input x: [H]; state h: [H]; h = softplus(x) + logsigmoid(h) ** 2 + min(h, 1.0) / 3 }",
        "cell c(H) { input x: [2, H]; state h: [H]; a, b = x\n"
        "h = cos(a) * h + sin(max(x, axis=0)) - min(x, axis=0) * max(b) }",
        "cell c(H) { input x: [2*H]; state h: [H]; a, b = x; h = where(a > 0, b, h) }",
        "cell c(H) { input x: [H]; state h: [H]; h = x; emit s = sum(h) }",
    ],
)
def test_every_function_runs(text):
    run_tiny(text)
    assert analyse_source(text).ir.updates
