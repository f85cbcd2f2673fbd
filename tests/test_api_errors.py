"""Raw exceptions the API let through (issue 14, item 2): each is now an RnncError at its place, or a
ValueError/TypeError naming the call argument, reproduced as the issue did, ``rnnc.compile`` then a call."""

import importlib

import pytest
import torch
from cells import random_call, rel_err

import rnnc
from rnnc import AnalysisError, ParseError, RnncError

SUM = "cell c(H) {{ input x: [H]; state h: [H]\nh = 0.5 * h + {terms}\nemit h }}"


def test_a_sum_of_400_terms_is_a_located_parse_error_not_a_recursion_error():
    with pytest.raises(ParseError, match=r"<string>:2:5: error: expression too deeply nested.*has 401"):
        rnnc.compile(SUM.format(terms=" + ".join(["x"] * 400)))
    with pytest.raises(ParseError, match=r"<string>:2:5: error: expression too deeply nested.*has 801"):
        rnnc.compile(SUM.format(terms="-" * 800 + "x"))
    cell = rnnc.compile(SUM.format(terms=" + ".join(["x"] * 90)), backend="reference")  # well under the bound
    x = torch.randn(1, 2, 1, 3, dtype=torch.float64)
    assert rel_err(cell(x=x).h[:, 0], 90 * x[:, 0]) < 1e-12


def test_whatever_still_recurses_too_deep_is_an_rnnc_error(monkeypatch):
    """The parser's bound is what keeps the compiler's recursion short; without it, the net under it."""
    monkeypatch.setattr(importlib.import_module("rnnc.grammar.parse"), "MAX_DEPTH", 10**6)
    with pytest.raises(RnncError, match="nests too deeply to analyse; split long expressions into locals"):
        rnnc.compile(SUM.format(terms=" + ".join(["x"] * 3000)))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize(
    "constant,message",
    [
        ("1e999", r"<string>:2:19: error: the number 1e999 does not fit a float64"),
        ("log(0)", r"<string>:2:19: error: log\(0\) is infinite: a constant must be a finite real number"),
        ("sqrt(-1)", r"<string>:2:19: error: sqrt\(-1\) is complex"),
    ],
)
def test_a_constant_that_is_no_finite_real_number_is_refused_where_it_is_written(backend, constant, message):
    with pytest.raises(AnalysisError, match=message):
        rnnc.compile(SUM.format(terms=f"x * {constant}"), backend=backend)


def test_a_nul_byte_in_a_comment_inside_a_matmul_compiles_and_runs_on_both_backends():
    text = "cell c(H) { input x: [H]; weight R: [H, H]; state h: [H]\nh = tanh(R @ (h # a \x00 note\n + x))\nemit h }"
    triton_cell = rnnc.compile(text, backend="triton")
    reference = rnnc.compile(text, backend="reference")
    for source in (triton_cell.source, reference.source):
        assert "\x00" not in source
        compile(source, "<generated>", "exec")
    tensors, states = random_call(reference.plan.ir, B=2, T=3, NH=1, dims={"H": 16})
    ours, theirs = triton_cell(state=states, **tensors), reference(state=states, **tensors)
    assert triton_cell.last_backend == "triton"
    assert rel_err(ours.h, theirs.h) < 1e-9


def test_state_given_as_a_tensor_is_a_type_error_naming_the_states():
    cell = rnnc.compile("examples/elman.rnn", backend="reference")
    x, R, b = torch.randn(1, 2, 1, 4), torch.randn(1, 4, 4), torch.randn(1, 4)
    with pytest.raises(TypeError, match=r"state needs a dict of initial states \{name: tensor\}, has Tensor.*are h"):
        cell(x=x, R=R, b=b, state=torch.randn(1, 1, 4))


@pytest.mark.parametrize("name", ["hgrn", "gla", "elman"])  # one cell per strategy
def test_meta_tensors_are_refused_by_the_triton_backend(name):
    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    shapes = {"K": 16, "V": 16, "H": 4, "D": 4}
    ir = cell.plan.ir
    tensors = {d.name: torch.randn(1, 2, 1, *[shapes[str(s)] for s in d.shape], device="meta") for d in ir.inputs}
    tensors |= {d.name: torch.randn(1, *[shapes[str(s)] for s in d.shape], device="meta") for d in ir.weights}
    with pytest.raises(ValueError, match="Triton backend needs CUDA tensors .* has tensors on meta"):
        cell(**tensors)


def test_meta_tensors_run_on_the_reference_under_auto():
    x = torch.randn(1, 2, 1, 4, device="meta")
    auto = rnnc.compile("examples/hgrn.rnn")  # the interpreter is on in the tests, so auto would pick Triton
    out = auto(x=x, g=x)
    assert auto.last_backend == "reference" and out.h.shape == (1, 2, 1, 4) and out.h.device.type == "meta"


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_an_empty_source_says_it_is_empty(text):
    with pytest.raises(ParseError, match="the source is empty: rnnc.compile needs the path of a .rnn file or the text"):
        rnnc.compile(text)


def test_a_file_holding_only_a_comment_is_located(tmp_path):
    path = tmp_path / "empty.rnn"
    path.write_text("\n# nothing but a comment\n")
    with pytest.raises(AnalysisError, match=r"empty.rnn:2:1: error: needs a cell \(cell NAME\(DIMS\)"):
        rnnc.compile(path)


def test_gpu_and_dtype_are_checked_when_compiling():
    with pytest.raises(ValueError, match=r"gpu needs one of a100, h100, .* 'auto' or a profile file .*, has 'nope'"):
        rnnc.compile("examples/lstm.rnn", gpu="nope")
    with pytest.raises(ValueError, match="dtype needs one of float16, bfloat16, float32, float64, has 'int8'"):
        rnnc.compile("examples/lstm.rnn", dtype="int8")
    with pytest.raises(ValueError, match="gpu needs one of"):
        rnnc.compile("examples/lstm.rnn", gpu="nope", dtype="int8")


def test_gpu_and_dtype_given_to_compile_choose_the_tiling():
    shape = {"B": 16, "T": 256, "NH": 4, "H": 64}
    cell = rnnc.compile("examples/lstm.rnn", gpu="l4", dtype="float32")
    tiling = cell.tiling(**shape)
    assert (tiling.gpu, tiling.dtype) == (cell.tiling(gpu="l4", dtype="float32", **shape).gpu, "float32")
    assert "l4" in tiling.gpu.lower() and cell.tiling(gpu="h100", **shape).gpu != tiling.gpu


def test_the_gpu_given_to_compile_is_the_profile_the_kernels_tile_for(monkeypatch):
    """On a GPU the runtime asks the tiling model for the call; with gpu= given, for that profile."""
    from rnnc.runtime import launch
    from rnnc.runtime.arguments import bind

    asked = []
    monkeypatch.setattr(launch, "on_gpu", lambda call: True)
    monkeypatch.setattr(launch, "tuned_params", lambda kernels, call: None)
    monkeypatch.setattr(launch, "gpu_tiling", lambda plan, call, gpu="auto": asked.append(gpu) or {"BLOCK_B": 16})
    for gpu, expected in (("l4", "l4"), (None, "auto")):
        cell = rnnc.compile("examples/lstm.rnn", backend="triton", gpu=gpu)
        tensors, _ = random_call(cell.plan.ir, B=2, T=2, NH=1, dims={"H": 16})
        cell._triton.model_params(bind(cell.plan.ir, tensors, None))
        assert asked[-1] == expected
