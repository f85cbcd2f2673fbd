"""Side by side: rnnc's CP-SAT tiling against FlashRNN's ConstrINT, for the LSTM configurations of FlashRNN's paper.

Usage:
    python bench/constrint_flashrnn.py --json bench/results/constrint-flashrnn-cpu.json   # minutes: ConstrINT
    python bench/tiling_vs_constrint.py --constrint bench/results/constrint-flashrnn-cpu.json \\
        --json bench/results/tiling-vs-constrint-cpu.json

Both sides solve for an H100 SXM, bf16, on this machine's CPU. ConstrINT's time is its
first solve of FlashRNN's own problem (see bench/constrint_flashrnn.py; a fresh process
per solve, imports excluded). rnnc's times, for the same (head dim, heads, batch):
``first`` is the first solve of the process (what a user waits for once), ``optimum`` the
median of 5 warm solves of the model's optimum, ``full`` the median of 3 warm calls of
``solve_tiling`` with 4 runners-up and the binding-constraint analysis (no cache).
The problems differ: FlashRNN's fixes the tiling of its CUDA kernel (forward and
backward, feasibility only); rnnc's picks the tiles of its sequential Triton kernel with
an objective. The comparison is of what each user waits for to get a tiling.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def time_rnnc(head_dim: int, heads: int, batch: int, plan) -> dict:
    from rnnc.constraints.problem import problem_of
    from rnnc.constraints.profiles import load_profile
    from rnnc.constraints.sequential import build_model
    from rnnc.constraints.tiling import solve_tiling

    shape = {"B": batch, "T": 1024, "NH": heads, "H": head_dim}
    profile = load_profile("h100")
    optimum_runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        solution = build_model(problem_of(plan, shape, "bfloat16"), profile).solve()
        optimum_runs.append(time.perf_counter() - t0)
    full_runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        try:
            tiling = solve_tiling(plan, profile, shape, "bfloat16", use_cache=False)
        except Exception as exc:  # noqa: BLE001 - recorded, e.g. a TilingError for H = 2560
            tiling = exc
        full_runs.append(time.perf_counter() - t0)
    return {
        "optimum_median_s": statistics.median(optimum_runs),
        "optimum_runs_s": optimum_runs,
        "full_median_s": statistics.median(full_runs),
        "full_runs_s": full_runs,
        "feasible": solution is not None,
        "params": None if solution is None else solution.values,
        "estimate_us": getattr(tiling, "estimate_us", None),
        "error": None if solution is not None else str(tiling).splitlines()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--constrint", type=Path, required=True, help="JSON written by bench/constrint_flashrnn.py")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    theirs = json.loads(args.constrint.read_text())

    t0 = time.perf_counter()
    from rnnc.compiler import analyse_source
    from rnnc.constraints.problem import problem_of
    from rnnc.constraints.profiles import load_profile
    from rnnc.constraints.sequential import build_model

    plan = analyse_source((ROOT / "examples" / "lstm.rnn").read_text())
    first_row = theirs["rows"][0]
    build_model(
        problem_of(
            plan,
            {"B": first_row["batch"], "T": 1024, "NH": first_row["num_heads"], "H": first_row["head_dim"]},
            "bfloat16",
        ),
        load_profile("h100"),
    ).solve()
    first_s = time.perf_counter() - t0  # imports, analysis and the first solve of the process
    rows = []
    print(
        f"{'head dim':>8} {'heads':>5} {'batch':>5} {'ConstrINT':>10} {'rnnc opt':>9} {'rnnc full':>9} {'speed-up':>9}"
    )
    for row in theirs["rows"]:
        ours = time_rnnc(row["head_dim"], row["num_heads"], row["batch"], plan)
        speedup = row["median_s"] / ours["optimum_median_s"] if row.get("median_s") else None
        rows.append(
            {
                "config": {k: row[k] for k in ("head_dim", "num_heads", "batch", "dtype")},
                "constrint": {k: row.get(k) for k in ("median_s", "runs_s", "feasible", "timed_out")},
                "rnnc": ours,
                "speedup_optimum": speedup,
            }
        )
        print(
            f"{row['head_dim']:8d} {row['num_heads']:5d} {row['batch']:5d} {row['median_s']:9.2f}s "
            f"{ours['optimum_median_s'] * 1e3:7.1f}ms {ours['full_median_s'] * 1e3:7.0f}ms "
            f"{speedup:8.0f}x" + ("" if ours["feasible"] else "  (rnnc: no tiling fits)")
        )
    print(f"rnnc first solve in a fresh process, imports and analysis included: {first_s:.2f} s")
    if args.json:
        import ortools

        record = {
            "benchmark": "tiling solve time: rnnc CP-SAT vs FlashRNN ConstrINT, LSTM, H100 SXM profile, bf16",
            "machine": {
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "ortools": ortools.__version__,
            },
            "constrint_machine": theirs.get("machine"),
            "rnnc_first_solve_s": first_s,
            "rows": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
