"""``rnnc.compile(...)`` with the reference backend, as a user sees it.

Sources, argument checking (every error a ValueError that names the argument and the layout),
dim binding, default states, dtypes, heads, outputs, introspection and gradients.
Everything uses fresh random inputs and small sizes.
"""

import re
from pathlib import Path

import pytest
import torch
from conftest import TWO_CELLS

import rnnc
from rnnc import BackendError, RnncError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


# B, T, NH and the dims used throughout: all distinct, so a message that shows one shows which.
B, T, NH, H = 2, 3, 2, 5
K, V = 3, 4


def compile_ref(src, **kw):
    return rnnc.compile(src, backend="reference", **kw)


@pytest.fixture(scope="module")
def lstm():
    return compile_ref(str(EXAMPLES / "lstm.rnn"))


@pytest.fixture(scope="module")
def gla():
    return compile_ref(EXAMPLES / "gla.rnn")


def lstm_args(b=B, t=T, nh=NH, h=H, dtype=torch.float64):
    return {
        "x": torch.randn(b, t, nh, 4, h, dtype=dtype),
        "R": 0.3 * torch.randn(nh, 4, h, h, dtype=dtype),
        "b": torch.randn(nh, 4, h, dtype=dtype),
    }


def gla_args(b=B, t=T, nh=NH, k=K, v=V, dtype=torch.float64):
    return {
        "q": torch.randn(b, t, nh, k, dtype=dtype),
        "k": torch.randn(b, t, nh, k, dtype=dtype),
        "v": torch.randn(b, t, nh, v, dtype=dtype),
        "g": torch.nn.functional.logsigmoid(torch.randn(b, t, nh, k, dtype=dtype)),
    }


def shape_text(shape) -> str:
    """How a shape appears in a message: ``[2, 3, 5]``."""
    return str(list(shape))


# --------------------------------------------------------------------------- sources


def test_path_string_pathlib_and_text_give_the_same_cell():
    path = EXAMPLES / "hgrn.rnn"
    cells = [compile_ref(str(path)), compile_ref(path), compile_ref(path.read_text())]
    assert {c.strategy for c in cells} == {"scan"}
    assert {c.name for c in cells} == {"hgrn"}
    x, g = torch.randn(B, T, NH, H, dtype=torch.float64), -torch.rand(B, T, NH, H, dtype=torch.float64)
    outs = [c(x=x, g=g) for c in cells]
    for out in outs[1:]:
        torch.testing.assert_close(out.h, outs[0].h, rtol=0, atol=0)
        torch.testing.assert_close(out.state["h"], outs[0].state["h"], rtol=0, atol=0)


def test_relative_path_string_from_the_repository_root():
    assert compile_ref("examples/gla.rnn").strategy == "chunked"


def test_name_picks_a_cell_of_a_multi_cell_source(tmp_path):
    assert compile_ref(TWO_CELLS, name="acc").strategy == "scan"
    squash = compile_ref(TWO_CELLS, name="squash")
    assert squash.name == "squash" and squash.strategy == "sequential"
    out = squash(x=torch.randn(B, T, NH, H))
    assert set(out.outputs) == {"y"}
    path = tmp_path / "two.rnn"
    path.write_text(TWO_CELLS)
    assert compile_ref(path, name="squash").name == "squash"
    assert compile_ref(str(path), name="acc").name == "acc"


def test_multi_cell_source_without_name_says_to_pick_one():
    with pytest.raises(RnncError, match="pick one by name") as caught:
        compile_ref(TWO_CELLS)
    assert "acc" in str(caught.value) and "squash" in str(caught.value)


def test_unknown_name_lists_the_cells():
    with pytest.raises(RnncError) as caught:
        compile_ref(TWO_CELLS, name="nope")
    text = str(caught.value)
    assert "'nope'" in text and "acc" in text and "squash" in text


@pytest.mark.parametrize("as_path", [False, True], ids=["str", "pathlib"])
def test_missing_file_is_an_rnnc_error_not_an_oserror(tmp_path, as_path):
    missing = tmp_path / "nowhere" / "missing.rnn"
    src = missing if as_path else str(missing)
    with pytest.raises(RnncError) as caught:
        compile_ref(src)
    assert not isinstance(caught.value, OSError)
    assert "missing.rnn" in str(caught.value) and "cannot read" in str(caught.value)


def test_existing_file_with_another_suffix_given_as_a_string(tmp_path):
    path = tmp_path / "cell.txt"
    path.write_text(TWO_CELLS)
    assert compile_ref(path, name="acc").name == "acc"  # works as a Path
    assert compile_ref(str(path), name="acc").name == "acc"


def test_compile_of_a_non_string_is_a_clear_error():
    with pytest.raises((TypeError, RnncError)):
        rnnc.compile(123)


# --------------------------------------------------------------------------- argument errors


def test_unknown_keyword_names_it_and_lists_the_arguments(lstm):
    args = lstm_args()
    with pytest.raises(ValueError) as caught:
        lstm(**args, y=args["x"])
    text = str(caught.value)
    assert "'y'" in text and "x, R, b" in text


def test_state_passed_as_a_keyword_hints_at_state_dict(lstm):
    with pytest.raises(ValueError, match=r"state=\{") as caught:
        lstm(**lstm_args(), h=torch.zeros(B, NH, H, dtype=torch.float64))
    assert "'h'" in str(caught.value)


@pytest.mark.parametrize(
    "missing,kind,layout",
    [("x", "input", "[B, T, NH, 4, H]"), ("R", "weight", "[NH, 4, H, H]"), ("b", "weight", "[NH, 4, H]")],
)
def test_missing_input_or_weight_names_it_with_its_layout(lstm, missing, kind, layout):
    args = lstm_args()
    del args[missing]
    with pytest.raises(ValueError) as caught:
        lstm(**args)
    text = str(caught.value)
    assert f"'{missing}'" in text and kind in text and layout in text, text


def test_none_counts_as_missing(lstm):
    with pytest.raises(ValueError, match="'b'"):
        lstm(**{**lstm_args(), "b": None})


@pytest.mark.parametrize(
    "name,bad,layout",
    [
        ("x", lambda a: a["x"][0], "[B, T, NH, 4, H]"),  # 4 axes instead of 5
        ("x", lambda a: a["x"][..., None], "[B, T, NH, 4, H]"),  # 6 axes
        ("R", lambda a: a["R"][0], "[NH, 4, H, H]"),  # the head axis left out
        ("b", lambda a: a["b"].reshape(NH, 4 * H), "[NH, 4, H]"),
    ],
    ids=["input-too-few", "input-too-many", "weight-without-NH", "weight-flattened"],
)
def test_wrong_number_of_axes(lstm, name, bad, layout):
    args = lstm_args()
    args[name] = bad(args)
    with pytest.raises(ValueError) as caught:
        lstm(**args)
    text = str(caught.value)
    assert text.startswith(f"{name}:"), text
    assert layout in text and shape_text(args[name].shape) in text, text
    assert f"needs {len(layout.split(','))} axes" in text and f"has {args[name].dim()} axes" in text, text


def test_dim_clash_between_input_and_weight(lstm):
    args = lstm_args()
    args["R"] = torch.randn(NH, 4, H + 1, H + 1, dtype=torch.float64)
    with pytest.raises(ValueError) as caught:
        lstm(**args)
    text = str(caught.value)
    assert text.startswith("R:"), text
    assert "[NH, 4, H, H]" in text, text
    assert f"H = {H} (from x)" in text, text  # where the clashing dim was bound
    assert shape_text(args["R"].shape) in text, text
    assert f"is {H + 1}, expected {H}" in text, text


def test_dim_clash_between_two_inputs(gla):
    args = gla_args()
    args["k"] = torch.randn(B, T, NH, K + 2, dtype=torch.float64)
    with pytest.raises(ValueError) as caught:
        gla(**args)
    text = str(caught.value)
    assert text.startswith("k:") and "[B, T, NH, K]" in text and f"K = {K} (from q)" in text, text
    assert shape_text(args["k"].shape) in text, text


@pytest.mark.parametrize("axis,letter", [(0, "B"), (1, "T"), (2, "NH")])
def test_batch_time_heads_mismatch_between_inputs(gla, axis, letter):
    args = gla_args()
    shape = list(args["g"].shape)
    shape[axis] += 1
    args["g"] = torch.randn(shape, dtype=torch.float64)
    with pytest.raises(ValueError) as caught:
        gla(**args)
    text = str(caught.value)
    assert text.startswith("g:") and "[B, T, NH, K]" in text, text
    assert shape_text(shape) in text, text
    expected = [B, T, NH][axis]
    assert f"{letter} = {expected} (from q)" in text and f"{letter}, is {expected + 1}" in text, text


def test_heads_mismatch_between_input_and_weight(lstm):
    args = lstm_args()
    args["b"] = torch.randn(NH + 1, 4, H, dtype=torch.float64)
    with pytest.raises(ValueError) as caught:
        lstm(**args)
    text = str(caught.value)
    assert text.startswith("b:") and "[NH, 4, H]" in text and f"NH = {NH} (from x)" in text, text


@pytest.mark.parametrize("axis,letter", [(0, "B"), (1, "NH"), (2, "H")])
def test_initial_state_shape_mismatch(lstm, axis, letter):
    shape = [B, NH, H]
    shape[axis] += 1
    with pytest.raises(ValueError) as caught:
        lstm(**lstm_args(), state={"c": torch.zeros(shape, dtype=torch.float64)})
    text = str(caught.value)
    assert text.startswith("c:") and "[B, NH, H]" in text and shape_text(shape) in text, text
    assert f"{letter}, is {shape[axis]}" in text, text


def test_unknown_state_name_lists_the_states(lstm):
    with pytest.raises(ValueError) as caught:
        lstm(**lstm_args(), state={"q": torch.zeros(B, NH, H, dtype=torch.float64)})
    text = str(caught.value)
    assert "'q'" in text and "h, c" in text, text


@pytest.mark.parametrize("value,typename", [(3.0, "float"), ([1.0, 2.0], "list")])
def test_non_tensor_weight(lstm, value, typename):
    with pytest.raises(ValueError) as caught:
        lstm(**{**lstm_args(), "b": value})
    text = str(caught.value)
    assert text.startswith("b:") and "torch.Tensor" in text and typename in text, text


def test_numpy_array_is_not_a_tensor(lstm):
    args = lstm_args()
    args["x"] = args["x"].numpy()
    with pytest.raises(ValueError, match=r"^x: .*torch\.Tensor.*ndarray"):
        lstm(**args)


def test_non_tensor_initial_state(lstm):
    with pytest.raises(ValueError, match=r"^h: .*torch\.Tensor.*list"):
        lstm(**lstm_args(), state={"h": [0.0] * H})


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_tensor(lstm, dtype):
    args = lstm_args()
    args["x"] = args["x"].to(dtype)
    with pytest.raises(ValueError) as caught:
        lstm(**args)
    text = str(caught.value)
    assert text.startswith("x:") and "floating-point" in text and str(dtype) in text, text


def test_integer_initial_state(lstm):
    with pytest.raises(ValueError, match=r"^h: .*floating-point.*int64"):
        lstm(**lstm_args(), state={"h": torch.zeros(B, NH, H, dtype=torch.int64)})


def test_mixed_float32_and_float64_inputs(gla):
    args = gla_args()
    args["v"] = args["v"].float()
    with pytest.raises(ValueError) as caught:
        gla(**args)
    text = str(caught.value)
    assert text.startswith("v:") and "torch.float32" in text and "torch.float64" in text and "q" in text, text


def test_mixed_dtypes_between_input_and_weight(lstm):
    args = lstm_args(dtype=torch.float32)
    args["R"] = args["R"].double()
    with pytest.raises(ValueError, match=r"^R: .*float64.*float32"):
        lstm(**args)


def test_positional_tensor_is_a_clear_error(lstm):
    args = lstm_args()
    with pytest.raises((TypeError, ValueError), match="keyword|state"):
        lstm(args["x"], R=args["R"], b=args["b"])


# --------------------------------------------------------------------------- dims

DOUBLED = """
cell doubled(H) {
    input x: [2*H]
    state h: [H]
    a, c = x
    h = sigmoid(a) * h + c
    emit h
}
"""


def test_doubled_dim_binds_half_the_axis():
    cell = compile_ref(DOUBLED)
    out = cell(x=torch.randn(B, T, NH, 48))
    assert out.h.shape == (B, T, NH, 24)
    assert out.state["h"].shape == (B, NH, 24)


def test_doubled_dim_accepts_a_matching_state_and_rejects_a_wrong_one():
    cell = compile_ref(DOUBLED)
    x = torch.randn(B, T, NH, 48)
    assert cell(x=x, state={"h": torch.randn(B, NH, 24)}).h.shape == (B, T, NH, 24)
    with pytest.raises(ValueError) as caught:
        cell(x=x, state={"h": torch.randn(B, NH, 48)})
    text = str(caught.value)
    assert text.startswith("h:") and "[B, NH, H]" in text and "H = 24 (from x)" in text, text


def test_odd_size_for_a_doubled_dim_is_a_value_error():
    cell = compile_ref(DOUBLED)
    with pytest.raises(ValueError) as caught:
        cell(x=torch.randn(B, T, NH, 47))
    text = str(caught.value)
    assert text.startswith("x:") and "47" in text and "2*H" in text, text


def test_product_dim_binds_after_its_factor():
    cell = compile_ref("cell p(H, K) { input x: [H*K]; input y: [K]; state h: [K]; h = h + y + sum(x, 0); emit h }")
    out = cell(x=torch.randn(1, 2, 1, 12), y=torch.randn(1, 2, 1, 4))
    assert out.h.shape == (1, 2, 1, 4)
    with pytest.raises(ValueError, match=r"^x: .*13"):
        cell(x=torch.randn(1, 2, 1, 13), y=torch.randn(1, 2, 1, 4))


@pytest.mark.parametrize("dim", ["T", "B", "NH"])
def test_dim_named_like_a_layout_axis(dim):
    src = f"cell c({dim}) {{ input x: [{dim}]; state h: [{dim}]; h = h + x; emit h }}"
    try:
        cell = compile_ref(src)
    except RnncError:
        return  # rejecting the name at compile time is fine
    out = cell(x=torch.randn(2, 5, 1, 3))
    assert out.h.shape == (2, 5, 1, 3) and out.state["h"].shape == (2, 1, 3)


STATE_ONLY_DIM = """
cell memory(H, K) {
    input x: [H]
    state h: [H]
    state s: [K]
    h = h + x
    s = 0.5 * s + sum(x, 0)
    emit h
}
"""


def test_dim_bound_only_by_a_given_state():
    cell = compile_ref(STATE_ONLY_DIM)
    out = cell(x=torch.randn(1, 2, 1, 3), state={"s": torch.randn(1, 1, 4)})
    assert out.state["s"].shape == (1, 1, 4)


def test_dim_bound_only_by_a_missing_state_is_a_value_error():
    cell = compile_ref(STATE_ONLY_DIM)
    with pytest.raises(ValueError, match="K"):
        cell(x=torch.randn(1, 2, 1, 3))


# --------------------------------------------------------------------------- states


def test_missing_initial_states_are_zero(lstm):
    args = lstm_args()
    zeros = {"h": torch.zeros(B, NH, H, dtype=torch.float64), "c": torch.zeros(B, NH, H, dtype=torch.float64)}
    default, empty, explicit = lstm(**args), lstm(**args, state={}), lstm(**args, state=zeros)
    for out in (empty, explicit):
        torch.testing.assert_close(out.h, default.h, rtol=0, atol=0)
        for name in ("h", "c"):
            torch.testing.assert_close(out.state[name], default.state[name], rtol=0, atol=0)


def test_one_missing_state_is_zero_while_the_other_is_used(lstm):
    args = lstm_args()
    h0 = torch.randn(B, NH, H, dtype=torch.float64)
    partial = lstm(**args, state={"h": h0})
    full = lstm(**args, state={"h": h0, "c": torch.zeros(B, NH, H, dtype=torch.float64)})
    torch.testing.assert_close(partial.h, full.h, rtol=0, atol=0)
    assert not torch.equal(partial.h, lstm(**args).h)  # h0 is not ignored


def test_missing_matrix_state_is_zero(gla):
    args = gla_args()
    zero = torch.zeros(B, NH, K, V, dtype=torch.float64)
    torch.testing.assert_close(gla(**args, state={}).o, gla(**args, state={"S": zero}).o, rtol=0, atol=0)


def test_initial_states_are_not_modified(lstm):
    h0, c0 = torch.randn(B, NH, H, dtype=torch.float64), torch.randn(B, NH, H, dtype=torch.float64)
    h_copy, c_copy = h0.clone(), c0.clone()
    lstm(**lstm_args(), state={"h": h0, "c": c0})
    assert torch.equal(h0, h_copy) and torch.equal(c0, c_copy)


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize(
    "dtype,state_dtype",
    [(torch.float64, torch.float64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)],
    ids=["float64", "float32", "bfloat16"],
)
def test_output_and_final_state_dtypes(lstm, gla, dtype, state_dtype):
    # interface.md: outputs have the inputs' dtype; final states are float32 unless the inputs are float64
    out = lstm(**lstm_args(dtype=dtype))
    assert out.h.dtype == dtype
    assert {k: v.dtype for k, v in out.state.items()} == {"h": state_dtype, "c": state_dtype}
    out = gla(**gla_args(dtype=dtype))
    assert out.o.dtype == dtype and out.state["S"].dtype == state_dtype
    assert torch.isfinite(out.o.float()).all()


def test_float64_initial_states_with_float32_inputs_are_cast(lstm):
    out = lstm(**lstm_args(dtype=torch.float32), state={"h": torch.randn(B, NH, H, dtype=torch.float64)})
    assert out.h.dtype == torch.float32 and out.state["h"].dtype == torch.float32


def test_float32_and_float64_agree(gla):
    args = gla_args()
    hi = gla(**args)
    lo = gla(**{k: v.float() for k, v in args.items()})
    torch.testing.assert_close(lo.o.double(), hi.o, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- heads, steps, outputs


@pytest.mark.parametrize("nh", [1, 3])
def test_number_of_heads(lstm, nh):
    out = lstm(**lstm_args(nh=nh))
    assert out.h.shape == (B, T, nh, H)
    assert out.state["c"].shape == (B, nh, H)


def test_heads_are_independent(lstm, gla):
    args = lstm_args(nh=3)
    base = lstm(**args)
    changed = {k: v.clone() for k, v in args.items()}
    changed["x"][:, :, 1] = torch.randn_like(changed["x"][:, :, 1])
    changed["R"][1] = torch.randn_like(changed["R"][1])
    changed["b"][1] = torch.randn_like(changed["b"][1])
    other = lstm(**changed)
    for head in (0, 2):
        torch.testing.assert_close(other.h[:, :, head], base.h[:, :, head], rtol=0, atol=0)
        torch.testing.assert_close(other.state["c"][:, head], base.state["c"][:, head], rtol=0, atol=0)
    assert not torch.allclose(other.h[:, :, 1], base.h[:, :, 1])

    args = gla_args(nh=3)
    base = gla(**args)
    changed = {k: v.clone() for k, v in args.items()}
    changed["k"][:, :, 1] += 1.0
    other = gla(**changed)
    torch.testing.assert_close(other.o[:, :, 0], base.o[:, :, 0], rtol=0, atol=0)
    torch.testing.assert_close(other.o[:, :, 2], base.o[:, :, 2], rtol=0, atol=0)
    assert not torch.allclose(other.o[:, :, 1], base.o[:, :, 1])


def test_batch_entries_are_independent(gla):
    args = gla_args(b=3)
    base = gla(**args)
    changed = {k: v.clone() for k, v in args.items()}
    changed["v"][2] += 1.0
    other = gla(**changed)
    torch.testing.assert_close(other.o[:2], base.o[:2], rtol=0, atol=0)
    assert not torch.allclose(other.o[2], base.o[2])


def test_later_steps_do_not_change_earlier_outputs(lstm):
    args = lstm_args(t=4)
    base = lstm(**args)
    changed = {k: v.clone() for k, v in args.items()}
    changed["x"][:, 2:] = torch.randn_like(changed["x"][:, 2:])
    other = lstm(**changed)
    torch.testing.assert_close(other.h[:, :2], base.h[:, :2], rtol=0, atol=0)
    assert not torch.allclose(other.h[:, 2:], base.h[:, 2:])


def test_one_step(lstm, gla):
    out = lstm(**lstm_args(t=1))
    assert out.h.shape == (B, 1, NH, H)
    torch.testing.assert_close(out.h[:, 0], out.state["h"], rtol=0, atol=0)  # emit h is the final h
    out = gla(**gla_args(t=1))
    assert out.o.shape == (B, 1, NH, V) and out.state["S"].shape == (B, NH, K, V)


def test_one_step_of_gla_by_hand(gla):
    args = gla_args(t=1)
    S0 = torch.randn(B, NH, K, V, dtype=torch.float64)
    out = gla(**args, state={"S": S0})
    q, k, v, g = (args[n][:, 0] for n in "qkvg")
    S1 = torch.exp(g)[..., None] * S0 + k[..., :, None] * v[..., None, :]
    torch.testing.assert_close(out.state["S"], S1)
    torch.testing.assert_close(out.o[:, 0], torch.einsum("bnk,bnkv->bnv", q, S1))


def test_every_output_and_state_is_reachable():
    cell = compile_ref(EXAMPLES / "slstm.rnn")
    x = torch.randn(B, T, NH, 4, H)
    out = cell(x=x, R=0.1 * torch.randn(NH, 4, H, H), b=torch.randn(NH, 4, H))
    assert set(out.outputs) == {"h"} and out.h.shape == (B, T, NH, H)
    assert set(out.state) == {"h", "c", "n", "m"}
    for value in out.state.values():
        assert value.shape == (B, NH, H)

    mamba = compile_ref(EXAMPLES / "mamba.rnn")
    D, N = 3, 4
    out = mamba(
        u=torch.randn(B, T, NH, D),
        dt=torch.rand(B, T, NH, D),
        B=torch.randn(B, T, NH, N),
        C=torch.randn(B, T, NH, N),
        A=-torch.rand(NH, D, N),
        Dskip=torch.randn(NH, D),
    )
    assert out.y.shape == (B, T, NH, D) and out.state["S"].shape == (B, NH, D, N)


def test_named_emit_is_an_attribute():
    out = compile_ref(TWO_CELLS, name="squash")(x=torch.randn(B, T, NH, H))
    torch.testing.assert_close(out.y[:, -1], 2 * out.state["h"])


def test_unknown_output_is_an_attribute_error_naming_the_outputs(lstm):
    out = lstm(**lstm_args())
    with pytest.raises(AttributeError) as caught:
        out.nonexistent
    text = str(caught.value)
    assert "'nonexistent'" in text and "h" in text.split(";")[-1], text
    assert not hasattr(out, "c")  # a state is not an output
    assert "state" not in out.outputs


# --------------------------------------------------------------------------- introspection and backends


def test_strategy_explain_and_source():
    for name, strategy in [("lstm", "sequential"), ("hgrn", "scan"), ("gla", "chunked")]:
        cell = compile_ref(EXAMPLES / f"{name}.rnn")
        assert cell.strategy == strategy
        explanation = cell.explain()
        assert isinstance(explanation, str) and strategy in explanation
        assert f"cell {name}(" in explanation
        assert isinstance(cell.source, str) and "def step(" in cell.source
        assert re.search(rf"<rnnc\.Cell {name} strategy={strategy}", repr(cell))


# a chunked cell the Triton template does not cover: two rank-one erasures in one step's transition
UNCOVERED = (
    "cell two_erasures(K, V) { input a: [K]; input b: [K]; input k: [K]; input q: [K]; input v: [V]\n"
    "state S: [K, V]\nS = S - outer(a, a @ S) - outer(b, b @ S) + outer(k, v)\nemit o = q @ S }"
)


def test_triton_backend_refuses_a_cell_its_templates_do_not_cover():
    with pytest.raises(BackendError) as caught:
        rnnc.compile(UNCOVERED, backend="triton")
    assert "do not cover cell two_erasures: needs at most one rank-one correction" in str(caught.value)
    assert "reference" in str(caught.value)  # says what to use instead


def test_unknown_backend_lists_the_backends():
    with pytest.raises(BackendError) as caught:
        rnnc.compile(EXAMPLES / "gla.rnn", backend="cuda")
    text = str(caught.value)
    assert "'cuda'" in text and "reference" in text and "triton" in text


def test_auto_backend_picks_triton_only_on_gpu_or_in_the_interpreter(monkeypatch):
    cell = rnnc.compile(EXAMPLES / "hgrn.rnn")
    assert cell.backend == "auto"
    args = {"x": torch.randn(1, 2, 1, 3), "g": -torch.rand(1, 2, 1, 3)}
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert cell(**args).h.shape == (1, 2, 1, 3) and cell.last_backend == "reference"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert cell(**args).h.shape == (1, 2, 1, 3) and cell.last_backend == "triton"
    uncovered = rnnc.compile(UNCOVERED)  # no Triton template covers it: auto falls back to the reference
    q = torch.randn(1, 2, 1, 3)
    uncovered(a=q, b=q, q=q, k=q, v=torch.randn(1, 2, 1, 4))
    assert uncovered.last_backend == "reference"


# --------------------------------------------------------------------------- gradients


def _lstm_call():
    states = {name: torch.randn(B, NH, H, dtype=torch.float64) for name in ("h", "c")}
    return lstm_args(), states


def _gla_call():
    return gla_args(), {"S": torch.randn(B, NH, K, V, dtype=torch.float64)}


def _mamba_call():
    D, N = 3, 4
    tensors = {
        "u": torch.randn(B, T, NH, D, dtype=torch.float64),
        "dt": torch.rand(B, T, NH, D, dtype=torch.float64) + 0.1,
        "B": torch.randn(B, T, NH, N, dtype=torch.float64),
        "C": torch.randn(B, T, NH, N, dtype=torch.float64),
        "A": -torch.rand(NH, D, N, dtype=torch.float64) - 0.1,
        "Dskip": torch.randn(NH, D, dtype=torch.float64),
    }
    return tensors, {"S": torch.randn(B, NH, D, N, dtype=torch.float64)}


@pytest.mark.parametrize("name,make", [("lstm", _lstm_call), ("gla", _gla_call), ("mamba", _mamba_call)])
def test_gradients_reach_every_input_weight_and_initial_state(name, make):
    cell = compile_ref(EXAMPLES / f"{name}.rnn")
    tensors, states = make()
    leaves = {**tensors, **{f"state {k}": v for k, v in states.items()}}
    for leaf in leaves.values():
        leaf.requires_grad_()
    out = cell(**tensors, state=states)
    loss = sum((v * torch.randn_like(v)).sum() for v in [*out.outputs.values(), *out.state.values()])
    loss.backward()
    for label, leaf in leaves.items():
        assert leaf.grad is not None, f"{name}: no gradient for {label}"
        assert leaf.grad.shape == leaf.shape
        assert torch.isfinite(leaf.grad).all(), f"{name}: non-finite gradient for {label}"
        assert leaf.grad.abs().sum() > 0, f"{name}: zero gradient for {label}"


def test_gradient_matches_finite_differences_on_a_small_call(gla):
    args = gla_args(b=1, t=2, nh=1, k=2, v=2)
    S0 = torch.randn(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    leaves = [*(a.requires_grad_() for a in args.values()), S0]

    def f(q, k, v, g, S):
        out = gla(q=q, k=k, v=v, g=g, state={"S": S})
        return out.o.sum() + out.state["S"].square().sum()

    assert torch.autograd.gradcheck(f, leaves)


def test_readme_ten_line_training_example_runs_on_the_kernels_and_learns():
    import re
    from pathlib import Path

    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    section = text.split("## Your own cell, trained, in ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 12  # the promise in the title, roughly
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    from rnnc import config

    assert scope["cell"].last_backend == ("triton" if config.triton_interpret() else "reference")
    losses = scope["losses"]
    assert len(losses) == 20 and losses[-1] < 0.9 * losses[0], losses


def test_reference_reads_a_dim_inside_a_function():
    import torch

    import rnnc

    plain = "cell a(K, V) { input q: [K]; input k: [K]; input v: [V]; state S: [K, V]\n"
    plain += "S = S + outer(k, v)\nemit o = q @ S }"
    scaled = plain.replace("emit o = q @ S", "emit o = (q / sqrt(K)) @ S")
    q, k, v = torch.randn(2, 3, 1, 4, dtype=torch.float64), torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 5)
    k, v = k.double(), v.double()
    base = rnnc.compile(plain, backend="reference")(q=q, k=k, v=v).o
    ours = rnnc.compile(scaled, backend="reference")(q=q, k=k, v=v).o
    assert torch.allclose(ours, base / 2.0, rtol=1e-14, atol=0)  # sqrt(K) = 2 at K = 4
