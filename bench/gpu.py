"""One device call: check the zoo on CUDA, then time rnnc against the anchors of issue 5.

    python bench/gpu.py --out DIR [--quick] [--only lstm,scan] [--jobs 12] [--deadline 540] [--commit HASH]
    python bench/gpu.py --smoke --out DIR   # CPU, interpreter, tiny shapes: tests/test_bench_gpu.py runs it

Phases (the device command and how to split a full run over calls: bench/README.md):

1. In parallel, ``--jobs`` worker processes: ``check`` runs every zoo cell on CUDA in float32 and
   bfloat16 against the float64 reference backend (``rnnc.demo.check_cell``), and every
   (case, implementation) pair is run once forward and forward+backward to compile it
   (Triton's cache, FlashRNN's nvcc builds, fla's kernels), so that phase 2 compiles nothing.
   A pair whose warm-up fails or times out is skipped in phase 2 with its reason (a failing CUDA
   kernel would otherwise poison the timing process's context). Bounded by ``--warm-share`` of
   the deadline.
2. In this process, one case at a time: ``triton.testing.do_bench`` (median, warmup 25 ms, rep
   100 ms) of the forward pass under ``torch.no_grad`` and of forward + ``torch.autograd.grad``
   of every leaf, cycling through 2 to 8 preallocated input sets (four L2s' worth between reuses).
   Every anchor runs on the same problem in its own layout (converted before timing); its first
   output's relative error against rnnc's is recorded. Scans report bandwidth as a fraction of a
   measured device-to-device copy and of the profile's figure.
3. ``tune``: ``rnnc.tune.tune`` at a few shapes (after phase 2, in the run's private cache, so
   that phase 2 timed the tiling model's own choices).

Budget on an H100 (estimates, until a first run replaces them; the JSON records every phase's
seconds): start-up 10 s; check 2-3 min over 12 workers (30 items, each a Python start and a
compile); warm-up of FlashRNN's CUDA backends 3-6 min (nvcc, several builds per configuration),
overlapping the checks; timing ~1 s per (case, implementation) plus fla's autotuning (~10 s per
chunked case); tune 20-60 s per shape. ``--quick`` (the targets' shapes only) should fit one
10-minute call; a full run needs two or three (``--only``). The run stops starting work at
``--deadline`` seconds and writes OUT/gpu.json after every case, so a cut-off run keeps its results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from gpu_cases import FAMILIES, ROOT, Case, cases, ideal_bytes  # noqa: E402
from gpu_measure import (  # noqa: E402
    copy_bandwidth,
    gpu_timer,
    measure,
    nvcc,
    run_once,
    smoke_timer,
)
from gpu_report import Report, code_identity, machine, plot_family  # noqa: E402

SPLIT_CHECKS = ["lstm", "gru", "slstm", "lti"]  # sequential cells checked with split heads as well
TUNE_SHAPES = {
    "lstm": {"B": 16, "T": 1024, "NH": 12, "H": 64},
    "hgrn": {"B": 8, "T": 4096, "NH": 12, "D": 128},
    "gla": {"B": 8, "T": 1024, "NH": 8, "K": 64, "V": 64},
    "slstm": {"B": 16, "T": 1024, "NH": 12, "H": 64},
    "gated_deltanet": {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128},
}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu.json and gpu-FAMILY.png")
    p.add_argument("--only", default=None, help=f"comma-separated families of {', '.join(FAMILIES)}")
    p.add_argument("--quick", action="store_true", help="only the shapes of issue 5's targets")
    p.add_argument("--smoke", action="store_true", help="CPU, Triton's interpreter, tiny shapes, stand-in anchors")
    p.add_argument("--jobs", type=int, default=None, help="worker processes of phase 1 (default 12; smoke 3)")
    p.add_argument("--deadline", type=float, default=540.0, help="seconds after which no work starts")
    p.add_argument("--warm-share", type=float, default=0.6, help="share of the deadline phase 1 may use")
    p.add_argument("--commit", default=None, help="the rnnc commit, where the checkout has no .git")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.families = [f.strip() for f in args.only.split(",")] if args.only else list(FAMILIES)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"--only needs families of {', '.join(FAMILIES)}, has {', '.join(unknown)}")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.jobs = args.jobs if args.jobs is not None else (3 if args.smoke else 12)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    os.environ.setdefault("RNNC_CACHE_DIR", tempfile.mkdtemp(prefix="rnnc-bench-cache-"))  # workers inherit it
    # torch's C++ extension builds (FlashRNN, accelerated-scan) need ninja, installed beside this Python
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    if args.worker:
        return worker(json.loads(Path(args.worker).read_text()))
    import torch

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py needs a CUDA GPU (or --smoke); torch sees none", file=sys.stderr)
        return 1
    start = time.time()
    deadline = start + args.deadline
    report = Report(args.out, {"schema": 1, "mode": args.mode, "argv": sys.argv[1:], "families": args.families})
    report.data["code"] = code_identity(args.commit)
    report.data["machine"] = machine(device)
    report.data["rnnc_cache_dir"] = os.environ["RNNC_CACHE_DIR"]
    report.data["timer"] = (
        "wall clock, the faster of 2 calls (smoke)"
        if args.smoke
        else "triton.testing.do_bench, median, warmup 25 ms, rep 100 ms, L2 flushed by do_bench; rotating input sets"
    )
    report.data["phases"] = {}
    report.save()
    chosen = {f: cases(f, args.mode) for f in args.families if f not in ("check", "tune")}
    dtype_name = "float32" if args.smoke else "bfloat16"

    items = []
    if "check" in args.families:
        zoo = ["hgrn"] if args.smoke else sorted(p.stem for p in (ROOT / "examples").glob("*.rnn"))
        dtypes = ["float32"] if args.smoke else ["float32", "bfloat16"]
        items += [{"kind": "check", "cell": c, "dtype": d} for c in zoo for d in dtypes]
        if not args.smoke:  # heads split over programs (one launch per step), at a width that needs it
            split = {"tiling": {"SPLIT": 4}, "size": 96}
            items += [{"kind": "check", "cell": c, "dtype": d, **split} for c in SPLIT_CHECKS for d in dtypes]
    items += [  # nvcc builds first: they take longest
        {"kind": "warm", "case": case.to_json(), "impl": impl, "dtype": dtype_name}
        for family in chosen.values()
        for case in family
        for impl in case.impls
        if not (args.smoke and impl.startswith("rnnc"))  # smoke: only the anchors, to stay within the suite's time
    ]
    items.sort(key=lambda item: item["kind"] != "warm" or not nvcc(item["impl"]))
    phase = time.time()
    finished = run_workers(items, args, until=start + args.warm_share * args.deadline)
    report.data["phases"]["check_and_warm_s"] = round(time.time() - phase, 1)
    report.data["check"] = [r for r in finished if r["kind"] == "check"]
    report.data["warm"] = [r for r in finished if r["kind"] == "warm"]
    warm = {(json.dumps(r["case"], sort_keys=True), r["impl"]): r for r in report.data["warm"]}
    report.save()

    phase = time.time()
    timer = smoke_timer if args.smoke else gpu_timer
    copy = copy_bandwidth(device, timer)
    report.data["copy_bandwidth_gbps"] = copy
    from rnnc.constraints.profiles import load_profile

    name = report.data["machine"]["device"]  # --gpu auto takes H100 rates for every sm_90 card: name it
    profile = load_profile(
        next((p for p in ("h200", "h100") if p.upper() in name), "auto" if device == "cuda" else "h100")
    )
    report.data["profile"] = profile.name
    report.data["profile_bandwidth_gbps"] = profile.memory_bandwidth_gbps
    context = {"lost": None, "bandwidth": {"copy": copy, "profile": profile.memory_bandwidth_gbps}}
    report.data["results"] = {}
    for family, family_cases in chosen.items():
        entries = report.data["results"].setdefault(family, []) if family_cases else []
        for case in family_cases:
            entries.append(time_case(case, device, getattr(torch, dtype_name), timer, warm, deadline, context))
            print_case(entries[-1])
            report.save()
    report.data["phases"]["timing_s"] = round(time.time() - phase, 1)

    if "tune" in args.families:
        phase = time.time()
        report.data["tune"] = run_tune(args, device, deadline)
        report.data["phases"]["tune_s"] = round(time.time() - phase, 1)
    report.data["plots"] = {}
    for family, entries in report.data.get("results", {}).items():
        try:
            report.data["plots"][family] = plot_family(args.out, family, entries)
        except Exception as exc:  # noqa: BLE001 - a plot is a convenience; the JSON is the record
            report.data["plots"][family] = f"not drawn: {type(exc).__name__}: {exc}"
    report.data["phases"]["total_s"] = round(time.time() - start, 1)
    report.save()
    print(f"wrote {report.path} ({report.data['phases']['total_s']} s)")
    return 0


def time_case(case: Case, device, dtype, timer, warm: dict, deadline: float, context: dict) -> dict:
    import torch

    itemsize = torch.empty((), dtype=dtype).element_size()
    entry = {"cell": case.cell, "label": case.label, "shape": case.shape, "dtype": str(dtype).split(".")[-1]}
    entry.update(ideal_bytes=ideal_bytes(case, itemsize), results=[])
    reference = None
    for name in case.impls:
        result = {"impl": name}
        warmed = warm.get((json.dumps(case.to_json(), sort_keys=True), name))
        if context["lost"]:
            result["skipped"] = f"the CUDA context was lost earlier ({context['lost']})"
        elif time.time() > deadline:
            result["skipped"] = "past --deadline"
        elif warmed is not None and warmed["status"] != "ok" and (warmed["status"] != "not started" or nvcc(name)):
            result["skipped"] = f"warm-up {warmed['status']}: {warmed.get('error', '')}"[:600]
        else:
            try:
                result.update(measure(case, name, dtype, device, timer, entry["ideal_bytes"], context))
                main, comparable = result.pop("main"), result.pop("comparable")
                if name == "rnnc":
                    reference = main
                elif reference is not None and comparable:
                    result["rel_err_vs_rnnc"] = float((main - reference).norm() / reference.norm().clamp_min(1e-30))
            except Exception as exc:  # noqa: BLE001 - an anchor that fails is recorded, never fatal
                result["error"] = f"{type(exc).__name__}: {exc}"[:600]
                if device == "cuda":
                    try:
                        torch.cuda.synchronize()
                    except Exception as lost:  # noqa: BLE001
                        context["lost"] = f"{name} on {case.label}: {lost}"[:300]
        entry["results"].append(result)
        torch.cuda.empty_cache() if device == "cuda" else None
    return entry


def print_case(entry: dict) -> None:
    base = next((r.get("fwdbwd_us") for r in entry["results"] if r["impl"] == "rnnc"), None)
    for r in entry["results"]:
        if "fwdbwd_us" in r:
            ratio = f"{r['fwdbwd_us'] / base:6.2f}x rnnc" if base else ""
            err = f"  err {r['rel_err_vs_rnnc']:.1e}" if "rel_err_vs_rnnc" in r else ""
            line = f"fwd {r['forward_us']:10.1f} us  fwd+bwd {r['fwdbwd_us']:10.1f} us {ratio}{err}"
        else:
            line = (r.get("error") or r.get("skipped") or "?").splitlines()[0][:150]
        print(f"{entry['label']:<34} {r['impl']:<26} {line}", flush=True)


def run_workers(items: list, args, until: float) -> list:
    """Run each item in its own process, ``args.jobs`` at a time; kill what runs past ``until``."""
    if not items:
        return []
    folder = Path(tempfile.mkdtemp(prefix="rnnc-bench-work-"))
    pending, running, done = list(enumerate(items)), {}, []
    while pending or running:
        while pending and len(running) < max(1, args.jobs) and time.time() < until:
            i, item = pending.pop(0)
            spec = {**item, "smoke": args.smoke, "result": str(folder / f"{i}.json")}
            (folder / f"{i}.spec").write_text(json.dumps(spec))
            log = open(folder / f"{i}.log", "w")
            command = [sys.executable, __file__, "--out", str(folder), "--worker", str(folder / f"{i}.spec")]
            running[i] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), item, time.time(), log)
        if not running and pending:  # out of time before these started
            done += [{**item, "status": "not started", "error": "phase 1 ran out of time"} for _, item in pending]
            break
        time.sleep(0.2)
        for i, (proc, item, began, log) in list(running.items()):
            if proc.poll() is None and time.time() < until:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
            result_path = folder / f"{i}.json"
            if result_path.exists():
                result = json.loads(result_path.read_text())
            else:
                tail = (folder / f"{i}.log").read_text(errors="replace")[-600:]
                status = "timed out" if proc.returncode in (-9, 137) else f"crashed (exit {proc.returncode})"
                result = {**item, "status": status, "error": tail}
            result["seconds"] = round(time.time() - began, 1)
            done.append(result)
            del running[i]
            print(f"phase 1: {_describe(result)}", flush=True)
    return done


def _describe(result: dict) -> str:
    what = f"{result['cell']} {result['dtype']}" if result["kind"] == "check" else result["impl"]
    what += f" {result['tiling']}" if result.get("tiling") else ""
    where = "" if result["kind"] == "check" else f" on {Case(**result['case']).label}"
    return f"{result['kind']} {what}{where}: {result['status']} ({result.get('seconds', '?')} s)"


def worker(spec: dict) -> int:
    """Phase 1 in a process of its own: one zoo check or one warm-up; the result goes to spec['result']."""
    import torch

    device = "cpu" if spec["smoke"] else "cuda"
    result = {k: v for k, v in spec.items() if k not in ("result", "smoke")}
    try:
        if spec["kind"] == "check":
            from dataclasses import asdict

            from rnnc.demo import check_cell

            path = ROOT / "examples" / f"{spec['cell']}.rnn"
            row = asdict(check_cell(path, device, spec["dtype"], tiling=spec.get("tiling"), size=spec.get("size", 16)))
            result.update(row, status="ok" if row["status"] in ("ok", "reference only") else row["status"])
        else:
            run_once(Case(**spec["case"]), spec["impl"], getattr(torch, spec["dtype"]), device)
            result["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, with the traceback's end
        result.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:600], trace=traceback.format_exc()[-800:])
    Path(spec["result"]).write_text(json.dumps(result, default=str))
    return 0


def run_tune(args, device: str, deadline: float) -> dict:
    """rnnc tune at a few shapes: each candidate's time, the winner's rank, first/best."""
    from rnnc import tuning_cache
    from rnnc.tune import tune

    shapes = {"hgrn": {"B": 2, "T": 16, "NH": 1, "D": 16}} if args.smoke else dict(TUNE_SHAPES)
    if args.quick:
        shapes = {k: v for k, v in shapes.items() if k in ("lstm", "hgrn", "gla")}
    top = 2 if args.smoke else 4 if args.quick else 8
    out = {"top": top, "entries": []}
    options = (
        {"device": "cpu", "device_name": "smoke CPU", "timer": lambda fn, p: smoke_timer(fn)} if args.smoke else {}
    )
    for cell, shape in shapes.items():
        if time.time() > deadline:
            out["entries"].append({"cell": cell, "shape": shape, "skipped": "past --deadline"})
            continue
        dtype = "float32" if args.smoke else "bfloat16"
        profile = "h100" if args.smoke else "auto"
        try:
            r = tune(ROOT / "examples" / f"{cell}.rnn", shape, gpu=profile, dtype=dtype, top=top, **options)
            rows = [dict(vars(row)) for row in r.rows]
            found = {"cell": cell, "shape": shape, "rows": rows, "winner_rank": r.winner_rank}
            out["entries"].append({**found, "first_over_best": r.first_over_best})
            print(f"tune {cell}: winner rank {r.winner_rank}, first/best {r.first_over_best}", flush=True)
        except Exception as exc:  # noqa: BLE001
            out["entries"].append({"cell": cell, "shape": shape, "error": f"{type(exc).__name__}: {exc}"[:600]})
    gpu = "smoke CPU" if args.smoke else machine(device)["device"]
    out["summary"] = tuning_cache.summarize(tuning_cache.entries(gpu))
    return out


if __name__ == "__main__":
    sys.exit(main())
