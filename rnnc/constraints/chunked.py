"""The tiling model of the chunked kernels (matrix states: linear attention, GLA, DeltaNet...).

Time is cut into chunks of CHUNK steps. Within a chunk the outputs come from
``tl.dot``s (Q K^T, then with V); between chunks a sequential pass carries the
K x V state, tiled BK x BV per program. Identity-minus-rank-one transitions
(DeltaNet) need the whole key dimension in one program (the update reads
``k^T S`` over all of K) and a triangular solve per chunk.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.constraints.problem import problem_of
    >>> from rnnc.constraints.profiles import load_profile
    >>> plan = analyse_source(open("examples/deltanet.rnn").read())
    >>> p = problem_of(plan, {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}, "bfloat16")
    >>> build_model(p, load_profile("h100")).solve().values["BK"]
    128
"""

from __future__ import annotations

from rnnc.constraints.common import (
    budget_constraints,
    powers_of_two,
    programs_per_sm,
    threads_of,
    time_unit,
    warps_var,
)
from rnnc.constraints.model import Const, Constraint, Model, Var, maximum, table
from rnnc.constraints.problem import Problem, next_pow2
from rnnc.constraints.profiles import GpuProfile

REGISTER_OVERHEAD = 32  # registers per thread for addresses and loop state
CHUNK_STEP_NS = 400  # one dependent step of the inter-chunk pass: load, dot, store (estimate)
KERNELS = 3  # chunk-local decays and products, the inter-chunk pass, the outputs


def build_model(p: Problem, gpu: GpuProfile) -> Model:
    """The CP-SAT model of the chunked kernels for problem ``p`` on ``gpu``."""
    k_pad = next_pow2(p.key_dim, least=16)
    v_pad = next_pow2(p.value_dim, least=16)
    chunk = Var("CHUNK", (8, 16, 32, 64, 128))
    # identity minus rank one reads k^T S over all of K: the key tile is whole
    bk = Var("BK", (k_pad,) if p.rank_one else powers_of_two(8, k_pad))
    bv = Var("BV", powers_of_two(8, v_pad))
    warps = warps_var(gpu, (1, 2, 4, 8))
    stages = Var("num_stages", (1, 2, 3, 4))
    threads = threads_of(warps, gpu)
    # fp32 accumulators in registers: the state tile, an output tile, the C x C score block
    acc_words = bk * bv + chunk * bv + chunk * chunk
    if p.rank_one:  # W and U of the WY form, and the C x C triangular factor
        acc_words = acc_words + chunk * bk + chunk * bv + chunk * chunk
    regs_per_thread = acc_words.ceil_div(threads) + REGISTER_OVERHEAD
    regs_per_program = regs_per_thread * threads
    # q, k (BK wide) and v (BV wide) tiles of a chunk, staged per pipeline stage, plus the state tile
    smem = stages * chunk * (bk * 2 + bv) * p.bytes + bk * bv * 4
    per_sm = programs_per_sm(gpu, regs_per_program, smem, threads)
    k_blocks = table(bk, lambda b: -(-p.key_dim // b))
    v_blocks = table(bv, lambda b: -(-p.value_dim // b))
    programs = k_blocks * v_blocks * (p.B * p.NH)
    minimum_k = 16 if p.bytes == 2 else 8
    constraints = budget_constraints(gpu, regs_per_thread, regs_per_program, smem, per_sm) + [
        # tl.dot's M side is the chunk (rows of Q, K): at least 16
        Constraint("dot rows (CHUNK)", 16, chunk, "tl.dot needs at least 16 rows: the chunk length"),
        # Q K^T contracts over the key tile: K >= 16 for 16-bit inputs, >= 8 for fp32
        Constraint("dot contraction (BK)", minimum_k, bk, "tl.dot needs K >= 16 (16-bit) or >= 8 (fp32)"),
        # P V and Q S produce BV columns: N >= 16
        Constraint("dot columns (BV)", 16, bv, "tl.dot needs at least 16 columns"),
    ]
    chunks = table(chunk, lambda c: -(-p.T // c))
    # FLOPs per (row, head), padded tiles: intra-chunk Q K^T (recomputed per V block) and P V,
    # inter-chunk Q S and the state update; the WY form adds K K^T, the solve and W, U
    # (padded extents are tabulated per tile size, which keeps the solver's bounds tight)
    k_padded = table(bk, lambda b: -(-p.key_dim // b) * b)
    v_padded = table(bv, lambda b: -(-p.value_dim // b) * b)
    per_token = chunk * (k_padded * v_blocks * 2 + v_padded * 2) + k_padded * v_padded * 4
    if p.rank_one:
        per_token = per_token + chunk * (k_padded * 2 + chunk + (k_padded + v_padded) * 2)
    usable = table(warps, lambda w: {1: 25, 2: 50, 4: 80, 8: 100}[w])
    tokens = p.B * p.NH * p.T
    unit = time_unit(tokens)  # times below are in units of `unit` ns, so nothing overflows 64 bits
    # per token in 1/10000 ns first, then over all tokens
    per_token_time = (per_token * 1_000_000).ceil_div(usable * gpu.tensor_flops_per_ns(p.dtype))
    compute_ns = (per_token_time * -(-tokens // unit)).ceil_div(10_000)
    streamed = tokens * (p.in_elems + p.out_elems) * p.bytes
    states_bytes = chunks * (p.B * p.NH * p.key_dim * p.value_dim * 4 * 2)  # chunk states written, read back
    memory_ns = (states_bytes + Const(streamed)).ceil_div(gpu.bytes_per_ns() * unit)
    waves = programs.ceil_div(maximum(1, per_sm) * gpu.sm_count)
    chain_ns = (waves * chunks * CHUNK_STEP_NS).ceil_div(unit)
    launches = -(-int(KERNELS * gpu.launch_overhead_us * 1000) // unit)
    objective = maximum(compute_ns, memory_ns) + chain_ns + launches
    quantities = {
        "registers per thread": regs_per_thread,
        "shared memory per program": smem,
        "programs": programs,
        "programs per SM": per_sm,
        "waves": waves,
        "compute ns": compute_ns,
        "memory ns": memory_ns,
        "chunk chain ns": chain_ns,
    }
    tiebreak = regs_per_program.ceil_div(1024) + smem.ceil_div(4096) + stages  # then the fewest resources
    variables = [chunk, bk, bv, warps, stages]
    return Model("chunked", variables, constraints, objective, quantities, tiebreak, unit_ns=unit)
