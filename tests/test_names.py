"""Generated identifiers never collide, whatever the cell's names (issue 14, item 1).

Three kinds of check:

- the cell the issue found (an input ``x: [2, H]`` split into gates beside an input ``x_0``,
  weights ``b: [2, H]`` and ``b_0``) on the Triton backend against the reference, forward and
  every gradient;
- every strategy's generated modules (and the reference backend's) for cells whose names are
  chosen to meet what the templates write: the module must have exactly as many distinct
  identifiers per function as the same cell with harmless names (a collision merges two), and
  no variable of a template's own may have the shape of a name-carrying identifier of a role
  that module uses (``rnnc.templates.names``), since some cell's names would then meet it;
- hypothesis draws cells with random names, including names that meet after the prefixes and
  suffixes the templates add, and runs them on Triton against the reference.
"""

import ast
import keyword
import re
import string

import pytest
import torch
from cells import all_gradients, random_call, rel_err
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_triton_sequential import _check

import rnnc
from rnnc.compiler import analyse_source
from rnnc.runtime.loop_codegen import loop_source
from rnnc.runtime.reference_codegen import backward_source, forward_source
from rnnc.templates.chunked_codegen import render_chunked
from rnnc.templates.names import derived, parse, token, untoken
from rnnc.templates.scan_codegen import render_scan
from rnnc.templates.sequential_codegen import render_sequential

pytest.importorskip("triton")

# --- the cells, with every name a placeholder ---------------------------------------------------

SEQUENTIAL = """cell {cell}({H}) {{
    input {x}: [2, {H}]
    input {x0}: [{H}]
    input {u}: []
    weight {R}: [2, {H}, {H}]
    weight {b}: [2, {H}]
    weight {b0}: [{H}]
    weight {k}: []
    state {h}: [{H}]
    state {c}: [{H}]
    {a}, {z} = {x} + {R} @ {h} + {b}
    {c} = sigmoid({a} + {x0}) * {c} + tanh({z} * {k} + {u}) / {H}
    {h} = tanh({c}) * sigmoid({z} + {b0})
    emit {h}
    emit {y} = {h} * {b0} + {u}
}}"""

SCAN = """cell {cell}({D}) {{
    input {x}: [{D}]
    input {g}: [{D}]
    input {u}: []
    weight {w}: [{D}]
    state {h}: [{D}]
    state {c}: [{D}]
    {h} = sigmoid({g}) * {h} + (1 - sigmoid({g})) * {x} * {w}
    {c} = exp(-{u} * {w}) * {c} + {x} / {D}
    emit {h}
    emit {y} = {h} * {c} + {u}
}}"""

MATRIX_SCAN = """cell {cell}({D}, {N}) {{
    input {u}: [{D}]
    input {dt}: [{D}]
    input {B}: [{N}]
    input {C}: [{N}]
    weight {A}: [{D}, {N}]
    weight {Dskip}: [{D}]
    state {S}: [{D}, {N}]
    {S} = exp({dt}[:, None] * {A}) * {S} + ({dt} * {u})[:, None] * {B}[None, :] / {N}
    emit {y} = {S} @ {C} + {Dskip} * {u}
}}"""

CHUNKED = """cell {cell}({K}, {V}) {{
    input {q}: [{K}]
    input {k}: [{K}]
    input {v}: [{V}]
    input {g}: []
    weight {w}: [{K}]
    state {S}: [{K}, {V}]
    {S} = exp({g}) * {S} + outer({k} * {w}, {v})
    emit {o} = {q} @ {S}
}}"""

DELTA = """cell {cell}({K}, {V}) {{
    input {q}: [{K}]
    input {k}: [{K}]
    input {v}: [{V}]
    input {beta}: []
    weight {g}: []
    state {S}: [{K}, {V}]
    {S} = exp({g}) * ({S} - {beta} * outer({k}, {k} @ {S})) + {beta} * outer({k}, {v})
    emit {o} = {q} @ {S}
}}"""


def _placeholders(text: str) -> list[str]:
    return sorted({m for m in re.findall(r"(?<!\{)\{(\w+)\}(?!\})", text)})


def _harmless(text: str) -> dict[str, str]:
    """Names no template variable resembles: zqa, zqb, ..."""
    return {key: f"zq{string.ascii_lowercase[i]}" for i, key in enumerate(_placeholders(text))}


# adversarial names: each meets something a template wrote before issue 14
ADVERSARIAL = {
    "sequential": [
        # the issue's cell: gate 0 of x against x_0, gate 0 of b against b_0
        (SEQUENTIAL, {"x": "x", "x0": "x_0", "b": "b", "b0": "b_0"}),
        # the batch mask mask_b, the row mask mask_row; an input that reads as a state's pointer
        (SEQUENTIAL, {"H": "b", "x0": "h_init", "h": "h", "u": "h_saved", "y": "h_final"}),
        (SEQUENTIAL, {"H": "row", "x": "d_x", "x0": "x", "k": "acc_w", "b0": "w", "c": "new", "y": "value_h"}),
        # kernel locals and launch words as names; keywords and a leading underscore
        (SEQUENTIAL, {"H": "t", "x": "rows", "x0": "head", "u": "_", "R": "r", "b": "for", "k": "k", "y": "part"}),
    ],
    "scan": [
        (SCAN, {"D": "t", "w": "rev", "x": "x", "g": "in_x", "h": "first_h", "c": "h", "y": "a"}),
        (SCAN, {"D": "next", "x": "nx", "g": "x_nx", "w": "g", "u": "b", "h": "carry", "c": "h", "y": "p_h"}),
        (SCAN, {"D": "scalar", "x": "lane", "g": "row", "u": "_u", "w": "wt", "h": "s", "c": "s_s", "y": "y_"}),
        (MATRIX_SCAN, {"D": "N", "N": "D", "u": "x_B", "B": "B", "dt": "value_D", "A": "wt_A", "y": "m_0"}),
        # the reference loop's own symbols: hoisted h<n>_<rank>, shared c<rank>_<n>
        (SCAN, {"x": "h1_1", "g": "h0_1", "w": "c1_0", "u": "c0_0", "h": "t0", "c": "in_x", "y": "u_h"}),
    ],
    "chunked": [
        (CHUNKED, {"q": "d_key", "k": "d_query", "v": "d_value", "g": "d_log_decay", "w": "x_q", "S": "s"}),
        (CHUNKED, {"K": "DV", "V": "DK", "q": "key", "k": "query", "v": "w", "g": "gamma", "w": "zero_k", "o": "o"}),
        (DELTA, {"q": "d_beta", "k": "beta", "v": "x_k", "beta": "scale", "g": "w_g", "S": "g_g", "o": "st_S"}),
    ],
}
RENDER = {"sequential": render_sequential, "scan": render_scan, "chunked": render_chunked}


def _cell(text: str, names: dict[str, str]) -> str:
    mapping = {**_harmless(text), **names}
    mapping.setdefault("cell", "c")
    return text.format(**mapping)


def _modules(strategy: str, source: str) -> list[str]:
    plan = analyse_source(source)
    assert plan.strategy == strategy, (plan.strategy, source)
    return [RENDER[strategy](plan).text, forward_source(plan), backward_source(plan), loop_source(plan)]


def _identifiers(tree: ast.AST) -> list[set[str]]:
    """Per function (and the module body): the names it binds or reads, its parameters included."""
    scopes = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            found = {a.arg for a in node.args.args}
            found |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            scopes.append(found)
    outside = [stmt for stmt in tree.body if not isinstance(stmt, ast.FunctionDef)]
    top = {n.id for stmt in outside for n in ast.walk(stmt) if isinstance(n, ast.Name)}
    return [*scopes, top]


def _user_names(source: str) -> set[str]:
    plan = analyse_source(source)
    ir = plan.ir
    return {d.name for d in ir.decls} | {o.name for o in ir.outputs} | set(ir.dims)


CASES = [(s, i) for s, cases in ADVERSARIAL.items() for i in range(len(cases))]


@pytest.mark.parametrize("strategy,index", CASES, ids=[f"{s}-{i}" for s, i in CASES])
def test_adversarial_names_give_as_many_identifiers_as_harmless_ones(strategy, index):
    text, names = ADVERSARIAL[strategy][index]
    adversarial = _cell(text, names)
    harmless = _cell(text, {})
    for ours, theirs in zip(_modules(strategy, adversarial), _modules(strategy, harmless)):
        compile(ours, "<generated>", "exec")  # a valid module, whatever the names
        ours_scopes, their_scopes = _identifiers(ast.parse(ours)), _identifiers(ast.parse(theirs))
        assert len(ours_scopes) == len(their_scopes)
        for mine, reference in zip(ours_scopes, their_scopes):
            # a collision merges two identifiers; renaming the cell's names must not change the count
            assert len(mine) == len(reference), sorted(mine)


@pytest.mark.parametrize("strategy", [*ADVERSARIAL, "reference"])
def test_no_template_variable_has_the_shape_of_a_name_carrying_one(strategy):
    """For each module family: the roles its name-carrying identifiers use (read off the cells with
    harmless names, where no variable of a template's own can pass for one), and no variable of a
    template's own parsing to one of those roles (a cell naming a tensor after its tail would meet it)."""
    cases = [c for cases in ADVERSARIAL.values() for c in cases] if strategy == "reference" else ADVERSARIAL[strategy]
    pick = slice(1, 4) if strategy == "reference" else slice(0, 1)
    roles, found = set(), []  # found: (identifier, parsed, the cell's names)
    for text, names in cases:
        harmless = set(_harmless(text).values())
        for source, adversarial in ((_cell(text, names), True), (_cell(text, {}), False)):
            users = _user_names(source)
            for module in _modules(_strategy_of(source), source)[pick]:
                for scope in _identifiers(ast.parse(module)):
                    found += [(name, parse(name), users) for name in scope]
                    if not adversarial:
                        roles |= {p.role for p in map(parse, scope) if p is not None and p.user in harmless}
    assert roles, "no identifier carries a cell's name: the parse does not match the templates"
    clashes = sorted({name for name, p, users in found if p is not None and p.user not in users and p.role in roles})
    assert not clashes, f"template variables shaped like name-carrying ones: {clashes}"


def _strategy_of(source: str) -> str:
    return analyse_source(source).strategy


def test_the_issue_cell_on_triton_matches_the_reference_forward_and_every_gradient():
    cell = _cell(SEQUENTIAL, {"H": "H", **ADVERSARIAL["sequential"][0][1]})
    assert "input x: [2, H]" in cell and "input x_0: [H]" in cell and "weight b_0: [H]" in cell
    _check(cell, 3, 5, 2, {"H": 24}, torch.float64, 1e-9)  # whole head
    _check(cell, 2, 3, 1, {"H": 40}, torch.float32, 1e-4, split=3)  # a head split over three programs


# --- the scheme itself ------------------------------------------------------------------------


def test_the_scheme_is_injective_on_every_short_name():
    """Every name of up to four characters over {a, B, 0, _} (underscores leading, doubled, trailing),
    under roles that are prefixes of each other, with and without a gate: all distinct, all parsed back."""
    import itertools

    names = ["".join(p) for n in range(1, 5) for p in itertools.product("aB0_", repeat=n) if not p[0].isdigit()]
    roles = [("x",), ("x", "x"), ("a",), ("a", "a0"), ("d", "x"), ("mask",), ("mask", "full"), ("init", "ptr")]
    seen = {}
    for role in roles:
        for name in names:
            for gate in (None, 0, 1, 10):
                identifier = derived(*role, user=name, gate=gate)
                assert identifier.isidentifier() and not keyword.iskeyword(identifier)
                assert identifier not in seen, (identifier, seen.get(identifier), (role, name, gate))
                seen[identifier] = (role, name, gate)
                parsed = parse(identifier)
                assert (parsed.role, parsed.user, parsed.gate) == (role, name, gate)
    assert len(seen) == len(roles) * len(names) * 4
    assert all(untoken(token(n)) == n for n in names)


def test_a_role_word_or_a_name_that_breaks_the_scheme_is_refused():
    with pytest.raises(ValueError, match="role word"):
        derived("x__", user="h")
    with pytest.raises(ValueError, match="user name"):
        derived("x", user="h-1")
    with pytest.raises(ValueError, match="gate"):
        derived("x", user="h", gate=True)


# --- random names on Triton against the reference ---------------------------------------------

RESERVED = {"cell", "input", "weight", "state", "emit", "None"}
POOL = [
    *"xbhtkgpqwcBTuvaz",
    *["x_0", "b_0", "x_x", "_", "__", "_x", "x_", "row", "rows", "head", "lane", "mask", "zero", "size", "dim"],
    *["mask_b", "mask_row", "zero_row", "state_row", "BLOCK_B", "BLOCK_T", "ptr", "init_ptr", "d_query", "key"],
    *["in_x", "w_b", "st_h", "d_in_x", "s_h", "acc_w_b", "full_s_h", "TILE_H", "COMPUTE", "tl", "triton", "torch"],
    *["inputs", "weights", "states", "like", "dims", "grad", "ops", "F", "for", "lambda", "True", "t0", "ax0"],
]
AFFIXES = ["x_", "w_", "s_", "d_", "in_", "mask_", "acc_", "ptr_", "init_", "full_", "nx_", "wt_", "_", "0"]


@st.composite
def _names(draw, count: int) -> list[str]:
    """``count`` distinct names: random identifiers, the pool above, and earlier names with a
    template's prefix or a gate suffix added (names that meet after the templates' affixes)."""
    names: list[str] = []
    while len(names) < count:
        kind = draw(st.integers(0, 2)) if names else draw(st.integers(0, 1))
        if kind == 0:
            name = draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,3}", fullmatch=True))
        elif kind == 1:
            name = draw(st.sampled_from(POOL))
        else:
            base = draw(st.sampled_from(names))
            affix = draw(st.sampled_from(AFFIXES))
            name = affix + base if affix != "0" and draw(st.booleans()) else f"{base}_{draw(st.integers(0, 3))}"
        if name not in names and name not in RESERVED and name not in ("B", "T", "NH") and name.isidentifier():
            names.append(name)
    return names


RANDOM_SETTINGS = settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example]
)


def _run_both(text: str, dims: dict, dtype=torch.float64, tol=1e-9):
    """Triton (the interpreter here) against the reference on one random call, forward and every gradient."""
    triton_cell = rnnc.compile(text, backend="triton")
    reference = rnnc.compile(text, backend="reference")
    ir = triton_cell.plan.ir
    tensors, states = random_call(ir, B=2, T=3, NH=1, dims=dims, dtype=dtype, positive=())
    leaves = [*tensors.values(), *states.values()]
    ours, theirs = triton_cell(state=states, **tensors), reference(state=states, **tensors)
    assert triton_cell.last_backend == "triton"
    for name, value in ours.outputs.items():
        assert not torch.isnan(value).any() and rel_err(value, theirs.outputs[name]) < tol, name
    for name, value in ours.state.items():
        assert rel_err(value, theirs.state[name]) < tol, name
    for leaf, mine, ref in zip(
        leaves, all_gradients(ours.outputs, ours.state, leaves), all_gradients(theirs.outputs, theirs.state, leaves)
    ):
        mine = torch.zeros_like(leaf) if mine is None else mine
        ref = torch.zeros_like(leaf) if ref is None else ref
        assert rel_err(mine, ref) < tol


def _draw_cell(data, text: str) -> tuple[str, dict[str, str]]:
    keys = [k for k in _placeholders(text) if k != "cell"]
    names = data.draw(_names(len(keys) + 1))
    mapping = dict(zip(keys, names)) | {"cell": names[-1]}
    return text.format(**mapping), mapping


def _dims_of(text: str, mapping: dict, sizes: dict[str, int]) -> dict[str, int]:
    return {mapping[k]: v for k, v in sizes.items()}


@RANDOM_SETTINGS
@given(data=st.data())
def test_random_names_sequential(data):
    text, mapping = _draw_cell(data, SEQUENTIAL)
    _run_both(text, _dims_of(text, mapping, {"H": 16}))


@RANDOM_SETTINGS
@given(data=st.data())
def test_random_names_scan(data):
    text, mapping = _draw_cell(data, SCAN)
    _run_both(text, _dims_of(text, mapping, {"D": 5}))


@RANDOM_SETTINGS
@given(data=st.data())
def test_random_names_chunked(data):
    text, mapping = _draw_cell(data, CHUNKED)
    _run_both(text, _dims_of(text, mapping, {"K": 16, "V": 16}))
