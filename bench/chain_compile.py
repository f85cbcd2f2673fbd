"""Compile time of a chain of states, s_i read by s_(i+1), for growing chain lengths.

Usage: python bench/chain_compile.py [--states 4 8 12 16] [--json bench/results/chain-compile-cpu.json]

Each state is `s_i' = exp(g) * s_i + (s_(i-1)' + x) * (s_(i-1)' + g)`: quadratic in the previous
state, so analysing all states jointly (the analysis before components) expands products of
nested updates, which grows exponentially with the chain (issue 10 measured 4 states 1.8 s,
8 states 16 s, 12 states over two minutes). By components, each state is analysed alone with
the earlier ones as known inputs. The time is `rnnc.compile` (parse, analysis, reference step)
in a warm process, best of `--repeat`, beside the analysis alone (parse, lower, components).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def chain(n: int) -> str:
    """The source of a cell with ``n`` chained states."""
    states = "\n".join(f"    state s{i}: [H]" for i in range(n))
    updates = ["    s0 = exp(g) * s0 + x"]
    updates += [f"    s{i} = exp(g) * s{i} + (s{i - 1} + x) * (s{i - 1} + g)" for i in range(1, n)]
    return (
        f"cell chain(H) {{\n    input x: [H]\n    input g: [H]\n{states}\n"
        + "\n".join(updates)
        + f"\n    emit y = s{n - 1}\n}}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, nargs="+", default=[4, 8, 12])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import rnnc
    from rnnc.compiler import analyse_source

    rnnc.compile(chain(2), backend="reference")  # warm: imports, lark, sympy caches
    rows = []
    for n in args.states:
        times, analysis = [], []
        for _ in range(args.repeat):
            fresh = chain(n) + f"# repeat {len(times)}\n"  # a new text: nothing cached from an earlier run
            start = time.perf_counter()
            plan = analyse_source(fresh)
            analysis.append(time.perf_counter() - start)
            fresh += "#\n"
            start = time.perf_counter()
            rnnc.compile(fresh, backend="reference")
            times.append(time.perf_counter() - start)
        row = {"states": n, "strategy": plan.strategy, "components": len(plan.components)}
        rows.append({**row, "analysis_best_s": min(analysis), "compile_best_s": min(times)})
        print(
            f"{n:3d} states: {plan.strategy}, {len(plan.components)} components, "
            f"analysis {min(analysis):.3f} s, compile {min(times):.3f} s",
            flush=True,
        )
    if args.json:
        meta = {"python": sys.version.split()[0], "machine": platform.machine(), "processor": platform.processor()}
        args.json.write_text(json.dumps({"bench": "chain-compile", "meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
