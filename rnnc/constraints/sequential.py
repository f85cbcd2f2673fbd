"""The tiling model of the sequential (FlashRNN-style) kernels.

One program owns a block of batch rows (``BLOCK_B``, the M side of ``tl.dot``, padded to 16)
of one head and a slice of the hidden units (all gates of them). Three kernels share the model:

- ``SPLIT = 1, STREAM_WEIGHTS = 0``: the whole head in one program, its recurrent weights loaded
  on chip once and kept there across the time loop (one launch).
- ``STREAM_WEIGHTS = 1``: the weights are read again every step from L2 (or HBM when they do
  not fit in L2), in ``BLOCK_K`` pieces of the contraction: any head size fits, at the price of
  that traffic.
- ``SPLIT > 1``: the hidden units are split over SPLIT programs that exchange the states through
  global memory, one launch per step (the launch is the barrier, so no co-residency is needed);
  each launch re-reads its slice of the weights, whole (``STREAM_WEIGHTS = 0``) or in pieces.

Registers and shared memory are estimated per thread and per program for the forward and the
backward kernel (which also holds the weight gradients on chip), from the tiles the kernels hold;
the coefficients are calibrated against the compiler (``bench/calibrate_tiling.py``). The cost is
T dependent steps of the slowest of tensor work, streamed inputs and weight traffic, plus fixed
latencies, and a launch per step for a split head.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.constraints.problem import problem_of
    >>> from rnnc.constraints.profiles import load_profile
    >>> plan = analyse_source(open("examples/lstm.rnn").read())
    >>> p = problem_of(plan, {"B": 16, "T": 1024, "NH": 12, "H": 64}, "bfloat16")
    >>> s = build_model(p, load_profile("h100")).solve()
    >>> s.values["BLOCK_B"], s.values["SPLIT"], s.values["STREAM_WEIGHTS"]
    (16, 1, 0)
"""

from __future__ import annotations

from rnnc.constraints.common import (
    budget_constraints,
    powers_of_two,
    programs_per_sm,
    register_pressure,
    threads_of,
    warpgroup_mma,
    warps_var,
)
from rnnc.constraints.model import Constraint, Model, Var, maximum, table
from rnnc.constraints.problem import Problem, next_pow2
from rnnc.constraints.profiles import GpuProfile

REGISTER_OVERHEAD = 48  # registers per thread for addresses, loop counters and temporaries (calibrated)
BACKWARD_OVERHEAD = 48  # the same in the backward kernel (calibrated)
REGISTER_OPERANDS_BACKWARD = 7  # without warpgroup MMA (sm_80: sLSTM at H = 64, 8 warps, 255 where sm_90 has 248)
# the step kernels (one launch per step: a split head or streamed weights) keep more live than their tiles:
# addresses of every piece, the exchanged states, the masks of the slice. Calibrated on sm_90 (LSTM at
# H = 768, SPLIT 48, bf16; the compiler's registers exceed the tile estimate by 76 to 100 per thread)
STEP_KERNEL_OVERHEAD = 96
DOT_ISSUE_NS = 10  # fixed cost of issuing one tl.dot of the K loop (estimate)


def build_model(p: Problem, gpu: GpuProfile, extended: bool = True) -> Model:
    """The CP-SAT model of the sequential kernels for problem ``p`` on ``gpu``.

    Every variant the model describes is built (weights whole or streamed, whole head or split), so
    ``extended`` changes nothing.
    """
    hidden = max(p.hidden, 1)
    gates = max(p.gates, 1) if p.gates else 0
    full = next_pow2(hidden, least=16)  # BLOCK_H of the whole-head kernel: every dim padded to a power of two
    words = 2 if p.dtype == "float64" else 1  # registers per compute-dtype value
    block_b = Var("BLOCK_B", powers_of_two(1, max(16, next_pow2(p.B)) * 2))
    # the launcher cuts a split down to ceil(H / slice) programs with a power-of-two slice: only those exist
    split = Var("SPLIT", tuple(sorted({-(-hidden // c) for c in powers_of_two(16, full)})))
    stream = Var("STREAM_WEIGHTS", (0, 1))  # both built: extended changes nothing here
    block_k = Var("BLOCK_K", powers_of_two(16 if p.bytes == 2 else 8, full))
    warps = warps_var(gpu)
    stages = Var("num_stages", (1, 2, 3))
    threads = threads_of(warps, gpu)

    cols = table(split, lambda s: next_pow2(-(-hidden // s), least=16))  # hidden units per program, padded
    is_split = table(split, lambda s: int(s > 1))
    streamed = table(stream, lambda s: s)
    on_chip = table(stream, lambda s: 1 - s)
    # the contraction held at once: all of it when the weights stay whole, one BLOCK_K piece when streamed
    held_k = on_chip * full + streamed * block_k
    weight_words = (cols * held_k * (gates * p.bytes)).ceil_div(4)  # weights (DOT_DTYPE) held at once
    # tensor-core dots (16-bit inputs) take the weights from shared memory, and only a streamed piece passes
    # through registers; float32 and float64 dots run on the CUDA cores from registers. A split head's
    # launch loads its whole slice for one step, and that load passes through registers too (sm_90, bf16,
    # LSTM at H = 768, SPLIT 48: BLOCK_K 1024 spills 1488 B in the forward step kernel, streamed pieces of
    # 32 spill nothing: bench/results/sequential-sm90-warps8-k32.json)
    weights_in_registers = weight_words * (on_chip * maximum(int(p.bytes >= 4), is_split) + streamed)
    # values per batch row (calibrated, bench/calibrate_tiling.py on sm_90): the state slice, three per gate
    # and hidden unit (the pre-activation, the x_t input, its address), the contracted vector as held
    row_words = (table(split, lambda s: -(-p.state_elems // s)) + cols * (3 * max(gates, 1)) + held_k) * words
    # a [BLOCK_B, H] row tile spreads over at most 256 threads: more warps do not lower the registers per thread
    row_threads = table(warps, lambda w: min(w * gpu.warp_size, 256))
    step_kernel = maximum(streamed, is_split)  # one launch per step
    forward_regs = (
        (block_b * row_words).ceil_div(row_threads)
        + weights_in_registers.ceil_div(threads)
        + REGISTER_OVERHEAD
        + step_kernel * STEP_KERNEL_OVERHEAD
    )
    # backward: the cotangents of the same rows, and the weight gradients (fp32) of the weights held:
    # accumulated on chip over time when the weights stay on chip, added to memory every step otherwise
    gradient_words = cols * held_k * (gates * words)
    backward_regs = (
        (block_b * row_words * 2).ceil_div(row_threads)
        + (weights_in_registers + gradient_words).ceil_div(threads)
        + (BACKWARD_OVERHEAD + (0 if warpgroup_mma(gpu) else REGISTER_OPERANDS_BACKWARD))
        + step_kernel * STEP_KERNEL_OVERHEAD
    )
    regs_per_thread = maximum(forward_regs, backward_regs)
    regs_per_program = regs_per_thread * threads
    # shared memory (calibrated on sm_90): the weights as dot operands (twice in backward, R and R^T, for
    # 16-bit inputs), the contracted vector's operand (as held), x_t tiles in flight beyond the first, the backward's
    # gate cotangents (three fp32 tiles per gate) and state cotangents, and 1 KB
    weight_bytes = cols * held_k * (gates * p.bytes)
    forward_smem = (
        weight_bytes
        + block_b * held_k * (2 * p.bytes)
        + (stages + (-1)) * block_b * cols * (max(gates, 1) * p.bytes)
        + 1024
    )
    state_slice = table(split, lambda s: -(-p.state_elems // s))
    backward_smem = (
        weight_bytes * (2 if p.bytes == 2 else 1)
        + block_b * cols * (max(gates, 1) * 12)
        + block_b * state_slice * 8
        + 1024
    )
    smem = maximum(forward_smem, backward_smem)
    per_sm = programs_per_sm(gpu, regs_per_program, smem, threads)
    blocks = table(block_b, lambda b: -(-p.B // b))
    programs = blocks * split * p.NH

    constraints = budget_constraints(gpu, regs_per_thread, regs_per_program, smem, per_sm) + [
        # tl.dot needs M >= 16 rows: the batch block is the M side of h @ R^T (B = 1 pads to 16)
        Constraint("dot rows (BLOCK_B)", 16, block_b, "tl.dot needs at least 16 rows (batch rows per program)"),
        # the contraction of h @ R^T: K >= 16 for 16-bit inputs, >= 8 for fp32
        Constraint(
            "dot contraction (BLOCK_K)",
            16 if p.bytes == 2 else 8,
            block_k,
            "tl.dot needs K >= 16 for 16-bit inputs and >= 8 for fp32",
        ),
        # weights kept on chip are loaded whole: BLOCK_K is the whole contraction then
        Constraint(
            "whole contraction on chip (BLOCK_K)",
            on_chip * table(block_k, lambda k: full - k),
            0,
            "weights kept on chip are contracted whole; pieces of BLOCK_K exist only when streamed",
        ),
    ]
    # a streamed piece of weights passes through registers with its cotangent, and the compiler keeps
    # live ranges the estimate above does not see: calibrated on sm_90 (LSTM, H = 768, SPLIT 48, TILE_H
    # 16, 8 warps, bf16), BLOCK_K 64 compiles with no stack in both kernels, 128 spills 80 B in the
    # backward and 256 spills in both; at most 16 weight entries per thread in a piece
    constraints.append(
        Constraint(
            "streamed weight piece (BLOCK_K)",
            streamed * cols * block_k * max(gates, 1),
            threads * 16,
            "a streamed piece of the weights holds at most 16 entries per thread (more spills: calibrated on sm_90)",
        )
    )
    # --- cost: T dependent steps, each the slowest of tensor work, streaming and weight traffic, plus latencies
    flops_per_program = block_b * cols * full * (2 * max(gates, 1))
    busy = programs.ceil_div(gpu.sm_count)  # programs that share one SM
    resident = maximum(1, per_sm)
    sharing = table(warps, lambda w: {1: 25, 2: 50, 4: 100, 8: 100, 16: 90}[w])  # % of the SM's tensor peak
    sm_rate = max(1, gpu.tensor_flops_per_ns(p.dtype) // gpu.sm_count)
    compute_ns = (flops_per_program * busy * 100).ceil_div(sharing * sm_rate)
    stream_bytes = blocks * block_b * (p.NH * (p.in_elems + p.out_elems) * p.bytes)
    exchange_bytes = is_split * programs * block_b * full * (4 * words)  # a split head re-reads every state
    memory_ns = (stream_bytes + exchange_bytes).ceil_div(gpu.bytes_per_ns())
    # weights read again every step (streamed, or a split head's launch), from L2 when all heads fit there
    per_step_weights = gates * hidden * hidden * p.bytes * p.NH
    bandwidth = gpu.l2_bytes_per_ns() if per_step_weights <= gpu.l2_bytes else gpu.bytes_per_ns()
    reread = step_kernel
    weight_ns = (reread * cols * full * (gates * p.bytes) * busy * gpu.sm_count).ceil_div(bandwidth)
    k_steps = table(block_k, lambda k: -(-hidden // k) * DOT_ISSUE_NS) * streamed + DOT_ISSUE_NS
    latency = int(gpu.step_latency_us * 1000)
    step_ns = maximum(compute_ns, memory_ns, weight_ns) + k_steps + latency
    waves = programs.ceil_div(resident * gpu.sm_count)
    launch = int(gpu.launch_overhead_us * 1000)
    objective = (waves * step_ns + is_split * launch) * p.T + launch
    quantities = {
        "registers per thread": regs_per_thread,
        "register pressure": register_pressure(regs_per_thread, warps, gpu),
        "forward registers per thread": forward_regs,
        "backward registers per thread": backward_regs,
        "shared memory per program": smem,
        "forward shared memory per program": forward_smem,
        "backward shared memory per program": backward_smem,
        "programs": programs,
        "programs per SM": per_sm,
        "waves": waves,
        "step ns": step_ns,
        "weight traffic ns per step": weight_ns,
        "weight bytes held per program": weight_words * 4,
    }
    variables = [block_b, split, stream, block_k, warps, stages]
    tiebreak = regs_per_program.ceil_div(1024) + smem.ceil_div(4096) + stages  # then the fewest resources
    return Model("sequential", variables, constraints, objective, quantities, tiebreak)
