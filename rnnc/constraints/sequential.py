"""The tiling model of the sequential (FlashRNN-style) kernel.

One program owns a block of batch rows of one head and a slice of the hidden
units (all gates of them); it keeps its slice of the recurrent weights on chip
(registers or shared memory) and its states in fp32 registers across the time
loop. When the hidden units are split over several programs, they exchange the
state every step through global memory with a grid-wide barrier, which is only
safe when every program is resident at once.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.constraints.problem import problem_of
    >>> from rnnc.constraints.profiles import load_profile
    >>> plan = analyse_source(open("examples/lstm.rnn").read())
    >>> p = problem_of(plan, {"B": 16, "T": 1024, "NH": 12, "H": 64}, "bfloat16")
    >>> s = build_model(p, load_profile("h100")).solve()
    >>> s.values["BLOCK_B"], s.values["SPLIT"]
    (16, 1)
"""

from __future__ import annotations

from rnnc.constraints.common import budget_constraints, powers_of_two, programs_per_sm, threads_of, warps_var
from rnnc.constraints.model import Constraint, Model, Var, maximum, table
from rnnc.constraints.problem import Problem, next_pow2
from rnnc.constraints.profiles import GpuProfile

REGISTER_OVERHEAD = 32  # registers per thread for addresses, loop counters and temporaries
DOT_ISSUE_NS = 10  # fixed cost of issuing one tl.dot of the K loop (estimate)


def build_model(p: Problem, gpu: GpuProfile) -> Model:
    """The CP-SAT model of the sequential kernel for problem ``p`` on ``gpu``."""
    hidden = max(p.hidden, 1)
    gates = max(p.gates, 1)
    block_b = Var("BLOCK_B", powers_of_two(1, max(16, next_pow2(p.B)) * 2))
    # SPLIT programs share the hidden units; each holds ceil(H / SPLIT) of them in a power-of-two tile
    split = Var("SPLIT", tuple(range(1, max(1, -(-hidden // 16)) + 1)))
    # the contraction over H runs in BLOCK_K pieces; H is padded to a multiple of BLOCK_K (masked)
    block_k = Var("BLOCK_K", powers_of_two(8, next_pow2(hidden, least=16)))
    warps = warps_var(gpu)
    stages = Var("num_stages", (1, 2, 3))
    in_registers = Var("WEIGHTS_IN_REGISTERS", (0, 1))
    threads = threads_of(warps, gpu)

    cols = table(split, lambda s: next_pow2(-(-hidden // s), least=16))  # hidden units per program, padded
    k_pad = table(block_k, lambda k: -(-hidden // k) * k)
    weight_bytes = (cols * k_pad) * (gates * p.bytes if p.gates else 0)
    # fp32 words per batch row held by a program: its state slice, gate accumulators, the h operand
    row_words = table(split, lambda s: -(-p.state_elems // s)) + cols * gates + k_pad
    state_regs = (block_b * row_words).ceil_div(threads)
    weight_regs = (in_registers * weight_bytes).ceil_div(threads * 4)
    regs_per_thread = state_regs + weight_regs + REGISTER_OVERHEAD
    regs_per_program = regs_per_thread * threads
    in_shared = table(in_registers, lambda r: 1 - r)
    is_split = table(split, lambda s: int(s > 1))
    smem = (
        in_shared * weight_bytes
        + stages * block_b * cols * (gates * p.bytes)  # x_t tiles in flight
        + is_split * block_b * k_pad * 4  # the exchanged state
    )
    per_sm = programs_per_sm(gpu, regs_per_program, smem, threads)
    blocks = table(block_b, lambda b: -(-p.B // b))
    programs = blocks * split * p.NH

    constraints = budget_constraints(gpu, regs_per_thread, regs_per_program, smem, per_sm) + [
        # tl.dot needs M >= 16 rows: the batch block is the M side of h @ R^T
        Constraint("dot rows (BLOCK_B)", 16, block_b, "tl.dot needs at least 16 rows (batch rows per program)"),
        # the contraction of h @ R^T: K >= 16 for 16-bit inputs, >= 8 for fp32
        Constraint(
            "dot contraction (BLOCK_K)",
            16 if p.bytes == 2 else 8,
            block_k,
            "tl.dot needs K >= 16 for 16-bit inputs and >= 8 for fp32",
        ),
        # a split grid synchronises every step: all its programs must be resident together
        Constraint(
            "co-residency",
            is_split * programs,
            per_sm * gpu.sm_count,
            "programs that exchange the state every step must all be resident",
            "programs",
        ),
    ]
    # --- cost: T dependent steps, each the slowest of tensor work and streaming, plus fixed latencies
    flops_per_program = block_b * cols * k_pad * (2 * gates)
    busy = programs.ceil_div(gpu.sm_count)  # programs that share one SM's tensor cores
    resident = maximum(1, per_sm)
    sharing = table(warps, lambda w: {1: 25, 2: 50, 4: 100, 8: 100, 16: 90}[w])  # % of the SM's tensor peak
    sm_rate = max(1, gpu.tensor_flops_per_ns(p.dtype) // gpu.sm_count)
    compute_ns = (flops_per_program * busy * 100).ceil_div(sharing * sm_rate)
    stream_bytes = blocks * block_b * (p.NH * (p.in_elems + p.out_elems) * p.bytes)
    memory_ns = stream_bytes.ceil_div(gpu.bytes_per_ns())
    k_steps = table(block_k, lambda k: -(-hidden // k) * DOT_ISSUE_NS)  # one dot per K piece, issued in order
    latency = int(gpu.step_latency_us * 1000)
    step_ns = maximum(compute_ns, memory_ns) + k_steps + latency + is_split * int(gpu.grid_sync_us * 1000)
    waves = programs.ceil_div(resident * gpu.sm_count)
    objective = waves * step_ns * p.T + int(gpu.launch_overhead_us * 1000)
    quantities = {
        "registers per thread": regs_per_thread,
        "shared memory per program": smem,
        "programs": programs,
        "programs per SM": per_sm,
        "waves": waves,
        "step ns": step_ns,
        "weight bytes per program": weight_bytes,
    }
    variables = [block_b, split, block_k, warps, stages, in_registers]
    tiebreak = regs_per_program.ceil_div(1024) + smem.ceil_div(4096) + stages  # then the fewest resources
    return Model("sequential", variables, constraints, objective, quantities, tiebreak)
