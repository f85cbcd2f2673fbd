"""The scan cells' CPU path, forward + backward, one thread: rnnc's reference against a plain PyTorch loop.

    python bench/cpu_scan.py [OUT.json] [--smoke]

Contenders, interleaved in one process (each repeat runs every contender once), median of the
repeats, CPU time of this process and wall time:

* ``rnnc``: the reference backend, which runs a scan cell's pieces for every step at once and
  one two-level scan per component (rnnc/runtime/reference_scan.py);
* ``rnnc step loop``: the same backend's generic loop (``run_dense``: state-free values for all
  steps at once, then one step per t), what runs without the fast path;
* ``plain loop``: the float64-reference loops of tests/refs (one Python step per time step).

Cells: HGRN, minGRU, Mamba (B4 T512 NH4, D64, N16) and the paper cells Aaren, RWKV-4 and LRU.
Raw results go to OUT.json (default bench/results/cpu-scan.json). ``--smoke`` runs tiny sizes.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from refs import loops, paper_data, paper_loops, paper_loops_vector  # noqa: E402

import rnnc  # noqa: E402

PAPER = {**paper_loops.LOOPS, **paper_loops_vector.LOOPS}


def _arguments(cell: str, B: int, T: int, NH: int, dims: dict):
    if cell in loops.REFS:
        from refs import data

        args, state = data.make(cell, B=B, T=T, NH=NH, dtype=torch.float32, **dims)
    else:
        args, state = paper_data.make(cell, B=B, T=T, NH=NH, **dims)
        args = {k: v.detach().float().requires_grad_() for k, v in args.items()}
        state = {k: v.detach().float().requires_grad_() for k, v in state.items()}
    return args, state


def _contenders(cell: str, args: dict, state: dict):
    from rnnc.runtime.reference import run_dense

    fast = rnnc.compile(ROOT / "examples" / f"{cell}.rnn", backend="reference")
    oracle = loops.REFS.get(cell) or PAPER[cell]

    def of(cell_):
        def run():
            out = cell_(state=state, **args)
            return [*out.outputs.values(), *out.state.values()]

        return run

    def step_loop():  # the reference's generic loop (what runs every strategy without a fast path)
        runner = fast._runner
        outputs, finals = run_dense(runner, runner.bind(args, state))
        return [*outputs.values(), *finals.values()]

    def plain():
        outputs, finals = oracle(**args, **{f"{k}0": v for k, v in state.items()})
        return [*outputs.values(), *finals.values()]

    return {"rnnc": of(fast), "rnnc step loop": step_loop, "plain loop": plain}


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    outs = fn()
    sum(o.float().pow(2).mean() for o in outs).backward()
    return (time.process_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3


def main(argv: list[str]) -> dict:
    smoke = "--smoke" in argv
    paths = [a for a in argv if not a.startswith("--")]
    out = Path(paths[0]) if paths else ROOT / "bench" / "results" / "cpu-scan.json"
    torch.set_num_threads(1)
    B, T, NH = (1, 5, 1) if smoke else (4, 512, 4)
    cases = [
        ("hgrn", {"D": 3 if smoke else 64}),
        ("mingru", {"H": 3 if smoke else 64}),
        ("mamba", {"D": 3 if smoke else 64, "N": 2 if smoke else 16}),
        ("aaren", {}),
        ("rwkv4", {}),
        ("lru", {}),
    ]
    repeats = 1 if smoke else 7
    rows = []
    for cell, dims in cases:
        args, state = _arguments(cell, B, T, NH, dims)
        contenders = _contenders(cell, args, state)
        for fn in contenders.values():  # warm up (compiles, caches)
            _timed(fn)
        times = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, fn in contenders.items():
                times[name].append(_timed(fn))
        results = {
            name: {"cpu_ms": statistics.median(c for c, _ in ts), "wall_ms": statistics.median(w for _, w in ts)}
            for name, ts in times.items()
        }
        shape = f"B{B} T{T} NH{NH} " + " ".join(f"{k}{v}" for k, v in dims.items())
        ratio = {k: results["rnnc"]["cpu_ms"] / v["cpu_ms"] for k, v in results.items() if k != "rnnc"}
        rows.append({"cell": cell, "shape": shape.strip(), "results": results, "rnnc_over": ratio})
        print(f"{cell:8s} {shape:28s} " + "  ".join(f"{k} {v['cpu_ms']:8.1f} ms" for k, v in results.items()))
    report = {
        "what": "scan cells on the reference backend, CPU, forward+backward, one thread; medians of repeats",
        "smoke": smoke,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
