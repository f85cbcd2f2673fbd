"""Sequential kernels for nonlinear cells beyond the zoo's shape, against the reference backend.

Cells with no matrix weight at all (IndRNN, ``tanh(h + x)``), matmuls to a scalar (LMU's
``e @ h``), matrix states updated nonlinearly (M²RNN: ``S @ W``, ``W @ S``, ``q @ S``, ``outer``),
several outputs, ``sum`` in the step, views that insert or swap axes, and splits along other
axes. Forward and every gradient, float64 to 1e-9 and float32 to 1e-4 (against float64), at
T = 1, 19 and 37 and odd dims, under the interpreter (tests/conftest.py).
"""

import pytest
import torch
from test_triton_sequential import _check

import rnnc

pytest.importorskip("triton")

CELLS = {
    # no weight at all
    "tanh_accumulator": ("cell c(H) { input x: [H]; state h: [H]\nh = tanh(h + x)\nemit h }", {"H": 19}),
    # IndRNN (Li et al. 2018): a weight vector, no matrix
    "indrnn": (
        "cell c(H) { input x: [H]; weight u: [H]; weight b: [H]; state h: [H]\nh = relu(x + u * h + b)\nemit h }",
        {"H": 23},
    ),
    # an input gate times the state, inside the nonlinearity
    "gated_tanh": ("cell c(H) { input x: [H]; input a: [H]; state h: [H]\nh = tanh(a * h + x)\nemit h }", {"H": 17}),
    # LMU (Voelker et al. 2019): scalar matmuls e @ h, e @ m, x @ e; a dense memory A @ m; the new m read by h
    "lmu": (
        "cell c(X, H, D) { input x: [X]; weight ex: [X]; weight eh: [H]; weight em: [D]; weight A: [D, D]\n"
        "weight Bm: [D]; weight Wx: [H, X]; weight Wh: [H, H]; weight Wm: [H, D]; state h: [H]; state m: [D]\n"
        "u = ex @ x + eh @ h + em @ m\nm = A @ m + Bm * u\nh = tanh(Wx @ x + Wh @ h + Wm @ m)\nemit h }",
        {"X": 18, "H": 21, "D": 17},
    ),
    # M²RNN-style: a matrix state, S @ W with a weight, outer, a scalar gate, a read q @ S
    "m2rnn": (
        "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; input f: []; weight W: [V, V]\n"
        "state H: [K, V]\nZ = tanh(H @ W + outer(k, v))\nH = f * H + (1 - f) * Z\nemit y = q @ H }",
        {"K": 17, "V": 23},
    ),
    "m2rnn_tanh": (
        "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; input f: []; weight W: [V, V]\n"
        "state S: [K, V]\nS = tanh(f * S + outer(k, v))\nemit o = q @ S\nemit r = (q @ S) @ W }",
        {"K": 19, "V": 16},
    ),
    # a weight on the left of a matrix state, reads along both axes, transposed and inserted-axis views
    "left_weight": (
        "cell c(K, V) { input k: [K]; input v: [V]; input g: [K]; weight A: [K, K]\n"
        "state S: [K, V]\nS = tanh(sigmoid(g)[:, None] * (A @ S) + k[:, None] * v[None, :])\n"
        "emit rows = S @ v\nemit cols = S.T @ k }",
        {"K": 18, "V": 21},
    ),
    # several outputs, sum in the step, a state read through sum and a generic matrix-vector product
    "several": (
        "cell c(K, V) { input k: [K]; input v: [V]; input g: [K]; weight u: [K]; weight s: []\n"
        "state S: [K, V]; state n: [K]\nS = tanh(sigmoid(g)[:, None] * S + outer(k, v))\n"
        "n = tanh(sigmoid(g) * n + k * sum(v) * s)\nemit o = (u * n) @ S\nemit z = sum(S, 0)\n"
        "emit total = sum(S * S) }",
        {"K": 17, "V": 19},
    ),
    # a scalar state coupled with a vector one
    "scalar_state": (
        "cell c(H) { input x: [H]; weight w: [H]; state h: [H]; state m: []\n"
        "m = tanh(m + w @ h)\nh = tanh(x + m * h)\nemit h\nemit m }",
        {"H": 21},
    ),
    # splits along another axis ([H, 2] read transposed) and into halves of [2*H]
    "parts": (
        "cell c(H) { input x: [H, 2]; input y: [2*H]; weight R: [H, H]; state h: [H]\n"
        "i, f = x.T\na, b = y\nh = tanh(sigmoid(f) * (R @ h) + i * a + b)\nemit h }",
        {"H": 19},
    ),
    # reductions by max and min in the step: a stable softmax over a matrix state's rows, extremes of inputs
    "reductions": (
        "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; weight R: [V, V]; state S: [K, V]; state m: []\n"
        "s = q @ S\nw = exp(s - max(s))\na = w / sum(w)\n"
        "S = tanh(outer(k, v) + S @ R)\nm = tanh(0.5 * m + 0.2 * (max(k) - min(q * k)) + 0.05 * sum(max(S, axis=0)))\n"
        "emit y = a * m\nemit z = min(S, axis=1) }",
        {"K": 17, "V": 19},
    ),
}
SIZES = [(3, 1, 2), (2, 19, 1), (1, 37, 1)]


@pytest.mark.parametrize("B,T,NH", SIZES, ids=[f"B{b}-T{t}-NH{n}" for b, t, n in SIZES])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_matches_the_reference_in_float64(name, B, T, NH):
    text, dims = CELLS[name]
    _check(text, B, T, NH, dims, torch.float64, 1e-9, seed=T)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_cell_matches_the_float64_reference_in_float32(name):
    text, dims = CELLS[name]
    _check(text, 2, 19, 1, dims, torch.float32, 1e-4, seed=1)


def test_a_cell_without_a_matrix_weight_compiles_for_cpu_tensors_and_runs_the_reference():
    """The crash of issue 10: a cell with no matrix weight rendered 'BLOCK_H: tl.constexpr, ,'."""
    text, _ = CELLS["indrnn"]
    cell = rnnc.compile(text)
    assert cell.strategy == "sequential"
    x = torch.randn(2, 3, 1, 5)
    out = cell(x=x, u=torch.randn(1, 5), b=torch.randn(1, 5))
    assert out.h.shape == (2, 3, 1, 5)
    assert "def forward_kernel(" in rnnc.compile(text, backend="triton").source


def test_matrix_state_kernels_contract_with_tl_dot_and_need_no_row_block():
    """S @ W runs as one tl.dot over BLOCK_B * BLOCK_K rows, so the batch tile need not be 16 rows."""
    cell = rnnc.compile(CELLS["m2rnn"][0], backend="triton")
    module = cell._triton.module
    assert not module.row_dots
    assert "tl.dot(tl.reshape(s_H, [BLOCK_B * TILE_K, TILE_V]).to(DOT_DTYPE), r_W" in module.text


UNCOVERED = "cell odd(H) { input x: [H*H]; input y: [H]; state h: [H*H]\nh = tanh(x + h)\nemit o = 2 * y }"


def test_a_cell_no_kernel_covers_is_refused_at_the_statement_that_needs_it():
    with pytest.raises(rnnc.BackendError) as caught:
        rnnc.compile(UNCOVERED, backend="triton")
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("<string>:2:1: error: the Triton sequential template does not cover cell odd")
    assert "an axis of size H**2 (in x) needs to be a dim, a constant or a constant times a dim" in lines[0]
    assert lines[1].strip() == "h = tanh(x + h)" and lines[2].strip() == "^" * len("h = tanh(x + h)")


def test_auto_falls_back_to_the_reference_with_one_warning_per_cell(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # auto would run Triton here
    cell = rnnc.compile(UNCOVERED)
    x, y = torch.randn(1, 2, 1, 9), torch.randn(1, 2, 1, 3)
    with pytest.warns(UserWarning, match="cell odd runs on the reference backend: <string>:2:1: error: .*H\\*\\*2"):
        cell(x=x, y=y)
    assert cell.last_backend == "reference"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call warns no more
        cell(x=x, y=y)


def test_auto_renders_no_triton_source_for_a_cell_that_runs_on_the_reference(monkeypatch):
    from rnnc.runtime import triton_sequential

    def refuse(plan):
        raise AssertionError("rendered Triton source for a call that runs on the reference")

    monkeypatch.setattr(triton_sequential.SequentialKernels, "render", staticmethod(refuse))
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors, no interpreter: the reference runs
    cell = rnnc.compile("examples/lstm.rnn")
    tensors = {"x": torch.randn(1, 2, 1, 4, 3), "R": torch.randn(1, 4, 3, 3), "b": torch.randn(1, 4, 3)}
    assert cell(**tensors).h.shape == (1, 2, 1, 3) and cell.last_backend == "reference"


def test_a_generated_module_that_does_not_import_is_an_internal_error_naming_the_cell(monkeypatch):
    from rnnc.runtime import triton_sequential
    from rnnc.templates.sequential_codegen import render_sequential

    def broken_module(plan):
        import dataclasses

        module = render_sequential(plan)
        return dataclasses.replace(module, text=module.text + "\ndef broken(:\n")

    monkeypatch.setattr(triton_sequential.SequentialKernels, "render", staticmethod(broken_module))
    with pytest.raises(rnnc.InternalError, match="generated sequential module of cell elman does not import"):
        rnnc.compile("examples/elman.rnn", backend="triton")


# Names that meet what the sequential template writes for matrix states, reductions, several
# tile spaces and packed batches (issue 14's scheme, rnnc/templates/names.py)
RICH = """cell {cell}({K}, {V}) {{
    input {q}: [{K}]
    input {k}: [{K}]
    input {v}: [{V}]
    input {f}: []
    weight {W}: [{V}, {V}]
    weight {u}: [{K}]
    state {S}: [{K}, {V}]
    state {m}: []
    {S} = tanh({f} * ({S} @ {W}) + outer({k}, {v}))
    {m} = tanh({m} + {u} @ {q} + max({q}))
    emit {o} = {q} @ {S}
    emit {z} = sum({S} * {S}) * {m}
}}"""
RICH_NAMES = {
    "K": "space0",
    "V": "lane0",
    "q": "live",
    "k": "later",
    "v": "bos",
    "f": "length",
    "W": "steps",
    "u": "partial",
    "S": "k0",
    "m": "a5",
    "o": "vpiece_k0",
    "z": "held_ds",
}


def test_names_that_meet_the_templates_own_give_as_many_identifiers_as_harmless_ones():
    import ast

    from test_names import _cell, _identifiers

    from rnnc.compiler import analyse_source
    from rnnc.templates.sequential_codegen import render_sequential

    ours = render_sequential(analyse_source(_cell(RICH, RICH_NAMES))).text
    theirs = render_sequential(analyse_source(_cell(RICH, {}))).text
    for mine, reference in zip(_identifiers(ast.parse(ours)), _identifiers(ast.parse(theirs))):
        assert len(mine) == len(reference), sorted(mine ^ reference)


def test_a_cell_named_like_the_templates_own_variables_matches_the_reference():
    from test_names import _cell

    text = _cell(RICH, RICH_NAMES)
    _check(text, 2, 5, 1, {"space0": 17, "lane0": 19}, torch.float64, 1e-9)


def test_no_variable_of_the_sequential_templates_own_has_the_shape_of_a_name_carrying_one():
    """As tests/test_names.py checks for every strategy, over the matrix-state, reduction and packed-batch
    code too: no variable of the template's own parses to a role its name-carrying variables use."""
    import ast

    from test_names import _cell, _harmless, _identifiers, _user_names, parse

    from rnnc.compiler import analyse_source
    from rnnc.templates.sequential_codegen import render_sequential

    roles, found = set(), []
    for source, harmless in ((_cell(RICH, RICH_NAMES), None), (_cell(RICH, {}), set(_harmless(RICH).values()))):
        users = _user_names(source)
        for scope in _identifiers(ast.parse(render_sequential(analyse_source(source)).text)):
            found += [(name, parse(name), users) for name in scope]
            if harmless:
                roles |= {p.role for p in map(parse, scope) if p is not None and p.user in harmless}
    assert ("vpiece",) in roles or ("out", "value") in roles  # the parse sees the template's name-carrying ones
    assert not sorted({n for n, p, users in found if p is not None and p.user not in users and p.role in roles})
