"""bench/gpu.py without a GPU: the ``--smoke`` run's JSON, the cases of issue 5, and the anchors' layouts.

The smoke run (CPU, Triton's interpreter, tiny shapes, torch.nn and rnnc's reference standing in
for the anchors, FlashRNN's CUDA backend bound to fail) goes through every phase the device run
has: worker processes, warm-up failures, timing, bandwidth, tune, JSON and plots.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_cases  # noqa: E402
from gpu_cases import Case, cases, ideal_bytes, make_impl, make_inputs  # noqa: E402

import rnnc  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu-smoke")
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, json.loads((out / "gpu.json").read_text()), done.stdout


def results(data, family, impl):
    (entry,) = data["results"][family]
    return next(r for r in entry["results"] if r["impl"] == impl)


def test_smoke_records_the_machine_code_and_phases(smoke):
    out, data, _ = smoke
    assert data["mode"] == "smoke" and data["machine"]["device"].startswith("cpu")
    assert data["machine"]["torch"] == torch.__version__
    assert len(data["code"]["rnnc_sources_sha256"]) == 16 and data["code"]["rnnc_commit"]
    assert set(data["phases"]) == {"check_and_warm_s", "timing_s", "tune_s", "total_s"}
    assert data["copy_bandwidth_gbps"] > 0 and data["profile_bandwidth_gbps"] == 3350
    files = sorted(p.name for p in out.iterdir())
    assert "gpu.json" in files and len(files) <= 8  # what the device tool brings back
    for family, plot in data["plots"].items():
        assert plot == f"gpu-{family}.png" and (out / plot).exists() or plot.startswith("not drawn: ")


def test_smoke_checks_cells_in_worker_processes(smoke):
    _, data, _ = smoke
    (row,) = data["check"]
    assert (row["cell"], row["dtype"], row["status"], row["backend"]) == ("hgrn", "float32", "ok", "triton")
    assert row["forward_error"] < 1e-4 and row["backward_error"] < 1e-4


def test_a_failing_anchor_is_recorded_and_skipped_never_fatal(smoke):
    _, data, stdout = smoke
    warm = {r["impl"]: r for r in data["warm"]}
    assert warm["torch.nn.LSTM"]["status"] == "ok"
    failed = warm["flashrnn cuda_fused"]
    assert failed["status"] == "failed" and failed["error"]  # no CUDA here (or no flashrnn at all)
    skipped = results(data, "lstm", "flashrnn cuda_fused")
    assert skipped["skipped"].startswith("warm-up failed: ") and "fwdbwd_us" not in skipped
    assert "flashrnn cuda_fused        warm-up failed" in stdout


def test_every_implementation_is_timed_forward_and_backward(smoke):
    _, data, _ = smoke
    for family, impls in {"lstm": ["rnnc", "torch.nn.LSTM"], "scan": ["rnnc", "rnnc reference"]}.items():
        for impl in impls:
            r = results(data, family, impl)
            assert r["forward_us"] > 0 and r["fwdbwd_us"] > 0 and r["finite"], r
    assert "rel_err_vs_rnnc" not in results(data, "lstm", "torch.nn.LSTM")  # another parametrisation
    assert results(data, "scan", "rnnc reference")["rel_err_vs_rnnc"] < 1e-5
    assert results(data, "chunked", "rnnc reference")["rel_err_vs_rnnc"] < 1e-5


def test_scan_bandwidth_is_the_ideal_bytes_over_time(smoke):
    _, data, _ = smoke
    (entry,) = data["results"]["scan"]
    assert entry["ideal_bytes"] == {"forward": 3 * 2 * 16 * 16 * 4, "fwdbwd": 8 * 2 * 16 * 16 * 4}
    r = results(data, "scan", "rnnc")
    gbps = entry["ideal_bytes"]["fwdbwd"] / r["fwdbwd_us"] / 1e3
    assert r["fwdbwd_gbps"] == pytest.approx(gbps, rel=1e-3)
    assert r["fwdbwd_copy_fraction"] == pytest.approx(gbps / data["copy_bandwidth_gbps"], rel=1e-3)


def test_smoke_tunes_and_summarises(smoke):
    _, data, _ = smoke
    (entry,) = data["tune"]["entries"]
    assert entry["cell"] == "hgrn" and len(entry["rows"]) == 2
    times = [row["measured_us"] for row in entry["rows"]]
    assert entry["winner_rank"] == times.index(min(times))
    assert entry["first_over_best"] == pytest.approx(times[0] / min(times))
    assert data["tune"]["summary"]["entries"] >= 1


def test_an_unknown_family_is_refused():
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--out", "unused", "--only", "lstm,nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--only needs families of check, lstm" in done.stderr and "has nope" in done.stderr


def test_the_cases_are_issue_5s():
    lstm = cases("lstm", "full")
    assert [(c.shape["H"], c.shape["NH"]) for c in lstm] == [(16, 48), (32, 24), (64, 12), (128, 6), (256, 3), (768, 1)]
    assert all(c.shape["B"] == 16 and c.shape["T"] == 1024 for c in lstm)
    assert lstm[0].impls == ["rnnc", "flashrnn cuda_fused", "flashrnn cuda", "flashrnn triton_fused", "torch.nn.LSTM"]
    chunked = cases("chunked", "full")
    assert {c.cell for c in chunked} == {"gla", "simple_gla", "deltanet", "gated_deltanet"}
    shapes = {(c.shape["B"], c.shape["T"], c.shape["NH"], c.shape["K"]) for c in chunked}
    assert shapes == {(4, 2048, 16, 128), (8, 1024, 8, 64), (2, 16384, 16, 128)}
    assert cases("gru", "full")[0].impls[-1] == "torch.nn.GRU"
    scan = cases("scan", "full")
    assert "fla chunk_hgrn" in scan[0].impls and "accelerated-scan warp" in scan[0].impls
    quick = [(c.cell, c.shape.get("H"), c.shape["NH"]) for c in cases("lstm", "quick")]
    assert quick == [("lstm", 64, 12), ("lstm", 768, 1)]  # the targets' shapes


@pytest.mark.parametrize("cell", ["gla", "simple_gla", "deltanet", "gated_deltanet", "hgrn", "mamba"])
def test_inputs_are_well_conditioned(cell):
    family = "scan" if cell in ("hgrn", "mamba") else "chunked"
    shape = {"B": 2, "T": 8, "NH": 2, **({"D": 8, "N": 4} if family == "scan" else {"K": 8, "V": 8})}
    if cell == "hgrn":
        shape.pop("N")
    inputs = make_inputs(Case(family, cell, shape, ["rnnc"]), "cpu", torch.float32, 0)
    declared = rnnc.compile(f"examples/{cell}.rnn").plan.ir
    assert sorted(inputs) == sorted(d.name for d in (*declared.inputs, *declared.weights))
    if "g" in inputs:
        assert (inputs["g"] <= 0).all()
    if cell in ("deltanet", "gated_deltanet"):
        assert torch.allclose(inputs["k"].norm(dim=-1), torch.ones(2, 8, 2))
        assert ((inputs["beta"] > 0) & (inputs["beta"] < 1)).all()
    if cell == "mamba":
        assert (inputs["A"] < 0).all() and (inputs["dt"] > 0).all()
    out = rnnc.compile(f"examples/{cell}.rnn", backend="reference")(**inputs)
    assert all(torch.isfinite(v).all() for v in out.outputs.values())


def test_ideal_bytes_of_mamba():
    case = Case("scan", "mamba", {"B": 1, "T": 2, "NH": 3, "D": 4, "N": 5}, ["rnnc"])
    rows = 1 * 2 * 3
    assert ideal_bytes(case, 2) == {"forward": rows * (18 + 4) * 2, "fwdbwd": rows * (22 + 36 + 4) * 2}


@pytest.mark.parametrize("cell", ["lstm", "slstm", "gru"])
def test_flashrnn_layouts_match_rnnc(cell, monkeypatch):
    """The FlashRNN adapter's layout conversion, run through FlashRNN's own CPU backend: the CUDA
    backends timed on the device get the same tensors."""
    pytest.importorskip("flashrnn")
    case = Case(cell, cell, {"B": 2, "T": 5, "NH": 2, "H": 8}, ["rnnc"])
    inputs = make_inputs(case, "cpu", torch.float32, 0)
    flash = make_impl("flashrnn vanilla", case, torch.float32)
    ours = rnnc.compile(f"examples/{cell}.rnn", backend="reference")(**inputs).h
    theirs = flash.main_output(flash.forward(flash.prepare(inputs))).detach()
    assert isinstance(flash, gpu_cases.FlashRnn)
    assert float((theirs - ours).norm() / ours.norm()) < 1e-5
