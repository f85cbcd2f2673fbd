"""The analysis: affine detection, structure of A, strategy, proofs and what explain says.

The expected structures and strategies are written from the cells' mathematics
(language.md), not read back from the compiler.
"""

import pytest
import sympy

from rnnc.compiler import analyse_source, lower_source
from rnnc.compiler.proof import Proof, prove_chunked, prove_scan

# (cell, state, affine, structure of A, axis or decay) from the cells' equations
ZOO_TRANSITIONS = [
    ("lstm", "h", False, "", None),
    ("lstm", "c", False, "", None),
    ("gru", "h", False, "", None),
    ("elman", "h", False, "", None),
    ("slstm", "m", False, "", None),
    ("slstm", "n", False, "", None),
    ("hgrn", "h", True, "elementwise", None),
    ("mingru", "h", True, "elementwise", None),
    ("mamba", "S", True, "elementwise", None),
    ("linear_attention", "S", True, "identity", None),
    ("retnet", "S", True, "scalar", None),
    ("simple_gla", "S", True, "scalar", None),
    ("gla", "S", True, "diagonal", -2),
    ("deltanet", "S", True, "identity-minus-rank-one", "identity"),
    ("gated_deltanet", "S", True, "identity-minus-rank-one", "scalar"),
    ("lti", "m", True, "dense", None),
]


def plan_of(name):
    return analyse_source(open(f"examples/{name}.rnn").read(), f"{name}.rnn")


@pytest.mark.parametrize("cell,state,affine,structure,extra", ZOO_TRANSITIONS)
def test_zoo_transitions(cell, state, affine, structure, extra):
    t = next(t for t in plan_of(cell).transitions if t.state == state)
    assert t.affine == affine
    assert t.structure == structure
    if structure == "diagonal":
        assert t.axis == extra
    if structure == "identity-minus-rank-one":
        assert t.decay == extra
        k, beta = sympy.Symbol("k", real=True), sympy.Symbol("beta", real=True)
        assert (t.u, t.w, t.beta) == (k, k, beta)


def test_affine_coefficients_are_the_cells_own():
    t = plan_of("hgrn").transitions[0]
    g, x = sympy.Symbol("g", real=True), sympy.Symbol("x", real=True)
    assert sympy.simplify(t.a - sympy.exp(g)) == 0 and sympy.simplify(t.b - x) == 0
    t = plan_of("mingru").transitions[0]
    gz, hc = sympy.Symbol("gz", real=True), sympy.Symbol("hc", real=True)
    z = 1 / (1 + sympy.exp(-gz))  # minGRU: h' = (1 - z) h + z hc
    for value in ({gz: 0.3, hc: -1.7}, {gz: -2.0, hc: 0.25}):
        assert abs(float(t.a.subs(value).evalf()) - float((1 - z).subs(value))) < 1e-12
        assert abs(float(t.b.subs(value).evalf()) - float((z * hc).subs(value))) < 1e-12


CELLS = {
    "state-dependent gate": ("cell c(H) { input x: [H]; state h: [H]; h = sigmoid(h) * h + x }", "sequential"),
    "quadratic": ("cell c(H) { input x: [H]; state h: [H]; h = h * h + x }", "sequential"),
    # a reads b but b does not read a: two components, each elementwise
    "chained linear": ("cell c(H) { input x: [H]; state a: [H]; state b: [H]; a = 0.5 * a + b; b = x }", "scan"),
    # a and b read each other: one component, a 2 x 2 map per channel
    "coupled linear": (
        "cell c(H) { input x: [H]; state a: [H]; state b: [H]; a = 0.5 * a + b; b = 0.5 * b - a + x; emit a }",
        "scan",
    ),
    "constant decay": ("cell c(H) { input x: [H]; state h: [H]; h = 0.9 * h + x; emit h }", "scan"),
    "two independent scans": (
        "cell c(H) { input x: [H]; input f: [H]; state h: [H]; state s: [H]\n"
        "h = exp(f) * h + x; s = s + h\nemit y = h * s }",
        "scan",
    ),
    "column decay": (
        "cell c(K, V) { input k: [K]; input v: [V]; input g: [V]; state S: [K, V]\n"
        "S = S * exp(g)[None, :] + outer(k, v); emit o = S @ v }",
        "chunked",
    ),
    "full-matrix input": (
        "cell c(K, V) { input X: [K, V]; input g: []; input q: [K]; state S: [K, V]\n"
        "S = exp(g) * S + X; emit o = q @ S }",
        "scan",
    ),
    "nonlinear read": (
        "cell c(K, V) { input k: [K]; input v: [V]; input q: [K]; state S: [K, V]\n"
        "S = S + outer(k, v); emit o = sum(tanh(S), 0) }",
        "scan",
    ),
    "rank-one with diagonal decay": (
        "cell c(K, V) { input k: [K]; input v: [V]; input g: [K]; input q: [K]; state S: [K, V]\n"
        "S = exp(g)[:, None] * (S - outer(k, k @ S)) + outer(k, v); emit o = q @ S }",
        "chunked",
    ),
    "normalised read": (
        "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; input f: []; state S: [K, V]; state n: [K]\n"
        "S = f * S + outer(k, v); n = f * n + k\nemit o = (q @ S) / max(abs(q @ n), 1) }",
        "chunked",
    ),
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_strategy_of_hand_made_cells(name):
    text, expected = CELLS[name]
    assert analyse_source(text).strategy == expected


def test_coupled_states_are_one_component_and_a_chain_is_two():
    coupled = analyse_source(CELLS["coupled linear"][0])
    assert [(c.states, c.kind) for c in coupled.components] == [(("a", "b"), "coupled")]
    # a' = 0.5 a + b; b reads a after its update: b' = 0.5 b - a' + x = -0.5 a - 0.5 b + x
    m = coupled.components[0].coupled.m
    assert [[float(x) for x in row] for row in m] == [[0.5, 1.0], [-0.5, -0.5]]
    chained = analyse_source(CELLS["chained linear"][0])
    assert [(c.states, c.kind) for c in chained.components] == [(("b",), "elementwise"), (("a",), "elementwise")]


def test_nonlinear_term_is_named():
    plan = plan_of("elman")
    text = plan.explain()
    assert "tanh(b + x + R @ h) is a nonlinear function of state h" in text
    quadratic = analyse_source(CELLS["quadratic"][0]).transitions[0]
    assert not quadratic.affine and "degree 2" in quadratic.reason


@pytest.mark.parametrize("name", ["hgrn", "mingru", "mamba"])
def test_scan_proofs_hold(name):
    plan = plan_of(name)
    assert plan.proof.holds
    assert sum("verified" in line for line in plan.proof.lines) == 2 * len(plan.transitions)


@pytest.mark.parametrize("name", ["linear_attention", "retnet", "simple_gla", "gla", "deltanet", "gated_deltanet"])
def test_chunked_proofs_hold(name):
    assert plan_of(name).proof.holds


def test_a_wrong_combine_fails_the_proof():
    """The proof can fail: feed it a transition whose a and b are swapped."""
    plan = plan_of("hgrn")
    t = plan.transitions[0]
    import dataclasses

    swapped = dataclasses.replace(t, a=t.b, b=t.a)
    proof = prove_scan(plan.ir, [swapped])
    assert isinstance(proof, Proof) and not proof.holds
    assert any("FAILED" in line for line in proof.lines)


def test_chunked_proof_refuses_a_dense_transition():
    plan = plan_of("lti")
    proof = prove_chunked(plan.ir, list(plan.transitions))
    assert not proof.holds


def test_explain_names_strategy_structure_and_proof():
    text = plan_of("gated_deltanet").explain()
    for fragment in (
        "strategy chunked",
        "identity minus rank one",
        "a = exp(g)",
        "beta = beta",
        "combine is associative on three steps: verified",
    ):
        assert fragment in text, fragment


def test_derivatives_are_the_calculus_of_the_update():
    d = plan_of("hgrn").derivatives
    partials = dict(d.of("update", "h").wrt)
    g, h = sympy.Symbol("g", real=True), sympy.Symbol("h", real=True)
    assert partials["h"] == sympy.exp(g) and partials["g"] == h * sympy.exp(g) and partials["x"] == 1
    lstm = plan_of("lstm").derivatives
    assert len(lstm.common) > 0  # the gates' sigmoids are shared among the partials


def test_ir_key_is_deterministic_and_ignores_comments():
    text = open("examples/gla.rnn").read()
    key = lower_source(text).key()
    assert key == lower_source("# a comment\n" + text.replace("    ", "  ")).key()
    assert key != lower_source(text.replace("exp(g)[:, None]", "exp(g)[:, None] * 0.5")).key()


def test_split_with_a_divisor():
    plan = analyse_source("cell c(H) { input x: [4*H]; state h: [2*H]; a, b = x; h = a * h + b }")
    assert plan.strategy == "scan"
    parts = [a for a in plan.ir.atoms if a.op == "part"]
    assert [a.params for a in parts] == [(0, 0, 2, 0), (0, 1, 2, 0)]
