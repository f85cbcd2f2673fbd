"""bench/gpu.py's measurements: timers, the copy bandwidth, one implementation's first run and its timing."""

from __future__ import annotations

import itertools
import time

from gpu_cases import Case, input_sets, leaves, make_impl, make_inputs


def gpu_timer(fn) -> float:
    """``triton.testing.do_bench``'s median of warm runs (it flushes L2 before each), in microseconds."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1000.0


def smoke_timer(fn) -> float:
    """The CPU stand-in for do_bench: the faster of two calls, in microseconds."""
    times = []
    for _ in range(2):
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1e6)
    return sorted(times)[0]


def copy_bandwidth(device: str, timer) -> float:
    """GB/s of a device-to-device copy of 1 GiB (8 MiB in smoke), counting bytes read and written."""
    import torch

    n = (8 << 20) if device == "cpu" else (1 << 30)
    src, dst = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    src.fill_(1)
    us = timer(lambda: dst.copy_(src))
    return _digits(2 * n / us / 1e3)


def run_once(case: Case, name: str, dtype, device: str, rotate: bool = False):
    """Build an implementation, prepare its inputs, run forward and forward+backward once.

    With ``rotate``, as many input sets as ``input_sets`` asks for on this GPU's L2 (else one).
    Returns (impl, prepared sets, cotangents, first output in the rnnc layout)."""
    import torch

    impl = make_impl(name, case, dtype)
    first = make_inputs(case, device, dtype, 0)
    sets = 1
    if rotate and device == "cuda":
        one_set = sum(t.numel() * t.element_size() for t in first.values())
        sets = input_sets(one_set, torch.cuda.get_device_properties(0).L2_cache_size)
    prepared = [impl.prepare(first)] + [impl.prepare(make_inputs(case, device, dtype, s)) for s in range(1, sets)]
    with torch.no_grad():
        impl.forward(prepared[0])
    outputs = impl.forward(prepared[0])
    cotangents = [torch.randn_like(o) for o in outputs]
    torch.autograd.grad(outputs, leaves(impl, prepared[0]), cotangents, allow_unused=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return impl, prepared, cotangents, impl.main_output(outputs).detach().float()


def nvcc(name: str) -> bool:
    """Whether an implementation builds CUDA code with nvcc on first use (minutes: phase 1 only)."""
    return name.startswith("flashrnn cuda") or name == "accelerated-scan warp"


def measure(case, name, dtype, device, timer, ideal, context) -> dict:
    import torch

    impl, prepared, cotangents, main = run_once(case, name, dtype, device, rotate=True)
    cycle = itertools.cycle(prepared)

    def forward():
        with torch.no_grad():
            impl.forward(next(cycle))

    def fwdbwd():
        args = next(cycle)
        torch.autograd.grad(impl.forward(args), leaves(impl, args), cotangents, allow_unused=True)

    result = {"forward_us": round(timer(forward), 2), "fwdbwd_us": round(timer(fwdbwd), 2)}
    result["input_sets"] = len(prepared)
    result["host_forward_us"] = round(host_time(forward, device), 2)
    result["finite"] = bool(torch.isfinite(main).all())
    if ideal:
        for mode, us in (("forward", result["forward_us"]), ("fwdbwd", result["fwdbwd_us"])):
            gbps = ideal[mode] / us / 1e3
            result[f"{mode}_gbps"] = _digits(gbps)
            result[f"{mode}_copy_fraction"] = _digits(gbps / context["bandwidth"]["copy"])
            result[f"{mode}_profile_fraction"] = _digits(gbps / context["bandwidth"]["profile"])
    if impl.note:
        result["note"] = impl.note
    result["main"], result["comparable"] = main, impl.comparable
    return result


def host_time(fn, device: str) -> float:
    """Median wall time of issuing one call without waiting for the GPU: the host's overhead per call
    (Python, argument checks, tiling look-ups, launches). Above the GPU time, it is what a run measures."""
    import torch

    times = []
    for _ in range(5 if device == "cuda" else 1):
        torch.cuda.synchronize() if device == "cuda" else None
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1e6)
    torch.cuda.synchronize() if device == "cuda" else None
    return sorted(times)[len(times) // 2]


def _digits(x: float) -> float:
    return float(f"{x:.4g}")
