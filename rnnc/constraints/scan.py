"""The tiling model of the scan kernel (elementwise affine recurrences).

A program owns BLOCK_C channels (entries of the scanned states) of one (batch
row, head) and walks time in chunks of BLOCK_T with ``tl.associative_scan`` over
(a, b) pairs, carrying the state between chunks. The kernel is memory bound:
every input is read once, every output written once.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.constraints.problem import problem_of
    >>> from rnnc.constraints.profiles import load_profile
    >>> plan = analyse_source(open("examples/hgrn.rnn").read())
    >>> p = problem_of(plan, {"B": 16, "T": 8192, "NH": 8, "D": 512}, "bfloat16")
    >>> build_model(p, load_profile("h100")).solve().values["BLOCK_T"] >= 16
    True
"""

from __future__ import annotations

from rnnc.constraints.common import (
    budget_constraints,
    powers_of_two,
    programs_per_sm,
    register_pressure,
    threads_of,
    time_unit,
    warps_var,
)
from rnnc.constraints.model import Const, Constraint, Model, Var, maximum, minimum, table
from rnnc.constraints.problem import Problem, next_pow2
from rnnc.constraints.profiles import GpuProfile

REGISTER_OVERHEAD = 40  # registers per thread for addresses, the carry and loop counters (calibrated)
BACKWARD_OVERHEAD = 60  # the same in the backward kernel (calibrated)
# fp32 registers per tile element and declared tensor: 1.25 forward, three times that backward
# (bench/calibrate_tiling.py on sm_90: HGRN, 3 tensors, 70 registers at 8 elements per thread, 128 to 172
# at 32; Mamba, 7 tensors, 72 to 96 at 8, 232 at 32; backward 108 and 141 to 239 at 8, 254 to 389 at 32)
QUARTER_REGISTERS_PER_ELEMENT = 5
SATURATING_WARPS_PER_SM = 16  # resident warps per SM needed to keep DRAM busy (estimate)
CHUNK_LATENCY_NS = 150  # one chunk's scan and carry, a dependent step (estimate)


def build_model(p: Problem, gpu: GpuProfile, extended: bool = True) -> Model:
    """The CP-SAT model of the scan kernel for problem ``p`` on ``gpu`` (every variant is built)."""
    channels = max(p.state_elems, 1)
    block_c = Var("BLOCK_C", powers_of_two(8, min(4096, next_pow2(channels, least=16))))
    block_t = Var("BLOCK_T", (8, 16, 32, 64, 128))
    warps = warps_var(gpu, (1, 2, 4, 8))
    stages = Var("num_stages", (1, 2, 3))
    threads = threads_of(warps, gpu)
    streams = max(1, -(-p.in_elems // channels)) + 1  # input values per channel and step, and the output
    tile = block_c * block_t
    per_element = QUARTER_REGISTERS_PER_ELEMENT * max(1, p.tensors)  # in quarter registers
    # live fp32 values per thread: every tensor's elements of the chunk, the (a, b) pairs, the scanned states
    forward_regs = (tile * per_element).ceil_div(threads * 4) + REGISTER_OVERHEAD
    backward_regs = (tile * (3 * per_element)).ceil_div(threads * 4) + BACKWARD_OVERHEAD
    regs_per_thread = maximum(forward_regs, backward_regs)
    regs_per_program = regs_per_thread * threads
    # the scan exchanges (a, b) pairs between warps through shared memory: up to 8 bytes per element plus 1 KB
    # (calibrated: 4 to 8 bytes per element measured), and software pipelining keeps stages - 1 chunks in flight
    smem = tile * 8 + 1024 + (stages + (-1)) * tile * (streams * p.bytes)
    per_sm = programs_per_sm(gpu, regs_per_program, smem, threads)
    blocks = table(block_c, lambda c: -(-channels // c))
    programs = blocks * (p.B * p.NH)
    constraints = budget_constraints(gpu, regs_per_thread, regs_per_program, smem, per_sm) + [
        # every thread of a program should own at least one element of the chunk, or lanes idle
        Constraint("threads busy", threads, tile, "each thread needs at least one element of the chunk", "threads"),
        # tl.associative_scan over time works on power-of-two chunks of at least 16 steps here
        Constraint("scan length", 16, block_t, "chunks shorter than 16 steps pay the carry too often", "steps"),
    ]
    tokens = p.B * p.NH * p.T
    unit = time_unit(tokens)  # times below are in units of `unit` ns, so nothing overflows 64 bits
    total_bytes = tokens * (p.in_elems + p.out_elems) * p.bytes
    active_warps = maximum(1, programs * table(warps, lambda w: w))
    # bandwidth efficiency in %, from how many warps are in flight across the GPU
    in_flight = table(warps, lambda w: w) * per_sm * gpu.sm_count
    occupancy = minimum_pct(active_warps, in_flight, gpu)
    # a row of a tile is BLOCK_C contiguous values: runs shorter than a 128-byte line waste bandwidth
    coalescing = table(block_c, lambda c: min(100, c * p.bytes * 100 // 128))
    efficiency = maximum(1, (occupancy * coalescing) // 100)
    memory_ns = (Const(total_bytes) * 100).ceil_div(efficiency * (gpu.bytes_per_ns() * unit))
    padded = blocks * block_c * -(-tokens // unit)
    compute_ns = (padded * table(block_t, lambda t: 2 * max(1, t.bit_length()) + 8)).ceil_div(
        gpu.vector_flops_per_ns(p.dtype)
    )
    waves = programs.ceil_div(maximum(1, per_sm) * gpu.sm_count)
    chain_ns = (waves * table(block_t, lambda t: -(-p.T // t) * CHUNK_LATENCY_NS)).ceil_div(unit)
    objective = maximum(memory_ns, compute_ns, chain_ns) + -(-int(gpu.launch_overhead_us * 1000) // unit)
    quantities = {
        "registers per thread": regs_per_thread,
        "register pressure": register_pressure(regs_per_thread, warps, gpu),
        "forward registers per thread": forward_regs,
        "backward registers per thread": backward_regs,
        "shared memory per program": smem,
        "programs": programs,
        "programs per SM": per_sm,
        "waves": waves,
        "memory ns": memory_ns,
        "bandwidth efficiency %": efficiency,
        "compute ns": compute_ns,
        "chunk chain ns": chain_ns,
    }
    tiebreak = regs_per_program.ceil_div(1024) + smem.ceil_div(4096) + stages  # then the fewest resources
    return Model("scan", [block_c, block_t, warps, stages], constraints, objective, quantities, tiebreak, unit)


def minimum_pct(active, capacity, gpu: GpuProfile):
    """Percent of peak bandwidth reached with ``active`` warps (capped at the resident capacity)."""
    return minimum(100, (minimum(active, capacity) * 100).ceil_div(SATURATING_WARPS_PER_SM * gpu.sm_count))
