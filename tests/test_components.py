"""The analysis by components: kinds, canonical forms, pieces, stages and refusals.

Every expectation is written from the cells' mathematics (the papers' update rules), not read
back from the compiler: e.g. gated DeltaNet is exp(g) (I - beta k k^T) S + beta k v^T however it
is spelled, so both spellings must give one factor with decay exp(g), the correction
-beta exp(g) k k^T and the write beta k v^T.
"""

import dataclasses

import pytest
import sympy

import rnnc
from rnnc.compiler import analyse_source
from rnnc.compiler.component_proofs import prove_components
from rnnc.compiler.symbols import Matmul, logsigmoid, sigmoid, tensor_symbol
from rnnc.errors import LocatedBackendError

X = {n: tensor_symbol(n) for n in "q k v g beta f i m S C n z r u x B dt D A lb k1 k2 v1 v2 b1 b2 w kk a".split()}
GDN_HEAD = "cell g(K, V) { input q: [K]; input k: [K]; input v: [V]; input beta: []; input g: []; state S: [K, V]\n"


def kinds(plan):
    return [(c.states, c.kind) for c in plan.components]


def linear(plan, state):
    return next(s for c in plan.components for s in c.linear if s.state == state)


def test_two_spellings_of_gated_deltanet_give_one_plan():
    closed = analyse_source(
        GDN_HEAD + "S = exp(g) * (S - beta * outer(k, k @ S)) + beta * outer(k, v)\nemit o = q @ S }"
    )
    staged = analyse_source(GDN_HEAD + "Sd = exp(g) * S\nS = Sd + beta * outer(k, v - k @ Sd)\nemit o = q @ S }")
    assert closed.strategy == staged.strategy == "chunked"
    assert closed.key() == staged.key()
    (factor,) = linear(closed, "S").factors
    assert factor.decay == "scalar" and factor.log_decay == X["g"] and factor.positive
    (c,) = factor.corrections
    assert sympy.simplify(c.scale + X["beta"] * sympy.exp(X["g"])) == 0 and (c.u, c.w) == (X["k"], X["k"])
    (w,) = factor.writes
    assert (w.scale, w.key, w.value) == (X["beta"], X["k"], X["v"])


def test_kda_decay_first_is_diagonal_minus_rank_one():
    # S' = (I - beta k k^T) diag(exp(g)) S + beta k v^T = diag(exp(g)) S - beta k (exp(g) * k)^T S + ...
    plan = analyse_source(
        "cell kda(K, V) { input q: [K]; input k: [K]; input v: [V]; input beta: []; input g: [K]; state S: [K, V]\n"
        "Sd = exp(g)[:, None] * S\nS = Sd + beta * outer(k, v - k @ Sd)\nemit o = q @ S }"
    )
    assert plan.strategy == "chunked"
    (factor,) = linear(plan, "S").factors
    assert factor.decay == "diagonal" and factor.log_decay == X["g"]
    (c,) = factor.corrections
    assert c.scale == -X["beta"] and c.u == X["k"] and sympy.simplify(c.w - X["k"] * sympy.exp(X["g"])) == 0


def test_delta_product_keeps_one_factor_per_householder_step():
    plan = analyse_source(
        "cell dp(K, V) { input q: [K]; input k1: [K]; input v1: [V]; input b1: []; input k2: [K]; input v2: [V]\n"
        "input b2: []; state S: [K, V]\n"
        "S1 = S + b1 * outer(k1, v1 - k1 @ S)\nS = S1 + b2 * outer(k2, v2 - k2 @ S1)\nemit o = q @ S }"
    )
    assert plan.strategy == "chunked"
    factors = linear(plan, "S").factors
    assert len(factors) == 2
    for factor, (k, v, b) in zip(factors, [("k1", "v1", "b1"), ("k2", "v2", "b2")]):
        (c,) = factor.corrections
        (w,) = factor.writes
        assert factor.decay == "identity"
        assert (c.scale, c.u, c.w) == (-X[b], X[k], X[k]) and (w.scale, w.key, w.value) == (X[b], X[k], X[v])


MLSTM = """cell mlstm(D) {
    input q: [D]
    input k: [D]
    input v: [D]
    input i: []
    input f: []
    state C: [D, D]
    state n: [D]
    state m: []
    logf = logsigmoid(f)
    m_new = max(logf + m, i)
    C = exp(logf + m - m_new) * C + exp(i - m_new) * outer(v, k)
    n = exp(logf + m - m_new) * n + exp(i - m_new) * k
    m = m_new
    emit h = (C @ q) / max(abs(n @ q), exp(-m))
}"""


def test_stabilised_mlstm_is_a_max_plus_scan_then_a_chunked_group():
    plan = analyse_source(MLSTM)
    assert plan.strategy == "chunked"
    assert kinds(plan) == [(("m",), "maxplus"), (("C",), "matrix"), (("n",), "matrix")]
    m = plan.components[0].maxplus
    assert (m.a, m.b) == (logsigmoid(X["f"]), X["i"])
    scan, chunked = plan.stages
    assert (scan.strategy, scan.carries) == ("scan", ("m",))
    assert chunked.strategy == "chunked"
    m_new = tensor_symbol("m'")
    (factor,) = linear(plan, "C").factors  # decay exp(logf + m - m'): its log, in terms of m and m'
    assert factor.decay == "scalar" and sympy.simplify(factor.log_decay - (logsigmoid(X["f"]) + X["m"] - m_new)) == 0
    assert linear(plan, "C").key_axis == 1  # C is written outer(v, k) and read C @ q
    assert linear(plan, "n").value_dim is None  # the normaliser joins as a vector state
    (piece,) = chunked.output_pieces
    assert sorted((r.state, r.new, r.query) for r in piece.reads) == [("C", True, X["q"]), ("n", True, X["q"])]


def test_linear_attention_with_its_normaliser_is_one_chunked_group():
    plan = analyse_source(
        "cell la(K, V) { input q: [K]; input k: [K]; input v: [V]; state S: [K, V]; state z: [K]\n"
        "S = S + outer(k, v); z = z + k\nemit o = (q @ S) / (q @ z + 1e-6) }"
    )
    assert plan.strategy == "chunked" and [s.strategy for s in plan.stages] == ["chunked"]
    assert [s.state for c in plan.components for s in c.linear] == ["S", "z"]


def test_rwkv6_reads_the_previous_state_and_adds_its_bonus():
    plan = analyse_source(
        "cell rwkv6(K, V) { input r: [K]; input k: [K]; input v: [V]; input w: [K]; weight u: [K]; state S: [K, V]\n"
        "emit o = r @ (S + outer(u * k, v))\nS = exp(-exp(w))[:, None] * S + outer(k, v) }"
    )
    assert plan.strategy == "chunked"
    (piece,) = plan.stages[-1].output_pieces
    (read,) = piece.reads
    assert (read.state, read.new, read.query) == ("S", False, X["r"])
    bonus = piece.expr - read.symbol  # (r @ (u * k)) * v, an in-step reduction of step values
    assert sympy.simplify(bonus - Matmul(X["r"], X["u"] * X["k"]) * X["v"]) == 0
    (factor,) = linear(plan, "S").factors
    assert factor.decay == "diagonal" and sympy.simplify(factor.log_decay + sympy.exp(X["w"])) == 0


def test_mamba2_with_its_skip_and_broadcast_outer_product():
    plan = analyse_source(
        "cell mamba2(N, P) { input x: [P]; input dt: []; input B: [N]; input C: [N]; weight A: []; weight D: []\n"
        "state h: [N, P]\nh = exp(dt * A) * h + dt * B[:, None] * x[None, :]\nemit y = C @ h + D * x }"
    )
    assert plan.strategy == "chunked"
    state = linear(plan, "h")
    (factor,) = state.factors
    assert factor.decay == "scalar" and sympy.simplify(factor.log_decay - X["dt"] * X["A"]) == 0
    (w,) = factor.writes
    assert (w.scale, w.key, w.value) == (X["dt"], X["B"], X["x"])
    (piece,) = plan.stages[-1].output_pieces
    assert sympy.simplify(piece.expr - piece.reads[0].symbol - X["D"] * X["x"]) == 0


def test_hgrn2_decay_of_any_positive_form():
    plan = analyse_source(
        "cell hgrn2(K, V) { input q: [K]; input f: [K]; input i: [V]; input lb: [K]; state S: [K, V]\n"
        "g = lb + (1 - lb) * sigmoid(f)\nS = g[:, None] * S + outer(1 - g, i)\nemit o = q @ S }"
    )
    assert plan.strategy == "chunked"
    (factor,) = linear(plan, "S").factors
    g = X["lb"] + (1 - X["lb"]) * sigmoid(X["f"])
    assert factor.decay == "diagonal" and sympy.simplify(sympy.exp(factor.log_decay) - g) == 0
    assert not factor.positive  # lb is any real: positivity is taken on trust, and explain says so
    (w,) = factor.writes
    assert sympy.simplify(w.key - (1 - g)) == 0 and w.value == X["i"]


def test_rwkv7_state_written_value_by_key_has_key_axis_one():
    plan = analyse_source(
        "cell r7(V, K) { input r: [K]; input w: [K]; input k: [K]; input v: [V]; input a: [K]; input kk: [K]\n"
        "state S: [V, K]\nS = S * w[None, :] - outer(S @ kk, kk * a) + outer(v, k)\nemit o = S @ r }"
    )
    assert plan.strategy == "chunked"
    state = linear(plan, "S")
    assert state.key_axis == 1
    (factor,) = state.factors
    (c,) = factor.corrections  # S (diag(w) - kk (kk * a)^T): in key-first form (diag(w) - (a kk) kk^T) S^T
    assert c.scale == -1 and sympy.simplify(c.u - X["a"] * X["kk"]) == 0 and c.w == X["kk"]
    (w,) = factor.writes
    assert (w.key, w.value) == (X["k"], X["v"])


def test_aaren_running_max_then_decays_relative_to_it():
    plan = analyse_source(
        "cell aaren(D) { input s: []; input v: [D]; state m: []; state a: [D]; state c: []\n"
        "m_new = max(m, s)\na = a * exp(m - m_new) + v * exp(s - m_new)\nc = c * exp(m - m_new) + exp(s - m_new)\n"
        "m = m_new\nemit o = a / c }"
    )
    assert plan.strategy == "scan"
    assert kinds(plan) == [(("m",), "maxplus"), (("a",), "elementwise"), (("c",), "elementwise")]
    assert plan.components[0].maxplus.a == 0
    assert plan.proof.holds


def test_a_re_im_pair_is_one_coupled_component():
    plan = analyse_source(
        "cell lru(H) { input bre: [H]; input bim: [H]; weight lr: [H]; weight li: [H]; state re: [H]; state im: [H]\n"
        "re_new = lr * re - li * im + bre\nim = li * re + lr * im + bim\nre = re_new\nemit y = re }"
    )
    assert plan.strategy == "scan"
    assert kinds(plan) == [(("re", "im"), "coupled")]
    lr, li = tensor_symbol("lr"), tensor_symbol("li")
    assert plan.components[0].coupled.m == ((lr, -li), (li, lr))
    assert plan.proof.holds


def test_titans_linear_memory_is_chunked_and_refused_with_a_located_reason():
    text = (
        "cell titans(K, V) { input k: [K]; input v: [V]; input q: [K]; input eta: []; input theta: []\n"
        "input alpha: []; state M: [K, V]; state P: [K, V]\n"
        "P = eta * P - theta * outer(k, k @ M - v)\nM = (1 - alpha) * M + P\nemit o = q @ M }"
    )
    plan = analyse_source(text, "titans.rnn")
    assert plan.strategy == "chunked" and kinds(plan) == [(("M", "P"), "coupled-linear")]
    with pytest.raises(LocatedBackendError) as raised:
        rnnc.compile(text, backend="triton")
    message = str(raised.value)
    assert message.startswith("<string>:") and "coupled linear" in message and "^" in message


def test_nonlinear_matrix_state_and_dense_linear_state_run_step_by_step():
    m2 = analyse_source(
        "cell m2(K, V) { input k: [K]; input v: [V]; input f: []; weight W: [V, V]; state S: [K, V]\n"
        "S = tanh(f * S + outer(k, v))\nemit o = S @ W }"
    )
    assert m2.strategy == "sequential" and kinds(m2) == [(("S",), "nonlinear")]
    assert analyse_source(open("examples/lti.rnn").read()).components[0].kind == "dense"


def test_a_chain_of_twelve_states_is_twelve_components():
    states = "\n".join(f"state s{i}: [H]" for i in range(12))
    updates = "\n".join(
        ["s0 = exp(g) * s0 + x"] + [f"s{i} = exp(g) * s{i} + (s{i - 1} + x) * (s{i - 1} + g)" for i in range(1, 12)]
    )
    plan = analyse_source(f"cell c(H) {{ input x: [H]; input g: [H]\n{states}\n{updates}\nemit y = s11 }}")
    assert plan.strategy == "scan" and [c.states for c in plan.components] == [(f"s{i}",) for i in range(12)]
    assert all(c.kind == "elementwise" for c in plan.components)


def test_the_component_proofs_can_fail():
    plan = analyse_source(open("examples/hgrn.rnn").read())
    (piece,) = plan.components[0].affine
    swapped = dataclasses.replace(plan.components[0], affine=(dataclasses.replace(piece, a=piece.b, b=piece.a),))
    proof = prove_components(plan.ir, [swapped])
    assert not proof.holds and any("FAILED" in line for line in proof.lines)
    aaren = analyse_source(
        "cell aaren(D) { input s: []; input v: [D]; state m: []; state a: [D]\n"
        "m_new = max(m, s)\na = a * exp(m - m_new) + v * exp(s - m_new)\nm = m_new\nemit o = a }"
    )
    mp = aaren.components[0]
    wrong = dataclasses.replace(mp, maxplus=dataclasses.replace(mp.maxplus, a=sympy.Integer(1)))
    assert not prove_components(aaren.ir, [wrong]).holds


def test_explain_lists_components_kinds_and_stages():
    text = analyse_source(MLSTM).explain()
    for fragment in ("1. m: maxplus", "2. C: matrix", "3. n: matrix", "scan: m", "chunked: C, n", "max-plus"):
        assert fragment in text, fragment


def test_reads_and_contractions_spelled_with_sums_and_transposes():
    # sum(k[:, None] * S, 0) is k @ S; S.T @ q is q @ S; sum(q * n) is q @ n
    delta = analyse_source(
        "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; input beta: []; state S: [K, V]\n"
        "S = S + beta * outer(k, v - sum(k[:, None] * S, 0))\nemit o = sum(q[:, None] * S, 0) }"
    )
    (factor,) = linear(delta, "S").factors
    assert [(c.scale, c.u, c.w) for c in factor.corrections] == [(-X["beta"], X["k"], X["k"])]
    normalised = analyse_source(
        "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; state S: [K, V]; state n: [K]\n"
        "S = S + outer(k, v); n = n + k\nemit o = (S.T @ q) / max(sum(q * n), 1) }"
    )
    (piece,) = normalised.stages[-1].output_pieces
    assert sorted((r.state, r.new, r.query) for r in piece.reads) == [("S", True, X["q"]), ("n", True, X["q"])]


def test_a_running_max_spelled_with_where():
    plan = analyse_source(
        "cell c(D) { input i: []; input f: []; input v: [D]; state m: []; state a: [D]\n"
        "mn = where(f + m > i, f + m, i)\na = exp(f + m - mn) * a + exp(i - mn) * v\nm = mn\nemit o = a }"
    )
    assert kinds(plan) == [(("m",), "maxplus"), (("a",), "elementwise")]
    assert (plan.components[0].maxplus.a, plan.components[0].maxplus.b) == (X["f"], X["i"])
