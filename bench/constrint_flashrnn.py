"""Solve time of FlashRNN's ConstrINT on FlashRNN's own LSTM tiling problem, on the CPU.

Usage: python bench/constrint_flashrnn.py [--repeat 3] [--timeout 120] [--sweep paper|batch|all]
                                          [--json bench/results/constrint-flashrnn-cpu.json]

What runs is FlashRNN's code, imported from the installed ``flashrnn`` package (1.0.8), not a copy:

* The problem is the constraint text that ``flashrnn.flashrnn.flashrnn._FlashRNNCUDAFused.instance``
  builds for the ``cuda_fused`` backend (an f-string filled from the ``FlashRNNConfig`` and the GPU's
  ``cudaDeviceProp``), with its ``ValueRefinement`` order. We run that method itself, with three
  names of that one module replaced for the duration of the call (``unittest.mock.patch.object``):
    - ``get_gpu_info``: returns the H100 values below instead of compiling and running the
      ``gpu_info`` CUDA extension;
    - ``torch``: a proxy of torch whose ``cuda.current_device()`` answers 0 and whose ``zeros``
      makes ``meta`` tensors (the method builds the CUDA test inputs for its kernel check before
      the call below; everything else is forwarded to the real torch);
    - ``load_parametric_and_test_and_bisect``: records its ``constraint_str`` and
      ``value_refinements`` and stops, instead of compiling the CUDA kernel.
  Nothing outside ``flashrnn.flashrnn.flashrnn`` is patched, and only inside ``flashrnn_problem``.
* The solve is what ``load_parametric_and_test_and_bisect`` (``flashrnn/cuda_init_parametric.py``)
  does first: ``constr, var = cst.parse_expression(constraint_str)`` then
  ``cst.solve_constrint(constr, var, value_refinements, 1, exclude_solutions=[])``. We call the
  function under ``solve_constrint``'s disk-cache decorator (``__wrapped__``): with the decorator a
  repeated configuration is a pickle read from ``~/.cache/constrint`` and times nothing. FlashRNN then
  compiles the kernel for that solution, runs it on the GPU and, bisecting
  ``FLASHRNN_{FORWARD,BACKWARD}_WARP_RECURRENT_CACHED_*`` upwards on failures, solves again; those
  later solves need the GPU and are not timed here. ``seconds`` is the first solve only.
* Each timed solve runs in a fresh Python process (``multiprocessing`` spawn), so ConstrINT's module
  state (its ``PRIMES`` set and ``lru_cache`` of prime factors, which every solve extends) starts as
  in a fresh FlashRNN process, and a solve past ``--timeout`` can be killed. The time is measured in
  the child around the solve call only (imports and building the problem excluded; parsing reported
  apart).

The sequence length does not enter FlashRNN's problem (no ``T`` in the constraint text), so
configurations are (head dim, heads, batch, dtype). ``check_solution`` reads the constraint text
independently of ConstrINT and lists the constraints an assignment violates: every ConstrINT answer
is checked with it (not timed), and it can check another solver's answer to the same text.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

# H100 SXM5 80 GB, as cudaGetDeviceProperties reports it (the names are cudaDeviceProp fields, which
# is what flashrnn.flashrnn.gpu_info.get_gpu_info returns). FlashRNN's problem reads four of them:
#   MAX_THREADS_PER_BLOCK_{FORWARD,BACKWARD} = maxThreadsPerBlock // 4                  (256)
#   REGISTERS_PER_BLOCK_{FORWARD,BACKWARD}   = regsPerMultiprocessor * 2 for 16-bit     (131072 halves)
#   STREAMING_MULTIPROCESSORS                = multiProcessorCount                      (132)
#   SHARED_MEMORY_PER_BLOCK                  = min(sharedMemPerBlockOptin - 1024, 227000) (227000 bytes)
# The rest is for the record. Sources: 132 SMs -- NVIDIA H100 Tensor Core GPU Architecture
# whitepaper (H100 SXM5: 66 TPCs, 132 SMs; the PCIe card has 114); registers, threads, shared
# memory -- CUDA C++ Programming Guide, "Technical Specifications per Compute Capability", compute
# capability 9.0: 64 K 32-bit registers per SM and at most 64 K per block, 255 per thread, 1024
# threads per block, 228 KB shared memory per SM of which 227 KB (232448 bytes) opt-in per block,
# 48 KB without opt-in, warp size 32.
H100_SXM = {
    "name": "NVIDIA H100 80GB HBM3",
    "major": 9,
    "minor": 0,
    "multiProcessorCount": 132,
    "regsPerMultiprocessor": 65536,
    "maxThreadsPerBlock": 1024,
    "sharedMemPerBlockOptin": 232448,  # 227 * 1024
    # not read by FlashRNN's problem, kept for the record
    "sharedMemPerMultiprocessor": 233472,  # 228 * 1024
    "sharedMemPerBlock": 49152,
    "regsPerBlock": 65536,
    "maxRegistersPerThread": 255,  # not a cudaDeviceProp field; from the programming guide
    "warpSize": 32,  # FlashRNN writes WARP_SIZE == 32 into the problem itself
    "maxThreadsPerMultiProcessor": 2048,
}

# The LSTM configurations of the FlashRNN paper (arXiv 2412.07752), from the package's
# speed_experiments/kernel_speed_benchmark.py: head-dimension sweep at B=16, T=1024, bf16
# (create_head_dimension_configs); batch sweep B in (2, 8, 16, 32, 64, 128, 256) at (64, 12) and
# (768, 1), T=1024 (create_batch_size_configs); sequence sweep T in (256..2048) at (64, 12) and
# (768, 1), B=16 (same problems as the head sweep: T is not in the problem). The largest head dim,
# 2560 with one head at B=8, bf16, is notebooks/max_head_dim.ipynb of github.com/NX-AI/flashrnn.
HEAD_SWEEP = [(16, 48), (32, 24), (64, 12), (128, 6), (256, 3), (768, 1)]
BATCH_SWEEP = [2, 8, 16, 32, 64, 128, 256]


def configurations(sweep: str = "paper") -> list[dict]:
    """(head_dim, num_heads, batch, dtype, source) rows to run. "paper": the head-dim sweep and the
    maximal head dim; "batch": the batch sweep without its B=16 rows (in the head-dim sweep; B=2 and
    B=8 give one problem: FlashRNN rounds the batch up to a multiple of 8); "all": both."""
    rows = []
    if sweep in ("paper", "all"):
        for d, h in HEAD_SWEEP:
            rows.append(dict(head_dim=d, num_heads=h, batch=16, dtype="bfloat16", source="head-dim sweep"))
        rows.append(dict(head_dim=2560, num_heads=1, batch=8, dtype="bfloat16", source="max head dim notebook"))
    if sweep in ("batch", "all"):
        for d, h in [(64, 12), (768, 1)]:
            for b in BATCH_SWEEP:
                if b != 16:
                    rows.append(dict(head_dim=d, num_heads=h, batch=b, dtype="bfloat16", source="batch sweep"))
    return rows


class _Captured(Exception):
    pass


class _TorchProxy:
    """torch as seen by flashrnn.flashrnn.flashrnn during the capture: no CUDA device needed."""

    def __init__(self, torch):
        self._torch = torch
        self.cuda = SimpleNamespace(current_device=lambda: 0)

    def zeros(self, *args, **kwargs):
        kwargs["device"] = "meta"
        return self._torch.zeros(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._torch, name)


def flashrnn_problem(head_dim: int, num_heads: int, batch: int, dtype: str = "bfloat16", gpu: dict | None = None):
    """FlashRNN's constraint text and value refinements for its fused LSTM kernel, built by
    ``_FlashRNNCUDAFused.instance`` itself (see the module docstring for what is patched).
    The FlashRNNConfig is made as ``flashrnn.flashrnn(...)`` makes it (``_get_config``) for
    ``Wx [B, T, 4, NH, D]`` of ``dtype`` with R and b of the same dtype."""
    import importlib

    import torch

    # the module, not the function of the same name that flashrnn.flashrnn exports
    frnn = importlib.import_module("flashrnn.flashrnn.flashrnn")

    gpu = dict(H100_SXM if gpu is None else gpu)
    config = frnn.FlashRNNConfig(
        head_dim=head_dim,
        num_heads=num_heads,
        batch_size=batch,
        function="lstm",
        backend="cuda_fused",
        dtype=dtype,
        dtype_w=dtype,
        dtype_r=dtype,
        dtype_b=dtype,
    )
    captured: dict = {}

    def capture(**kwargs):
        captured.update(kwargs)
        raise _Captured

    with (
        mock.patch.object(frnn, "get_gpu_info", lambda device_id: gpu),
        mock.patch.object(frnn, "torch", _TorchProxy(torch)),
        mock.patch.object(frnn, "load_parametric_and_test_and_bisect", capture),
    ):
        try:
            frnn._FlashRNNCUDAFused.instance(config)
        except _Captured:
            pass
    if "constraint_str" not in captured:
        raise RuntimeError("FlashRNN did not reach load_parametric_and_test_and_bisect")
    return captured["constraint_str"], tuple(captured["value_refinements"])


def constraint_lines(constraint_str: str) -> list[str]:
    """The constraints of a ConstrINT text, one string each: comments dropped, split at ``;``."""
    text = "\n".join(line.split("#")[0] for line in constraint_str.splitlines())
    return [" ".join(c.split()) for c in text.split(";") if c.strip(" \t\n()")]


def _value(atom: str, values: dict[str, int]) -> int:
    atom = atom.strip(" \t\n()")
    return int(atom) if atom.isdigit() else values[atom]


def _term(text: str, values: dict[str, int]) -> int:
    """ConstrINT's terms: sums of products of powers, brackets ignored (they are in its parser)."""
    total = 0
    for summand in text.split("+"):
        prod = 1
        for factor in summand.split("*"):
            base, *power = factor.split("^")
            prod *= _value(base, values) ** (int(power[0].strip(" ()")) if power else 1)
        total += prod
    return total


def check_solution(constraint_str: str, values: dict[str, int]) -> list[str]:
    """The constraints of ``constraint_str`` that a full assignment ``values`` violates (empty: all
    hold). Reads the text with ConstrINT's precedence: ``<=``, then ``A % B == 0`` (B divides A, with
    ``%`` binding looser than ``*``), then ``==`` (a right side ``[a, b, ...]`` is membership), then
    ``+``, ``*``, ``^``; every variable is a positive integer. Our own reader, to check solutions of
    ConstrINT and of other solvers against FlashRNN's text."""
    bad = []
    for c in constraint_lines(constraint_str):
        if "<=" in c:
            left, right = c.split("<=")
            ok = _term(left, values) <= _term(right, values)
        elif "%" in c and "== 0" in c:
            dividend, divisor = c.replace("== 0", "").split("%")
            ok = _term(dividend, values) % _term(divisor, values) == 0
        else:
            left, right = c.split("==")
            if right.strip().startswith("["):
                ok = _term(left, values) in {int(v) for v in right.strip(" []").split(",")}
            else:
                ok = _term(left, values) == _term(right, values)
        if not ok or any(v < 1 for v in values.values()):
            bad.append(c)
    return bad


def complete_assignment(constraint_str: str, solution: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Every variable's values left by ConstrINT's propagation once the decision variables of
    ``solution`` are fixed (a 1-tuple where the solution determines it)."""
    from flashrnn.autotune import constrint as cst

    constr, var = cst.parse_expression(constraint_str)
    constr.apply(var)
    for name, val in solution.items():
        var[name].intersect(cst.IntegerVariable(values=(val,)))
    constr.apply(var)
    return {name: tuple(v.all_values()) for name, v in var.items() if name[0].isalpha() or name[0] == "_"}


def _solve_here(head_dim, num_heads, batch, dtype, gpu, root_propagation=False, report=None) -> dict:
    """Build, solve (timed), then check (not timed). ``report(stage, payload)`` hears "started" just
    before the solve, "solved" with the result, "checked" with the checks."""
    from flashrnn.autotune import constrint as cst

    report = report or (lambda stage, payload: None)
    constraint_str, refinements = flashrnn_problem(head_dim, num_heads, batch, dtype, gpu)
    report("started", None)
    t0 = time.perf_counter()
    constr, var = cst.parse_expression(constraint_str)
    t1 = time.perf_counter()
    # as load_parametric_and_test_and_bisect's first call, without the disk cache around it
    sols = cst.solve_constrint.__wrapped__(constr, var, refinements, 1, exclude_solutions=[])
    t2 = time.perf_counter()
    solution = dict(sols[0]) if sols else None
    result = {"solution": solution, "seconds": t2 - t1, "feasible": solution is not None, "parse_seconds": t1 - t0}
    report("solved", result)
    checks = {}
    if root_propagation:  # not part of ``seconds``: how much of the solve is the first propagation
        constr2, var2 = cst.parse_expression(constraint_str)
        t3 = time.perf_counter()
        constr2.apply(var2)
        checks["root_propagation_seconds"] = time.perf_counter() - t3
    if solution is not None:  # does the answer satisfy FlashRNN's text (checked by our own reader)?
        full = complete_assignment(constraint_str, solution)
        checks["determined"] = all(len(v) == 1 for v in full.values())
        if checks["determined"]:
            checks["derived"] = {k: v[0] for k, v in full.items() if k not in solution}
            checks["violated"] = check_solution(constraint_str, {k: v[0] for k, v in full.items()})
    report("checked", checks)
    return {**result, **checks}


def _child(queue, args):
    try:
        _solve_here(*args, report=lambda stage, payload: queue.put((stage, payload)))
    except BaseException as err:  # report, do not hang the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def solve_with_constrint(
    head_dim: int,
    num_heads: int,
    batch: int,
    dtype: str = "bfloat16",
    gpu: dict | None = None,
    timeout_s: float | None = None,
    root_propagation: bool = False,
) -> dict:
    """Build FlashRNN's fused-LSTM tiling problem for (head_dim, num_heads, batch, dtype) on ``gpu``
    (cudaDeviceProp-named values; default H100 SXM) and solve it with ConstrINT as FlashRNN does.

    Returns ``{"solution": dict | None, "seconds": float, "feasible": bool, "timed_out": bool, ...}``;
    ``seconds`` is the wall time of ``solve_constrint``. Also ``parse_seconds``, and after the
    (untimed) check of the solution against FlashRNN's text: ``determined`` (the decision variables
    fix every other variable), ``derived`` (those values) and ``violated`` (constraints that fail;
    empty when the solution is right); with ``root_propagation``, ``root_propagation_seconds``: the
    time of ConstrINT's first propagation alone, which ``seconds`` includes. With ``timeout_s`` the
    solve runs in a fresh process, killed once the solve has run that long (then ``solution`` is
    None, ``feasible`` False, ``timed_out`` True and ``seconds`` the time waited); without, it runs here.
    """
    args = (head_dim, num_heads, batch, dtype, gpu, root_propagation)
    if timeout_s is None:
        return {**_solve_here(*args), "timed_out": False}
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, args), daemon=True)
    proc.start()
    out: dict = {"timed_out": False}
    try:
        stage, payload = queue.get(timeout=300)  # imports torch and flashrnn, builds the problem
        if stage == "started":
            start = time.perf_counter()
            try:
                stage, payload = queue.get(timeout=timeout_s)
            except Exception:  # queue.Empty: the solve ran past the limit
                out = {"solution": None, "seconds": time.perf_counter() - start, "feasible": False, "timed_out": True}
                stage = None
        if stage == "solved":
            out.update(payload)
            stage, payload = queue.get(timeout=900)
            if stage == "checked":
                out.update(payload)
        if stage == "error":
            raise RuntimeError(payload)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
    return out


def _machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "flashrnn": metadata.version("flashrnn"),
        "torch": metadata.version("torch"),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per solve before it is killed")
    parser.add_argument("--sweep", choices=["paper", "batch", "all"], default="paper")
    parser.add_argument("--json", type=Path, default=None, help="also write machine info and all runs here")
    args = parser.parse_args(argv)

    rows = []
    for cfg in configurations(args.sweep):
        runs = []
        for i in range(args.repeat):
            res = solve_with_constrint(
                cfg["head_dim"],
                cfg["num_heads"],
                cfg["batch"],
                cfg["dtype"],
                timeout_s=args.timeout,
                root_propagation=i == 0,
            )
            runs.append(res)
            if res["timed_out"]:
                break  # the next repeats would time out as well
        done = [r for r in runs if not r["timed_out"]]
        row = {
            **cfg,
            "timed_out": len(done) < len(runs),
            "median_s": statistics.median(r["seconds"] for r in done) if done else None,
            "runs_s": [r["seconds"] for r in runs],
            "parse_s": [r["parse_seconds"] for r in done],
            "root_propagation_s": runs[0].get("root_propagation_seconds"),
            "feasible": done[0]["feasible"] if done else None,
            "solution": done[0]["solution"] if done else None,
            "same_solution_every_run": all(r["solution"] == done[0]["solution"] for r in done) if done else None,
            "derived": done[0].get("derived") if done else None,
            "solution_checked": (not done[0].get("violated") and done[0].get("determined")) if done else None,
            "violated": done[0].get("violated") if done else None,
        }
        rows.append(row)
        med = f"{row['median_s']:8.2f}s" if done else f" >{args.timeout:.0f}s"
        runs_txt = " ".join(f"{s:.2f}" for s in row["runs_s"])
        print(
            f"D={cfg['head_dim']:5d} NH={cfg['num_heads']:3d} B={cfg['batch']:4d} {cfg['dtype']:9s} "
            f"median {med}  runs [{runs_txt}]  feasible={row['feasible']} checked={row['solution_checked']}",
            flush=True,
        )

    print()
    print(f"{'head dim':>8s} {'heads':>5s} {'batch':>5s} {'median':>9s} {'feasible':>8s}  source")
    for r in rows:
        med = f"{r['median_s']:8.2f}s" if r["median_s"] is not None else f"{'timeout':>9s}"
        print(f"{r['head_dim']:8d} {r['num_heads']:5d} {r['batch']:5d} {med} {str(r['feasible']):>8s}  {r['source']}")

    if args.json is not None:
        out = {
            "machine": _machine(),
            "gpu": H100_SXM,
            "repeat": args.repeat,
            "timeout_s": args.timeout,
            "what": "wall time of flashrnn.autotune.constrint.solve_constrint (no disk cache) on the problem "
            "flashrnn.flashrnn.flashrnn._FlashRNNCUDAFused.instance builds for function='lstm', "
            "backend='cuda_fused'; one fresh process per solve",
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
