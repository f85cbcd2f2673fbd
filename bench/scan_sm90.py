"""Registers, stack (spills) and shared memory of the scan kernels, compiled for sm_90 here (no GPU).

    python bench/scan_sm90.py [OUT.json] [--main /work/main]

For each cell and shape, the kernels are rendered, their launch parameters are the tiling
model's for an H100 (``Cell.tiling``), and ``triton.compile(ASTSource(...), target=
GPUTarget("cuda", 90, 32))`` builds them; Triton's own ``cuobjdump --dump-resource-usage``
reads the cubin. Inputs, weights and outputs are bf16, states and cotangents float32 (as the
launcher passes them). ``--main DIR`` also compiles the scan template of another checkout (the
kernels before this change) for comparison. Raw results: bench/results/scan-sm90.json.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [  # (cell, shape, launch parameters pinned over the tiling model's)
    ("hgrn", {"B": 8, "T": 2048, "NH": 1, "D": 1024}, {}),
    ("mamba", {"B": 8, "T": 2048, "NH": 1, "D": 1024, "N": 16}, {}),
    ("mamba", {"B": 8, "T": 2048, "NH": 1, "D": 1024, "N": 16}, {"num_warps": 4}),
    ("aaren", {"B": 8, "T": 2048, "NH": 8, "K": 64, "V": 64}, {}),
    ("rwkv4", {"B": 8, "T": 2048, "NH": 1, "D": 1024}, {}),
    ("lru", {"B": 8, "T": 2048, "NH": 1, "H": 64, "N": 64}, {}),
    ("longhorn", {"B": 8, "T": 2048, "NH": 1, "D": 1024, "N": 16}, {}),
    ("ntm_memory", {"B": 8, "T": 2048, "NH": 4, "M": 64, "V": 64}, {}),
]
RESOURCES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def _signature(fn, module_args: list[str], blocks: dict, tiles: dict, forward: bool) -> tuple[dict, dict]:
    import triton.language as tl

    signature, constexprs = {}, {}
    for name in fn.arg_names:
        if name in module_args:
            low = name.startswith(("in_", "w_", "out_")) and not name.startswith("w_d")
            signature[name] = "*bf16" if low else "*fp32"
        elif name == "seq_starts":
            signature[name] = "*i64"
        elif name == "COMPUTE":
            signature[name], constexprs[name] = "constexpr", tl.float32
        elif name in blocks:
            signature[name], constexprs[name] = "constexpr", blocks[name]
        elif name == "BLOCK_T":
            signature[name], constexprs[name] = "constexpr", tiles["BLOCK_T"]
        elif name == "STORE_STATES":
            signature[name], constexprs[name] = "constexpr", True
        elif name == "VARLEN":
            signature[name], constexprs[name] = "constexpr", False
        else:
            signature[name] = "i32"
    return signature, constexprs


def _usage(cubin: bytes) -> dict:
    import triton

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        tool = triton.knobs.nvidia.cuobjdump.path
        text = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    registers, stack, shared, local = (int(g) for g in RESOURCES.search(text).groups())
    return {"registers": registers, "stack_bytes": max(stack, local), "static_shared_bytes": shared}


def compile_cell(cell: str, shape: dict, pinned: dict | None = None) -> dict:
    """Resource usage of a cell's forward and backward scan kernels at ``shape`` (this checkout's rnnc)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import rnnc
    from rnnc.runtime.modules import load_module
    from rnnc.templates.scan_codegen import render_scan

    compiled = rnnc.compile(ROOT / "examples" / f"{cell}.rnn")
    tiling = {**compiled.tiling(gpu="h100", dtype="bfloat16", **shape).params, **(pinned or {})}
    try:
        module = render_scan(compiled.plan)
    except rnnc.BackendError as exc:  # the template before this change refuses several components
        return {"refused": str(exc).splitlines()[0]}
    kernels = load_module(module.text, f"{cell}_scan_sm90")
    new_template = hasattr(module, "parallel")
    if new_template:
        blocks = _blocks(module, shape, tiling["BLOCK_C"])
    else:
        blocks = _old_blocks(module, shape, tiling, [str(d) for d in compiled.plan.ir.states[0].shape])
    result = {"tiling": tiling, "blocks": blocks, "source_sha": hashlib.sha256(module.text.encode()).hexdigest()[:12]}
    for kind in ("forward", "backward"):
        fn = getattr(kernels, f"{kind}_kernel")
        args = module.forward_args if kind == "forward" else module.backward_args
        signature, constexprs = _signature(fn, args, blocks, tiling, kind == "forward")
        options = {"num_warps": tiling["num_warps"], "num_stages": tiling.get("num_stages", 1)}
        binary = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32), options=options)
        usage = _usage(binary.asm["cubin"])
        usage["cubin_sha"] = hashlib.sha256(binary.asm["cubin"]).hexdigest()[:12]
        usage["shared_bytes"] = int(getattr(binary.metadata, "shared", 0) or 0) + usage.pop("static_shared_bytes")
        result[kind] = usage
    return result


def _blocks(module, shape: dict, block_c: int) -> dict:
    from rnnc.runtime.triton_scan import axis_blocks

    return axis_blocks(module, tuple(shape[str(a.dim)] for a in module.axes), block_c)


def _old_blocks(module, shape: dict, tiling: dict, state_dims: list) -> dict:  # the template before the tile space
    from rnnc.runtime.triton_scan import _axis_blocks

    return _axis_blocks(module.axes, tuple(shape[d] for d in state_dims), tiling["BLOCK_C"])


def main(argv: list[str]) -> dict:
    paths = [a for a in argv if not a.startswith("--")]
    other = argv[argv.index("--main") + 1] if "--main" in argv else None
    paths = [p for p in paths if p != other]
    out = Path(paths[0]) if paths else ROOT / "bench" / "results" / "scan-sm90.json"
    import triton

    report = {"target": "cuda sm_90, warp 32", "triton": triton.__version__, "dtype": "bfloat16", "cases": []}
    for cell, shape, pinned in CASES:
        entry = {"cell": cell, "shape": shape, "pinned": pinned, "this": compile_cell(cell, shape, pinned)}
        if other:
            code = f"import sys, json; sys.path.insert(0, {other!r}); sys.path.insert(1, {str(ROOT / 'bench')!r}); "
            code += f"import scan_sm90; print(json.dumps(scan_sm90.compile_cell({cell!r}, {shape!r}, {pinned!r})))"
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=other)
            ok = done.returncode == 0
            entry["before"] = json.loads(done.stdout.strip().splitlines()[-1]) if ok else done.stderr[-800:]
        report["cases"].append(entry)
        print(json.dumps(entry))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's rnnc (the installed one may be another's)
    main(sys.argv[1:])
