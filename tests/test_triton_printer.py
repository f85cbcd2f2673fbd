"""The sympy-to-Triton printer, run in Triton (the interpreter on CPU) against sympy's own arithmetic.

Each expression is printed into a one-line elementwise kernel, run on fresh random
float64 inputs, and compared with sympy evaluating the same expression at each point
(mpmath, 30 digits): an independent implementation of every function.
"""

import random

import pytest
import sympy
import torch

from rnnc.compiler.symbols import logsigmoid, maximum, minimum, relu, sigmoid, softplus
from rnnc.runtime.modules import load_module
from rnnc.templates.triton_printer import to_triton

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

x, y = sympy.symbols("x y", real=True)
EXPRESSIONS = {
    "polynomial": x**3 - 2 * x * y + y**2 / 3,
    "tanh": sympy.tanh(x) * y,
    "tanh far out": sympy.tanh(60 * x),
    "sigmoid": sigmoid(x - y),
    "softplus": softplus(40 * x),
    "logsigmoid": logsigmoid(40 * y),
    "relu and abs": relu(x) + sympy.Abs(y),
    "max and min": maximum(x, y) - minimum(x, 2 * y),
    "exp and log": sympy.exp(x) * sympy.log(1 + y**2),
    "sqrt and powers": sympy.sqrt(1 + x**2) + (1 + y**2) ** sympy.Rational(-1, 2) + (3 + x**2) ** sympy.Rational(3, 2),
    "division": x / (1 + y**2) - 1 / (2 + sympy.exp(y)),
    "where": sympy.Piecewise((x, x > y), (y * 2, True)),
    "heaviside": sympy.Heaviside(x) + sympy.Heaviside(y, 0) * x,
    "sign": sympy.sign(x) * y,
    "cos and sin": sympy.cos(3 * x) * sympy.sin(y) - sympy.sin(x - y) ** 2,
}

# the language's functions by their textbook definitions, for sympy to evaluate independently
DEFINITIONS = [
    (sigmoid, lambda a: 1 / (1 + sympy.exp(-a))),
    (softplus, lambda a: sympy.log(1 + sympy.exp(a))),
    (logsigmoid, lambda a: -sympy.log(1 + sympy.exp(-a))),
    (relu, lambda a: sympy.Max(a, 0)),
    (maximum, lambda a, b: sympy.Max(a, b)),
    (minimum, lambda a, b: sympy.Min(a, b)),
]


def textbook(expr):
    for function, definition in DEFINITIONS:
        expr = expr.replace(function, definition)
    return expr


TEMPLATE = """import triton
import triton.language as tl


@triton.jit
def kernel(X, Y, OUT, N: tl.constexpr, COMPUTE: tl.constexpr):  # the dtype templates compute in
    offsets = tl.arange(0, N)
    x = tl.load(X + offsets)
    y = tl.load(Y + offsets)
    tl.store(OUT + offsets, {expr})
"""


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_printed_expression_matches_sympy(name):
    expr = EXPRESSIONS[name]
    module = load_module(
        TEMPLATE.format(expr=to_triton(expr, {"x": "x", "y": "y"})), f"printer_{name.replace(' ', '_')}"
    )
    n = 16
    xs = torch.randn(n, dtype=torch.float64)
    ys = torch.randn(n, dtype=torch.float64)
    if name == "heaviside":
        xs[0] = 0.0  # the value at zero is part of the contract
    out = torch.full((n,), float("nan"), dtype=torch.float64)
    module.kernel[(1,)](xs, ys, out, n, tl.float64)
    for i in random.sample(range(n), 8):
        expected = float(textbook(expr).subs({x: float(xs[i]), y: float(ys[i])}).evalf(30))
        assert abs(out[i].item() - expected) <= 1e-12 * max(1.0, abs(expected)), (name, i, out[i].item(), expected)


def test_tanh_does_not_overflow_where_exp_would():
    module = load_module(TEMPLATE.format(expr=to_triton(sympy.tanh(x), {"x": "x", "y": "y"})), "printer_tanh_edges")
    xs = torch.tensor([-1000.0, -60.0, -1e-8, 0.0, 1e-8, 60.0, 1000.0] + [0.0] * 9, dtype=torch.float64)
    out = torch.full((16,), float("nan"), dtype=torch.float64)
    module.kernel[(1,)](xs, xs, out, 16, tl.float64)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.tanh(xs), atol=1e-15)
