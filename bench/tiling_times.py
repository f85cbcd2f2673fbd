"""Solve time of the tiling models over the zoo x GPU profiles x shapes table.

Usage: python bench/tiling_times.py [--json bench/results/tiling-times-cpu.json] [--quick]

For every zoo cell, every bundled GPU profile, B in {1, 16, 64}, T in {256, 1024, 8192}
and head dims from 16 to 1024, one CP-SAT solve of the cell's model (the optimum
only: no runners-up, no binding analysis), timed with time.perf_counter in a warm
process. Infeasible requests are timed too (the solver proves infeasibility).
Prints the distribution and the slowest solves.
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
HEAD_DIMS = (16, 24, 48, 64, 128, 256, 768, 1024)


def dims_for(cell: str, dims: tuple[str, ...], size: int) -> dict[str, int]:
    """Every dim of the cell at ``size`` (Mamba's N stays 16, the LTI input 8)."""
    fixed = {("mamba", "N"): 16, ("lti", "M"): 8}
    return {d: fixed.get((cell, d), size) for d in dims}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="B=16, T=1024 only")
    args = parser.parse_args()

    import ortools

    from rnnc.compiler import analyse_source
    from rnnc.constraints.problem import problem_of
    from rnnc.constraints.profiles import load_profile, profile_names
    from rnnc.constraints.tiling import BUILDERS

    plans = {p.stem: analyse_source(p.read_text()) for p in sorted((ROOT / "examples").glob("*.rnn"))}
    profiles = {n: load_profile(n) for n in profile_names()}
    batches, lengths = ((16,), (1024,)) if args.quick else ((1, 16, 64), (256, 1024, 8192))
    rows = []
    for cell, plan in plans.items():
        for gpu, profile in profiles.items():
            for size in HEAD_DIMS:
                for B in batches:
                    for T in lengths:
                        shape = {"B": B, "T": T, "NH": 8, **dims_for(cell, plan.ir.dims, size)}
                        problem = problem_of(plan, shape, "bfloat16")
                        model = BUILDERS[plan.strategy](problem, profile)
                        t0 = time.perf_counter()
                        solution = model.solve()
                        seconds = time.perf_counter() - t0
                        rows.append(
                            {
                                "cell": cell,
                                "strategy": plan.strategy,
                                "gpu": gpu,
                                "shape": shape,
                                "feasible": solution is not None,
                                "seconds": seconds,
                                "estimate_us": solution.objective / 1000 if solution else None,
                            }
                        )
    times = sorted(r["seconds"] for r in rows)
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    print(
        f"{len(rows)} solves; median {statistics.median(times) * 1e3:.1f} ms, p90 {pct(0.9) * 1e3:.1f} ms, "
        f"p99 {pct(0.99) * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms; "
        f"{sum(t > 0.5 for t in times)} over 0.5 s; {sum(not r['feasible'] for r in rows)} infeasible"
    )
    for strategy in ("sequential", "scan", "chunked"):
        st = [r["seconds"] for r in rows if r["strategy"] == strategy]
        print(
            f"  {strategy:10s} {len(st):5d} solves, median {statistics.median(st) * 1e3:6.1f} ms, "
            f"max {max(st) * 1e3:6.1f} ms"
        )
    for r in sorted(rows, key=lambda r: -r["seconds"])[:5]:
        print(f"  slow: {r['seconds'] * 1e3:.0f} ms {r['cell']} on {r['gpu']} {r['shape']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": "tiling solve time, zoo x profiles x shapes, one solve each",
            "machine": {
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "ortools": ortools.__version__,
                "cpu_count_used": 1,
            },
            "solves": rows,
        }
        args.json.write_text(json.dumps(record, indent=0) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
