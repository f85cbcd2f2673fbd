"""Compiling a recorded kernel launch for a GPU architecture, here, and reading what the compiler made.

A launch recorded by :mod:`rnnc.runtime.dry_run` is bound exactly as Triton's own launcher binds
it (its specialisation of pointers and integers, its constexprs, ``num_warps``/``num_stages``),
compiled with ``triton.compile(ASTSource(...), target=GPUTarget(...))`` for the profile's
architecture, and read back: registers, stack (spill) bytes and shared memory from
``cuobjdump --dump-resource-usage``, tensor-core instructions from ``cuobjdump --dump-sass``
(``HMMA``, ``HGMMA``, ``DMMA``); on AMD the same from the ``.amdgcn`` listing (``v_mfma``).
No GPU is needed.

Example:
    >>> from rnnc.constraints.profiles import load_profile
    >>> target_of(load_profile("h100")), target_of(load_profile("l4")).arch
    (GPUTarget(backend='cuda', arch=90, warp_size=32), 89)
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

TENSOR_CORE_SASS = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?(HGMMA|HMMA|DMMA|IMMA)\b", re.M)
TENSOR_CORE_AMDGCN = re.compile(r"^\s*v_(?:s|d)?mfma\w*", re.M)
RESOURCES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


@dataclass
class Compiled:
    """What the compiler made of one kernel for one architecture."""

    registers: int  # per thread (VGPRs on AMD)
    stack_bytes: int  # per thread: the stack frame, spills included (private segment on AMD)
    shared_bytes: int  # per program: what the launch requests (Triton's dynamic shared memory) plus static
    tensor_core_instructions: int
    dots: int  # tt.dot operations in the Triton IR: kernels with none need no tensor cores
    binary: bytes = field(repr=False, default=b"")
    suffix: str = ".cubin"
    spilled: dict = field(default_factory=dict)  # AMD: sgpr/vgpr spill counts


def target_of(profile) -> GPUTarget:
    """The Triton target of a GPU profile: ``cuda`` with the compute capability, or ``hip`` with the gfx arch."""
    if profile.vendor == "amd":
        return GPUTarget("hip", profile.arch, profile.warp_size)
    major, minor = profile.compute_capability.split(".")
    return GPUTarget("cuda", int(major) * 10 + int(minor), profile.warp_size)


def bind_launch(launch, target: GPUTarget) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) of a recorded launch, as Triton's launcher computes them.

    Uses Triton's own binder (``create_function_from_signature`` and ``JITFunction._pack_args``,
    present in Triton 3.6 through 3.9), so pointer alignment and integer specialisation match a
    real launch; meta tensors report address 0, which is aligned as fresh CUDA allocations are.
    """
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    parsed, signature, constexprs, attrs = fn._pack_args(backend, dict(launch.meta), bound, specialization, options)
    wanted = {k: v for k, v in launch.options.items()}
    return signature, constexprs, attrs, {**wanted, "num_warps": parsed.num_warps, "num_stages": parsed.num_stages}


def compile_launch(launch, target: GPUTarget) -> Compiled:
    """Compile ``launch`` for ``target`` and read registers, stack, shared memory and tensor-core instructions."""
    signature, constexprs, attrs, options = bind_launch(launch, target)
    with triton.knobs.runtime.scope():  # TRITON_INTERPRET=1 would make the code generator build interpreter ops
        triton.knobs.runtime.interpret = False
        source = ASTSource(launch.kernel, signature, constexprs, attrs)
        kernel = triton.compile(source, target=target, options=options)
    dots = len(re.findall(r"\btt\.dot\b", kernel.asm.get("ttir", "")))
    shared = int(getattr(kernel.metadata, "shared", 0) or 0)
    if target.backend == "hip":
        return _read_amdgcn(kernel.asm["amdgcn"], kernel.asm["hsaco"], shared, dots)
    cubin = kernel.asm["cubin"]
    usage, sass = _cuobjdump(cubin, "--dump-resource-usage"), _cuobjdump(cubin, "--dump-sass")
    found = RESOURCES.search(usage)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {launch.name}: {usage[:200]!r}")
    registers, stack, static_shared, local = (int(g) for g in found.groups())
    return Compiled(
        registers=registers,
        stack_bytes=max(stack, local),
        shared_bytes=shared + static_shared,
        tensor_core_instructions=len(TENSOR_CORE_SASS.findall(sass)),
        dots=dots,
        binary=cubin,
    )


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.TemporaryDirectory(prefix="rnnc-cubin-") as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        done = subprocess.run([tool, flag, str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump {flag} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def _read_amdgcn(listing: str, hsaco: bytes, shared: int, dots: int) -> Compiled:
    """Registers, scratch and LDS from the kernel descriptor metadata of an AMD listing."""

    def field_of(name: str) -> int:
        found = re.search(rf"^\s*\.{name}:\s*(\d+)", listing, re.M)
        return int(found.group(1)) if found else 0

    return Compiled(
        registers=field_of("vgpr_count") + field_of("agpr_count"),
        stack_bytes=field_of("private_segment_fixed_size"),
        shared_bytes=max(shared, field_of("group_segment_fixed_size")),
        tensor_core_instructions=len(TENSOR_CORE_AMDGCN.findall(listing)),
        dots=dots,
        binary=hsaco,
        suffix=".hsaco",
        spilled={"sgpr": field_of("sgpr_spill_count"), "vgpr": field_of("vgpr_spill_count")},
    )


def occupancy(profile, registers: int, shared_bytes: int, num_warps: int) -> tuple[int, float]:
    """(programs per SM, resident warps as a fraction of the SM's maximum) for a compiled kernel.

    NVIDIA allocates registers per warp in units of 256 (8 per thread) and reserves 1 KB of shared
    memory per program; AMD's allocation is approximated the same way (granule of 8 VGPRs).

    Example:
        >>> from rnnc.constraints.profiles import load_profile
        >>> occupancy(load_profile("h100"), 128, 49152, 4)
        (4, 0.25)
    """
    threads = num_warps * profile.warp_size
    per_thread = max(8, -(-registers // 8) * 8)
    reserved = shared_bytes + (1024 if profile.vendor == "nvidia" else 0)
    limits = [
        profile.registers_per_sm // (per_thread * threads),
        profile.shared_memory_per_sm // reserved if reserved else profile.max_blocks_per_sm,
        profile.max_threads_per_sm // threads,
        profile.max_blocks_per_sm,
    ]
    programs = max(0, min(limits))
    return programs, programs * threads / profile.max_threads_per_sm
