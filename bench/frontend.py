"""Front-end time per zoo cell, parse to Plan, in a warm process.

Usage: python bench/frontend.py [--repeat 20] [--json bench/results/frontend-cpu.json]

Each cell is analysed once to warm caches (lark's parser, sympy's), then timed
``--repeat`` times with time.perf_counter; the table shows the median and the
worst of those runs, and the cold first run of the whole process for reference.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw times here")
    args = parser.parse_args()

    start = time.perf_counter()
    import sympy

    from rnnc.compiler import analyse_source

    import_s = time.perf_counter() - start
    sources = {p.stem: p.read_text() for p in sorted((ROOT / "examples").glob("*.rnn"))}
    cold = {}
    for name, text in sources.items():
        t0 = time.perf_counter()
        analyse_source(text, name)
        cold[name] = time.perf_counter() - t0
    rows = {}
    for name, text in sources.items():
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            plan = analyse_source(text, name)
            times.append(time.perf_counter() - t0)
        rows[name] = {
            "strategy": plan.strategy,
            "median_s": statistics.median(times),
            "max_s": max(times),
            "first_run_s": cold[name],
            "runs_s": times,
        }
    print(f"import of rnnc.compiler (sympy, lark): {import_s:.2f} s")
    print(f"{'cell':18s} {'strategy':10s} {'median':>9s} {'worst':>9s} {'first':>9s}")
    for name, row in rows.items():
        print(
            f"{name:18s} {row['strategy']:10s} {row['median_s'] * 1e3:7.1f}ms {row['max_s'] * 1e3:7.1f}ms "
            f"{row['first_run_s'] * 1e3:7.1f}ms"
        )
    worst = max(r["median_s"] for r in rows.values())
    print(f"slowest median: {worst * 1e3:.1f} ms (target: under 300 ms per cell)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": "front end, parse to Plan, warm process",
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "python": sys.version.split()[0],
                "sympy": sympy.__version__,
            },
            "repeat": args.repeat,
            "import_s": import_s,
            "cells": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
