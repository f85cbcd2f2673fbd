"""How long ``cell.tiling(...)`` takes over the zoo x GPU profiles x shapes table, in a warm process.

Usage: python bench/tiling_times.py [--json bench/results/tiling-times-cpu.json] [--quick] [--lazy-every 10]

For every zoo cell, every bundled GPU profile, B in {1, 16, 64}, T in {256, 1024, 8192} and head
dims from 16 to 1024 (NH = 8), one ``cell.tiling(gpu=..., dtype="bfloat16", **shape)`` call timed
with time.perf_counter: the optimum only (issue 12 asks for under 100 ms warm), solved afresh,
since the tiling cache points at an empty folder. Every ``--lazy-every``-th request also times
reading ``.candidates`` (4 runners-up) and ``.binding`` afterwards, which are computed on first
use. One warm-up call per cell comes first (imports, the Plan's key). Requests without a tiling
(TilingError) are timed too. Prints the distributions and the slowest calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD_DIMS = (16, 24, 48, 64, 128, 256, 768, 1024)
ZOO = ("deltanet", "elman", "gated_deltanet", "gla", "gru", "hgrn", "linear_attention", "lstm", "lti", "mamba")
ZOO += ("mingru", "retnet", "simple_gla", "slstm")  # the classic zoo; --all-cells adds the papers' cells


def dims_for(cell: str, dims: tuple[str, ...], size: int) -> dict[str, int]:
    """Every dim of the cell at ``size`` (Mamba's N stays 16, the LTI input 8)."""
    fixed = {("mamba", "N"): 16, ("lti", "M"): 8}
    return {d: fixed.get((cell, d), size) for d in dims}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="B=16, T=1024 only")
    parser.add_argument("--lazy-every", type=int, default=10, help="time candidates and binding on every n-th call")
    parser.add_argument("--all-cells", action="store_true", help="every examples/*.rnn, not only the classic zoo")
    args = parser.parse_args()
    os.environ["RNNC_CACHE_DIR"] = tempfile.mkdtemp(prefix="rnnc-tiling-times-")  # every call solves

    import ortools

    import rnnc
    from rnnc.constraints.profiles import profile_names

    paths = sorted((ROOT / "examples").glob("*.rnn"))
    cells = {p.stem: rnnc.compile(str(p), backend="reference") for p in paths if args.all_cells or p.stem in ZOO}
    batches, lengths = ((16,), (1024,)) if args.quick else ((1, 16, 64), (256, 1024, 8192))
    rows, count = [], 0
    for name, cell in cells.items():
        cell.tiling(gpu="h100", **{"B": 2, "T": 8, "NH": 1, **dims_for(name, cell.plan.ir.dims, 16)})  # warm-up
        for gpu in profile_names():
            for size in HEAD_DIMS:
                for B in batches:
                    for T in lengths:
                        shape = {"B": B, "T": T, "NH": 8, **dims_for(name, cell.plan.ir.dims, size)}
                        count += 1
                        rows.append(_time(cell, name, gpu, shape, lazy=count % args.lazy_every == 0))
    _report(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "benchmark": "cell.tiling() time, zoo x profiles x shapes, optimum solved afresh in a warm process",
            "machine": {
                "platform": platform.platform(),
                "python": sys.version.split()[0],
                "ortools": ortools.__version__,
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(),
            },
            "calls": rows,
        }
        args.json.write_text(json.dumps(record, indent=0) + "\n")
    return 0


def _time(cell, name: str, gpu: str, shape: dict, lazy: bool) -> dict:
    from rnnc import TilingError

    row = {"cell": name, "strategy": cell.strategy, "gpu": gpu, "shape": shape}
    started = time.perf_counter()
    try:
        tiling = cell.tiling(gpu=gpu, dtype="bfloat16", **shape)
    except TilingError as exc:
        row.update(seconds=time.perf_counter() - started, feasible=False, error=str(exc).splitlines()[0])
        return row
    row.update(seconds=time.perf_counter() - started, feasible=True, estimate_us=tiling.estimate_us)
    if lazy:
        started = time.perf_counter()
        _ = tiling.candidates
        row["candidates_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        _ = tiling.binding
        row["binding_seconds"] = time.perf_counter() - started
    return row


def _report(rows: list) -> None:
    times = sorted(r["seconds"] for r in rows)
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    print(
        f"{len(rows)} calls of cell.tiling; median {statistics.median(times) * 1e3:.1f} ms, "
        f"p90 {pct(0.9) * 1e3:.1f} ms, p99 {pct(0.99) * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms; "
        f"{sum(t > 0.1 for t in times)} over 100 ms; {sum(not r['feasible'] for r in rows)} without a tiling"
    )
    for strategy in ("sequential", "scan", "chunked"):
        st = [r["seconds"] for r in rows if r["strategy"] == strategy]
        median, slowest = statistics.median(st) * 1e3, max(st) * 1e3
        print(f"  {strategy:10s} {len(st):5d} calls, median {median:6.1f} ms, max {slowest:6.1f} ms")
    for what in ("candidates", "binding"):
        lazy = [r[f"{what}_seconds"] for r in rows if f"{what}_seconds" in r]
        if lazy:
            print(f"  .{what} when first read: {len(lazy)} times, median {statistics.median(lazy) * 1e3:.1f} ms")
    for r in sorted(rows, key=lambda r: -r["seconds"])[:5]:
        print(f"  slow: {r['seconds'] * 1e3:.0f} ms {r['cell']} on {r['gpu']} {r['shape']}")
    for r in [r for r in rows if not r["feasible"]][:10]:
        print(f"  no tiling: {r['cell']} on {r['gpu']} {r['shape']}: {r['error']}")


if __name__ == "__main__":
    sys.exit(main())
