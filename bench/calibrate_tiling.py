"""The tiling models' register and shared-memory estimates against the compiler's, over pinned tilings.

Usage: python bench/calibrate_tiling.py [--gpu h100] [--strategies sequential,scan,chunked]
                                        [--json bench/results/tiling-calibration-cpu.json]

Each case pins a tiling on a zoo cell (``rnnc.inspect.inspect_cell`` with ``pinned``), compiles
its forward and backward kernels for the profile's architecture here, and records the compiler's
registers, stack and shared memory next to the model's estimate at the parameters the kernels
were launched with. Every case is compiled twice: the generated module as it is, and a variant
whose ``tl.dot`` operands are cast to the inputs' 16-bit dtype (``dot16``: the DOT_DTYPE
convention of docs/decisions.md, which the templates are adopting), since the register demand
of a float32 FMA-loop dot says little about the tensor-core kernels. ``demand`` is registers plus
stack words: what a thread would need not to spill. The JSON is rewritten after every case.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEQ = {"B": 16, "T": 64, "NH": 12}
CHUNK = {"B": 4, "T": 256, "NH": 16}
SCAN = {"B": 8, "T": 256, "NH": 1}
CASES = {
    "sequential": [
        ("lstm", {**SEQ, "H": h}, {"BLOCK_B": b, "num_warps": w})
        for h, b, w in ((32, 16, 4), (64, 16, 4), (64, 16, 8), (64, 32, 8), (64, 16, 16), (128, 16, 8), (128, 16, 16))
    ]
    + [("gru", {**SEQ, "H": 64}, {"BLOCK_B": 16, "num_warps": w}) for w in (4, 8)]
    + [("slstm", {**SEQ, "H": 64}, {"BLOCK_B": 16, "num_warps": w}) for w in (4, 8)],
    "scan": [
        ("hgrn", {**SCAN, "D": 1024}, {"BLOCK_C": c, "BLOCK_T": t, "num_warps": w, "num_stages": 1})
        for c, t, w in ((64, 16, 4), (64, 64, 4), (256, 16, 4), (256, 32, 8), (512, 16, 8), (1024, 16, 8))
    ]
    + [
        ("mamba", {**SCAN, "D": 1024, "N": 16}, {"BLOCK_C": c, "BLOCK_T": t, "num_warps": w, "num_stages": 1})
        for c, t, w in ((16, 16, 1), (64, 16, 4), (256, 16, 4), (256, 32, 8))
    ],
    "chunked": [
        (cell, {**CHUNK, "K": 128, "V": 128}, {"CHUNK": c, "BV": v, "num_warps": w, "num_stages": 1})
        for cell in ("simple_gla", "gla", "deltanet")
        for c, v, w in ((16, 16, 4), (16, 32, 4), (16, 16, 8), (16, 32, 8), (16, 64, 8), (32, 32, 8), (32, 64, 8))
        if not (cell == "gla" and c > 16)  # per-channel decays keep 16-step chunks
    ]
    + [
        (cell, {**CHUNK, "K": 64, "V": 64}, {"CHUNK": c, "BV": v, "num_warps": w, "num_stages": 1})
        for cell in ("simple_gla", "deltanet")
        for c, v, w in ((16, 32, 4), (32, 32, 4), (64, 64, 8))
    ],
}
DOT_CALL = re.compile(r"\btl\.dot\(")
HELPER = """

@triton.jit
def _dot16(a, b, input_precision: tl.constexpr = "ieee"):
    # calibration variant: the operands meet at the dot in bfloat16, accumulation in float32
    return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
"""


def dot16(text: str) -> str:
    """The module with every tl.dot's operands cast to bfloat16 (a helper replaces tl.dot)."""
    head, marker, rest = text.partition("import triton.language as tl\n")
    return head + marker + HELPER + DOT_CALL.sub("_dot16(", rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="h100")
    parser.add_argument("--strategies", default="sequential,scan,chunked")
    parser.add_argument("--variants", default="as-is,dot16")
    parser.add_argument("--only", default=None, help="cells to run (default: every case of the strategies)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "tiling-calibration-cpu.json")
    args = parser.parse_args()

    import triton

    from rnnc.compiler import analyse_source
    from rnnc.inspect import inspect_cell

    sys.path.insert(0, str(ROOT / "bench"))
    from inspect_zoo import _commit

    result = {
        "benchmark": "tiling models' registers and shared memory against the compiler's, pinned tilings",
        "commit": _commit(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "triton": triton.__version__},
        "gpu": args.gpu,
        "rows": [],
    }
    plans = {}
    for strategy in args.strategies.split(","):
        for cell, shape, pinned in CASES[strategy]:
            if args.only and cell not in args.only.split(","):
                continue
            plan = plans.setdefault(cell, analyse_source((ROOT / "examples" / f"{cell}.rnn").read_text()))
            for variant in args.variants.split(","):
                if variant == "dot16" and strategy == "scan":
                    continue  # no tl.dot: the variant is the same module
                started = time.perf_counter()
                transform = dot16 if variant == "dot16" else None
                report = inspect_cell(plan, args.gpu, shape, "bfloat16", pinned=pinned, transform=transform)
                for k in report.kernels:
                    row = {
                        "cell": cell,
                        "strategy": strategy,
                        "variant": variant,
                        "shape": shape,
                        "pinned": pinned,
                        "kernel": k.name,
                        "params": k.params,
                        "grid": k.grid,
                        "registers": k.registers,
                        "stack_bytes": k.stack_bytes,
                        "demand": None if k.registers is None else k.registers + (k.stack_bytes or 0) // 4,
                        "shared_bytes": k.shared_bytes,
                        "tensor_core_instructions": k.tensor_core_instructions,
                        "predicted": k.predicted,
                        "notes": k.notes,
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                    result["rows"].append(row)
                    print(
                        f"{cell:11s} {variant:6s} {json.dumps(pinned):60s} {k.name:20s} regs {k.registers} "
                        f"stack {k.stack_bytes} demand {row['demand']} shared {k.shared_bytes} "
                        f"TC {k.tensor_core_instructions} model {k.predicted}",
                        flush=True,
                    )
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
