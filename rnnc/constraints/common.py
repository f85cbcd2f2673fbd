"""Pieces shared by the three tiling models: occupancy and powers of two.

Example:
    >>> powers_of_two(4, 64)
    (4, 8, 16, 32, 64)
"""

from __future__ import annotations

from rnnc.constraints.model import Constraint, Expr, Var, lift, minimum, table
from rnnc.constraints.profiles import GpuProfile


def time_unit(tokens: int, limit: int = 10**6) -> int:
    """Nanoseconds per objective unit, so that per-token costs times tokens stay inside 64 bits.

    Example:
        >>> time_unit(4 * 16 * 2048), time_unit(64 * 64 * 65536)
        (1, 269)
    """
    return max(1, -(-tokens // limit))


def powers_of_two(low: int, high: int) -> tuple[int, ...]:
    """Powers of two from ``low`` to ``high`` inclusive (Triton block sizes must be powers of two)."""
    out, value = [], 1
    while value <= high:
        if value >= low:
            out.append(value)
        value *= 2
    return tuple(out) or (low,)


def warpgroup_mma(gpu: GpuProfile) -> bool:
    """Whether ``tl.dot`` becomes Hopper's warpgroup MMA (operands from shared memory) on this GPU.

    Example:
        >>> from rnnc.constraints.profiles import load_profile
        >>> warpgroup_mma(load_profile("h100")), warpgroup_mma(load_profile("a100"))
        (True, False)
    """
    return gpu.vendor == "nvidia" and gpu.compute_capability.split(".")[0] == "9"


def warps_var(gpu: GpuProfile, choices=(1, 2, 4, 8, 16)) -> Var:
    """``num_warps``: warps (wavefronts) per program."""
    return Var("num_warps", tuple(w for w in choices if w * gpu.warp_size <= gpu.max_threads_per_block))


def threads_of(warps: Var, gpu: GpuProfile) -> Expr:
    """Threads per program."""
    return table(warps, lambda w: w * gpu.warp_size)


def programs_per_sm(gpu: GpuProfile, regs_per_program: Expr, smem_per_program: Expr, threads: Expr) -> Expr:
    """How many programs one SM holds at once: the tightest of registers, shared memory, threads, slots."""
    return minimum(
        lift(gpu.registers_per_sm) // regs_per_program,
        lift(gpu.shared_memory_per_sm) // (smem_per_program + 1),
        lift(gpu.max_threads_per_sm) // threads,
        gpu.max_blocks_per_sm,
    )


REGISTER_BUDGETS = ("registers per thread", "registers per program", "resident programs")


def register_pressure(regs_per_thread: Expr, warps: Var, gpu: GpuProfile) -> Expr:
    """Registers wanted over registers the compiler can give a thread (in thousandths): above 1000 it spills.

    A thread gets at most ``registers_per_thread`` and at most its share of the SM's register file;
    the compiler then spills the rest (a kernel with the least pressure spills least).

    Example:
        >>> from rnnc.constraints.profiles import load_profile
        >>> w = Var("num_warps", (4, 16))
        >>> [register_pressure(lift(300), w, load_profile("h100")).evaluate({"num_warps": n}) for n in (4, 16)]
        [1177, 2344]
    """
    cap = table(warps, lambda w: min(gpu.registers_per_thread, gpu.registers_per_sm // (w * gpu.warp_size)))
    return (regs_per_thread * 1000).ceil_div(cap)


def budget_constraints(
    gpu: GpuProfile, regs_per_thread: Expr, regs_per_program: Expr, smem: Expr, per_sm: Expr
) -> list[Constraint]:
    """The on-chip budgets every kernel must meet."""
    return [
        # registers beyond this per thread spill to local memory (DRAM): slow and unmodelled
        Constraint(
            "registers per thread",
            regs_per_thread,
            gpu.registers_per_thread,
            "each thread's live values must fit its register budget",
            "registers",
        ),
        # one program's registers come from one SM's register file
        Constraint(
            "registers per program",
            regs_per_program,
            gpu.registers_per_sm,
            "a program's registers must fit one SM's register file",
            "registers",
        ),
        # shared memory above the opt-in limit cannot be allocated to one program
        Constraint(
            "shared memory per program",
            smem,
            gpu.shared_memory_per_block_optin,
            "a program's shared memory must fit the per-block opt-in limit",
            "bytes",
        ),
        # a program that fits no SM never launches
        Constraint("resident programs", 1, per_sm, "at least one program must fit on an SM", "programs"),
    ]
