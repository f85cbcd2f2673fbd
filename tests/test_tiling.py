"""The tiling stage: CP-SAT optima against brute force, budgets rechecked independently, errors, cache."""

import json

import pytest
from budgets import recheck_budgets

import rnnc
from rnnc import TilingError
from rnnc.compiler import analyse_source
from rnnc.constraints import chunked, scan, sequential
from rnnc.constraints.problem import problem_of
from rnnc.constraints.profiles import load_profile, profile_from_device, profile_names
from rnnc.constraints.tiling import Tiling, solve_tiling

BUILD = {"sequential": sequential.build_model, "scan": scan.build_model, "chunked": chunked.build_model}
PLANS = {}


def plan(name):
    if name not in PLANS:
        PLANS[name] = analyse_source(open(f"examples/{name}.rnn").read())
    return PLANS[name]


SMALL = [  # (cell, dims) small enough to enumerate every assignment
    ("lstm", {"H": 24}),
    ("lstm", {"H": 48}),
    ("gru", {"H": 32}),
    ("elman", {"H": 16}),
    ("slstm", {"H": 64}),
    ("hgrn", {"D": 24}),
    ("mingru", {"H": 64}),
    ("mamba", {"D": 8, "N": 4}),
    ("gla", {"K": 32, "V": 48}),
    ("deltanet", {"K": 64, "V": 32}),
    ("retnet", {"K": 16, "V": 16}),
]
GPUS = ["h100", "l4", "mi300x"]
SHAPES = [({"B": 3, "T": 37, "NH": 2}, "float32"), ({"B": 64, "T": 1024, "NH": 12}, "bfloat16")]


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("cell,dims", SMALL, ids=[f"{c}-{'-'.join(map(str, d.values()))}" for c, d in SMALL])
def test_solver_optimum_equals_brute_force(cell, dims, gpu):
    for shape, dtype in SHAPES:
        p = problem_of(plan(cell), {**shape, **dims}, dtype)
        model = BUILD[p.strategy](p, load_profile(gpu))
        solved, enumerated = model.solve(), model.brute_force()
        assert (solved is None) == (enumerated is None), (cell, gpu, shape, dtype)
        if solved is not None:
            assert solved.objective == enumerated.objective
            assert model.rank(solved.values) == model.rank(enumerated.values)


ZOO_SHAPES = {
    "lstm": [{"H": 64}, {"H": 768}, {"H": 1024}],
    "gru": [{"H": 48}],
    "slstm": [{"H": 128}],
    "elman": [{"H": 256}],
    "lti": [{"N": 16, "M": 8}],
    "hgrn": [{"D": 1024}],
    "mingru": [{"H": 48}],
    "mamba": [{"D": 64, "N": 16}],
    "linear_attention": [{"K": 64, "V": 64}],
    "retnet": [{"K": 128, "V": 128}],
    "simple_gla": [{"K": 64, "V": 128}],
    "gla": [{"K": 128, "V": 128}],
    "deltanet": [{"K": 128, "V": 128}],
    "gated_deltanet": [{"K": 256, "V": 128}],
}


@pytest.mark.parametrize("gpu", profile_names())
@pytest.mark.parametrize("cell", sorted(ZOO_SHAPES))
def test_every_returned_tiling_meets_the_budgets(cell, gpu):
    profile = load_profile(gpu)
    for i, dims in enumerate(ZOO_SHAPES[cell]):
        for shape in ({"B": 16, "T": 1024, "NH": 4}, {"B": 1, "T": 256, "NH": 1})[i % 2 :][:1]:
            try:
                til = solve_tiling(
                    plan(cell),
                    profile,
                    {**shape, **dims},
                    "bfloat16",
                    candidates=2,
                    use_cache=False,
                    find_binding=False,
                )
            except TilingError as exc:
                assert "needs" in str(exc) and profile.name in str(exc)
                continue
            p = problem_of(plan(cell), {**shape, **dims}, "bfloat16")
            for params in [til.params] + [c for c, _ in til.candidates]:
                recheck_budgets(p, profile, params)
            estimates = [til.estimate_us] + [e for _, e in til.candidates]
            assert estimates == sorted(estimates)  # best first


def test_lstm_batch_block_is_bound_by_the_dot_minimum():
    til = solve_tiling(plan("lstm"), "h100", {"B": 4, "T": 1024, "NH": 12, "H": 64}, "bfloat16", use_cache=False)
    assert til.params["BLOCK_B"] == 16  # B = 4 would prefer 4 rows; tl.dot needs 16
    assert any(b.startswith("dot rows") for b in til.binding)


def test_head_dim_1024_fits_an_h100_by_splitting():
    til = solve_tiling(plan("lstm"), "h100", {"B": 16, "T": 1024, "NH": 1, "H": 1024}, "bfloat16", use_cache=False)
    assert til.params["SPLIT"] > 1 and til.quantities["programs"] <= 132


@pytest.mark.parametrize(
    "cell,gpu,shape,dtype",
    [
        ("slstm", "h100", {"B": 16, "T": 1024, "NH": 12, "H": 768}, "bfloat16"),  # 54 MiB of weights
        ("lstm", "l4", {"B": 16, "T": 1024, "NH": 1, "H": 1024}, "bfloat16"),
        ("lstm", "l4", {"B": 16, "T": 1024, "NH": 1, "H": 768}, "float32"),
        ("lstm", "h100", {"B": 1, "T": 1024, "NH": 12, "H": 768}, "bfloat16"),
    ],
)
def test_weights_too_large_for_the_chip_are_streamed_or_split(cell, gpu, shape, dtype):
    """Recurrent weights that no set of SMs holds are read again every step (streamed from L2 or HBM, or
    a split head's launch per step), and the estimate charges that traffic."""
    til = solve_tiling(plan(cell), gpu, shape, dtype, use_cache=False, find_binding=False)
    assert til.params["STREAM_WEIGHTS"] == 1 or til.params["SPLIT"] > 1
    assert til.params["BLOCK_B"] == 16  # B = 1 pads the batch tile to the dot minimum
    assert til.quantities["weight traffic ns per step"] > 0
    weights_per_step = 4 * shape["H"] ** 2 * {"bfloat16": 2, "float32": 4}[dtype] * shape["NH"]
    profile = load_profile(gpu)
    fastest = profile.l2_bandwidth_gbps if weights_per_step <= profile.l2_bytes else profile.memory_bandwidth_gbps
    assert til.estimate_us * 1000 >= shape["T"] * weights_per_step / fastest  # no faster than reading them


def test_only_a_call_larger_than_the_gpu_memory_has_no_tiling():
    shape = {"B": 64, "T": 65536, "NH": 64, "H": 1024}  # 160 GiB of inputs and outputs alone
    with pytest.raises(TilingError) as caught:
        solve_tiling(plan("lstm"), "l4", shape, "float32", use_cache=False)
    text = str(caught.value)
    assert "NVIDIA L4" in text and "need" in text and "GiB of device memory" in text and "has 24.0 GiB" in text


def test_decisions_are_deterministic_and_round_trip_as_json():
    shape = {"B": 8, "T": 1024, "NH": 8, "K": 64, "V": 64}
    first = solve_tiling(plan("gla"), "a100", shape, "bfloat16", use_cache=False)
    second = solve_tiling(plan("gla"), "a100", shape, "bfloat16", use_cache=False)
    assert first.to_json() == second.to_json()
    assert Tiling.from_json(first.to_json()) == first


def test_cache_hits_and_discards_a_corrupt_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    shape = {"B": 2, "T": 64, "NH": 1, "D": 32}
    first = solve_tiling(plan("hgrn"), "h100", shape, "float32")
    files = list((tmp_path / "tilings").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["params"] == first.params
    assert solve_tiling(plan("hgrn"), "h100", shape, "float32") == first
    files[0].write_text("{ not json")
    assert solve_tiling(plan("hgrn"), "h100", shape, "float32") == first
    assert json.loads(files[0].read_text())["params"] == first.params  # rebuilt


def test_cell_tiling_api_and_missing_dims():
    cell = rnnc.compile("examples/gated_deltanet.rnn")
    til = cell.tiling(gpu="h100", B=4, T=2048, NH=16, K=128, V=128)
    assert til.params["BK"] in (16, 32, 64, 128) and til.estimate_us > 0 and til.candidates
    with pytest.raises(rnnc.RnncError, match="missing V"):
        cell.tiling(gpu="h100", B=4, T=2048, NH=16, K=128)


def test_profiles_are_complete_and_vendor_neutral():
    names = profile_names()
    assert {"h100", "h200", "a100", "l40s", "l4", "rtx4090", "mi300x"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.sm_count > 0 and p.registers_per_sm > 0 and p.shared_memory_per_block_optin <= p.shared_memory_per_sm
        assert p.tensor_tflops["bfloat16"] >= p.tensor_tflops["float32"] > 0 and p.memory_bandwidth_gbps > 0
    assert load_profile("mi300x").warp_size == 64 and load_profile("h100").warp_size == 32
    with pytest.raises(rnnc.RnncError, match="unknown GPU"):
        load_profile("h900")


def test_auto_profile_reads_the_device_and_lists_what_it_assumed():
    from types import SimpleNamespace

    props = SimpleNamespace(
        name="NVIDIA A100-SXM4-80GB",
        major=8,
        minor=0,
        multi_processor_count=108,
        regs_per_multiprocessor=65536,
        max_threads_per_multi_processor=2048,
        warp_size=32,
        shared_memory_per_block_optin=166912,
        shared_memory_per_multiprocessor=167936,
        L2_cache_size=0,
    )
    profile, assumed = profile_from_device(properties=props)
    assert profile.sm_count == 108 and profile.compute_capability == "8.0"
    assert profile.tensor_tflops == load_profile("a100").tensor_tflops
    assert "l2_bytes" in assumed and "tensor_tflops" in assumed and "sm_count" not in assumed


def test_cli_explain_with_a_gpu(capsys):
    from rnnc.cli import main

    assert main(["explain", "examples/lstm.rnn", "--gpu", "h100", "--shape", "B=16,T=1024,NH=12,H=64"]) == 0
    out = capsys.readouterr().out
    assert "tiling of lstm (sequential) on h100" in out and "BLOCK_B=16" in out and "binding constraints" in out
    too_large = "B=64,T=65536,NH=64,H=1024"
    assert main(["explain", "examples/lstm.rnn", "--gpu", "l4", "--dtype", "float32", "--shape", too_large]) == 1
    err = capsys.readouterr().err
    assert "no kernel of lstm can run" in err and "Traceback" not in err
    assert main(["explain", "examples/lstm.rnn", "--gpu", "h100", "--shape", "B=16,T=x"]) == 1
    assert "NAME=INTEGER" in capsys.readouterr().err


@pytest.mark.parametrize("cell", sorted(ZOO_SHAPES))
def test_extreme_shapes_solve_without_overflow(cell):
    """T = 65,536, 64 heads, batch 64, dims 4096, float64: the integers of the cost model stay in range."""
    dims = {d: 4096 for d in plan(cell).ir.dims}
    p = problem_of(plan(cell), {"B": 64, "T": 65536, "NH": 64, **dims}, "float64")
    model = BUILD[p.strategy](p, load_profile("l4"))
    solution = model.solve()  # may be None (nothing fits an L4), but never an OverflowError
    assert solution is None or solution.objective > 0


# a cached tiling is trusted only if it is what the model gives for its key (issue 14, item 4)
def _broken_assignment(entry: dict) -> dict:
    """Parameters within every domain that break one of the model's constraints (found by enumeration)."""
    from rnnc.constraints.problem import problem_of
    from rnnc.constraints.profiles import load_profile
    from rnnc.constraints.tiling import BUILDERS

    shape = entry["shape"]
    model = BUILDERS["sequential"](problem_of(plan("lstm"), shape, "bfloat16"), load_profile("h100"))
    for env in model.assignments():
        if not all(c.holds(env) for c in model.constraints):
            return env
    raise AssertionError("every assignment fits: pick a shape where some do not")


TILING_CORRUPTIONS = {
    "negative BLOCK_B": lambda e: {**e, "params": {**e["params"], "BLOCK_B": -7}},
    "BLOCK_B outside its domain": lambda e: {**e, "params": {**e["params"], "BLOCK_B": 1024}},
    "a fractional block": lambda e: {**e, "params": {**e["params"], "BLOCK_K": 16.5}},
    "a string parameter": lambda e: {**e, "params": {**e["params"], "BLOCK_B": "16"}},
    "a bool parameter": lambda e: {**e, "params": {**e["params"], "SPLIT": True}},
    "an unknown parameter": lambda e: {**e, "params": {**e["params"], "BLOCK_Q": 16}},
    "a missing parameter": lambda e: {**e, "params": {k: v for k, v in e["params"].items() if k != "SPLIT"}},
    "a constraint broken": lambda e: {**e, "params": _broken_assignment(e)},
    "negative estimate": lambda e: {**e, "estimate_us": -1},
    "infinite estimate": lambda e: {**e, "estimate_us": float("inf")},
    "an estimate the model does not give": lambda e: {**e, "estimate_us": e["estimate_us"] * 0.5},
    "quantities the model does not give": lambda e: {**e, "quantities": {**e["quantities"], "programs": 4096}},
    "a candidate out of its domain": lambda e: {**e, "candidates": [[{**e["params"], "BLOCK_B": -1}, 1.0]]},
    "a candidate that is no pair": lambda e: {**e, "candidates": [e["params"]]},
    "another shape": lambda e: {**e, "shape": {**e["shape"], "B": 5}},
    "a bool size": lambda e: {**e, "shape": {**e["shape"], "NH": True}},
    "another cell": lambda e: {**e, "cell": "gru"},
    "a missing field": lambda e: {k: v for k, v in e.items() if k != "quantities"},
    "an unknown field": lambda e: {**e, "trusted": True},
    "binding not text": lambda e: {**e, "binding": [1, 2]},
}


@pytest.mark.parametrize("kind", sorted(TILING_CORRUPTIONS) + ["deeply nested", "not a JSON object"])
def test_a_cached_tiling_that_is_not_the_models_answer_is_discarded(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    shape = {"B": 1, "T": 64, "NH": 1, "H": 16}
    first = solve_tiling(plan("lstm"), "h100", shape, "bfloat16")
    (path,) = (tmp_path / "tilings").glob("*.json")
    original = path.read_text()
    entry = json.loads(original)
    if kind == "deeply nested":
        path.write_text("[" * 100_000 + "]" * 100_000)  # json.loads raises RecursionError on this
    elif kind == "not a JSON object":
        path.write_text("[1, 2]")
    else:
        path.write_text(json.dumps(TILING_CORRUPTIONS[kind](entry)))
    again = solve_tiling(plan("lstm"), "h100", shape, "bfloat16")
    assert again == first  # solved afresh, not read from the corrupt entry
    assert all(type(v) is int for v in again.params.values())  # True == 1, so equality alone would not tell
    assert path.read_text() == original  # the corrupt entry is gone, the rebuilt one in its place


def test_every_model_parameter_is_a_known_launch_parameter_in_its_domain():
    """The caches check parameters against LAUNCH_PARAMETERS: every model's variables must pass."""
    from rnnc.cache_entries import LAUNCH_PARAMETERS, launch_params_problem
    from rnnc.constraints.problem import problem_of
    from rnnc.constraints.profiles import load_profile
    from rnnc.constraints.tiling import BUILDERS

    shapes = {"lstm": {"H": 256}, "hgrn": {"D": 64}, "mamba": {"D": 64, "N": 16}, "gla": {"K": 64, "V": 64}}
    seen = set()
    for name, dims in shapes.items():
        p = plan(name)
        problem = problem_of(p, {"B": 8, "T": 256, "NH": 4, **dims}, "bfloat16")
        model = BUILDERS[p.strategy](problem, load_profile("h100"))
        for var in model.variables:
            seen.add(var.name)
            for value in var.domain:
                assert launch_params_problem({var.name: value}) is None, (var.name, value)
    assert seen == set(LAUNCH_PARAMETERS)


def test_kernels_that_exist_are_preferred_to_variants_not_built_yet():
    """GLA at K = 128 fits the chunked kernels with the key dimension whole; DeltaNet's backward does not
    (bench/calibrate_tiling.py: every whole-K tiling spills), so only it gets key-dimension pieces."""
    shape = {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}
    assert solve_tiling(plan("gla"), "h100", shape, "bfloat16", use_cache=False).params["BK"] == 128
    problem = problem_of(plan("deltanet"), shape, "bfloat16")
    assert chunked.build_model(problem, load_profile("h100"), extended=False).solve() is None
    assert solve_tiling(plan("deltanet"), "h100", shape, "bfloat16", use_cache=False).params["BK"] < 128
    lstm = solve_tiling(plan("lstm"), "h100", {"B": 16, "T": 1024, "NH": 12, "H": 64}, "bfloat16", use_cache=False)
    assert lstm.params["STREAM_WEIGHTS"] == 0 and lstm.params["SPLIT"] == 1  # the whole head, weights on chip


def test_a_variant_not_built_yet_launches_the_built_kernels_least_spilling_tiling():
    """DeltaNet at K = 128 needs key-dimension pieces; until they are built the kernels launch with the built
    tiling of least register pressure (registers wanted over what a thread can get), found by enumeration too."""
    from rnnc.constraints.common import REGISTER_BUDGETS

    shape = {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}
    til = solve_tiling(plan("deltanet"), "h100", shape, "bfloat16", use_cache=False)
    assert til.params["BK"] < 128 and til.built["BK"] == 128 and til.launch_params == til.built
    model = chunked.build_model(problem_of(plan("deltanet"), shape, "bfloat16"), load_profile("h100"), extended=False)
    pressure = model.quantities["register pressure"]
    others = [c for c in model.constraints if c.name not in REGISTER_BUDGETS]
    least = min(pressure.evaluate(env) for env in model.assignments() if all(c.holds(env) for c in others))
    assert pressure.evaluate(til.built) == least
    gla = solve_tiling(plan("gla"), "h100", shape, "bfloat16", use_cache=False)
    assert gla.built is None and gla.launch_params == gla.params  # built kernels fit: nothing to stand in


@pytest.mark.parametrize("kind", ["out of its domain", "no parameters", "a broken budget"])
def test_a_cached_stand_in_for_a_variant_not_built_yet_is_checked_too(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    shape = {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}
    first = solve_tiling(plan("deltanet"), "h100", shape, "bfloat16")
    assert first.built is not None
    (path,) = (tmp_path / "tilings").glob("*.json")
    original = path.read_text()
    entry = json.loads(original)
    broken = {
        "out of its domain": {**entry["built"], "BK": 32},  # the built kernels take the key dimension whole
        "no parameters": {},
        "a broken budget": {**entry["built"], "CHUNK": 128, "BV": 128, "num_stages": 4},  # shared memory
    }[kind]
    path.write_text(json.dumps({**entry, "built": broken}))
    assert solve_tiling(plan("deltanet"), "h100", shape, "bfloat16").built == first.built
    assert path.read_text() == original
