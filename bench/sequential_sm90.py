"""Compile the sequential kernels for an H100 (sm_90) here, with no GPU, and read their resources.

For each cell and shape, the launch parameters are those the launcher would use on an H100 in
bfloat16 (the tiling model's choice, as ``Cell.tiling`` gives it, pinned), and every kernel the
call would launch (forward and backward, whole-head or split-step) is compiled with Triton's
``ASTSource`` for ``GPUTarget("cuda", 90, 32)``. Triton's bundled ``cuobjdump`` reads registers
and stack (spilled) bytes per thread; shared memory is the compiler's figure (dynamic shared
memory), tensor-core instructions are the HMMA / HGMMA lines of the SASS.

Run without the interpreter (``TRITON_INTERPRET=0``), from the repository root, with the checkout
to measure first on the path (another checkout's path measures that one's kernels):

    TRITON_INTERPRET=0 PYTHONPATH=. python bench/sequential_sm90.py --json bench/results/sequential-sm90.json

Integer arguments are compiled unspecialised (a launch on a GPU may specialise ``B == 1`` or
divisibility by 16), so these figures are for the general kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

import rnnc
from rnnc.runtime.arguments import bind

SHAPES = {"64x12": (64, 12), "768x1": (768, 1)}
POINTERS = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32"}


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _signature(fn, cell, constexprs: dict, dtype: str = "bfloat16") -> dict:
    """Pointer dtypes by the launcher's conventions: inputs, weights and outputs in the call's dtype
    (``*bf16`` for bfloat16), the rest (states, saved states, gradient buffers) in float32."""
    from rnnc.templates.names import derived, parse

    ir = cell.plan.ir
    sixteen = {derived("ptr", user=d.name) for d in (*ir.inputs, *ir.weights)}
    sixteen |= {derived("out_ptr", user=o.name) for o in ir.outputs}
    signature = {}
    for name in fn.arg_names:
        parsed = parse(name)
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "seq_starts":  # the cu_seqlens of a packed batch
            signature[name] = "*i64"
        elif name.endswith("_ptr") or (parsed is not None and parsed.role[-1] == "ptr"):
            signature[name] = POINTERS[dtype] if name in sixteen else "*fp32"
        else:
            signature[name] = "i32"
    return signature


def compile_kernel(fn, cell, constexprs: dict, num_warps: int, num_stages: int, folder: Path, dtype="bfloat16") -> dict:
    """Compile one kernel for sm_90 and read its resources."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    signature = _signature(fn, cell, constexprs, dtype)
    keyed = {(fn.arg_names.index(k),): v for k, v in constexprs.items()}
    compiled = triton.compile(
        ASTSource(fn, signature, constexprs=keyed),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    cubin = folder / f"{cell.name}_{fn.__name__}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([_cuobjdump(), "--dump-resource-usage", str(cubin)], capture_output=True, text=True).stdout
    sass = subprocess.run([_cuobjdump(), "--dump-sass", str(cubin)], capture_output=True, text=True).stdout
    fields = dict(re.findall(r"(\w+):(\d+)", usage.split("Function", 1)[-1]))
    return {
        "kernel": fn.__name__,
        "registers": int(fields.get("REG", -1)),
        "stack_bytes": int(fields.get("STACK", -1)),
        "local_bytes": int(fields.get("LOCAL", -1)),
        "shared_bytes": int(compiled.metadata.shared),
        "hmma": len(re.findall(r"\bHMMA\b", sass)),
        "hgmma": len(re.findall(r"\bHGMMA\b", sass)),
        "num_warps": num_warps,
        "num_stages": num_stages,
    }


def measure(name, head, heads, B, T, folder, pin=None, dtype="bfloat16", precision="ieee") -> list[dict]:
    """Every kernel a call of ``examples/<name>.rnn`` at this shape and dtype launches on an H100 (``pin``:
    launch parameters over the tiling model's; ``precision``: float32 dots, "ieee" or "tf32")."""
    import triton.language as tl

    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    try:
        params = cell.tiling(gpu="h100", dtype=dtype, B=B, T=T, NH=heads, H=head).params
    except rnnc.TilingError as exc:  # the model refuses the shape: measure what --pin asks for
        print(f"{name} H={head} NH={heads}: the tiling model refuses it ({str(exc).splitlines()[0]})")
        params = {}
    kernels = cell._triton
    kernels.pinned = {**params, **(pin or {})}
    ir = cell.plan.ir
    meta = torch.device("meta")
    tensors = {
        d.name: torch.empty(B, T, heads, *_sizes(d.shape, head), device=meta, dtype=getattr(torch, dtype))
        for d in ir.inputs
    }
    tensors.update(
        {
            d.name: torch.empty(heads, *_sizes(d.shape, head), device=meta, dtype=getattr(torch, dtype))
            for d in ir.weights
        }
    )
    call = bind(ir, tensors, None)
    tiles = kernels.tiles(call)
    constexprs = {k: v for k, v in tiles.items() if k in ("BLOCK_B", "BLOCK_K") or k.startswith("TILE_")}
    dot = {"bfloat16": tl.bfloat16, "float16": tl.float16, "float32": tl.float32}[dtype]
    constexprs.update(COMPUTE=tl.float32, DOT_DTYPE=dot, DOT_PRECISION=precision, STORE_STATES=True)
    constexprs["VARLEN"] = False
    module = kernels.kernels
    names = (
        ["forward_step_kernel", "backward_step_kernel"] if tiles["SPLIT"] > 1 else ["forward_kernel", "backward_kernel"]
    )
    rows = []
    for kernel in names:
        warps, stages = tiles["num_warps"], tiles.get("num_stages", 1)
        row = compile_kernel(getattr(module, kernel), cell, constexprs, warps, stages, folder, dtype)
        row.update(cell=name, head=head, heads=heads, params={k: v for k, v in tiles.items()})
        rows.append(row)
    return rows


def _sizes(shape, head: int) -> list[int]:
    import sympy

    return [int(sympy.sympify(s).subs({s2: head for s2 in sympy.sympify(s).free_symbols})) for s in shape]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "slstm", "gru"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--T", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="a folder to keep the cubins in")
    parser.add_argument("--dtype", default="bfloat16", choices=list(POINTERS))
    parser.add_argument("--precision", default="ieee", choices=["ieee", "tf32"], help="float32 dots")
    parser.add_argument("--pin", type=json.loads, default=None, help='launch parameters to pin, e.g. {"num_warps": 8}')
    args = parser.parse_args()
    print(f"kernels of {Path(rnnc.__file__).parent}", flush=True)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run with TRITON_INTERPRET=0: this compiles for a GPU")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.cells:
            for shape in args.shapes:
                head, heads = SHAPES[shape]
                for row in measure(name, head, heads, args.B, args.T, folder, args.pin, args.dtype, args.precision):
                    rows.append(row)
                    print(
                        f"{name:<6} H={head:<4} NH={heads:<3} {row['kernel']:<21} regs {row['registers']:>3}  "
                        f"stack {row['stack_bytes']:>6} B  shared {row['shared_bytes']:>6} B  "
                        f"HMMA {row['hmma']:>4}  HGMMA {row['hgmma']:>4}  warps {row['num_warps']}  "
                        f"{ {k: v for k, v in row['params'].items() if k != 'num_warps'} }",
                        flush=True,
                    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "target": "sm_90",
            "B": args.B,
            "T": args.T,
            "dtype": args.dtype,
            "precision": args.precision,
            "pin": args.pin,
            "kernels": rows,
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
