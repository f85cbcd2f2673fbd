"""Compile every zoo cell's kernels at the benchmark shapes for GPU architectures, here (no GPU), and record them.

Usage: python bench/inspect_zoo.py [--gpus h100,a100] [--dtypes bfloat16] [--precision ieee]
                                   [--cells lstm,gla] [--narrow] [--variant dot16]
                                   [--json bench/results/inspect-zoo-cpu.json]

For each cell, shape, GPU profile and dtype, ``rnnc.inspect.inspect_cell`` dry-runs one
training step with the tiling the model picks for that profile and compiles each launch for the
profile's architecture; the JSON keeps every kernel's registers, stack bytes, shared memory,
tensor-core instructions, tl.dot count, the model's predicted registers and shared memory, and
the occupancy. ``--variant dot16`` compiles the generated modules with every tl.dot's operands cast to
bfloat16 (bench/calibrate_tiling.py's variant: what the templates' DOT_DTYPE will compile to), and
``--narrow`` leaves out the sequential cells' head dim 768 (their split-head kernels take minutes
each to compile). The JSON is rewritten after every case, so an interrupted sweep keeps what it did.
Prints one line per kernel and a summary: kernels that spill, kernels with dots but no tensor cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEQUENTIAL = [{"B": 16, "T": 1024, "NH": 12, "H": 64}, {"B": 16, "T": 1024, "NH": 1, "H": 768}]
SCAN = {"B": 8, "T": 2048, "NH": 1}
CHUNKED = {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}
# the benchmark shapes of issue 12, and shapes of the same size for the zoo's other cells
SHAPES = {
    "lstm": SEQUENTIAL,
    "slstm": SEQUENTIAL,
    "gru": SEQUENTIAL,
    "elman": SEQUENTIAL,
    "lti": [{"B": 16, "T": 1024, "NH": 12, "N": 64, "M": 64}],
    "hgrn": [{**SCAN, "D": 1024}],
    "mingru": [{**SCAN, "H": 1024}],
    "mamba": [{**SCAN, "D": 1024, "N": 16}],
    "gla": [CHUNKED],
    "simple_gla": [CHUNKED],
    "retnet": [CHUNKED],
    "deltanet": [CHUNKED],
    "gated_deltanet": [CHUNKED],
    "linear_attention": [CHUNKED],
}
ISSUE_CELLS = ("lstm", "slstm", "gru", "hgrn", "mamba", "gla", "simple_gla", "retnet", "deltanet", "gated_deltanet")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="h100,a100")
    parser.add_argument("--dtypes", default="bfloat16")
    parser.add_argument("--precision", default="ieee", choices=("ieee", "tf32"))
    parser.add_argument("--cells", default=",".join(SHAPES), help="comma-separated zoo cells (default: all)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "inspect-zoo-cpu.json")
    parser.add_argument("--label", default="", help="a note stored in the JSON (what the run measured)")
    parser.add_argument("--variant", default="as-is", choices=("as-is", "dot16"))
    parser.add_argument("--narrow", action="store_true", help="no sequential head dim 768")
    args = parser.parse_args()

    import triton

    from rnnc.compiler import analyse_source
    from rnnc.errors import RnncError
    from rnnc.inspect import inspect_cell

    sys.path.insert(0, str(ROOT / "bench"))
    from calibrate_tiling import dot16

    transform = dot16 if args.variant == "dot16" else None

    result = {
        "benchmark": "rnnc inspect over the zoo at the benchmark shapes (compiled here, no GPU)",
        "label": args.label,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "triton": triton.__version__},
        "commit": _commit(),
        "precision": args.precision,
        "variant": args.variant,
        "cases": [],
    }
    for cell in args.cells.split(","):
        plan = analyse_source((ROOT / "examples" / f"{cell}.rnn").read_text())
        for shape in SHAPES[cell]:
            if args.narrow and shape.get("H") == 768:
                continue
            for gpu in args.gpus.split(","):
                for dtype in args.dtypes.split(","):
                    started = time.perf_counter()
                    case = {"cell": cell, "gpu": gpu, "dtype": dtype, "shape": shape}
                    try:
                        report = inspect_cell(plan, gpu, shape, dtype, precision=args.precision, transform=transform)
                        case.update(report.to_json())
                    except RnncError as exc:
                        case["error"] = str(exc)
                    case["seconds"] = round(time.perf_counter() - started, 1)
                    result["cases"].append(case)
                    _print_case(case)
                    args.json.parent.mkdir(parents=True, exist_ok=True)
                    args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    _print_summary(result["cases"])
    return 0


def _print_case(case: dict) -> None:
    label = f"{case['cell']:16s} {case['gpu']:6s} {case['dtype']:9s} " + ",".join(
        f"{k}={v}" for k, v in case["shape"].items()
    )
    if "error" in case:
        print(f"{label}: {case['error'].splitlines()[0]}", flush=True)
        return
    for k in case["kernels"]:
        predicted = k["predicted"]
        print(
            f"{label} {k['name']:20s} regs {k['registers']} stack {k['stack_bytes']} shared {k['shared_bytes']} "
            f"TC {k['tensor_core_instructions']} dots {k['dots']} model regs {predicted.get('registers')} "
            f"model shared {predicted.get('shared_bytes')}" + "".join(f"\n    {n}" for n in k["notes"]),
            flush=True,
        )


def _print_summary(cases: list) -> None:
    kernels = [(c, k) for c in cases if "kernels" in c for k in c["kernels"]]
    spilling = [(c, k) for c, k in kernels if k["stack_bytes"]]
    no_tc = [(c, k) for c, k in kernels if k["dots"] and not k["tensor_core_instructions"]]
    failed = [(c, k) for c, k in kernels if k["registers"] is None]
    errors = [c for c in cases if "error" in c]
    print(
        f"{len(kernels)} kernels: {len(spilling)} spill, {len(no_tc)} have dots without tensor cores, "
        f"{len(failed)} do not compile; {len(errors)} requests without a tiling"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
