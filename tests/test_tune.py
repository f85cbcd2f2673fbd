"""``rnnc tune`` without a GPU: a fake timer decides, the tuning cache and the runtime's lookup are real.

The candidates come from the real solver (h100 profile); kernels run under the interpreter only
where a test says so. Every test writes to the session's private cache, under its own fake GPU
name, so entries of one test never serve another.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnc
from rnnc import tuning_cache
from rnnc.runtime import launch
from rnnc.runtime.arguments import bind
from rnnc.tune import _disagreement, format_result, tune

ROOT = Path(__file__).resolve().parent.parent
HGRN = "examples/hgrn.rnn"
SHAPE = {"B": 2, "T": 64, "NH": 1, "D": 16}


def candidates(shape=SHAPE):
    """The solver's order for a shape (SHAPE by default): what tune times."""
    til = rnnc.compile(HGRN).tiling(gpu="h100", dtype="float32", **shape)
    return [til.params] + [p for p, _ in til.candidates]


def by_rank(times: dict):
    """A fake timer: a candidate's time is looked up by its rank in the solver's order (1000 us if not given)."""
    order, calls = candidates(), []

    def timer(fn, params):
        calls.append(order.index(params))
        return times.get(order.index(params), 1000.0)

    timer.calls = calls
    return timer


def run_tune(gpu_name, timer, **options):
    options = {"gpu": "h100", "dtype": "float32", "top": 4, "device": "cpu", "check": False, **options}
    return tune(HGRN, SHAPE, timer=timer, device_name=gpu_name, **options)


def test_the_fastest_candidate_wins_and_the_models_miss_is_recorded():
    order = candidates()
    assert len({json.dumps(p, sort_keys=True) for p in order[:4]}) == 4
    timer = by_rank({0: 30.0, 1: 40.0, 2: 20.0, 3: 25.0})  # the model's third choice is fastest, its first 1.5x slower
    result = run_tune("Fake GPU winner", timer)
    assert timer.calls == [0, 1, 2, 3]  # every candidate timed once, in the model's order
    assert result.winner.rank == 2 and result.winner.params == order[2]
    assert result.first_over_best == pytest.approx(1.5)
    entry = json.loads(Path(result.path).read_text())
    assert entry["params"] == order[2] and entry["measured_us"] == 20.0
    assert entry["winner_rank"] == 2 and entry["first_over_best"] == pytest.approx(1.5)
    assert entry["gpu"] == "Fake GPU winner" and entry["bucket"] == {**SHAPE, "T": 64}
    assert [c["measured_us"] for c in entry["candidates"]] == [30.0, 40.0, 20.0, 25.0]
    text = format_result(result)
    assert "winner: rank 2 at 20.0 us; the model's first choice took 1.50x as long" in text
    assert "was the fastest in 0" in text  # one entry on this GPU, where the first choice lost


def test_the_runtime_finds_the_winner_by_its_own_key(monkeypatch):
    order = candidates()
    result = run_tune("Fake GPU runtime", by_rank({1: 1.0}))
    assert result.winner.rank == 1
    kernels = rnnc.compile(HGRN, backend="triton")._triton
    monkeypatch.setattr(launch, "device_name", lambda device: "Fake GPU runtime")
    monkeypatch.setattr(launch, "on_gpu", lambda call: True)
    monkeypatch.setattr(launch, "gpu_tiling", lambda plan, call: {"FROM": "the model"})

    def call(T, dtype=torch.float32):
        x = torch.zeros(SHAPE["B"], T, SHAPE["NH"], SHAPE["D"], dtype=dtype)
        return bind(kernels.plan.ir, {"x": x, "g": x}, None)

    assert launch.tuned_params(kernels, call(64)) == order[1]
    assert kernels.model_params(call(40)) == order[1]  # T = 40 is in the bucket T = 64
    assert kernels.model_params(call(65)) == {"FROM": "the model"}  # T = 65 is in the bucket T = 128
    assert kernels.model_params(call(64, torch.float64)) == {"FROM": "the model"}  # another dtype
    kernels.pinned = {"BLOCK_T": 4}
    assert kernels.model_params(call(64)) == {**order[1], "BLOCK_T": 4}  # pinned on top of the winner
    monkeypatch.setattr(launch, "device_name", lambda device: "Another GPU")
    assert kernels.model_params(call(64)) == {"FROM": "the model", "BLOCK_T": 4}


def test_kernels_from_other_templates_never_reuse_a_winner():
    result = run_tune("Fake GPU kernels", by_rank({}))
    plan = rnnc.compile(HGRN, backend="triton").plan
    source = rnnc.compile(HGRN, backend="triton").source
    same = tuning_cache.TuningKey.of("Fake GPU kernels", "hgrn", plan.key(), source, "float32", SHAPE)
    other = tuning_cache.TuningKey.of("Fake GPU kernels", "hgrn", plan.key(), source + "# edited\n", "float32", SHAPE)
    assert tuning_cache.winner(same) == result.winner.params
    assert tuning_cache.winner(other) is None


CORRUPTIONS = {
    "not json": lambda entry: "{ not json",
    "not utf-8": lambda entry: b"\xff\xfe\x00",
    "a list": lambda entry: "[1, 2]",
    "no params": lambda entry: json.dumps({k: v for k, v in entry.items() if k != "params"}),
    "params a list": lambda entry: json.dumps({**entry, "params": [16, 4]}),
    "negative time": lambda entry: json.dumps({**entry, "measured_us": -1.0}),
    "another gpu's entry": lambda entry: json.dumps({**entry, "gpu": "Some other GPU"}),
    "another bucket": lambda entry: json.dumps({**entry, "bucket": {**entry["bucket"], "T": 4096}}),
    # issue 14: fields checked for meaning, not only shape
    "negative block": lambda entry: json.dumps({**entry, "params": {**entry["params"], "BLOCK_T": -5}}),
    "fractional block": lambda entry: json.dumps({**entry, "params": {**entry["params"], "BLOCK_T": 16.5}}),
    "a bool block": lambda entry: json.dumps({**entry, "params": {**entry["params"], "BLOCK_T": True}}),
    "block not a power of two": lambda entry: json.dumps({**entry, "params": {**entry["params"], "BLOCK_T": 48}}),
    "a string parameter": lambda entry: json.dumps({**entry, "params": {**entry["params"], "BLOCK_T": "16"}}),
    "an unknown parameter": lambda entry: json.dumps({**entry, "params": {**entry["params"], "BLOCK_Q": 16}}),
    "infinite time": lambda entry: json.dumps({**entry, "measured_us": float("inf")}),  # written as Infinity
    "time not a number": lambda entry: json.dumps({**entry, "measured_us": float("nan")}),
    "a bool time": lambda entry: json.dumps({**entry, "measured_us": True}),
    "negative estimate": lambda entry: json.dumps({**entry, "estimate_us": -3.0}),
    "a bool rank": lambda entry: json.dumps({**entry, "winner_rank": True}),
    "first faster than the best": lambda entry: json.dumps({**entry, "first_over_best": 0.5}),
    "a shape outside the bucket": lambda entry: json.dumps({**entry, "shape": {**entry["shape"], "B": 99}}),
    "a bool in the bucket": lambda entry: json.dumps({**entry, "bucket": {**entry["bucket"], "NH": True}}),
    "a candidate out of its domain": lambda entry: json.dumps(
        {**entry, "candidates": [{**entry["candidates"][0], "params": {"BLOCK_T": 0}}]}
    ),
    "an unknown field": lambda entry: json.dumps({**entry, "trusted": True}),
    "deeply nested": lambda entry: "[" * 100_000 + "]" * 100_000,  # json.loads raises RecursionError
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_entry_is_discarded_with_a_debug_message(kind, monkeypatch, capsys):
    gpu = f"Fake GPU corrupt {kind}"
    result = run_tune(gpu, by_rank({}))
    path = Path(result.path)
    plan = rnnc.compile(HGRN, backend="triton")
    key = tuning_cache.TuningKey.of(gpu, "hgrn", plan.plan.key(), plan.source, "float32", SHAPE)
    assert key.path() == path and tuning_cache.winner(key) == result.winner.params
    data = CORRUPTIONS[kind](json.loads(path.read_text()))
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.utime(path, ns=(1, 1))  # a new stamp, so the in-process memo re-reads the file
    monkeypatch.setenv("RNNC_DEBUG", "1")
    capsys.readouterr()
    assert tuning_cache.winner(key) is None
    assert not path.exists()
    assert f"tuning cache: discarded {path}" in capsys.readouterr().err


def test_candidates_that_fail_are_recorded_and_never_win():
    order = candidates()

    def timer(fn, params):
        if params == order[0]:
            raise RuntimeError("out of resources: shared memory, Required: 300000, Hardware limit: 232448")
        return 10.0 if params == order[3] else 50.0

    result = run_tune("Fake GPU failing", timer)
    assert result.rows[0].status.startswith("failed: RuntimeError: out of resources")
    assert result.winner.rank == 3 and result.first_over_best is None
    assert "the model's first choice did not run" in format_result(result)

    def broken(fn, params):
        raise RuntimeError("no kernel image")

    with pytest.raises(rnnc.RnncError, match="needs at least one candidate that runs, has none: rank 0: failed"):
        run_tune("Fake GPU all failing", broken)
    assert tuning_cache.entries("Fake GPU all failing") == []


def test_each_candidate_runs_forward_and_backward_and_a_wrong_one_never_wins(monkeypatch):
    """Under the interpreter: the checked run computes outputs and every gradient; a candidate whose
    results disagree with the first one's is marked wrong, however fast the timer says it is."""
    seen = []

    def timer(fn, params):
        outputs, grads = fn()
        seen.append((len(outputs), [g is not None and bool(torch.isfinite(g).all()) for g in grads]))
        return 1.0 if params == candidates()[1] else 5.0

    from rnnc import tune as tune_module

    disagreements = iter([0.0, 0.5, 0.0])
    monkeypatch.setattr(tune_module, "_disagreement", lambda got, first: next(disagreements))
    result = run_tune("Fake GPU checked", timer, top=3, check=True)
    assert result.rows[1].status == "wrong: differs from rank 0 by 5.0e-01"
    assert result.rows[1].measured_us is None and result.winner.rank in (0, 2)
    assert seen == [(2, [True, True, True])] * 2  # h and the final state; gradients of x, g and h0


def test_disagreement_measures_outputs_and_gradients():
    a = ([torch.ones(4)], [torch.ones(3), None])
    assert _disagreement(a, a) == 0.0
    b = ([torch.ones(4)], [torch.ones(3) * 1.01, None])
    assert _disagreement(b, a) == pytest.approx(0.01)
    c = ([torch.full((4,), float("inf"))], [torch.ones(3), None])
    assert _disagreement(c, a) == 0.0  # overflowed random data is not compared


def test_a_shape_missing_a_dim_is_refused():
    with pytest.raises(rnnc.RnncError, match="needs the shape of B, T, NH, D; has B, T, NH"):
        tune(HGRN, {"B": 2, "T": 8, "NH": 1}, timer=lambda fn, p: 1.0, device="cpu", device_name="x")


def test_summary_counts_how_often_the_first_choice_won():
    run_tune("Fake GPU summary", by_rank({0: 1.0}))
    other = {**SHAPE, "B": 4}
    first = candidates(other)[0]
    slower_first = lambda fn, p: 2.0 if p == first else 1.0  # noqa: E731
    tune(
        HGRN,
        other,
        gpu="h100",
        dtype="float32",
        top=2,
        timer=slower_first,
        device="cpu",
        device_name="Fake GPU summary",
        check=False,
    )
    found = tuning_cache.entries("Fake GPU summary")
    summary = tuning_cache.summarize(found)
    assert summary["entries"] == 2 and summary["first_was_best"] == 1
    assert summary["worst_first_over_best"] == pytest.approx(2.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_the_command_line_says_it_needs_a_gpu_and_what_it_found():
    env = {**os.environ, "RNNC_DEBUG": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "rnnc.cli", "tune", HGRN, "--shape", "B=2,T=64,NH=1,D=16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "error: rnnc tune needs a CUDA GPU to time kernels on, and found none: torch" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_listing_the_cache_deletes_an_entry_nested_too_deeply_to_parse():
    """``entries`` (what ``rnnc tune`` summarises) meets the file before any key does."""
    result = run_tune("Fake GPU nested", by_rank({}))
    path = Path(result.path)
    path.write_text("{" + '"a": {' * 60_000 + "}" * 60_001)
    assert tuning_cache.entries("Fake GPU nested") == [] and not path.exists()
