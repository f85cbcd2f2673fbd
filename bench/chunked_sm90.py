"""Compile the chunked kernels for an H100-class GPU (sm_90) without one, and read what the machine code holds.

For each cell and tiling: ``triton.compile`` of the forward (storing the chunk-start states, as
when training) and backward kernels with bf16 inputs (DOT_DTYPE bfloat16, float32 accumulation)
at (B, T, H, D) = (4, 2048, 16, 128), every argument specialised as divisible by 16 as Triton's
JIT does for those sizes; Triton's bundled
``cuobjdump`` reads registers, stack bytes (spills) and shared memory per kernel, and counts the
tensor-core instructions (HMMA, HGMMA) in the SASS. The raw result goes to
``bench/results/chunked-sm90.json``.

Run: ``python bench/chunked_sm90.py [--cells gla,gated_deltanet] [--bv 32,64] [--warps 4,8]``
(a few minutes per kernel on two CPU cores; no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rnnc.compiler import analyse_source
from rnnc.runtime.triton_chunked import ChunkedStage
from rnnc.templates.chunked_codegen import render_chunked

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
RESULTS = Path(__file__).parent / "results" / "chunked-sm90.json"


def signature(kernel, stage: ChunkedStage, forward: bool) -> dict:
    """Argument types: inputs and weights bf16, states, saved states and cotangents float32, sizes int32."""
    leaves = {stage.module.names.ptr(x.name) for x in stage.spec.leaves if x.role != "dim"}
    types = {}
    for name in kernel.arg_names:
        if name in leaves or (forward and name.startswith("out_ptr")):
            types[name] = "*bf16"
        elif "ptr" in name.split("_"):  # init_ptr_S, saved_ptr_S, grad_ptr_in_q, grad_out_ptr_o, ...
            types[name] = "*fp32"
        elif name == "seq_starts":
            types[name] = "*i64"
        elif name[0].isupper() and name not in ("T", "NH"):
            types[name] = "constexpr"
        else:
            types[name] = "i32"
    return types


def compile_one(cell: str, forward: bool, tiles: dict) -> dict:
    plan = analyse_source(open(f"examples/{cell}.rnn").read())
    stage = ChunkedStage(render_chunked(plan))
    kernel = stage.kernels.forward_kernel if forward else stage.kernels.backward_kernel
    dims = {d: 128 for d in plan.ir.dims}
    tiles = stage.tiles(dims, tiles)  # as the launcher would: a per-channel decay keeps chunks of 16
    constexprs = {
        "COMPUTE": tl.float32,
        "DOT_DTYPE": tl.bfloat16,
        "DOT_PRECISION": "ieee",
        "FLOOR": -104.0,
        "VARLEN": False,
        **{k: tiles[k] for k in ("CHUNK", "STEPS", "N_SUB", "BK", "BV", "BU")},
    }
    if forward:
        constexprs["STORE_STATES"] = True
    else:
        constexprs["ALIGN"] = False  # as the launcher sets it for sm_90 (triton_chunked.align_products)
    types = signature(kernel, stage, forward)
    # as Triton's JIT specialises a launch at these sizes: every pointer is 16-byte aligned, every size divisible by 16
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(kernel.arg_names) if types[name] != "constexpr"}
    source = ASTSource(kernel, types, constexprs, attrs)
    started = time.time()
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": tiles["num_warps"], "num_stages": tiles["num_stages"]},
    )
    seconds = time.time() - started
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([str(CUOBJDUMP), "-sass", path], capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    found = {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED):(\d+)", usage)}
    return {
        "cell": cell,
        "kernel": "forward" if forward else "backward",
        **tiles,
        "registers": found.get("REG"),
        "stack_bytes": found.get("STACK"),
        "shared_bytes": found.get("SHARED"),
        "hmma": len(re.findall(r"\bHMMA\b", sass)),
        "hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "compile_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="gla,gated_deltanet,simple_gla")
    parser.add_argument("--bv", default="32,64")
    parser.add_argument("--warps", default="4,8")
    parser.add_argument("--chunk", default="64")
    args = parser.parse_args()
    rows = []
    for cell in args.cells.split(","):
        for bv in (int(x) for x in args.bv.split(",")):
            for warps in (int(x) for x in args.warps.split(",")):
                for chunk in (int(x) for x in args.chunk.split(",")):
                    tiles = {"CHUNK": chunk, "BV": bv, "num_warps": warps, "num_stages": 1}
                    for forward in (True, False):
                        try:
                            row = compile_one(cell, forward, tiles)
                        except Exception as exc:  # a tiling that does not compile is a result too
                            row = {"cell": cell, "kernel": "forward" if forward else "backward", **tiles}
                            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                        print(json.dumps(row), flush=True)
                        rows.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    shape = {"B": 4, "T": 2048, "H": 16, "D": 128, "dtype": "bfloat16", "target": "sm_90", "triton": triton.__version__}
    RESULTS.write_text(json.dumps({"shape": shape, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
